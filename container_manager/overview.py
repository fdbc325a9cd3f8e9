"""Read-only figures of the queue, for the admin's overview page and the metrics endpoint.

Pure ORM: every function here reads the database (a fixed, small number of queries,
whatever the number of jobs) and never calls an engine. Jobs not ended yet are counted
from the jobs' partial index (they are few); ended jobs, the throughput and the histograms
come from the tally (:mod:`container_manager.tally`), never from the jobs' history.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, TypedDict

from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from . import tally
from .models import ContainerJob, ExecutorHost, JobStatus, WorkerHeartbeat

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Load(TypedDict):
        running: int

    #: Hosts annotated by :func:`with_load`.
    _LoadedHost = WithAnnotations[ExecutorHost, _Load]

__all__ = [
    "LIVE",
    "NOT_PLACED",
    "Bucket",
    "Histogram",
    "HostSummary",
    "QueueDepth",
    "WorkerSeen",
    "counts_by_host",
    "counts_by_status",
    "duration_histogram",
    "host_name",
    "host_summaries",
    "hosts_with_load",
    "latency_histogram",
    "queue_depth",
    "throughput",
    "with_load",
    "workers_seen",
]

#: The row of ``counts_by_host`` for jobs the queue has not placed on a host yet.
NOT_PLACED = "(not placed yet)"
FAILURES = frozenset({JobStatus.FAILED, JobStatus.TIMEOUT})


@dataclass(frozen=True)
class Bucket:
    """Jobs that ended in ``[start, start + width)``."""

    start: datetime
    completed: int
    failed: int
    cancelled: int

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.cancelled


@dataclass(frozen=True)
class QueueDepth:
    """Waiting jobs: all of them, and those whose ``run_after`` has come."""

    queued: int
    due: int


@dataclass(frozen=True)
class HostSummary:
    """A host's health and load, as recorded (no engine is asked)."""

    pk: int
    name: str
    is_active: bool
    healthy: bool
    failures: int
    last_check: datetime | None
    running: int
    capacity: int


@dataclass(frozen=True)
class WorkerSeen:
    """A worker, when it last reported (its heartbeat), and the jobs it held then."""

    worker_id: str
    last_seen: datetime
    jobs: int


def _zeros() -> dict[str, int]:
    return {status.value: 0 for status in JobStatus}


#: The statuses of jobs that have not ended: few, whatever the history, and counted exactly
#: from the partial index cm_job_live_idx.
LIVE = frozenset({JobStatus.QUEUED, *JobStatus.active()})


def _live_jobs() -> QuerySet[ContainerJob]:
    return ContainerJob.objects.filter(status__in=LIVE).order_by()


def counts_by_status(totals: list[tally.Total] | None = None) -> dict[str, int]:
    """Every status (zeros included) -> number of jobs: exact for the jobs not ended yet,
    and for the ended statuses the jobs that reached them since the tally began (pruned jobs
    included; a retried job once per ending). Two queries (one with ``totals`` given)."""
    counts = _zeros()
    for status, n in _live_jobs().values_list("status").annotate(n=Count("pk")):
        counts[status] = n
    for total in tally.totals() if totals is None else totals:
        if total.status in JobStatus.terminal():
            counts[total.status] += total.count
    return counts


def counts_by_host(totals: list[tally.Total] | None = None) -> dict[str, dict[str, int]]:
    """Host name -> status -> number of jobs, as :func:`counts_by_status` counts them (hosts
    without jobs included; jobs not placed yet under :data:`NOT_PLACED`). Three queries (two
    with ``totals`` given)."""
    names = dict(ExecutorHost.objects.values_list("pk", "name"))
    result = {name: _zeros() for name in names.values()}
    rows = _live_jobs().values_list("docker_host_id", "status").annotate(n=Count("pk"))
    for host, status, n in rows:
        result.setdefault(host_name(names, host), _zeros())[status] = n
    for total in tally.totals() if totals is None else totals:
        if total.status in JobStatus.terminal():
            result.setdefault(host_name(names, total.host_id), _zeros())[total.status] += (
                total.count
            )
    return result


def host_name(names: dict[int, str], host_id: int | None) -> str:
    """The row name of a host id (0 or None: :data:`NOT_PLACED`; a host since removed by
    its id)."""
    if not host_id:
        return NOT_PLACED
    return names.get(host_id, f"(removed host #{host_id})")


def with_load(hosts: QuerySet[ExecutorHost]) -> QuerySet[_LoadedHost]:
    """``hosts`` annotated with ``running``: the jobs workers hold there (no extra query; a
    subquery per host over the partial index of live jobs, never the host's history)."""
    held = (
        ContainerJob.objects.filter(docker_host=OuterRef("pk"), status__in=JobStatus.active())
        .order_by()
        .values("docker_host")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return hosts.annotate(running=Coalesce(Subquery(held), 0))


def hosts_with_load() -> QuerySet[_LoadedHost]:
    """Every host, annotated with ``running``. One query."""
    return with_load(ExecutorHost.objects.all())


def host_summaries() -> list[HostSummary]:
    """Every host's recorded health and load. One query."""
    return [
        HostSummary(
            pk=host.pk,
            name=host.name,
            is_active=host.is_active,
            healthy=host.is_healthy,
            failures=host.health_check_failures,
            last_check=host.last_health_check,
            running=host.running,
            capacity=host.max_concurrent_jobs,
        )
        for host in hosts_with_load()
    ]


def queue_depth(now: datetime | None = None) -> QueueDepth:
    """How many jobs wait, and how many of them are due now. One query (over the waiting
    jobs only)."""
    now = now or timezone.now()
    due = Q(run_after__isnull=True) | Q(run_after__lte=now)
    figures = ContainerJob.objects.filter(status=JobStatus.QUEUED).aggregate(
        queued=Count("pk"), due=Count("pk", filter=due)
    )
    return QueueDepth(queued=figures["queued"], due=figures["due"])


def throughput(
    now: datetime | None = None,
    window: timedelta = timedelta(hours=1),
    width: timedelta = timedelta(minutes=5),
) -> list[Bucket]:
    """Jobs that ended in each ``width`` of the last ``window``, oldest first. One query, of
    the tally's minutes (``width`` is a whole number of minutes, at most ``tally.KEEP``).

    Buckets are aligned on multiples of ``width`` (the last one holds the current, partial
    slice), so that the chart does not shift between two reloads a second apart."""
    now = now or timezone.now()
    step = int(width.total_seconds())
    end = datetime.fromtimestamp((int(now.timestamp()) // step + 1) * step, tz=now.tzinfo)
    starts = [end - width * (n + 1) for n in reversed(range(int(window / width)))]
    figures = {s: {"completed": 0, "failed": 0, "cancelled": 0} for s in starts}
    for minute, status, n in tally.minutes_since(starts[0]):
        if minute >= end:
            continue
        start = starts[int((minute - starts[0]) / width)]
        kind = "failed" if status in FAILURES else str(status)
        figures[start][kind] += n
    return [Bucket(s, **figures[s]) for s in starts]


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts of values <= each bound, the count of all values and their sum."""

    bounds: tuple[float, ...]
    cumulative: list[int]
    count: int
    sum: float


def _histogram(totals: list[tally.Total], started: bool, bounds: tuple[float, ...]) -> Histogram:
    """The histogram of the tallied durations: launch latencies (``started``) or run
    times of ended jobs. No query."""
    per_bucket = [0] * (len(bounds) + 1)
    seconds = 0.0
    for total in totals:
        if (total.status == tally.STARTED) != started or total.bucket < 0:
            continue
        per_bucket[min(total.bucket, len(bounds))] += total.count
        seconds += total.seconds
    cumulative = list(itertools.accumulate(per_bucket))
    return Histogram(bounds, cumulative[: len(bounds)], cumulative[-1], seconds)


def latency_histogram(totals: list[tally.Total] | None = None) -> Histogram:
    """Launch latency (created -> started) of every attempt started since the tally began."""
    return _histogram(tally.totals() if totals is None else totals, True, tally.LATENCY_BUCKETS)


def duration_histogram(totals: list[tally.Total] | None = None) -> Histogram:
    """Run time (started -> completed) of every job that ended since the tally began
    (cancelled before it started: not in it)."""
    return _histogram(tally.totals() if totals is None else totals, False, tally.DURATION_BUCKETS)


def workers_seen() -> list[WorkerSeen]:
    """Workers with their last heartbeat and how many jobs they held then. One query.

    A worker beats when it starts and every ``LEASE_SECONDS / 3``, idle or not, and removes
    its row when it exits cleanly; one that died stays visible (its ``last_seen`` ages) for an
    hour."""
    rows = WorkerHeartbeat.objects.values_list("worker_id", "last_seen", "running_jobs")
    return [WorkerSeen(worker, seen, jobs) for worker, seen, jobs in rows]
