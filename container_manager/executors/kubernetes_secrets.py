"""The attempts' Secrets on the cluster (:func:`~.kubernetes_spec.secret_manifests`): made
(or replaced, for a repeated launch) before the attempt's Job, then owned by it, so that
deleting the Job deletes them; deleted by name with a Job the app removes; and, for the
reaper, those left without their Job (a worker that died between making the Secret and the
Job, or a Job deleted without its dependents), found by the app's labels only."""

from __future__ import annotations

from contextlib import suppress
from datetime import datetime

from ..exceptions import ContainerNotFoundError, ExecutorError
from . import kubernetes_pods as pod_state
from . import kubernetes_spec
from .base import Leftover
from .kubernetes_api import ClusterApi
from .kubernetes_pods import Obj

__all__ = ["delete_of", "job_of", "orphans", "own", "put"]

_SUFFIXES = (kubernetes_spec.env_secret_name(""), kubernetes_spec.pull_secret_name(""))


def put(cluster: ClusterApi, secret: Obj) -> None:
    """Create ``secret``, or replace the one a previous try of the launch made."""
    name = secret["metadata"]["name"]
    core = cluster.core
    try:
        cluster.call(
            f"Create secret {name}", core.create_namespaced_secret, cluster.namespace, secret
        )
    except ExecutorError as err:
        if err.status_code != 409:
            raise
        cluster.call(
            f"Replace secret {name}",
            core.replace_namespaced_secret,
            name,
            cluster.namespace,
            secret,
        )


def own(cluster: ClusterApi, job: Obj, secrets: list[Obj]) -> None:
    """Make the Job the owner of the attempt's Secrets: deleting it deletes them."""
    meta = job.get("metadata") or {}
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta.get("name"),
             "uid": meta.get("uid")}  # fmt: skip
    for secret in secrets:
        name = secret["metadata"]["name"]
        cluster.call(
            f"Own secret {name}",
            cluster.core.patch_namespaced_secret,
            name,
            cluster.namespace,
            {"metadata": {"ownerReferences": [owner]}},
        )


def delete_of(cluster: ClusterApi, job_name: str) -> None:
    """Delete the Secrets of the Job ``job_name`` (should the Job never have owned them)."""
    for suffix in _SUFFIXES:
        delete(cluster, f"{job_name}{suffix}")


def delete(cluster: ClusterApi, name: str) -> None:
    with suppress(ContainerNotFoundError):
        cluster.call(
            f"Delete secret {name}", cluster.core.delete_namespaced_secret, name, cluster.namespace
        )


def job_of(secret_name: str) -> str:
    """The name of the Job an attempt's Secret belongs to ('' for another Secret)."""
    for suffix in _SUFFIXES:
        if secret_name.endswith(suffix) and len(secret_name) > len(suffix):
            return secret_name.removesuffix(suffix)
    return ""


def orphans(cluster: ClusterApi, selector: str, made_before: datetime) -> list[Leftover]:
    """The attempts' Secrets (labelled by ``selector``: the app's) whose Job does not exist,
    made before ``made_before``. The Secrets are listed before the Jobs, so that a launch
    making its Secret and then its Job meanwhile is seen with its Job."""
    secrets = cluster.call(
        "List secrets",
        cluster.core.list_namespaced_secret,
        cluster.namespace,
        label_selector=selector,
    )
    jobs = cluster.call(
        "List jobs", cluster.batch.list_namespaced_job, cluster.namespace, label_selector=selector
    )
    alive = {str((j.get("metadata") or {}).get("name")) for j in jobs.get("items") or []}
    found: list[Leftover] = []
    for secret in secrets.get("items") or []:
        meta = secret.get("metadata") or {}
        name = str(meta.get("name") or "")
        job = job_of(name)
        made = pod_state.parse_time(meta.get("creationTimestamp"))
        if job and job not in alive and made is not None and made < made_before:
            found.append(Leftover(name, f"orphan secret: its job {job} does not exist"))
    return found
