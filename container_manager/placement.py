"""Placement: which host an open job (one that names no host) goes to, and why.

A host fits when it is active, healthy, has room under ``max_concurrent_jobs`` (counted
across all workers), carries every label the job requires (``executor=<alias>`` is an
implicit label) and its executor enforces resource limits when the job sets some. Among
fitting hosts the least loaded relative to its ``weight`` wins. Pure functions over plain
data; the queue does the reading and writing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HostRoom", "OpenJob", "choose_host", "missing_labels"]


@dataclass
class HostRoom:
    """A host as placement sees it during one claim."""

    pk: int
    name: str
    labels: dict[str, str]
    weight: int
    capacity: int
    busy: int
    supports_limits: bool = True
    host: Any = None  # the ExecutorHost row, for the queue

    @property
    def free(self) -> int:
        return self.capacity - self.busy

    def load(self) -> float:
        return (self.busy + 1) / self.weight

    def describe(self) -> str:
        return f"{self.name} ({self.busy}/{self.capacity}, weight {self.weight})"


@dataclass(frozen=True)
class OpenJob:
    """What placement needs to know of a job."""

    required: dict[str, str] = field(default_factory=dict)
    needs_limits: bool = False
    #: Why a host (its ``host`` row) refuses the job by its policy: '' when it does not.
    refused_by: Callable[[Any], str] | None = None


def missing_labels(required: dict[str, str], labels: dict[str, str]) -> list[str]:
    """The required ``name=value`` pairs ``labels`` lacks."""
    return [f"{k}={v}" for k, v in required.items() if str(labels.get(k)) != str(v)]


def _label_text(required: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(required.items())) or "none"


def choose_host(job: OpenJob, hosts: list[HostRoom]) -> tuple[HostRoom | None, str]:
    """The host ``job`` goes to now, or None, with the reason either way."""
    fitting = [
        h
        for h in hosts
        if not missing_labels(job.required, h.labels)
        and (h.supports_limits or not job.needs_limits)
    ]
    refused = {h.name: job.refused_by(h.host) for h in fitting} if job.refused_by else {}
    fitting = [h for h in fitting if not refused.get(h.name)]
    if not fitting:
        policy = "".join(f"; {name} refuses it: {why}" for name, why in refused.items() if why)
        return None, (
            f"Waiting: no active, healthy host fits (labels required: {_label_text(job.required)}"
            f"{'; needs resource limits' if job.needs_limits else ''}{policy})."
        )
    with_room = [h for h in fitting if h.free > 0]
    if not with_room:
        full = ", ".join(h.describe() for h in fitting)
        return None, f"Waiting: every fitting host is full: {full}."
    chosen = min(with_room, key=lambda h: (h.load(), -h.weight, h.name))
    others = ", ".join(h.describe() for h in with_room)
    return chosen, (
        f"Placed on {chosen.name}: least loaded by weight among {others}; "
        f"labels required: {_label_text(job.required)}."
    )
