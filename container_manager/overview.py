"""Read-only figures of the queue, for the admin's overview page and the metrics endpoint.

Pure ORM: every function here reads the database (a fixed, small number of queries,
whatever the number of jobs) and never calls an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from django.db.models import Count, DurationField, F, Q, QuerySet, Sum
from django.utils import timezone

from .models import ContainerJob, ExecutorHost, JobStatus, WorkerHeartbeat

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

    class _Load(TypedDict):
        running: int

    #: Hosts annotated by :func:`with_load`.
    _LoadedHost = WithAnnotations[ExecutorHost, _Load]

__all__ = [
    "NOT_PLACED",
    "Bucket",
    "Histogram",
    "HostSummary",
    "QueueDepth",
    "WorkerSeen",
    "counts_by_host",
    "counts_by_status",
    "duration_histogram",
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


def counts_by_status() -> dict[str, int]:
    """Every status (zeros included) -> number of jobs. One query."""
    counts = _zeros()
    for status, n in ContainerJob.objects.order_by().values_list("status").annotate(n=Count("pk")):
        counts[status] = n
    return counts


def counts_by_host() -> dict[str, dict[str, int]]:
    """Host name -> status -> number of jobs (hosts without jobs included; jobs not placed yet
    under :data:`NOT_PLACED`). Two queries."""
    result = {name: _zeros() for name in ExecutorHost.objects.values_list("name", flat=True)}
    rows = (
        ContainerJob.objects.order_by()
        .values_list("docker_host__name", "status")
        .annotate(n=Count("pk"))
    )
    for host, status, n in rows:
        result.setdefault(host or NOT_PLACED, _zeros())[status] = n
    return result


def with_load(hosts: QuerySet[ExecutorHost]) -> QuerySet[_LoadedHost]:
    """``hosts`` annotated with ``running``: the jobs workers hold there (no extra query)."""
    return hosts.annotate(running=Count("jobs", filter=Q(jobs__status__in=JobStatus.active())))


def hosts_with_load() -> QuerySet[_LoadedHost]:
    """Every host, annotated with ``running``. One query."""
    return with_load(ExecutorHost.objects.all())


def host_summaries() -> list[HostSummary]:
    """Every host's recorded health and load. One query."""
    return [
        HostSummary(
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
    """How many jobs wait, and how many of them are due now. One query."""
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
    """Jobs that ended in each ``width`` of the last ``window``, oldest first. One query.

    Buckets are aligned on multiples of ``width`` (the last one holds the current, partial
    slice), so that the chart does not shift between two reloads a second apart."""
    now = now or timezone.now()
    step = int(width.total_seconds())
    end = datetime.fromtimestamp((int(now.timestamp()) // step + 1) * step, tz=now.tzinfo)
    starts = [end - width * (n + 1) for n in reversed(range(int(window / width)))]
    kinds = {
        "completed": Q(status=JobStatus.COMPLETED),
        "failed": Q(status__in=FAILURES),
        "cancelled": Q(status=JobStatus.CANCELLED),
    }
    aggregates = {
        f"{kind}_{index}": Count(
            "pk", filter=match & Q(completed_at__gte=s, completed_at__lt=s + width)
        )
        for index, s in enumerate(starts)
        for kind, match in kinds.items()
    }
    figures = ContainerJob.objects.filter(
        status__in=JobStatus.terminal(), completed_at__gte=starts[0], completed_at__lt=end
    ).aggregate(**aggregates)
    return [
        Bucket(s, figures[f"completed_{i}"], figures[f"failed_{i}"], figures[f"cancelled_{i}"])
        for i, s in enumerate(starts)
    ]


@dataclass(frozen=True)
class Histogram:
    """Cumulative counts of values <= each bound, the count of all values and their sum."""

    bounds: tuple[float, ...]
    cumulative: list[int]
    count: int
    sum: float


def _histogram(
    query: QuerySet[ContainerJob], start: str, end: str, bounds: tuple[float, ...]
) -> Histogram:
    """The histogram of ``end - start`` (seconds) over the rows of ``query``. One query."""
    query = query.filter(**{f"{start}__isnull": False, f"{end}__isnull": False})
    aggregates: dict[str, Any] = {
        f"le_{i}": Count("pk", filter=Q(**{f"{end}__lte": F(start) + timedelta(seconds=b)}))
        for i, b in enumerate(bounds)
    }
    figures = query.order_by().aggregate(
        total=Count("pk"), sum=Sum(F(end) - F(start), output_field=DurationField()), **aggregates
    )
    return Histogram(
        bounds=bounds,
        cumulative=[figures[f"le_{i}"] for i in range(len(bounds))],
        count=figures["total"],
        sum=figures["sum"].total_seconds() if figures["sum"] is not None else 0.0,
    )


def latency_histogram(bounds: tuple[float, ...]) -> Histogram:
    """Launch latency (created -> started) of every started job still in the database."""
    return _histogram(ContainerJob.objects.all(), "created_at", "started_at", bounds)


def duration_histogram(bounds: tuple[float, ...]) -> Histogram:
    """Run time (started -> completed) of every ended job still in the database."""
    query = ContainerJob.objects.filter(status__in=JobStatus.terminal())
    return _histogram(query, "started_at", "completed_at", bounds)


def workers_seen() -> list[WorkerSeen]:
    """Workers with their last heartbeat and how many jobs they held then. One query.

    A worker beats when it starts and every ``LEASE_SECONDS / 3``, idle or not, and removes
    its row when it exits cleanly; one that died stays visible (its ``last_seen`` ages) for an
    hour."""
    rows = WorkerHeartbeat.objects.values_list("worker_id", "last_seen", "running_jobs")
    return [WorkerSeen(worker, seen, jobs) for worker, seen, jobs in rows]
