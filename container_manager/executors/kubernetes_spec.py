"""How a job spec becomes Kubernetes objects: one ``batch/v1`` Job per attempt, its pod's one
container, and the attempt's Secrets. Plain dicts (what the API takes as JSON), so that this
module imports no client. Used by
:class:`~container_manager.executors.kubernetes.KubernetesExecutor`, whose
``supported_fields`` is :data:`SUPPORTED_FIELDS`: a job asking for another field is refused
at submission, naming it.

- The Job: named after the attempt (``cm-<job>-<attempt>``), the app's labels on it and on
  its pod, ``backoffLimit: 0`` and ``restartPolicy: Never`` (the app owns retries),
  ``ttlSecondsAfterFinished`` where the cluster honours it (1.21+; 1.20 drops the field),
  ``terminationGracePeriodSeconds`` from ``STOP_GRACE_SECONDS``, no service-account token
  (a job gets no credentials for the cluster), no service links.
- ``image`` -> ``image``; ``imagePullPolicy`` ``IfNotPresent`` (``Never`` when the host does
  not pull images); ``entrypoint`` -> ``command``; ``argv`` -> ``args``; ``environment`` ->
  ``env``; ``working_directory`` -> ``workingDir``.
- ``memory_limit_mb`` / ``cpu_limit`` -> ``resources.limits`` and the same ``requests`` (the
  scheduler places by requests); ``gpus`` -> ``nvidia.com/gpu`` limits.
- ``user`` -> ``securityContext.runAsUser`` / ``runAsGroup``; ``read_only_rootfs`` ->
  ``readOnlyRootFilesystem``; ``cap_add`` / ``cap_drop`` -> ``capabilities``; ``privileged``;
  the secure default no-new-privileges -> ``allowPrivilegeEscalation: false``.
- ``mounts``: ``volume:NAME`` -> the PersistentVolumeClaim ``NAME`` of the namespace;
  ``tmpfs`` -> an ``emptyDir`` in memory with its ``sizeLimit``; ``shm_size_mb`` -> the same
  at /dev/shm. ``bind`` is refused (a node's paths are not the worker's).
- ``secret_environment`` -> a Secret per attempt (``<job name>-env``, owned by the Job, so
  that deleting the Job deletes it), read by ``env[].valueFrom.secretKeyRef``: the values are
  never in the Job's or the pod's spec.
- ``registry_credential`` -> a ``kubernetes.io/dockerconfigjson`` Secret per attempt
  (``<job name>-pull``, owned by the Job) named in ``imagePullSecrets``.
- ``placement_constraints`` (the job's required labels) -> ``nodeSelector``.

Refused: a ``network`` other than the operator's ``NETWORK_MODE`` default (a pod has the
cluster's network; NetworkPolicies are the cluster's business), ``pids_limit`` (a kubelet
setting, not a pod's), bind mounts. The secure default of an init process has no Kubernetes
field: PID 1 is the job's own process.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..conf import get_settings
from ..spec import SHM_PATH, JobSpec, parse_user, shm_refusal

__all__ = [
    "CONTAINER",
    "SUPPORTED_FIELDS",
    "TTL_AFTER_FINISHED",
    "env_secret_name",
    "job_manifest",
    "node_selector",
    "pull_secret_name",
    "secret_manifests",
    "spec_refusals",
]

#: The spec fields a Job honours (the module's list); ``network`` only as the operator's
#: default (:func:`spec_refusals`).
SUPPORTED_FIELDS = frozenset(
    {
        "entrypoint",
        "network",
        "user",
        "mounts",
        "secret_environment",
        "registry_credential",
        "gpus",
        "shm_size_mb",
        "read_only_rootfs",
        "cap_add",
        "cap_drop",
        "privileged",
    }
)
#: The name of the job's container in its pod.
CONTAINER = "job"
#: Seconds the cluster keeps a finished Job the app has not removed (a worker that never came
#: back): the app removes it after harvesting.
TTL_AFTER_FINISHED = 24 * 3600
_GPU = "nvidia.com/gpu"


def env_secret_name(job_name: str) -> str:
    return f"{job_name}-env"


def pull_secret_name(job_name: str) -> str:
    return f"{job_name}-pull"


def spec_refusals(spec: JobSpec) -> dict[str, str]:
    """Field -> why a value of a supported field cannot run on a cluster: a network other
    than the ``NETWORK_MODE`` default (a plain engine's, which a pod ignores), a bind mount,
    and ``shm_size_mb`` beside a mount of the job's own at /dev/shm."""
    errors: dict[str, str] = {}
    network = spec.network_mode
    if network and network != get_settings().NETWORK_MODE:
        errors["network"] = (
            f"The kubernetes executor cannot honour network {network!r}: a pod has the"
            " cluster's network (its NetworkPolicies decide what it reaches)."
        )
    if any(m.type == "bind" for m in spec.mounts):
        errors["mounts"] = (
            "The kubernetes executor cannot honour bind mounts: a node's paths are not the"
            " worker's; use a volume (a PersistentVolumeClaim of the namespace) or tmpfs."
        )
    return {**errors, **shm_refusal(spec, "kubernetes", "a memory volume")}


def node_selector(constraints: list[str]) -> dict[str, str]:
    """``["gpu=true", "region=eu"]`` (or Swarm's ``node.labels.region==eu``) -> a nodeSelector."""
    selector: dict[str, str] = {}
    for item in constraints:
        name, sep, value = item.replace("==", "=").partition("=")
        selector[name.strip().removeprefix("node.labels.")] = value.strip() if sep else "true"
    return selector


def _resources(spec: JobSpec) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if spec.memory_limit_mb:
        limits["memory"] = f"{spec.memory_limit_mb}Mi"
    if spec.cpu_limit:
        limits["cpu"] = f"{round(spec.cpu_limit * 1000)}m"
    if spec.gpus:
        limits[_GPU] = str(spec.gpus)
    if not limits:
        return {}
    requests = {k: v for k, v in limits.items() if k != _GPU}
    return {"limits": limits, **({"requests": requests} if requests else {})}


def _security_context(spec: JobSpec) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if (user := parse_user(spec.user)) is not None:
        uid, gid = user
        context["runAsUser"] = uid
        if gid is not None:
            context["runAsGroup"] = gid
    if spec.read_only_rootfs:
        context["readOnlyRootFilesystem"] = True
    if spec.cap_add or spec.cap_drop:
        context["capabilities"] = {
            key: list(names)
            for key, names in (("add", spec.cap_add), ("drop", spec.cap_drop))
            if names
        }
    if spec.privileged:
        context["privileged"] = True  # the API refuses allowPrivilegeEscalation false with it
    elif spec.no_new_privileges:
        context["allowPrivilegeEscalation"] = False
    return context


def _env(spec: JobSpec, job_name: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": name, "value": value} for name, value in spec.environment.items()
    ]
    secret = env_secret_name(job_name)
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name}}}
        for name in sorted(spec.secrets)
    ]
    return env


def _volumes(spec: JobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the container's volumeMounts."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for index, mount in enumerate(spec.mounts):
        name = f"m{index}"
        if mount.type == "volume":
            volumes.append(
                {
                    "name": name,
                    "persistentVolumeClaim": {
                        "claimName": mount.source,
                        "readOnly": mount.read_only,
                    },
                }
            )
        else:  # tmpfs (bind is refused before anything is built)
            volumes.append(
                {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": f"{mount.size_mb}Mi"}}
            )
        mounts.append({"name": name, "mountPath": mount.target, "readOnly": mount.read_only})
    if spec.shm_size_mb:
        volumes.append(
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{spec.shm_size_mb}Mi"}}
        )
        mounts.append({"name": "shm", "mountPath": SHM_PATH})
    return volumes, mounts


def _container(spec: JobSpec, job_name: str) -> dict[str, Any]:
    volumes_mounts = _volumes(spec)[1]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent" if spec.auto_pull else "Never",
    }
    optional = {
        "command": list(spec.entrypoint),
        "args": list(spec.argv),
        "env": _env(spec, job_name),
        "workingDir": spec.working_directory,
        "resources": _resources(spec),
        "securityContext": _security_context(spec),
        "volumeMounts": volumes_mounts,
    }
    container.update({key: value for key, value in optional.items() if value})
    return container


def job_manifest(spec: JobSpec, *, ttl: bool) -> dict[str, Any]:
    """The attempt's ``batch/v1`` Job; ``ttl``: the cluster honours ttlSecondsAfterFinished."""
    name = spec.name
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "containers": [_container(spec, name)],
        "terminationGracePeriodSeconds": get_settings().STOP_GRACE_SECONDS,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
    }
    volumes = _volumes(spec)[0]
    if volumes:
        pod_spec["volumes"] = volumes
    if selector := node_selector(spec.placement_constraints):
        pod_spec["nodeSelector"] = selector
    if spec.registry_auth is not None:
        pod_spec["imagePullSecrets"] = [{"name": pull_secret_name(name)}]
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "completions": 1,
        "parallelism": 1,
        "template": {"metadata": {"labels": spec.labels}, "spec": pod_spec},
    }
    if ttl:
        job_spec["ttlSecondsAfterFinished"] = TTL_AFTER_FINISHED
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": spec.labels},
        "spec": job_spec,
    }


def _docker_config(spec: JobSpec) -> str:
    auth = spec.registry_auth
    assert auth is not None
    token = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
    config = {
        "auths": {
            auth.registry: {"username": auth.username, "password": auth.password, "auth": token}
        }
    }
    return json.dumps(config)


def secret_manifests(spec: JobSpec) -> list[dict[str, Any]]:
    """The attempt's Secrets (its secret environment, its registry credential), labelled as
    the Job; the executor makes the Job their owner once it exists."""
    secrets: list[dict[str, Any]] = []
    if spec.secrets:
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": env_secret_name(spec.name), "labels": spec.labels},
                "type": "Opaque",
                "stringData": dict(spec.secrets),
            }
        )
    if spec.registry_auth is not None:
        secrets.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": pull_secret_name(spec.name), "labels": spec.labels},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": _docker_config(spec)},
            }
        )
    return secrets
