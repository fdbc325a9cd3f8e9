"""Host policy: what a job may ask for on a host, and what the host's executor can honour.

Pure checks over a :class:`~container_manager.spec.JobSpec` and an ``ExecutorHost``; used
when a job that names its host is validated, and by placement for jobs that name none.
Messages name the field and the host, never a secret value.
"""

from __future__ import annotations

from .conf import get_settings
from .exceptions import ConfigurationError, InvalidJobError
from .executors import executor_class
from .spec import JobSpec, PolicyHost, parse_capabilities, parse_user

__all__ = ["refusal_text", "refusals"]


def refusals(spec: JobSpec, host: PolicyHost) -> dict[str, str]:
    """Field -> why ``host`` cannot run ``spec`` (empty when it can)."""
    try:
        executor = executor_class(host.executor_type)
    except ConfigurationError as err:
        return {"docker_host": str(err)}
    errors = {
        name: f"The {host.executor_type} executor (host {host.name}) cannot honour {name}."
        for name in sorted(spec.requested() - executor.supported_fields)
    }
    errors.update({k: v for k, v in executor.spec_refusals(spec).items() if k not in errors})
    for name, check in _CHECKS.items():
        if name not in errors and (problem := check(spec, host)):
            errors[name] = problem
    return errors


def refusal_text(errors: dict[str, str]) -> str:
    """One line for a waiting reason: ``field: problem; ...``."""
    return "; ".join(f"{name}: {problem}" for name, problem in sorted(errors.items()))


def _user(spec: JobSpec, host: PolicyHost) -> str:
    try:
        ids = parse_user(spec.user)
    except InvalidJobError as err:
        return f"{err}."
    if ids is not None and ids[0] == 0 and not host.allow_root:
        return f"Host {host.name} does not allow jobs to run as root (user 0)."
    return ""


def _mounts(spec: JobSpec, host: PolicyHost) -> str:
    binds = [m for m in spec.mounts if m.type == "bind"]
    if binds and not host.allowed_bind_prefixes:
        return f"Host {host.name} allows no bind mounts."
    if any(not host.allows_bind(m.source) for m in binds):
        allowed = ", ".join(host.allowed_bind_prefixes)
        return f"Host {host.name} allows bind mounts only under: {allowed}."
    return ""


def _network(spec: JobSpec, host: PolicyHost) -> str:
    network = spec.network_mode
    if not network or network == get_settings().NETWORK_MODE or host.allows_network(network):
        return ""
    allowed = ", ".join(["none", *host.allowed_networks]) if host.allowed_networks else "none"
    return f"Host {host.name} does not allow that network (allowed: {allowed})."


def _cap_add(spec: JobSpec, host: PolicyHost) -> str:
    extra = set(spec.cap_add) - set(parse_capabilities(host.allowed_capabilities))
    if extra:
        return (
            f"Host {host.name} does not allow adding {', '.join(sorted(extra))}"
            f" (allowed: {', '.join(host.allowed_capabilities) or 'none'})."
        )
    return ""


def _privileged(spec: JobSpec, host: PolicyHost) -> str:
    if spec.privileged and not host.allow_privileged:
        return f"Host {host.name} does not allow privileged jobs."
    return ""


def _gpus(spec: JobSpec, host: PolicyHost) -> str:
    if spec.gpus and spec.gpus > host.gpus:
        have = f"declares {host.gpus} GPUs" if host.gpus else "declares no GPUs"
        return f"Host {host.name} {have}."
    return ""


def _cpu(spec: JobSpec, host: PolicyHost) -> str:
    if spec.cpu_limit and host.cpu_capacity and spec.cpu_limit > host.cpu_capacity:
        return f"Host {host.name} has {host.cpu_capacity:g} CPUs."
    return ""


def _memory(spec: JobSpec, host: PolicyHost) -> str:
    capacity = host.memory_capacity_mb
    if spec.memory_limit_mb and capacity and spec.memory_limit_mb > capacity:
        return f"Host {host.name} has {capacity} MB of memory."
    return ""


_CHECKS = {
    "user": _user,
    "mounts": _mounts,
    "network": _network,
    "cap_add": _cap_add,
    "privileged": _privileged,
    "gpus": _gpus,
    "cpu_limit": _cpu,
    "memory_limit": _memory,
}
