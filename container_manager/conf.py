"""Typed, lazy access to the ``CONTAINER_MANAGER`` settings dict.

Every key has a default; ``settings.CONTAINER_MANAGER`` overrides any of them. Values are
read at access time, so ``override_settings`` in tests takes effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from typing import Any

from django.conf import settings

__all__ = ["DEFAULTS", "Settings", "fixed_settings", "get_settings"]

DEFAULT_EXECUTORS: dict[str, str] = {
    "docker": "container_manager.executors.docker.DockerExecutor",
    "swarm": "container_manager.executors.swarm.SwarmExecutor",
    "kubernetes": "container_manager.executors.kubernetes.KubernetesExecutor",
}


@dataclass(frozen=True)
class Settings:
    """The app's settings, with their defaults."""

    #: alias -> dotted path of an executor class (merged over docker and swarm). The fake
    #: executor is registered only where a project adds it (its tests, the demo):
    #: ``{"fake": "container_manager.executors.fake.FakeExecutor"}``.
    EXECUTORS: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EXECUTORS))
    #: Seconds the SDK waits for an engine answer (not for a job: waits use their own).
    ENGINE_TIMEOUT: float = 30.0
    #: Seconds a launch may take to reach running (pulling the image included) before the
    #: worker gives it up and retries the job; a host's ``start_timeout`` overrides it.
    #: None: no limit (each engine call still has ENGINE_TIMEOUT).
    START_TIMEOUT: float | None = 600.0
    #: Attempts an engine's restart may end (its containers killed under the jobs) that do
    #: not count against a job's ``max_retries``.
    MAX_INFRASTRUCTURE_RETRIES: int = 3
    #: Seconds a worker watches the engine after a job was killed by a signal it did not
    #: send: an engine that goes away meanwhile was shutting down (an infrastructure
    #: failure, retried), one that stays is telling the job's own end.
    ENGINE_SHUTDOWN_PROBE: float = 15.0
    #: Seconds a worker sleeps when it found nothing to claim.
    POLL_INTERVAL: float = 1.0
    #: Seconds a claim on a job is valid without renewal.
    LEASE_SECONDS: float = 30.0
    #: Seconds between resource samples of a running container.
    STATS_INTERVAL: float = 1.0
    #: Seconds a container gets between SIGTERM and SIGKILL on timeout or cancel.
    STOP_GRACE_SECONDS: int = 5
    #: Bytes of stdout and of stderr kept in the database (the tail).
    LOG_TAIL_BYTES: int = 1024 * 1024
    #: Bytes of a job's output its engine keeps on its own disk (json-file, in two files of
    #: half this each); None: the engine's own logging config. Docker jobs' output is read
    #: while they run, so the cap loses nothing; where it is read after the exit (Swarm, a
    #: follow that ended early), keep it at least LOG_TAIL_BYTES.
    ENGINE_LOG_MAX_BYTES: int | None = 64 * 1024 * 1024
    #: Seconds between the worker's records of a running job's latest output (what the
    #: admin's live view and ``container_job logs`` show while it runs; the web process
    #: never asks an engine); None: nothing is recorded until the job ends.
    LIVE_OUTPUT_INTERVAL: float | None = 2.0
    #: Bytes of each stream that record keeps (the end of what the job wrote so far).
    LIVE_OUTPUT_BYTES: int = 64 * 1024
    #: Whether the job's known secret values are redacted from its stored output tails (they
    #: are always redacted from errors and log lines).
    REDACT_OUTPUT: bool = True
    #: Django storage alias to keep full output in, or None to keep only the tail.
    LOG_STORAGE: str | None = None
    #: Docker network mode for job containers ("none", "host", a network name), or None
    #: for the engine's default. Set "none" on engines started with ``--bridge=none``:
    #: their default mode leaks a network sandbox per container (moby/moby#46583), and
    #: thousands of those make the engine take minutes to start.
    NETWORK_MODE: str | None = None
    #: Bearer token the /metrics endpoint requires (``Authorization: Bearer <token>``), or
    #: None for an open endpoint (restrict it at your proxy then).
    METRICS_TOKEN: str | None = None
    #: Extra labels put on every container the app creates.
    CONTAINER_LABELS: dict[str, str] = field(default_factory=dict)
    #: Retry backoff: base * 2**attempt seconds, capped, with full jitter.
    RETRY_BACKOFF_BASE: float = 2.0
    RETRY_BACKOFF_MAX: float = 300.0
    #: Consecutive failed health checks after which a host gets no new jobs.
    UNHEALTHY_AFTER: int = 3
    #: Seconds between a worker's health checks of the hosts it uses.
    HEALTH_CHECK_INTERVAL: float = 30.0
    #: Seconds an unhealthy host may stay unreachable before its running jobs are declared
    #: lost and queued again (elsewhere, when the queue had placed them).
    HOST_LOST_AFTER: float = 300.0
    #: Seconds between a worker's reaper runs (None: the worker never reaps; run
    #: ``manage.py cleanup_containers`` yourself).
    REAP_INTERVAL: float | None = 600.0
    #: Seconds a finished job's container may stay before the reaper removes it (the worker
    #: removes it at once; this is for containers left behind by crashes).
    REAP_OLDER_THAN: float = 3600.0
    #: Days ended jobs are kept before the reaper deletes their rows (None: forever).
    JOB_RETENTION_DAYS: int | None = None
    #: Processes a job's container may run when the job sets no ``pids_limit`` (None: no
    #: limit). Stops a fork bomb from taking the engine host down.
    DEFAULT_PIDS_LIMIT: int | None = 4096
    #: Upper bounds checked at submission.
    MAX_MEMORY_MB: int = 1024 * 1024
    MAX_CPU_CORES: float = 1024.0
    MAX_TIMEOUT_SECONDS: int = 30 * 24 * 3600


DEFAULTS = Settings()


#: Within :func:`fixed_settings`: the settings read once for the block.
_fixed: ContextVar[Settings | None] = ContextVar("_fixed", default=None)


@contextmanager
def fixed_settings() -> Iterator[Settings]:
    """Read the settings once for a block that validates many jobs (submit_many): inside
    it, in this thread, :func:`get_settings` returns that one reading."""
    token = _fixed.set(get_settings())
    try:
        yield _fixed.get()  # type: ignore[misc]
    finally:
        _fixed.reset(token)


def get_settings() -> Settings:
    """Read ``settings.CONTAINER_MANAGER`` merged over the defaults."""
    if (fixed := _fixed.get()) is not None:
        return fixed
    overrides: dict[str, Any] = dict(getattr(settings, "CONTAINER_MANAGER", {}) or {})
    known = {f.name for f in fields(Settings)}
    unknown = set(overrides) - known
    if unknown:
        from .exceptions import ConfigurationError

        raise ConfigurationError(
            f"Unknown CONTAINER_MANAGER keys: {', '.join(sorted(unknown))}; "
            f"known keys are {', '.join(sorted(known))}"
        )
    _check_types(overrides)
    if "EXECUTORS" in overrides:
        overrides["EXECUTORS"] = {**DEFAULT_EXECUTORS, **overrides["EXECUTORS"]}
    return Settings(**overrides)


_TYPES: dict[str, tuple[type, ...]] = {
    "EXECUTORS": (dict,),
    "CONTAINER_LABELS": (dict,),
    "LOG_STORAGE": (str, type(None)),
    "NETWORK_MODE": (str, type(None)),
    "METRICS_TOKEN": (str, type(None)),
    "REAP_INTERVAL": (int, float, type(None)),
    "JOB_RETENTION_DAYS": (int, type(None)),
    "DEFAULT_PIDS_LIMIT": (int, type(None)),
    "REDACT_OUTPUT": (bool,),
    "ENGINE_LOG_MAX_BYTES": (int, type(None)),
    "LIVE_OUTPUT_INTERVAL": (int, float, type(None)),
    "START_TIMEOUT": (int, float, type(None)),
}


def _check_types(overrides: dict[str, Any]) -> None:
    """Reject a value of the wrong type, naming the key (an int is fine for a float)."""
    from .exceptions import ConfigurationError

    for name, value in overrides.items():
        default = getattr(DEFAULTS, name)
        expected = _TYPES.get(name) or ((int, float) if isinstance(default, float) else (int,))
        if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
            raise ConfigurationError(
                f"CONTAINER_MANAGER[{name!r}] must be "
                f"{' or '.join(t.__name__ for t in expected)}, not {type(value).__name__}"
            )
