"""The tally: how many jobs ended (and attempts started), per minute, host, status and
histogram bucket, kept in :class:`~container_manager.models.JobTally` so that the overview
and the metrics never count the jobs' history.

A database trigger on the job table writes it, in the very statement that changes a job's
status (so in its transaction, on every path: the worker's compiled updates, the admin, a
queryset ``update()``): a job that reaches a terminal status from a live one adds one to
its row (minute of ``completed_at``, its host, that status, the bucket of its run time); a
job that becomes ``running`` adds one to the ``running`` row of its launch latency's
bucket. The trigger costs the worker no query of its own: one small upsert inside its
UPDATE, on PostgreSQL and on SQLite. Jobs inserted with a terminal status (fixtures, a
restore) are not counted.

Rows older than :data:`KEEP` are folded (:func:`compact`, from the worker's reaper pass and
``cleanup_containers``) into the rows of minute :data:`EPOCH`, so that the table stays a
few rows per host, status and bucket, plus the last two hours' minutes. Totals only grow:
pruning jobs does not touch the tally.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import models, transaction
from django.db.models import (
    Case,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Sum,
    Value,
    When,
)
from django.utils import timezone

from .models import JobStatus, JobTally

__all__ = [
    "DURATION_BUCKETS",
    "EPOCH",
    "KEEP",
    "LATENCY_BUCKETS",
    "STARTED",
    "Total",
    "bucket_of",
    "compact",
    "create_trigger_sql",
    "drop_trigger_sql",
    "minutes_since",
    "totals",
]

#: Bucket bounds (seconds) of the launch latency histograms.
LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
#: Bucket bounds (seconds) of the job duration histograms.
DURATION_BUCKETS: tuple[float, ...] = (1, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400, 86400)
#: The tally's status of "an attempt started".
STARTED = JobStatus.RUNNING
#: The minute of the folded totals (every row older than KEEP ends up there).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: How long rows keep their own minute (the overview's chart shows the last hour).
KEEP = timedelta(hours=2)

_JOBS = "container_manager_containerjob"
_TALLY = "container_manager_jobtally"
_TERMINAL = "('completed', 'failed', 'timeout', 'cancelled')"


def bucket_of(seconds: float | None, bounds: tuple[float, ...]) -> int:
    """The tally's bucket of a duration: the first bound it is within (Prometheus' ``le``),
    ``len(bounds)`` beyond them, -1 for none. The trigger computes the same in SQL."""
    if seconds is None:
        return -1
    return bisect.bisect_left(bounds, seconds)


def _case(seconds: str, bounds: tuple[float, ...]) -> str:
    arms = " ".join(f"WHEN {seconds} <= {float(b)!r} THEN {i}" for i, b in enumerate(bounds))
    return f"CASE WHEN {seconds} IS NULL THEN -1 {arms} ELSE {len(bounds)} END"


def create_trigger_sql(
    vendor: str, latency: tuple[float, ...], duration: tuple[float, ...]
) -> list[str]:
    """The statements that install the tally's trigger on ``vendor`` (postgresql, sqlite;
    none elsewhere: there the tally stays empty). The bounds are the migration's own copy."""
    if vendor == "postgresql":
        return _postgres_trigger(latency, duration)
    if vendor == "sqlite":
        return [
            _sqlite_trigger("finished", f"NEW.status IN {_TERMINAL} AND OLD.status NOT IN "
                            f"{_TERMINAL}", "NEW.completed_at", "NEW.started_at", duration),
            _sqlite_trigger("started", "NEW.status = 'running' AND OLD.status <> 'running'",
                            "NEW.started_at", "NEW.created_at", latency),
        ]  # fmt: skip
    return []


def drop_trigger_sql(vendor: str) -> list[str]:
    """The statements that remove what :func:`create_trigger_sql` installed."""
    if vendor == "postgresql":
        return [f"DROP TRIGGER IF EXISTS cm_job_tally ON {_JOBS}", "DROP FUNCTION IF EXISTS "
                "cm_job_tally()"]  # fmt: skip
    if vendor == "sqlite":
        return [f"DROP TRIGGER IF EXISTS cm_job_tally_{kind}" for kind in ("finished", "started")]
    return []


def _postgres_trigger(latency: tuple[float, ...], duration: tuple[float, ...]) -> list[str]:
    function = f"""
CREATE OR REPLACE FUNCTION cm_job_tally() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    at timestamptz;
    secs double precision;
    b smallint;
BEGIN
    IF NEW.status = 'running' THEN
        at := COALESCE(NEW.started_at, now());
        secs := EXTRACT(EPOCH FROM (at - NEW.created_at));
        b := {_case("secs", latency)};
    ELSE
        at := COALESCE(NEW.completed_at, now());
        secs := EXTRACT(EPOCH FROM (at - NEW.started_at));
        b := {_case("secs", duration)};
    END IF;
    INSERT INTO {_TALLY} (minute, host_id, status, bucket, count, seconds)
    VALUES (date_trunc('minute', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
            COALESCE(NEW.docker_host_id, 0), NEW.status, b, 1, COALESCE(secs, 0))
    ON CONFLICT (minute, host_id, status, bucket) DO UPDATE
        SET count = {_TALLY}.count + 1, seconds = {_TALLY}.seconds + EXCLUDED.seconds;
    RETURN NULL;
END $$"""
    trigger = f"""
CREATE TRIGGER cm_job_tally AFTER UPDATE OF status ON {_JOBS} FOR EACH ROW
WHEN ((NEW.status IN {_TERMINAL} AND OLD.status NOT IN {_TERMINAL})
      OR (NEW.status = 'running' AND OLD.status <> 'running'))
EXECUTE FUNCTION cm_job_tally()"""
    return [function, trigger]


def _sqlite_trigger(kind: str, when: str, end: str, start: str, bounds: tuple[float, ...]) -> str:
    at = f"COALESCE({end}, strftime('%Y-%m-%d %H:%M:%f', 'now'))"
    # Whole seconds, then the '.ffffff' Django writes after them: exact to the microsecond
    # (julianday's double is not, near a bucket's bound).
    whole = f"(strftime('%s', {at}) - strftime('%s', {start}))"
    fraction = f"(CAST(substr({at}, 20) AS REAL) - CAST(substr({start}, 20) AS REAL))"
    secs = f"({whole} + {fraction})"
    return f"""
CREATE TRIGGER cm_job_tally_{kind} AFTER UPDATE OF status ON {_JOBS} FOR EACH ROW
WHEN {when}
BEGIN
    INSERT INTO {_TALLY} (minute, host_id, status, bucket, count, seconds)
    VALUES (strftime('%Y-%m-%d %H:%M:00', {at}), COALESCE(NEW.docker_host_id, 0),
            NEW.status, {_case(secs, bounds)}, 1, COALESCE({secs}, 0))
    ON CONFLICT (minute, host_id, status, bucket) DO UPDATE
        SET count = count + 1, seconds = seconds + excluded.seconds;
END"""


# ---- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Total:
    """Everything tallied for one host, status and bucket."""

    host_id: int
    status: str
    bucket: int
    count: int
    seconds: float


def totals() -> list[Total]:
    """Every (host, status, bucket) with its count and summed seconds since the tally began.
    One query over the tally (a few rows per key after :func:`compact`), never the jobs."""
    rows = (
        JobTally.objects.order_by()
        .values_list("host_id", "status", "bucket")
        .annotate(n=Sum("count"), s=Sum("seconds"))
    )
    return [Total(host, status, bucket, n, s or 0.0) for host, status, bucket, n, s in rows]


def minutes_since(start: datetime) -> list[tuple[datetime, str, int]]:
    """(minute, status, jobs) of the jobs that ended from ``start`` on. One query, over
    the tally's index (its key leads with the minute)."""
    rows = (
        JobTally.objects.filter(minute__gte=start, status__in=JobStatus.terminal())
        .order_by()
        .values_list("minute", "status")
        .annotate(n=Sum("count"))
    )
    return list(rows)


# ---- folding ------------------------------------------------------------------------------


def compact(now: datetime | None = None) -> int:
    """Fold the rows older than :data:`KEEP` into the totals (minute :data:`EPOCH`); returns
    how many rows were folded. One short transaction; the rows it folds are locked, so a
    late trigger write to one of them waits instead of being lost."""
    cutoff = (now or timezone.now()) - KEEP
    with transaction.atomic():
        old = list(
            JobTally.objects.filter(minute__lt=cutoff, minute__gt=EPOCH)
            .select_for_update()
            .values_list("pk", "host_id", "status", "bucket", "count", "seconds")
        )
        if not old:
            return 0
        sums: dict[tuple[int, str, int], list[Any]] = {}
        for _, host, status, bucket, count, seconds in old:
            entry = sums.setdefault((host, status, bucket), [0, 0.0])
            entry[0] += count
            entry[1] += seconds
        JobTally.objects.filter(pk__in=[row[0] for row in old]).delete()
        _add_to_totals(sums)
    return len(old)


def _add_to_totals(sums: dict[tuple[int, str, int], list[Any]]) -> None:
    for (host, status, bucket), (count, seconds) in sums.items():
        key = {"minute": EPOCH, "host_id": host, "status": status, "bucket": bucket}
        row, created = JobTally.objects.select_for_update().get_or_create(
            **key, defaults={"count": count, "seconds": seconds}
        )
        if not created:
            JobTally.objects.filter(pk=row.pk).update(
                count=F("count") + count, seconds=F("seconds") + seconds
            )


def backfill(jobs: models.QuerySet[Any], tally: type[models.Model]) -> int:
    """Tally the jobs of ``jobs`` (a ContainerJob queryset, historical model or not) into
    ``tally``'s totals (minute :data:`EPOCH`): the migration that adds the tally counts the
    history once. Returns the number of rows written. Two grouped queries, counted by the
    database (the jobs are not read into Python)."""
    kinds = (
        (jobs.filter(status__in=JobStatus.terminal()), "started_at", "completed_at",
         DURATION_BUCKETS, F("status")),
        (jobs.filter(started_at__isnull=False), "created_at", "started_at", LATENCY_BUCKETS,
         Value(STARTED.value)),
    )  # fmt: skip
    rows = []
    for query, start, end, bounds, status in kinds:
        grouped = (
            query.order_by()
            .alias(d=ExpressionWrapper(F(end) - F(start), output_field=DurationField()))
            .annotate(b=_bucket_case(bounds), s=status)
            .values_list("docker_host_id", "s", "b")
            .annotate(n=Count("pk"), total=Sum("d"))
        )
        for host, tallied, bucket, n, total in grouped:
            seconds = total.total_seconds() if total is not None else 0.0
            rows.append(tally(minute=EPOCH, host_id=host or 0, status=tallied, bucket=bucket,
                              count=n, seconds=seconds))  # fmt: skip
    tally._default_manager.bulk_create(rows, batch_size=1000)
    return len(rows)


def _bucket_case(bounds: tuple[float, ...]) -> Case:
    """:func:`bucket_of` of the alias ``d`` (a duration), in SQL."""
    arms = [When(d__isnull=True, then=Value(-1))]
    arms += [When(d__lte=timedelta(seconds=b), then=Value(i)) for i, b in enumerate(bounds)]
    return Case(*arms, default=Value(len(bounds)), output_field=models.SmallIntegerField())
