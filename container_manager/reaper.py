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
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.files.storage import storages
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from .conf import get_settings
from .exceptions import ContainerManagerError
from .executors import get_executor
from .executors.base import LABEL_ATTEMPT, LABEL_JOB, LABEL_MANAGED, BaseExecutor
from .models import ContainerJob, ExecutorHost, JobAttempt, JobStatus

__all__ = ["Removal", "prune_jobs", "reap"]

log = logging.getLogger("container_manager.reaper")

_RUNNING = frozenset({"running", "restarting", "paused"})
_PRUNE_BATCH = 1000
_PRUNE_MAX_PAUSE = 1.0  # seconds


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


def prune_jobs(older_than: timedelta, dry_run: bool = False, budget: float | None = None) -> int:
    """Delete ended jobs that completed before ``now - older_than``, with their attempts
    and their stored output files; returns how many jobs were (or would be) deleted.

    Batches of :data:`_PRUNE_BATCH`, each its own short transaction, walk each ended
    status's part of the (status, completed_at) index from the oldest end, never scanning
    what is left: a worker claiming meanwhile does not wait on them (a claim locks hosts
    and waiting jobs; a batch locks only ended jobs). Each batch checks its rows again
    (a job retried meanwhile is kept), and is followed by a pause as long as it took. With
    ``budget`` (seconds), no batch starts after that long: the rest waits for the next call.
    The tally is not touched: counters stay."""
    cutoff = timezone.now() - older_than
    if dry_run:
        return _old_jobs(cutoff).count()
    deleted = 0
    until = time.monotonic() + budget if budget is not None else None
    for status in sorted(JobStatus.terminal()):
        after: datetime | None = None
        while (until is None or time.monotonic() < until) and (
            batch := _next_batch(status, cutoff, after)
        ):
            after = batch[-1][1]
            began = time.monotonic()
            deleted += _delete_batch([pk for pk, _ in batch], cutoff)
            # As long again at rest: the workers' claims share the database's CPU and disk.
            time.sleep(min(time.monotonic() - began, _PRUNE_MAX_PAUSE))
    if deleted:
        log.info("reaper pruned %d job(s) completed before %s", deleted, cutoff.isoformat())
    return deleted


def _old_jobs(cutoff: datetime) -> QuerySet[ContainerJob]:
    return ContainerJob.objects.filter(status__in=JobStatus.terminal(), completed_at__lt=cutoff)


def _next_batch(status: str, cutoff: datetime, after: datetime | None) -> list[tuple[Any, Any]]:
    """The next (pk, completed_at) of ``status`` ended before ``cutoff``, oldest first, from
    ``after`` on (a keyset page: the rows deleted before are not read again)."""
    query = ContainerJob.objects.filter(status=status, completed_at__lt=cutoff)
    if after is not None:
        query = query.filter(completed_at__gte=after)
    return list(query.order_by("completed_at").values_list("pk", "completed_at")[:_PRUNE_BATCH])


def _delete_batch(pks: list[Any], cutoff: datetime) -> int:
    """Delete the jobs of ``pks`` still ended before ``cutoff`` (rows locked first), their
    attempts, and once committed their stored output files. One short transaction."""
    with transaction.atomic():
        rows = list(
            _old_jobs(cutoff)
            .filter(pk__in=pks)
            .select_for_update()
            .values_list("pk", "stdout_file", "stderr_file")
        )
        if not rows:
            return 0
        doomed = [pk for pk, _, _ in rows]
        JobAttempt.objects.filter(job_id__in=doomed).delete()
        # only("pk"): the collector reads the rows it deletes, and not their output.
        _, per_model = ContainerJob.objects.filter(pk__in=doomed).only("pk").delete()
        files = [name for _, *names in rows for name in names if name]
        if files:
            transaction.on_commit(lambda: _remove_files(files))
    return per_model.get(ContainerJob._meta.label, 0)


def _remove_files(names: list[str]) -> None:
    """Remove pruned jobs' stored output from LOG_STORAGE; a failure is logged."""
    alias = get_settings().LOG_STORAGE
    if alias is None:
        log.warning("reaper: %d output file(s) of pruned jobs kept: LOG_STORAGE is not set",
                    len(names))  # fmt: skip
        return
    storage = storages[alias]
    for name in names:
        try:
            storage.delete(name)
        except OSError as err:
            log.warning("reaper: output file %s of a pruned job not removed: %s", name, err)
