"""How the kubernetes executor reads the cluster's objects: a Job's pod (its container's
state, why it waits, whether and how it ended, what a launch makes of it), a Job as the
reaper lists it, and resource quantities. Pure functions of the API's JSON (dicts), so that
they are tested without a cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..exceptions import (
    ExecutorError,
    ImageAccessDeniedError,
    ImageUnavailableError,
    PermanentLaunchError,
)
from . import kubernetes_spec

__all__ = [
    "NO_CONTAINER_EXIT",
    "Obj",
    "Start",
    "container_status",
    "cpu",
    "entry",
    "exit_code",
    "live",
    "memory_mb",
    "newest",
    "parse_time",
    "phase",
    "pod_ended",
    "pod_error",
    "running",
    "start_state",
    "stopped",
    "terminated",
    "unschedulable",
    "waiting",
    "word",
]

Obj = dict[str, Any]

#: The exit code of a Job that ended without its container having run.
NO_CONTAINER_EXIT = 125
# Waiting reasons of a pod's container, by what they mean for a launch.
_IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"})
_PERMANENT_REASONS = frozenset({"InvalidImageName"})
_TRANSIENT_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
_START_FAILED = frozenset({"RunContainerError"})  # restartPolicy Never: it stays failed
_CANNOT_RUN = frozenset({"ContainerCannotRun", "StartError"})
# A registry's refusal, as the kubelet reports the runtime's words (cf. DockerExecutor).
_REFUSAL = re.compile(
    r"\b(?:unauthorized|denied)\b|no basic auth credentials|authentication required", re.I
)


def container_status(pod: Obj | None) -> Obj:
    """The job container's status in ``pod`` ({} before the kubelet reports one)."""
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == kubernetes_spec.CONTAINER:
            return dict(status)
    return {}


def terminated(pod: Obj | None) -> Obj:
    return dict((container_status(pod).get("state") or {}).get("terminated") or {})


def waiting(pod: Obj | None) -> Obj:
    return dict((container_status(pod).get("state") or {}).get("waiting") or {})


def running(pod: Obj | None) -> bool:
    return bool((container_status(pod).get("state") or {}).get("running"))


def phase(pod: Obj | None) -> str:
    return str(((pod or {}).get("status") or {}).get("phase") or "")


def unschedulable(pod: Obj | None) -> str:
    """The scheduler's words when the pod cannot be placed ('' otherwise)."""
    for condition in ((pod or {}).get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return f"Unschedulable: {condition.get('message') or 'no node fits'}"
    return ""


def stopped(pod: Obj | None) -> bool:
    """Whether the kubelet ended the pod for an active deadline (``activeDeadlineSeconds``,
    which a cluster's admission may set; the executor stops a pod by deleting it). The
    kubelet of 1.20 then kills the container (SIGTERM, SIGKILL after the grace period) but
    never reports it: the pod's container status stays ``running``."""
    return phase(pod) == "Failed" and ((pod or {}).get("status") or {}).get("reason") == (
        "DeadlineExceeded"
    )


def pod_ended(pod: Obj | None) -> bool:
    """Whether the pod will not run (again): its container terminated, the pod ended
    without its container running, or the kubelet stopped it (:func:`stopped`)."""
    if terminated(pod) or stopped(pod):
        return True
    return phase(pod) in {"Failed", "Succeeded"} and not running(pod)


def live(pods: list[Obj]) -> list[Obj]:
    """The pods that are not being deleted."""
    return [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]


def exit_code(pod: Obj | None) -> int:
    ended = terminated(pod)
    return int(ended.get("exitCode", NO_CONTAINER_EXIT)) if ended else NO_CONTAINER_EXIT


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def word(pod: Obj | None) -> str:
    """The container word for the pod: created, running, exited (its container ran) or dead
    (the pod ended without it)."""
    if terminated(pod):
        return "exited"
    if stopped(pod):
        return "dead"  # its container's end is not reported (:func:`stopped`)
    if running(pod):
        return "running"
    return "dead" if phase(pod) in {"Failed", "Succeeded"} else "created"


def pod_error(pod: Obj | None) -> str:
    """What the cluster says went wrong with the pod ('' for a plain exit)."""
    ended = terminated(pod)
    if ended.get("reason") not in (None, "Completed", "Error", "OOMKilled"):
        return f"{ended['reason']}: {ended.get('message') or ''}".rstrip(": ")
    status = (pod or {}).get("status") or {}
    if phase(pod) == "Failed" and status.get("reason"):
        return f"{status['reason']}: {status.get('message') or ''}".rstrip(": ")
    return ""


@dataclass(frozen=True)
class Start:
    """What a pod says of its launch: started (running or ended after running), pending, or
    failed (``error`` to raise), with the cluster's reason while it waits."""

    started: bool = False
    error: ExecutorError | None = None
    waiting: str = ""


def start_state(pod: Obj | None, image: str) -> Start:
    if pod is None:
        return Start()
    ended = terminated(pod)
    if ended.get("reason") in _CANNOT_RUN:
        return Start(error=ExecutorError(f"Start job container: {pod_error(pod)}"))
    if ended or running(pod):
        return Start(started=True)
    state = waiting(pod)
    reason, message = str(state.get("reason") or ""), str(state.get("message") or "")
    said = f"{reason}: {message}".rstrip(": ")
    if reason in _START_FAILED:
        return Start(error=ExecutorError(f"Start job container: {said}"))
    if reason in _PERMANENT_REASONS:
        return Start(error=PermanentLaunchError(f"Image {image!r}: {said}"))
    if reason in _IMAGE_REASONS:
        if _REFUSAL.search(message):
            return Start(
                error=ImageAccessDeniedError(f"Image {image!r} could not be pulled: {said}")
            )
        return Start(
            error=ImageUnavailableError(f"Image {image!r} is not available on the node: {said}")
        )
    if phase(pod) == "Failed":
        return Start(error=ExecutorError(f"The pod failed: {pod_error(pod) or 'no reason'}"))
    if reason in _TRANSIENT_REASONS:
        return Start(waiting=said)
    return Start(waiting=unschedulable(pod))


def newest(pods: list[Obj]) -> Obj | None:
    if not pods:
        return None
    return max(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))


def entry(job: Obj, pod: Obj | None) -> dict[str, Any]:
    meta, status = job.get("metadata") or {}, job.get("status") or {}
    template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = template.get("containers") or [{}]
    finished = terminated(pod).get("finishedAt") or status.get("completionTime")
    for condition in status.get("conditions") or []:
        if condition.get("type") in {"Complete", "Failed"} and condition.get("status") == "True":
            finished = finished or condition.get("lastTransitionTime")
    if pod is not None:
        said = word(pod)
    elif status.get("succeeded") or status.get("failed"):
        said = "dead"  # ended, and its pod is gone
    else:
        said = "created"
    return {
        "id": meta.get("name", ""),
        "name": meta.get("name", ""),
        "status": said,
        "labels": dict(meta.get("labels") or {}),
        "image": str(containers[0].get("image", "")),
        "finished_at": parse_time(finished),
    }


_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory_mb(quantity: str) -> int:
    for suffix, factor in _UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor) // 2**20
    return int(float(quantity)) // 2**20
