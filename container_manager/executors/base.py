"""The executor interface: a small abstract base and the plain data it takes and returns.

Executors talk to engines and never save models. The worker builds a :class:`JobSpec`
from a job, hands it to an executor, and records what comes back.
"""

from __future__ import annotations

import os
import re
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Literal

from ..exceptions import ConfigurationError, ContainerManagerError, ExecutorError
from ..spec import (
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_MANAGED,
    SPEC_FIELDS,
    EngineHost,
    JobSource,
    JobSpec,
    container_name,
)

__all__ = [
    "LABEL_ATTEMPT",
    "LABEL_JOB",
    "LABEL_MANAGED",
    "SPEC_FIELDS",
    "BaseExecutor",
    "ContainerState",
    "JobSpec",
    "Leftover",
    "Stream",
    "container_name",
]

Stream = Literal["stdout", "stderr"]
_ENGINE_URL = re.compile(r"^(unix://(/[^\s]+)|tcp://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5})$")


def no_usage() -> dict[str, Any]:
    """The resource figures of a container that cannot be measured: zeros."""
    return {
        "memory_usage": 0,
        "memory_peak": 0,
        "memory_limit": 0,
        "cpu_usage": 0.0,
        "cpu_percent": 0.0,
    }


def _not_a_socket(path: str) -> bool:
    """Whether ``path`` exists here and is no socket (a path that does not exist here may
    be a socket on the worker's machine)."""
    try:
        return not stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _port_ok(url: str) -> bool:
    if not url.startswith("tcp://"):
        return True
    port = url.rsplit(":", 1)[-1]
    return port.isdigit() and 1 <= int(port) <= 65535


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


@dataclass(frozen=True)
class Leftover:
    """Something the app made on an engine beside a container that serves no container any
    more (a Secret whose Job is gone), for the reaper: its id and why it may go."""

    id: str
    reason: str


class BaseExecutor(ABC):
    """Abstract executor. Subclasses are registered by alias in ``CONTAINER_MANAGER['EXECUTORS']``.

    ``config["docker_host"]`` is an :class:`ExecutorHost` or an engine URL string. Building an
    executor never connects to the engine.
    """

    #: Whether memory and CPU limits are enforced.
    supports_resource_limits: ClassVar[bool] = True
    #: Whether :meth:`get_resource_usage` returns real figures.
    supports_stats: ClassVar[bool] = True
    #: The optional spec fields (:data:`~container_manager.spec.SPEC_FIELDS`) this executor
    #: honours; a job asking for another is refused when it is validated.
    supported_fields: ClassVar[frozenset[str]] = frozenset()
    #: Whether :meth:`follow_outputs` reads a running container's output as it is written.
    follows_output: ClassVar[bool] = False

    @classmethod
    def validate_host(cls, host: EngineHost) -> dict[str, str]:
        """Field -> problem of the host options this executor reads (engine URL, TLS)."""
        errors: dict[str, str] = {}
        url = host.connection_string or ""
        if not url:
            errors["connection_string"] = "An engine URL is required."
        elif not _ENGINE_URL.fullmatch(url) or not _port_ok(url):
            errors["connection_string"] = (
                "Not an engine URL: use unix:///path/to/docker.sock or tcp://host:port."
            )
        elif url.startswith("unix://") and _not_a_socket(url.removeprefix("unix://")):
            errors["connection_string"] = "That path is not a socket."
        if host.tls_enabled and not url.startswith("tcp://"):
            errors["tls_enabled"] = "TLS applies to tcp:// engine URLs only."
        elif (
            url.startswith("tcp://")
            and "connection_string" not in errors
            and not (host.tls_enabled or host.insecure_tcp)
        ):
            errors["tls_enabled"] = (
                "A tcp:// engine without TLS receives every job's environment in the clear:"
                " enable TLS, or mark the host insecure (insecure_tcp)."
            )
        if bool(host.tls_client_cert) != bool(host.tls_client_key):
            errors["tls_client_key"] = "Give both the client certificate and its key, or neither."
        return errors

    @classmethod
    def spec_refusals(cls, spec: JobSpec) -> dict[str, str]:
        """Field -> why this executor cannot run a value of a field it supports (Swarm has
        no network ``"none"``); checked at submission like :attr:`supported_fields`."""
        return {}

    def effective(self, spec: JobSpec) -> JobSpec:
        """``spec`` as this executor runs it (a default its engine cannot apply switched
        off): what the attempt's row records."""
        return spec

    def capacity(self) -> tuple[float, int] | None:
        """The engine's CPUs and memory (MB), or None when it cannot tell."""
        return None

    def __init__(self, config: Mapping[str, Any]) -> None:
        target = config.get("docker_host")
        if (
            target is not None
            and hasattr(target, "connection_string")
            and hasattr(target, "executor_type")
        ):
            if not target.connection_string:
                raise ConfigurationError(f"Host {target.name!r} has no engine URL")
            self.host: EngineHost | None = target
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

    def follow_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        """Like :meth:`iter_outputs`, but following a running container: chunks as the
        container writes them, ending when it has exited and all is read (executors with
        :attr:`follows_output`). The worker reads output this way while a job runs, so
        that an engine whose log is capped loses nothing the app keeps."""
        raise ExecutorError(f"{type(self).__name__} cannot follow a container's output")

    def engine_restarted(
        self, container_id: str, since: datetime | None, watch: float
    ) -> bool | None:
        """Whether the container, which died of a signal the worker did not send, was
        stopped by its engine shutting down: the engine that answers now did not see it
        die (it restarted since), or the engine goes away within ``watch`` seconds. None
        when this executor cannot tell (the worker then watches the engine's health)."""
        return None

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

    def leftovers(self, made_before: datetime) -> list[Leftover]:
        """What the app made on the engine beside its containers, made before
        ``made_before``, that no container needs any more (labelled as the app's: nothing
        else is listed). This default: nothing (the container is all there is)."""
        return []

    def remove_leftover(self, leftover_id: str) -> bool:
        """Remove one of :meth:`leftovers`; True also when it is gone already."""
        raise ExecutorError(f"{type(self).__name__} leaves nothing beside its containers")

    # ---- seed-compatible conveniences -------------------------------------------------

    def launch_job(self, job: JobSource) -> tuple[bool, str]:
        """Launch ``job``: ``(True, container_id)`` or ``(False, message)``."""
        try:
            return True, self.run(JobSpec.from_job(job))
        except ContainerManagerError as err:
            return False, str(err)

    def check(self) -> list[str]:
        """Configuration problems of this executor, for ``manage.py check``."""
        return []
