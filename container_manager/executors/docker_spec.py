"""The job spec as a Docker container: the ``containers.create`` arguments of a
:class:`~container_manager.spec.JobSpec`, with the secure defaults every job gets."""

from __future__ import annotations

from typing import Any

import docker

from ..conf import get_settings
from ..spec import JobSpec, Mount

__all__ = ["create_kwargs", "engine_log_config"]

_CPU_PERIOD = 100_000  # microseconds; cpu_quota = cores * period


def create_kwargs(spec: JobSpec) -> dict[str, Any]:
    """The ``containers.create`` arguments of the spec's container."""
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "command": spec.argv or None,
        "name": spec.name,
        "labels": spec.labels,
        "environment": spec.full_environment,
        "working_dir": spec.working_directory or None,
        "detach": True,
        **_hardening(spec),
    }
    if spec.entrypoint:
        kwargs["entrypoint"] = spec.entrypoint
    if spec.user:
        kwargs["user"] = spec.user
    if spec.network_mode:
        kwargs["network_mode"] = spec.network_mode
    if spec.mounts:
        kwargs["mounts"] = [_mount(m) for m in spec.mounts]
    if spec.memory_limit_mb:
        kwargs["mem_limit"] = f"{spec.memory_limit_mb}m"
        kwargs["memswap_limit"] = f"{spec.memory_limit_mb}m"  # no swap: the limit is real
    if spec.cpu_limit:
        kwargs["cpu_period"] = _CPU_PERIOD
        kwargs["cpu_quota"] = int(spec.cpu_limit * _CPU_PERIOD)
    if spec.shm_size_mb:
        kwargs["shm_size"] = f"{spec.shm_size_mb}m"
    if spec.gpus:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])
        ]
    return kwargs


def _hardening(spec: JobSpec) -> dict[str, Any]:
    """The secure defaults and their exceptions: no new privileges, an init process, a
    process limit, Docker's default capabilities adjusted by the job, root filesystem."""
    pids = spec.pids_limit or get_settings().DEFAULT_PIDS_LIMIT
    kwargs: dict[str, Any] = {
        "init": spec.init,
        "security_opt": ["no-new-privileges:true"] if spec.no_new_privileges else [],
        "privileged": spec.privileged,
        "read_only": spec.read_only_rootfs,
    }
    if pids:
        kwargs["pids_limit"] = pids
    if spec.cap_add:
        kwargs["cap_add"] = list(spec.cap_add)
    if spec.cap_drop:
        kwargs["cap_drop"] = list(spec.cap_drop)
    if log_config := engine_log_config():
        kwargs["log_config"] = log_config
    return kwargs


def engine_log_config() -> docker.types.LogConfig | None:
    """The capped json-file log of a job's container (ENGINE_LOG_MAX_BYTES), or None."""
    cap = get_settings().ENGINE_LOG_MAX_BYTES
    if not cap:
        return None
    size = max(cap // 2, 1024)
    return docker.types.LogConfig(type="json-file", config={"max-size": str(size), "max-file": "2"})


def _mount(mount: Mount) -> docker.types.Mount:
    """The engine's mount. A tmpfs keeps its ``read_only`` too: the engine honours it."""
    if mount.type == "tmpfs":
        size = (mount.size_mb or 0) * 1024 * 1024
        return docker.types.Mount(
            mount.target, None, type="tmpfs", read_only=mount.read_only, tmpfs_size=size
        )
    return docker.types.Mount(
        mount.target, mount.source, type=mount.type, read_only=mount.read_only
    )
