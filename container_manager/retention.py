"""Retention: delete the jobs that ended before the cut-off, with their attempts and their
stored output files, in short batches while the workers run.

A batch is one short transaction over one ended status's part of the
``(status, completed_at)`` index, walked from its oldest end (a keyset: no batch reads
again what the ones before deleted). It locks only the ended jobs it deletes, which no
claim reads (a claim locks hosts and waiting jobs), skipping any row another transaction
holds (a retry under way), and checks its rows again under that lock. Deleting touches
no host row and fires no trigger (the tally counts status changes, not rows).

What a batch costs the workers is mostly the machine's CPU and disk: the batch adapts its
size to take about :data:`BATCH_SECONDS`, and each is followed by a rest twice as long as
it took. On PostgreSQL a batch is one statement (choose, lock, delete the attempts and the
jobs, return their output files); elsewhere, or where other models hang on jobs or
attempts (a foreign key, a delete signal), Django's collector deletes them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.core.files.storage import storages
from django.db import connection, transaction
from django.db.models import QuerySet
from django.db.models.signals import post_delete, pre_delete
from django.utils import timezone

from .conf import get_settings
from .models import ContainerJob, JobAttempt, JobStatus

__all__ = ["BATCH_SECONDS", "prune_jobs", "vacuum_jobs"]

log = logging.getLogger("container_manager.retention")

#: The size of the first batch, and the bounds a batch's size adapts within.
_PRUNE_BATCH, _PRUNE_MIN_BATCH, _PRUNE_MAX_BATCH = 500, 50, 2000
#: How long a batch aims to take (its size halves above twice this, doubles below half).
BATCH_SECONDS = 0.025
#: A batch is followed by a rest this many times as long as it took (at most
#: _PRUNE_MAX_PAUSE seconds): the prune uses at most a third of the time.
_PRUNE_REST = 2.0
_PRUNE_MAX_PAUSE = 2.0  # seconds

#: One batch: (status, cut-off, from completed_at, size) -> (deleted, last completed_at,
#: whether the batch was full).
_Batch = Callable[[str, datetime, datetime | None, int], tuple[int, datetime | None, bool]]


def prune_jobs(older_than: timedelta, dry_run: bool = False, budget: float | None = None) -> int:
    """Delete ended jobs that completed before ``now - older_than``, with their attempts
    and their stored output files; returns how many jobs were (or would be) deleted.

    In short batches (see the module's docstring), each followed by a rest twice as long as
    it took. With ``budget`` (seconds), no batch starts after that long: the rest waits for the
    next call. The tally is not touched: counters stay."""
    cutoff = timezone.now() - older_than
    if dry_run:
        return _old_jobs(cutoff).count()
    batch = _one_statement if _plain_rows() else _collected
    deleted, size = 0, _PRUNE_BATCH
    until = time.monotonic() + budget if budget is not None else None
    for status in sorted(JobStatus.terminal()):
        after: datetime | None = None
        full = True
        while full and (until is None or time.monotonic() < until):
            began = time.monotonic()
            count, after, full = batch(status, cutoff, after, size)
            deleted += count
            took = time.monotonic() - began
            size = _next_size(size, took)
            # At rest meanwhile: the workers' claims share the database's CPU and disk.
            time.sleep(min(took * _PRUNE_REST, _PRUNE_MAX_PAUSE))
    if deleted:
        log.info("retention pruned %d job(s) completed before %s", deleted, cutoff.isoformat())
    return deleted


def vacuum_jobs() -> bool:
    """On PostgreSQL, ``VACUUM (ANALYZE)`` the jobs' and attempts' tables, as after a large
    prune: the space of deleted rows becomes reusable, the planner's statistics are fresh, and
    the pages are marked all-visible again, which the search's index-only reads need (at ten
    million jobs, 176,745 of 277,778 matches were read from the table until a VACUUM). It
    takes no lock that workers wait on. Returns False elsewhere (SQLite's VACUUM rewrites the
    whole file under an exclusive lock: not done here), and inside a transaction, where
    PostgreSQL refuses it."""
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        return False
    tables = ", ".join(connection.ops.quote_name(t) for t in (_JOBS, _ATTEMPTS))
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM (ANALYZE) {tables}")
    return True


def _next_size(size: int, took: float) -> int:
    if took > 2 * BATCH_SECONDS:
        return max(_PRUNE_MIN_BATCH, size // 2)
    if took < BATCH_SECONDS / 2:
        return min(_PRUNE_MAX_BATCH, size * 2)
    return size


def _old_jobs(cutoff: datetime) -> QuerySet[ContainerJob]:
    return ContainerJob.objects.filter(status__in=JobStatus.terminal(), completed_at__lt=cutoff)


def _plain_rows() -> bool:
    """Whether a batch may delete with SQL alone: PostgreSQL, and nothing but the attempts
    refers to a job, nothing refers to an attempt, no delete signal listens to either."""
    if connection.vendor != "postgresql":
        return False
    others = [r for r in ContainerJob._meta.related_objects if r.related_model is not JobAttempt]
    listened = any(
        signal.has_listeners(model)
        for signal in (pre_delete, post_delete)
        for model in (ContainerJob, JobAttempt)
    )
    return not others and not JobAttempt._meta.related_objects and not listened


_JOBS, _ATTEMPTS = ContainerJob._meta.db_table, JobAttempt._meta.db_table
_DELETE = f"""
WITH doomed AS (
    SELECT id FROM {_JOBS}
    WHERE status = %(status)s AND completed_at < %(cutoff)s AND completed_at >= %(after)s
    ORDER BY completed_at LIMIT %(size)s
    FOR UPDATE SKIP LOCKED
), attempts AS (
    DELETE FROM {_ATTEMPTS} WHERE job_id IN (SELECT id FROM doomed)
)
DELETE FROM {_JOBS} AS job USING doomed WHERE job.id = doomed.id
RETURNING job.completed_at, job.stdout_file, job.stderr_file
"""


def _one_statement(
    status: str, cutoff: datetime, after: datetime | None, size: int
) -> tuple[int, datetime | None, bool]:
    """One batch in one statement (PostgreSQL): the rows are chosen, locked (skipping those
    another transaction holds) and checked by the same statement that deletes them."""
    start = after or datetime.min.replace(tzinfo=cutoff.tzinfo)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_DELETE, {"status": status, "cutoff": cutoff, "after": start,
                                 "size": size})  # fmt: skip
        rows = cursor.fetchall()
        _remove_on_commit([name for _, *names in rows for name in names if name])
    last = max((done for done, _, _ in rows), default=after)
    return len(rows), last, len(rows) == size


def _collected(
    status: str, cutoff: datetime, after: datetime | None, size: int
) -> tuple[int, datetime | None, bool]:
    """One batch through Django's collector: the next ``size`` rows by the index, then
    :func:`_delete_batch`."""
    query = ContainerJob.objects.filter(status=status, completed_at__lt=cutoff)
    if after is not None:
        query = query.filter(completed_at__gte=after)
    batch = list(query.order_by("completed_at").values_list("pk", "completed_at")[:size])
    if not batch:
        return 0, after, False
    return _delete_batch([pk for pk, _ in batch], cutoff), batch[-1][1], len(batch) == size


def _delete_batch(pks: list[Any], cutoff: datetime) -> int:
    """Delete the jobs of ``pks`` still ended before ``cutoff`` (rows locked first, those
    another transaction holds skipped where the database can), their attempts, and once
    committed their stored output files. One short transaction."""
    with transaction.atomic():
        rows = list(
            _old_jobs(cutoff)
            .filter(pk__in=pks)
            .select_for_update(skip_locked=connection.features.has_select_for_update_skip_locked)
            .values_list("pk", "stdout_file", "stderr_file")
        )
        if not rows:
            return 0
        doomed = [pk for pk, _, _ in rows]
        JobAttempt.objects.filter(job_id__in=doomed).delete()
        # only("pk"): the collector reads the rows it deletes, and not their output.
        _, per_model = ContainerJob.objects.filter(pk__in=doomed).only("pk").delete()
        _remove_on_commit([name for _, *names in rows for name in names if name])
    return per_model.get(ContainerJob._meta.label, 0)


def _remove_on_commit(files: list[str]) -> None:
    if files:
        transaction.on_commit(lambda: _remove_files(files))


def _remove_files(names: list[str]) -> None:
    """Remove pruned jobs' stored output from LOG_STORAGE; a failure is logged."""
    alias = get_settings().LOG_STORAGE
    if alias is None:
        log.warning("retention: %d output file(s) of pruned jobs kept: LOG_STORAGE is not set",
                    len(names))  # fmt: skip
        return
    storage = storages[alias]
    for name in names:
        try:
            storage.delete(name)
        except OSError as err:
            log.warning("retention: output file %s of a pruned job not removed: %s", name, err)
