"""The executor interface: a small abstract base and the plain data it takes and returns.

Executors talk to engines and never save models. The worker builds a :class:`JobSpec`
from a job, hands it to an executor, and records what comes back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from ..conf import get_settings
from ..exceptions import ConfigurationError, ContainerManagerError

if TYPE_CHECKING:
    from ..models import ContainerJob, ExecutorHost

__all__ = [
    "LABEL_ATTEMPT",
    "LABEL_JOB",
    "LABEL_MANAGED",
    "BaseExecutor",
    "ContainerState",
    "JobSpec",
    "Stream",
    "container_name",
]

LABEL_MANAGED = "container_manager.managed"
LABEL_JOB = "container_manager.job"
LABEL_ATTEMPT = "container_manager.attempt"

Stream = Literal["stdout", "stderr"]


def container_name(job_id: object, attempt: int) -> str:
    """The deterministic container name of a job attempt: a repeated create finds it."""
    return f"cm-{job_id}-{attempt}"


@dataclass(frozen=True)
class JobSpec:
    """Everything an engine needs to run one attempt of a job."""

    job_id: str
    attempt: int
    image: str
    argv: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    working_directory: str = ""
    memory_limit_mb: int | None = None
    cpu_limit: float | None = None
    auto_pull: bool = True
    extra_labels: dict[str, str] = field(default_factory=dict)
    #: Where the job may run, for executors that place work themselves (Swarm): name=value
    #: labels a node must carry, or constraints in the engine's own syntax.
    placement_constraints: list[str] = field(default_factory=list)
    #: Network mode for the container, or None for the engine's default.
    network_mode: str | None = None

    @property
    def name(self) -> str:
        return container_name(self.job_id, self.attempt)

    @property
    def labels(self) -> dict[str, str]:
        return {
            **self.extra_labels,
            LABEL_MANAGED: "true",
            LABEL_JOB: self.job_id,
            LABEL_ATTEMPT: str(self.attempt),
        }

    @classmethod
    def from_job(cls, job: ContainerJob, attempt: int | None = None) -> JobSpec:
        """Build the spec of ``job``'s attempt (default: its current attempt count, at least 1).

        Raises :class:`InvalidJobError` when the command or environment is malformed.
        """
        host = job.docker_host if job.docker_host_id else None
        settings = get_settings()
        return cls(
            job_id=str(job.pk),
            attempt=attempt if attempt is not None else max(job.attempt_count, 1),
            image=job.docker_image,
            argv=job.argv,
            environment=job.environment,
            working_directory=job.working_directory,
            memory_limit_mb=job.memory_limit,
            cpu_limit=job.cpu_limit,
            auto_pull=host.auto_pull_images if host else True,
            extra_labels=dict(settings.CONTAINER_LABELS),
            network_mode=settings.NETWORK_MODE,
            placement_constraints=[
                f"{k}={v}"
                for k, v in sorted((job.required_labels or {}).items())
                if k != "executor"
            ],
        )


@dataclass(frozen=True)
class ContainerState:
    """What the engine says of a container."""

    status: str  # the engine's word: created, running, exited, ...
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def has_exited(self) -> bool:
        return self.status in {"exited", "dead"}


class BaseExecutor(ABC):
    """Abstract executor. Subclasses are registered by alias in ``CONTAINER_MANAGER['EXECUTORS']``.

    ``config["docker_host"]`` is an :class:`ExecutorHost` or an engine URL string. Building an
    executor never connects to the engine.
    """

    #: Whether memory and CPU limits are enforced.
    supports_resource_limits: ClassVar[bool] = True
    #: Whether :meth:`get_resource_usage` returns real figures.
    supports_stats: ClassVar[bool] = True

    def __init__(self, config: Mapping[str, Any]) -> None:
        target = config.get("docker_host")
        if (
            target is not None
            and hasattr(target, "connection_string")
            and hasattr(target, "executor_type")
        ):
            if not target.connection_string:
                raise ConfigurationError(f"Host {target.name!r} has no engine URL")
            self.host: ExecutorHost | None = target
            self.base_url: str = target.connection_string
        elif isinstance(target, str) and target:
            self.host = None
            self.base_url = target
        else:
            raise ConfigurationError(
                "An executor needs config['docker_host']: an ExecutorHost or an engine URL"
            )
        self.config: dict[str, Any] = dict(config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.base_url}>"

    # ---- the worker's interface ------------------------------------------------------

    @abstractmethod
    def run(self, spec: JobSpec) -> str:
        """Create (or find, by the spec's name) and start the container; return its id."""

    @abstractmethod
    def wait(self, container_id: str, timeout: float | None) -> int | None:
        """Block until the container exits; its exit code, or None if ``timeout`` ran out."""

    @abstractmethod
    def inspect(self, container_id: str) -> ContainerState:
        """The container's state; raises ContainerNotFoundError when it is gone."""

    @abstractmethod
    def iter_output(self, container_id: str, stream: Stream) -> Iterator[bytes]:
        """The container's stdout or stderr, in chunks, from the start."""

    def iter_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        """Both streams, from the start, in chunks tagged with their stream. This default
        reads stdout, then stderr; executors whose engine sends both in one answer override
        it (the worker's hot path: one request instead of two)."""
        streams: tuple[Stream, Stream] = ("stdout", "stderr")
        for stream in streams:
            for chunk in self.iter_output(container_id, stream):
                yield stream, chunk

    @abstractmethod
    def find_container(self, name: str) -> str | None:
        """The id of the container with this name, or None."""

    @abstractmethod
    def stop_container(self, container_id: str, grace: int | None = None) -> bool:
        """Stop (SIGTERM, then SIGKILL after ``grace`` seconds). True also if already gone."""

    @abstractmethod
    def cleanup(self, container_id: str) -> bool:
        """Remove the container; True also when it no longer exists."""

    # ---- inspection and maintenance -------------------------------------------------

    @abstractmethod
    def check_status(self, container_id: str) -> str:
        """The engine's status word, or ``'not-found'``."""

    @abstractmethod
    def get_logs(self, container_id: str, tail: int | None = None) -> str:
        """Combined output as text; an explanation (not an exception) when it is gone."""

    @abstractmethod
    def get_resource_usage(self, container_id: str) -> dict[str, Any]:
        """At least ``memory_usage`` (bytes) and ``cpu_usage`` (CPU seconds)."""

    @abstractmethod
    def list_containers(self) -> list[dict[str, Any]]:
        """Containers this app created on the engine (by label), as plain dicts."""

    @abstractmethod
    def health_check(self) -> bool:
        """Whether the engine answers."""

    @abstractmethod
    def get_version(self) -> str:
        """The engine's version string."""

    def discard(self, container_id: str) -> None:
        """Remove a container whose result is recorded, as cheaply as the engine allows
        (the worker's hot path); like :meth:`cleanup`, a container already gone is fine."""
        self.cleanup(container_id)

    def tail_output(self, container_id: str, stream: Stream, lines: int) -> bytes:
        """The last ``lines`` lines of a stream so far (a running container's too). This
        default reads the whole stream; executors whose engine can tail override it."""
        kept: list[bytes] = []
        pending = b""
        for chunk in self.iter_output(container_id, stream):
            parts = (pending + chunk).split(b"\n")
            pending = parts.pop()
            kept = (kept + [p + b"\n" for p in parts])[-lines:]
        return b"".join((kept + ([pending] if pending else []))[-lines:])

    def cleanup_old_containers(self, cutoff: datetime) -> int:
        """Remove exited containers this app created that finished before ``cutoff``."""
        removed = 0
        for info in self.list_containers():
            finished = info.get("finished_at")
            if (
                info.get("status") in {"exited", "dead", "created"}
                and finished
                and finished < cutoff
            ):
                removed += int(self.cleanup(info["id"]))
        return removed

    # ---- seed-compatible conveniences -------------------------------------------------

    def launch_job(self, job: ContainerJob) -> tuple[bool, str]:
        """Launch ``job``: ``(True, container_id)`` or ``(False, message)``."""
        try:
            return True, self.run(JobSpec.from_job(job))
        except ContainerManagerError as err:
            return False, str(err)

    def check(self) -> list[str]:
        """Configuration problems of this executor, for ``manage.py check``."""
        return []
