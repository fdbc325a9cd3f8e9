"""The reaper: remove containers the app no longer needs, and prune old job rows.

Only containers carrying the app's labels are considered (the executor's
``list_containers`` scopes by ``container_manager.managed`` and every ``CONTAINER_LABELS``
label); of those, a container is removed when

- its job ended (a terminal status) before the cut-off: **finished**;
- its job is unknown to the database: **orphan**;
- its job ended but the container still runs (a stop that never took): **orphan**;
- it belongs to an attempt that is not the job's current one (while the job waits, a worker
  holds it, or after it ended: e.g. an attempt declared lost on a host that came back):
  **stale attempt** (it is never counted as a run).

The container of a job that a worker holds in its current attempt is never removed. The
containers are listed before the jobs are read, so a container that appears meanwhile is
simply not seen until the next run.

Then what an executor made beside its containers and no container needs any more, made
before the cut-off (:meth:`~container_manager.executors.base.BaseExecutor.leftovers`: a
cluster's per-attempt Secret whose Job is gone) is removed too: **leftover**.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from .exceptions import ContainerManagerError
from .executors import get_executor
from .executors.base import LABEL_ATTEMPT, LABEL_JOB, LABEL_MANAGED, BaseExecutor
from .models import ContainerJob, ExecutorHost, JobStatus
from .retention import prune_jobs

__all__ = ["Removal", "prune_jobs", "reap"]  # prune_jobs: retention.py's

log = logging.getLogger("container_manager.reaper")

_RUNNING = frozenset({"running", "restarting", "paused"})


@dataclass(frozen=True)
class Removal:
    """A container the reaper removed (or, in a dry run, would remove), and why."""

    host: str
    container_id: str
    name: str
    reason: str


@dataclass(frozen=True)
class _JobView:
    status: str
    attempt: int
    completed_at: datetime | None


def _job_id(labels: dict[str, str]) -> str | None:
    """The job id of a container's labels, normalised; None when it is not a UUID."""
    try:
        return str(uuid.UUID(labels.get(LABEL_JOB, "")))
    except ValueError:
        return None


def _jobs(containers: Iterable[dict[str, Any]]) -> dict[str, _JobView]:
    ids = {job_id for c in containers if (job_id := _job_id(c["labels"]))}
    rows = ContainerJob.objects.filter(pk__in=ids).values_list(
        "pk", "status", "attempt_count", "completed_at"
    )
    return {str(pk): _JobView(status, attempt, done) for pk, status, attempt, done in rows}


def _attempt(labels: dict[str, str]) -> int | None:
    try:
        return int(labels.get(LABEL_ATTEMPT, ""))
    except ValueError:
        return None


def _reason(container: dict[str, Any], jobs: dict[str, _JobView], cutoff: datetime) -> str | None:
    """Why ``container`` should go, or None to keep it."""
    labels = container["labels"]
    if labels.get(LABEL_MANAGED) != "true" or LABEL_JOB not in labels:
        return None  # not ours: never touched
    job_id = _job_id(labels)
    job = jobs.get(job_id) if job_id else None
    if job is None:
        return "orphan: its job is unknown to the database"
    attempt = _attempt(labels)
    if job.status in JobStatus.terminal():
        if attempt is not None and attempt != job.attempt:
            return f"stale attempt: attempt {attempt}, the job ended in attempt {job.attempt}"
        if job.completed_at is None or job.completed_at < cutoff:
            return f"finished: job {job.status} before the cut-off"
        if container.get("status") in _RUNNING:
            return f"orphan: job {job.status} but its container still runs"
        return None
    if attempt is None:
        return None  # cannot tell which attempt: keep it
    if job.status == JobStatus.QUEUED and attempt <= job.attempt:
        return f"stale attempt: attempt {attempt} of a waiting job"
    if job.status in JobStatus.active() and attempt != job.attempt:
        return f"stale attempt: attempt {attempt}, the job is in attempt {job.attempt}"
    return None


def _reap_host(host: ExecutorHost, cutoff: datetime, dry_run: bool) -> list[Removal]:
    executor = get_executor(host)
    try:
        containers = executor.list_containers()
    except ContainerManagerError as err:
        log.warning("reaper host=%s cannot list containers: %s", host.name, err)
        return []
    jobs = _jobs(containers)
    removed: list[Removal] = []
    for container in containers:
        reason = _reason(container, jobs, cutoff)
        if reason is None:
            continue
        if not dry_run:
            try:
                executor.cleanup(container["id"])
            except ContainerManagerError as err:
                log.warning(
                    "reaper host=%s container=%s not removed: %s",
                    host.name,
                    container["id"][:12],
                    err,
                )
                continue
        removed.append(_removed(host, container["id"], container.get("name", ""), reason, dry_run))
    return removed + _reap_leftovers(host, executor, cutoff, dry_run)


def _reap_leftovers(
    host: ExecutorHost, executor: BaseExecutor, cutoff: datetime, dry_run: bool
) -> list[Removal]:
    try:
        leftovers = executor.leftovers(cutoff)
    except ContainerManagerError as err:
        log.warning("reaper host=%s cannot list what its containers left: %s", host.name, err)
        return []
    removed: list[Removal] = []
    for leftover in leftovers:
        if not dry_run:
            try:
                executor.remove_leftover(leftover.id)
            except ContainerManagerError as err:
                log.warning("reaper host=%s %s not removed: %s", host.name, leftover.id, err)
                continue
        removed.append(_removed(host, leftover.id, leftover.id, leftover.reason, dry_run))
    return removed


def _removed(host: ExecutorHost, what: str, name: str, reason: str, dry_run: bool) -> Removal:
    removal = Removal(host.name, what, name, reason)
    log.info(
        "reaper host=%s container=%s name=%s %s%s",
        host.name,
        removal.container_id[:12],
        removal.name,
        "would remove: " if dry_run else "removed: ",
        reason,
    )
    return removal


def reap(
    *,
    older_than: timedelta,
    dry_run: bool = False,
    hosts: Sequence[ExecutorHost] | None = None,
) -> list[Removal]:
    """Remove, on each host (default: every active host), the app's containers that are no
    longer needed (see the module's docstring); returns what was (or would be) removed.

    ``older_than`` is how long a finished job's container is kept after the job ended. An
    engine that cannot be reached is logged and skipped; the other hosts are still reaped.
    """
    cutoff = timezone.now() - older_than
    targets = (
        list(hosts) if hosts is not None else list(ExecutorHost.objects.filter(is_active=True))
    )
    removed: list[Removal] = []
    for host in targets:
        try:
            removed += _reap_host(host, cutoff, dry_run)
        except ContainerManagerError as err:  # e.g. the host's executor is misconfigured
            log.warning("reaper host=%s skipped: %s", host.name, err)
    return removed
