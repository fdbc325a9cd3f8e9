"""The container spec as text, for ``manage.py container_job show`` and the admin.

Secrets appear as names and references (``TOKEN -> env:API_TOKEN``), credentials by
name, registry and username: nothing here ever resolves a reference.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .spec import JobSpec

if TYPE_CHECKING:
    from .models import ContainerJob, ExecutorHost, RegistryCredential

__all__ = [
    "MERGED_NOTE",
    "credential_text",
    "host_capacity_text",
    "host_policy_rows",
    "job_spec_rows",
    "mount_text",
    "recorded_spec_text",
    "secrets_text",
]


#: What the admin and the command line say of a job whose engine merged its output streams.
MERGED_NOTE = (
    "stdout and stderr were merged by the engine (Kubernetes keeps one stream): all of the"
    " output is in stdout"
)


def mount_text(mount: Mapping[str, Any] | str) -> str:
    """A stored mount in the string form ``--mount`` accepts (``bind:/srv/in:/in:ro``)."""
    if isinstance(mount, str):
        return mount
    kind, target = mount.get("type", "?"), mount.get("target", "?")
    if kind == "tmpfs":
        return f"tmpfs:{target}:{mount.get('size_mb', '?')}"
    mode = "ro" if mount.get("read_only", kind == "bind") else "rw"
    return f"{kind}:{mount.get('source', '?')}:{target}:{mode}"


def secrets_text(secrets: Mapping[str, str] | object) -> list[str]:
    """``NAME -> reference`` lines of a job's secret environment (references, not values)."""
    if not isinstance(secrets, Mapping):
        return ["(not a mapping of names to references)"]
    return [f"{name} -> {reference}" for name, reference in sorted(secrets.items())]


def credential_text(credential: RegistryCredential) -> str:
    """``name (username@registry)``: never the password or its reference's value."""
    return f"{credential.name} ({credential.username}@{credential.registry})"


def _words(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def job_spec_rows(job: ContainerJob) -> list[tuple[str, str]]:
    """(label, text) of the container-spec fields the job sets, in submission order."""
    mounts = job.mounts if isinstance(job.mounts, list) else []
    rows: list[tuple[str, object]] = [
        ("Entrypoint", json.dumps(job.entrypoint) if job.entrypoint else ""),
        ("User", job.user),
        ("Mounts", "; ".join(mount_text(m) for m in mounts)),
        ("Network", job.network),
        ("Secrets", "; ".join(secrets_text(job.secret_environment or {}))),
        ("Registry", credential_text(job.registry_credential) if job.registry_credential else ""),
        ("GPUs", job.gpus),
        ("/dev/shm", f"{job.shm_size_mb} MB" if job.shm_size_mb else ""),
        ("Pids limit", job.pids_limit),
        ("Root fs", "read-only" if job.read_only_rootfs else ""),
        ("Cap add", _words(job.cap_add or [])),
        ("Cap drop", _words(job.cap_drop or [])),
        ("Privileged", "yes" if job.privileged else ""),
    ]
    return [(label, str(value)) for label, value in rows if value]


def _recorded_value(key: str, value: Any) -> str:
    if key == "argv" or key == "entrypoint":
        return shlex.join(str(v) for v in value)
    if key == "mounts":
        return ", ".join(mount_text(m) for m in value)
    return _words(value)


_RECORD_ORDER = tuple(JobSpec(job_id="", attempt=0, image="").describe())


def recorded_spec_text(spec: Mapping[str, Any] | object) -> str:
    """One line of what an attempt ran with (its ``JobAttempt.spec``): the values that are
    set, as ``key=value; ...``, true flags by name. Secrets are names there already."""
    if not isinstance(spec, Mapping) or not spec:
        return "(not recorded)"
    parts = []
    # In describe()'s order: a JSON column's keys come back in another (PostgreSQL's jsonb
    # sorts them), and the line must read the same on every database.
    known = [key for key in _RECORD_ORDER if key in spec]
    for key in known + sorted(set(spec) - set(known)):
        value = spec[key]
        if value is True:
            parts.append(key)
        elif value not in (None, "", False, [], {}):
            parts.append(f"{key}={_recorded_value(key, value)}")
    return "; ".join(parts)


def host_policy_rows(host: ExecutorHost) -> list[tuple[str, str]]:
    """(label, text) of what jobs may ask for on ``host``."""
    return [
        ("Bind prefixes", _words(host.allowed_bind_prefixes or []) or "none (binds refused)"),
        ("Networks", _words(["none", *(host.allowed_networks or [])])),
        ("Default net", host.default_network or "(the NETWORK_MODE setting)"),
        ("Root user", "allowed" if host.allow_root else "refused"),
        ("Privileged", "allowed" if host.allow_privileged else "refused"),
        ("Capabilities", _words(host.allowed_capabilities or []) or "none beyond the defaults"),
        ("GPUs", str(host.gpus)),
    ]


def host_capacity_text(host: ExecutorHost) -> str:
    """The engine's CPUs and memory as last read by a health check."""
    if host.cpu_capacity is None and host.memory_capacity_mb is None:
        return "unknown (not read yet: run a health check)"
    cpus = "?" if host.cpu_capacity is None else f"{host.cpu_capacity:g}"
    memory = "?" if host.memory_capacity_mb is None else str(host.memory_capacity_mb)
    return f"{cpus} CPUs, {memory} MB memory"
