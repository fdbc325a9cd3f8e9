"""How a job spec becomes a Swarm service: the task's container, its resources, its network,
and the registry credentials of the one call that creates it. Used by
:class:`~container_manager.executors.swarm.SwarmExecutor`, whose ``supported_fields`` is
:data:`SUPPORTED_FIELDS`: a job asking for another field is refused at submission.

- ``entrypoint`` -> ``ContainerSpec.Command`` (the command stays ``Args``); ``user`` -> ``User``;
  ``read_only_rootfs`` -> ``ReadOnly``; ``cap_add`` / ``cap_drop`` -> ``CapabilityAdd`` /
  ``CapabilityDrop`` (API 1.41+); ``pids_limit`` -> ``Resources.Limits.Pids`` (API 1.41+).
- ``mounts`` -> ``ContainerSpec.Mounts``: volume (created by the node's engine), bind (read-only
  unless asked; the source must exist on the node), tmpfs with ``TmpfsOptions.SizeBytes``.
- ``shm_size_mb`` -> a tmpfs of that size at /dev/shm (Swarm has no ShmSize; the engine then
  mounts no /dev/shm of its own, and the tmpfs gets the same nosuid,nodev,noexec and 1777).
- ``network`` -> ``Networks: [{"Target": name}]``: a swarm-scoped (overlay) network or the
  predefined ``bridge`` / ``host``. ``"none"`` is refused (:func:`spec_refusals`); the
  ``NETWORK_MODE`` setting is a plain engine's, and ignored (:func:`swarm_network`).
- ``secret_environment`` -> environment variables (:func:`container_spec` says why).
- ``registry_credential`` -> the ``X-Registry-Auth`` header of that one create call, as
  ``docker service create --with-registry-auth`` (:func:`create_service`).

Refused: ``privileged`` (a service's ContainerSpec has no such field) and ``gpus`` (Swarm has no
device requests; its GPUs are generic resources each node's daemon declares, another model). A
requested field the engine's API version lacks is refused at launch (:func:`version_refusals`):
an older engine would ignore it without a word.

Secure defaults: an init process (``Init``, API 1.38+) and the ``DEFAULT_PIDS_LIMIT`` (API
1.41+), where the engine has them; Docker's default capability set. **no-new-privileges cannot
be applied**: API 1.41's ``ContainerSpec.Privileges`` has only ``CredentialSpec`` and
``SELinuxContext`` (the engine drops a ``NoNewPrivileges`` key without a word), so a job's
processes can gain privileges through setuid binaries of its image.
"""

from __future__ import annotations

from typing import Any

import docker
from docker.types import ContainerSpec, Mount, Resources
from docker.utils import version_gte

from ..conf import get_settings
from ..spec import SHM_PATH, JobSpec, RegistryAuth, shm_refusal
from .docker_spec import _mount

__all__ = [
    "SUPPORTED_FIELDS",
    "container_spec",
    "create_service",
    "resources",
    "spec_refusals",
    "swarm_network",
    "version_refusals",
]

#: The spec fields a service honours (the module's list); not privileged, not gpus.
SUPPORTED_FIELDS = frozenset(
    {
        "entrypoint",
        "user",
        "mounts",
        "network",
        "secret_environment",
        "registry_credential",
        "shm_size_mb",
        "pids_limit",
        "read_only_rootfs",
        "cap_add",
        "cap_drop",
    }
)
_INIT_API = "1.38"  # ContainerSpec.Init (the SDK's own minimum)
_PIDS_API = "1.41"  # Resources.Limits.Pids
#: The Engine API version from which a requested field is honoured.
_FIELD_API = {
    "read_only_rootfs": "1.28",
    "cap_add": "1.41",
    "cap_drop": "1.41",
    "pids_limit": _PIDS_API,
}


def swarm_network(spec: JobSpec) -> str | None:
    """The network the spec names, or None for the ``NETWORK_MODE`` setting: a plain
    engine's network mode (often ``"none"``), which Swarm ignores (its tasks then get the
    engine's default network)."""
    network = spec.network_mode or None
    return None if network == get_settings().NETWORK_MODE else network


def spec_refusals(spec: JobSpec) -> dict[str, str]:
    """Field -> why a value of a supported field cannot run on a swarm: network ``"none"``
    (the engine: "could not find the corresponding predefined swarm network"; without
    networks a task gets the default bridge, not no network), and ``shm_size_mb`` beside a
    mount of the job's own at /dev/shm."""
    errors: dict[str, str] = {}
    if swarm_network(spec) == "none":  # asked for by the job, not NETWORK_MODE's default
        errors["network"] = (
            "The swarm executor cannot honour network 'none': Swarm has no such network"
            " (its predefined networks are bridge and host)."
        )
    return {**errors, **shm_refusal(spec, "swarm", "a tmpfs")}


def version_refusals(spec: JobSpec, api_version: str) -> dict[str, str]:
    """Field -> why an engine speaking ``api_version`` cannot honour what the spec asks."""
    return {
        name: (
            f"The swarm executor cannot honour {name} on this engine: it needs"
            f" Engine API {_FIELD_API[name]}, the engine speaks {api_version}."
        )
        for name in sorted(spec.requested() & set(_FIELD_API))
        if not version_gte(api_version, _FIELD_API[name])
    }


def container_spec(spec: JobSpec, api_version: str) -> ContainerSpec:
    """The task's container. Secret environment values (``spec.full_environment``) are plain
    environment variables, as on a plain engine, not Swarm secrets: a Swarm secret is an
    object kept in the swarm's Raft store until someone removes it (a crashed worker would
    leave it behind), and it reaches the job as a file under /run/secrets, not as the
    variable the job asked for. Like every environment variable they are in the service's
    spec (``docker service inspect``) while the service exists."""
    return ContainerSpec(
        image=spec.image,
        command=spec.entrypoint or None,  # replaces the image's entrypoint
        args=spec.argv or None,  # the command, after the entrypoint: no shell
        env=spec.full_environment or None,
        workdir=spec.working_directory or None,
        user=spec.user or None,
        labels=spec.labels,
        mounts=_mounts(spec) or None,
        stop_grace_period=get_settings().STOP_GRACE_SECONDS * 10**9,
        read_only=spec.read_only_rootfs or None,
        init=spec.init if version_gte(api_version, _INIT_API) else None,
        cap_add=list(spec.cap_add) or None,
        cap_drop=list(spec.cap_drop) or None,
    )


def _mounts(spec: JobSpec) -> list[Mount]:
    mounts = [_mount(m) for m in spec.mounts]
    if spec.shm_size_mb:
        mounts.append(
            Mount(SHM_PATH, None, type="tmpfs", tmpfs_size=spec.shm_size_mb * 1024 * 1024)
        )
    return mounts


def resources(spec: JobSpec, api_version: str) -> Resources | None:
    """Memory, CPU and process limits (the SDK's Resources has no Pids: set here); the
    ``DEFAULT_PIDS_LIMIT`` for a job that sets none."""
    limits: dict[str, int] = {}
    if spec.cpu_limit:
        limits["cpu_limit"] = round(spec.cpu_limit * 1e9)
    if spec.memory_limit_mb:
        limits["mem_limit"] = spec.memory_limit_mb * 1024 * 1024
    result = Resources(**limits)
    pids = spec.pids_limit or get_settings().DEFAULT_PIDS_LIMIT
    if pids and version_gte(api_version, _PIDS_API):
        result.setdefault("Limits", {})["Pids"] = pids
    return result or None


class _CredentialedClient:
    """The SDK's low-level client as one call sees it: its auth configs hold one job's
    registry credentials only; anything the call sets stays on this view."""

    def __init__(self, api: docker.APIClient, auth: RegistryAuth) -> None:
        self._api = api
        self._auth_configs = docker.auth.AuthConfig(
            {"auths": {auth.registry: auth.as_auth_config()}}
        )
        self.credstore_env = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)


def create_service(api: docker.APIClient, kwargs: dict[str, Any], auth: RegistryAuth | None) -> Any:
    """``api.create_service(**kwargs)``, with the job's registry credentials (if any) in the
    ``X-Registry-Auth`` header. The SDK takes that header from the client's auth configs, and
    the client is shared by every job and thread of the worker: so the call is made on a view
    of it that holds only this job's credentials, and the client itself never holds them
    (jobs without credentials get the SDK's default: the worker's Docker config file). The
    swarm keeps them with the service and its tasks for its nodes' pulls (the API never shows
    them) until those are removed."""
    if auth is None:
        return api.create_service(**kwargs)
    return docker.api.APIClient.create_service(_CredentialedClient(api, auth), **kwargs)
