"""Prometheus metrics, with the optional extra ``metrics``
(``pip install django-container-jobs[metrics]``).

:func:`metrics_view` serves, in the Prometheus text format, figures read from the database at
scrape time by :class:`DatabaseCollector`; so any web process can serve them, whatever the
number of workers, and no engine is called:

- ``container_jobs_jobs{status}``: jobs not ended yet (queued, launching, running), exact;
- ``container_jobs_queue_depth{scope}``: waiting jobs (``queued``) and those due now (``due``);
- ``container_jobs_finished_total{host,status}``: a counter of the jobs that reached each
  ended status on each host, from the tally (:mod:`container_manager.tally`): it only
  grows, pruning old jobs does not lower it;
- ``container_jobs_launch_latency_seconds``: histogram of created -> started (every attempt
  started), and ``container_jobs_duration_seconds``: histogram of started -> completed
  (every job that ended after it started), from the tally too: monotonic;
- ``container_jobs_host_healthy{host}`` (1/0), ``container_jobs_host_health_check_failures``,
  ``container_jobs_host_running_jobs``, ``container_jobs_host_capacity``;
- ``container_jobs_worker_last_seen_timestamp_seconds{worker}`` and
  ``container_jobs_worker_jobs{worker}``: from the workers' heartbeats (every
  ``LEASE_SECONDS / 3``, idle or not; a worker that died stays, ageing, for an hour).

A worker process may also observe jobs as they happen, through the ``job_started`` and
``job_finished`` signals (:func:`connect_signal_metrics`), into
``container_jobs_observed_launch_latency_seconds`` and
``container_jobs_observed_duration_seconds{status}``. Those live in the process that ran the
jobs: serve them from the worker with :func:`start_worker_metrics_server`, beside this
process's faults (:class:`FaultCollector`): ``container_jobs_worker_database_outages_total``,
``container_jobs_worker_database_outage_seconds_total`` (the outage under way included),
``container_jobs_worker_database_unreachable`` (1/0) and
``container_jobs_worker_adoptions_total{cause}`` (``lease_expired``, ``holder_dead``),
``container_jobs_worker_stuck_launches_total`` and
``container_jobs_worker_infrastructure_retries_total``.

Only this module imports ``prometheus_client``, and only when a scrape happens; without the
package the view answers 501.
"""

from __future__ import annotations

import bisect
import hmac
import importlib
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from django.http import HttpRequest, HttpResponse

from . import overview, tally
from .conf import get_settings
from .models import ContainerJob, JobStatus
from .outage import ADOPTIONS, INFRASTRUCTURE_RETRIES, OUTAGE, STUCK_LAUNCHES
from .signals import job_finished, job_started
from .tally import DURATION_BUCKETS, LATENCY_BUCKETS

__all__ = [
    "DURATION_BUCKETS",
    "LATENCY_BUCKETS",
    "DatabaseCollector",
    "FaultCollector",
    "ObservedCollector",
    "connect_signal_metrics",
    "disconnect_signal_metrics",
    "metrics_view",
    "observed",
    "start_worker_metrics_server",
]


MISSING = (
    "Prometheus metrics need the prometheus-client package: "
    "pip install 'django-container-jobs[metrics]'\n"
)


def _prometheus() -> ModuleType | None:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError:
        return None


def _buckets(bounds: tuple[float, ...], cumulative: list[int], count: int) -> list[Any]:
    return [(_le(b), n) for b, n in zip(bounds, cumulative, strict=True)] + [("+Inf", count)]


def _le(bound: float) -> str:
    return repr(float(bound))


class DatabaseCollector:
    """Reads the figures from the database at scrape time: five small queries whatever the
    history (the live jobs' partial index, the tally, the hosts, the heartbeats), no engine
    call."""

    def describe(self) -> list[Any]:
        return []  # no collect() at registration: that would query the database

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        jobs = GaugeMetricFamily(
            "container_jobs_jobs", "Jobs not ended yet, by status.", labels=["status"]
        )
        live = overview.counts_by_status(totals=[])
        for status in JobStatus:
            if status in overview.LIVE:
                jobs.add_metric([status.value], live[status.value])
        yield jobs
        depth = overview.queue_depth()
        queue = GaugeMetricFamily(
            "container_jobs_queue_depth", "Waiting jobs: all, and due now.", labels=["scope"]
        )
        queue.add_metric(["queued"], depth.queued)
        queue.add_metric(["due"], depth.due)
        yield queue
        totals = tally.totals()
        hosts = overview.host_summaries()
        yield self._finished(CounterMetricFamily, totals, {h.pk: h.name for h in hosts})
        for name, doc, histogram in (
            (
                "container_jobs_launch_latency_seconds",
                "Seconds from submission to container start, of every attempt started.",
                overview.latency_histogram(totals),
            ),
            (
                "container_jobs_duration_seconds",
                "Seconds from container start to the end, of every job that ended.",
                overview.duration_histogram(totals),
            ),
        ):
            buckets = _buckets(histogram.bounds, histogram.cumulative, histogram.count)
            yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=histogram.sum)
        yield from self._hosts(GaugeMetricFamily, hosts)
        yield from self._workers(GaugeMetricFamily)

    @staticmethod
    def _finished(counter: Any, totals: list[tally.Total], names: dict[int, str]) -> Any:
        """``container_jobs_finished_total{host,status}``: jobs that ended, since the tally
        began (pruning does not lower it)."""
        family = counter(
            "container_jobs_finished",
            "Jobs that reached an ended status, by host and status.",
            labels=["host", "status"],
        )
        sums: dict[tuple[str, str], int] = {}
        for total in totals:
            if total.status in JobStatus.terminal():
                host = overview.host_name(names, total.host_id)
                sums[host, total.status] = sums.get((host, total.status), 0) + total.count
        for (host, status), count in sorted(sums.items()):
            family.add_metric([host, status], count)
        return family

    def _hosts(self, gauge: Any, hosts: list[overview.HostSummary]) -> Iterator[Any]:
        families = {
            "healthy": gauge(
                "container_jobs_host_healthy",
                "1 healthy, 0 unhealthy (as last checked).",
                labels=["host"],
            ),
            "failures": gauge(
                "container_jobs_host_health_check_failures",
                "Consecutive failed health checks.",
                labels=["host"],
            ),
            "running": gauge(
                "container_jobs_host_running_jobs", "Jobs held by workers.", labels=["host"]
            ),
            "capacity": gauge(
                "container_jobs_host_capacity", "max_concurrent_jobs of the host.", labels=["host"]
            ),
        }
        for host in hosts:
            families["healthy"].add_metric([host.name], 1 if host.healthy else 0)
            families["failures"].add_metric([host.name], host.failures)
            families["running"].add_metric([host.name], host.running)
            families["capacity"].add_metric([host.name], host.capacity)
        yield from families.values()

    def _workers(self, gauge: Any) -> Iterator[Any]:
        seen = gauge(
            "container_jobs_worker_last_seen_timestamp_seconds",
            "When a worker last renewed a lease (derived from the jobs it holds).",
            labels=["worker"],
        )
        held = gauge("container_jobs_worker_jobs", "Jobs a worker holds.", labels=["worker"])
        for worker in overview.workers_seen():
            seen.add_metric([worker.worker_id], worker.last_seen.timestamp())
            held.add_metric([worker.worker_id], worker.jobs)
        yield seen
        yield held


class _Series:
    """One histogram series kept in memory: per-bucket counts, count and sum."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.bounds):
            self.counts[index] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[int]:
        total, result = 0, []
        for n in self.counts:
            total += n
            result.append(total)
        return result


class ObservedCollector:
    """Histograms fed by the ``job_started`` / ``job_finished`` signals of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency = _Series(LATENCY_BUCKETS)
        self.durations: dict[str, _Series] = {}

    def on_started(self, sender: Any, job: ContainerJob, **kwargs: Any) -> None:
        if job.started_at and job.created_at:
            with self._lock:
                self.latency.observe((job.started_at - job.created_at).total_seconds())

    def on_finished(self, sender: Any, job: ContainerJob, status: JobStatus, **kwargs: Any) -> None:
        if job.started_at and job.completed_at:
            with self._lock:
                series = self.durations.setdefault(str(status), _Series(DURATION_BUCKETS))
                series.observe((job.completed_at - job.started_at).total_seconds())

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import HistogramMetricFamily

        with self._lock:
            latency = HistogramMetricFamily(
                "container_jobs_observed_launch_latency_seconds",
                "Seconds from submission to container start, observed by this process.",
            )
            latency.add_metric(
                [],
                _buckets(LATENCY_BUCKETS, self.latency.cumulative(), self.latency.count),
                self.latency.sum,
            )
            duration = HistogramMetricFamily(
                "container_jobs_observed_duration_seconds",
                "Seconds from container start to the end, observed by this process.",
                labels=["status"],
            )
            for status, series in sorted(self.durations.items()):
                buckets = _buckets(DURATION_BUCKETS, series.cumulative(), series.count)
                duration.add_metric([status], buckets, series.sum)
        yield latency
        yield duration


class FaultCollector:
    """This process's database outages and adoptions (kept in memory by the worker)."""

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        outages = CounterMetricFamily(
            "container_jobs_worker_database_outages",
            "Database outages this process waited out (confirmed: a retry failed too).",
            value=OUTAGE.outages,
        )
        seconds = CounterMetricFamily(
            "container_jobs_worker_database_outage_seconds",
            "Seconds this process spent without its database, the outage under way included.",
            value=OUTAGE.current_seconds(),
        )
        down = GaugeMetricFamily(
            "container_jobs_worker_database_unreachable",
            "1 while this process cannot reach its database.",
            value=int(OUTAGE.down),
        )
        adoptions = CounterMetricFamily(
            "container_jobs_worker_adoptions",
            "Jobs this process adopted from another worker, by cause.",
            labels=["cause"],
        )
        for cause, count in ADOPTIONS.snapshot().items():
            adoptions.add_metric([cause], count)
        stuck = CounterMetricFamily(
            "container_jobs_worker_stuck_launches",
            "Launches this process gave up after START_TIMEOUT.",
            value=STUCK_LAUNCHES.count,
        )
        infrastructure = CounterMetricFamily(
            "container_jobs_worker_infrastructure_retries",
            "Attempts this process retried because their engine stopped under them.",
            value=INFRASTRUCTURE_RETRIES.count,
        )
        yield from (outages, seconds, down, adoptions, stuck, infrastructure)


#: This process's signal-fed histograms (connected by :func:`connect_signal_metrics`).
observed: ObservedCollector | None = None
_connect_lock = threading.Lock()


def connect_signal_metrics() -> ObservedCollector:
    """Start observing this process's jobs through the signals; idempotent."""
    global observed
    with _connect_lock:
        if observed is None:
            observed = ObservedCollector()
            job_started.connect(observed.on_started, dispatch_uid="container_jobs_metrics_started")
            job_finished.connect(
                observed.on_finished, dispatch_uid="container_jobs_metrics_finished"
            )
        return observed


def disconnect_signal_metrics() -> None:
    """Stop observing (and forget what was observed)."""
    global observed
    with _connect_lock:
        job_started.disconnect(dispatch_uid="container_jobs_metrics_started")
        job_finished.disconnect(dispatch_uid="container_jobs_metrics_finished")
        observed = None


def _registry(prometheus: ModuleType, *, database: bool = True) -> Any:
    registry = prometheus.CollectorRegistry(auto_describe=False)
    if database:
        registry.register(DatabaseCollector())
    if observed is not None:  # a worker process, observing itself
        registry.register(observed)
        registry.register(FaultCollector())
    return registry


def _authorized(request: HttpRequest) -> bool:
    """With METRICS_TOKEN set, only a request bearing it may scrape."""
    token = get_settings().METRICS_TOKEN
    if not token:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Bytes, not text: compare_digest refuses non-ASCII text (a 500, and with DEBUG on, a
    # page that shows the settings).
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    """The Prometheus endpoint; 401 without the METRICS_TOKEN when one is set, 501 when
    prometheus-client is not installed."""
    if not _authorized(request):
        response = HttpResponse(
            "A bearer token is required (CONTAINER_MANAGER['METRICS_TOKEN']).\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    prometheus = _prometheus()
    if prometheus is None:
        return HttpResponse(MISSING, status=501, content_type="text/plain; charset=utf-8")
    body = prometheus.generate_latest(_registry(prometheus))
    return HttpResponse(body, content_type=prometheus.CONTENT_TYPE_LATEST)


def start_worker_metrics_server(port: int, addr: str = "127.0.0.1") -> Any:
    """Serve this worker process's observed histograms on ``addr:port`` (a daemon thread);
    returns prometheus-client's ``(server, thread)``: ``server.shutdown()`` stops it.

    The database figures are left to the web endpoint, so that N workers do not each query
    them."""
    prometheus = _prometheus()
    if prometheus is None:
        from .exceptions import ConfigurationError

        raise ConfigurationError(MISSING.strip())
    connect_signal_metrics()
    return prometheus.start_http_server(
        port, addr=addr, registry=_registry(prometheus, database=False)
    )
