"""How the kubernetes executor stops a running job (a timeout, a cancellation): the Job is
told to make no more pods (``parallelism: 0``: the Job controller of 1.20 would otherwise
replace a deleted pod, which does not count as failed), and the pod is deleted with the
grace period asked for: the kubelet sends SIGTERM, then SIGKILL after the grace period.

A deleted pod takes its log with it, so the log is followed from before the deletion to the
container's end; and the container's terminated state (exit code: 143 after SIGTERM, 137
after SIGKILL) is read from the pod's last states, watched from before the deletion up to its
removal: the kubelet reports the killed container before it lets the pod go, when it does.
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from ..exceptions import ContainerNotFoundError, ExecutorError
from . import kubernetes_pods as pod_state
from .kubernetes_api import ClusterApi, chunks, release
from .kubernetes_logs import untimed
from .kubernetes_pods import Obj

__all__ = ["SETTLE_SECONDS", "Stopped", "stop"]

#: How long a stopped pod may take to report its end, beyond the grace period.
SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class Stopped:
    """What a stop kept of the pod: its last state the cluster reported, and its output."""

    pod: Obj
    output: bytes

    @property
    def state_word(self) -> str:
        """exited (its container's end is reported), or dead (it is not)."""
        return "exited" if pod_state.terminated(self.pod) else "dead"


def stop(cluster: ClusterApi, job: str, pod: Obj, version: str, grace: int) -> Stopped:
    """Stop ``pod`` of the Job ``job`` (listed at ``version``) with ``grace`` seconds."""
    name = pod["metadata"]["name"]
    log = _follow(cluster, name, grace)
    try:
        cluster.call(
            f"Stop job {job} making pods",
            cluster.batch.patch_namespaced_job,
            job,
            cluster.namespace,
            {"spec": {"parallelism": 0}},
        )
        with suppress(ContainerNotFoundError):  # the kubelet let it go already
            cluster.call(
                f"Delete pod {name} of job {job}",
                cluster.core.delete_namespaced_pod,
                name,
                cluster.namespace,
                grace_period_seconds=grace,
            )
    except ExecutorError:
        if log is not None:
            release(log)
        raise
    output = _read(cluster, log, job) if log is not None else b""
    return Stopped(_last_state(cluster, job, pod, version, grace + SETTLE_SECONDS), output)


def _follow(cluster: ClusterApi, pod_name: str, grace: int) -> Any:
    """The pod's log, followed from its start (None when it cannot be read)."""
    try:
        with cluster.translating(f"Follow the output of pod {pod_name}"):
            return cluster.log(pod_name, follow=True, idle=grace + SETTLE_SECONDS, timestamps=True)
    except ExecutorError:
        return None


def _read(cluster: ClusterApi, response: Any, job: str) -> bytes:
    """What the followed log sends until the container's end (what came, should it fail)."""
    read: list[bytes] = []
    try:
        with cluster.translating(f"Read the output of job {job}"):
            read.extend(untimed(chunks(response)))
    except ExecutorError:
        pass
    finally:
        release(response)
    return b"".join(read)


def _last_state(cluster: ClusterApi, job: str, pod: Obj, version: str, seconds: float) -> Obj:
    """The pod's state once its container is reported terminated, or its last state before
    it went (or after ``seconds``), watched from ``version``."""
    name = pod["metadata"]["name"]
    deadline = time.monotonic() + seconds
    last = pod
    while (left := deadline - time.monotonic()) > 0 and not pod_state.terminated(last):
        for kind, seen in cluster.events(job, version, min(left, 30.0)):
            if kind == "ERROR":  # expired: list again
                pods, version = cluster.job_pods(job)
                same = [p for p in pods if p["metadata"]["name"] == name]
                if not same:
                    return last
                last = same[0]
                break
            if (seen.get("metadata") or {}).get("name") != name:
                continue
            version = str(seen["metadata"].get("resourceVersion") or version)
            last = seen
            if kind == "DELETED" or pod_state.terminated(seen):
                return last
    return last
