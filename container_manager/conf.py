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
    """The app's settings, with their defaults. Each ``#:`` comment is the setting's entry in
    the settings reference of the docs (``docs/reference/settings.md`` renders them)."""

    #: Executor alias -> dotted path of an executor class, merged over the defaults
    #: (``docker``, ``swarm``, ``kubernetes``). The fake executor is registered only where a
    #: project adds it (``"fake": "container_manager.executors.fake.FakeExecutor"``: the
    #: demo and the tests do), so no host can be switched to jobs that "complete" unrun.
    EXECUTORS: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_EXECUTORS))
    #: Seconds the SDK waits for an engine's answer (not for a job: waits use their own).
    ENGINE_TIMEOUT: float = 30.0
    #: Seconds a launch may take to reach ``running``, the image's pull included, before it
    #: is given up and the job retried; a host's ``start_timeout`` overrides it. ``None``: no
    #: limit (each engine call still has ``ENGINE_TIMEOUT``).
    START_TIMEOUT: float | None = 600.0
    #: Attempts an engine restart may end (its containers stopped under the jobs) without
    #: counting against a job's ``max_retries``.
    MAX_INFRASTRUCTURE_RETRIES: int = 3
    #: Seconds a worker watches an engine after a job died of a SIGTERM or SIGKILL the worker
    #: did not send, to tell an engine shutting down (an infrastructure failure, retried)
    #: from the job's own end.
    ENGINE_SHUTDOWN_PROBE: float = 15.0
    #: Seconds a worker sleeps when it found nothing to claim.
    POLL_INTERVAL: float = 1.0
    #: Seconds a worker's claim on a job is valid without renewal.
    LEASE_SECONDS: float = 30.0
    #: Seconds between resource samples of a running container.
    STATS_INTERVAL: float = 1.0
    #: Seconds between SIGTERM and SIGKILL on a timeout or a cancellation.
    STOP_GRACE_SECONDS: int = 5
    #: Bytes of stdout and of stderr kept in the database (the tail).
    LOG_TAIL_BYTES: int = 1024 * 1024
    #: Bytes of a job's output its engine keeps on its own disk (a json-file log in two
    #: files of half each; ``None``: the engine's own logging configuration). On Docker
    #: engines the worker reads the output while the job runs, so the cap loses nothing the
    #: app keeps; on Swarm, and when following ended early, the output is read after the
    #: exit from what the engine kept: keep it at least ``LOG_TAIL_BYTES`` (``check`` warns,
    #: W005).
    ENGINE_LOG_MAX_BYTES: int | None = 64 * 1024 * 1024
    #: Seconds between the worker's records of a running job's latest output (what the
    #: admin's live view and ``container_job logs`` show while it runs; the web process
    #: never asks an engine). Only a job that printed something since the last record costs
    #: a write. ``None``: nothing is recorded until the job ends.
    LIVE_OUTPUT_INTERVAL: float | None = 2.0
    #: Bytes of each stream that record keeps (the end of what the job printed so far,
    #: secrets redacted).
    LIVE_OUTPUT_BYTES: int = 64 * 1024
    #: Whether a job's known secret values are redacted from its recorded output tails (they
    #: are always redacted from errors and log lines).
    REDACT_OUTPUT: bool = True
    #: Django storage alias to keep the full output in, or ``None`` to keep only the tail.
    LOG_STORAGE: str | None = None
    #: Docker network mode of job containers (``"none"``, ``"host"``, a network name);
    #: ``None`` is the engine's default. On an engine started with ``--bridge=none`` always
    #: set it: the engine's default mode leaks one network sandbox per container
    #: (moby/moby#46583) and an engine with thousands of them takes minutes to start. The
    #: demo project sets ``"none"`` (``CONTAINER_MANAGER_NETWORK_MODE`` overrides it). The
    #: Swarm executor ignores it.
    NETWORK_MODE: str | None = None
    #: Bearer token ``/metrics`` requires (``Authorization: Bearer <token>``); ``None``: the
    #: endpoint is open (restrict it at your proxy then).
    METRICS_TOKEN: str | None = None
    #: Extra labels put on every container the app creates; listing and cleanup only see
    #: containers that carry them (one deployment's reaper never touches another's
    #: containers on a shared engine).
    CONTAINER_LABELS: dict[str, str] = field(default_factory=dict)
    #: Retry delay: ``RETRY_BACKOFF_BASE * 2**(attempt-1)`` seconds, with jitter (a random
    #: point in its upper half) ...
    RETRY_BACKOFF_BASE: float = 2.0
    #: ... capped at this many seconds.
    RETRY_BACKOFF_MAX: float = 300.0
    #: Consecutive failed health checks after which a host gets no new jobs.
    UNHEALTHY_AFTER: int = 3
    #: Seconds between a worker's health checks of the hosts.
    HEALTH_CHECK_INTERVAL: float = 30.0
    #: Seconds an unhealthy host may stay unreachable before its running jobs are declared
    #: lost and queued again (elsewhere, when the queue had placed them).
    HOST_LOST_AFTER: float = 300.0
    #: Seconds between a worker's reaper runs (``None``: the worker never reaps; run
    #: ``manage.py cleanup_containers`` yourself).
    REAP_INTERVAL: float | None = 600.0
    #: Seconds a finished job's container may stay before the reaper removes it (the worker
    #: removes it at once; this is for containers left behind by crashes).
    REAP_OLDER_THAN: float = 3600.0
    #: Days ended jobs are kept before the reaper deletes their rows, attempts and stored
    #: output (``None``: forever; the demo project sets 30,
    #: ``CONTAINER_MANAGER_RETENTION_DAYS``).
    JOB_RETENTION_DAYS: int | None = None
    #: Processes a job's container may run when the job sets no ``pids_limit`` (``None``: no
    #: limit). Stops a fork bomb from taking the engine host down.
    DEFAULT_PIDS_LIMIT: int | None = 4096
    #: Upper bound of a job's memory limit (MB), checked at submission.
    MAX_MEMORY_MB: int = 1024 * 1024
    #: Upper bound of a job's CPU limit (cores), checked at submission.
    MAX_CPU_CORES: float = 1024.0
    #: Upper bound of a job's timeout (seconds; 30 days), checked at submission.
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
