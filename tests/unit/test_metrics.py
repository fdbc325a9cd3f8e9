"""The Prometheus endpoint, scraped with the test client and parsed with prometheus-client's
own parser; the signal-fed histograms of a worker process; the optional import."""

from __future__ import annotations

import re
import socket
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.urls import reverse
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from container_manager import metrics
from container_manager.models import ContainerJob, ExecutorHost, JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker

pytestmark = [pytest.mark.urls("demo.urls"), pytest.mark.django_db]


def scrape(client):
    response = client.get(reverse("container_manager:metrics"))
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    return parse(response.content.decode())


def parse(text):
    """{(sample name, frozenset(labels)): value}"""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def job(host, status, *, created_ago=0.0, start_after=None, run_for=None, **fields):
    """A job that lived its life up to ``status`` through status changes (UPDATEs), as the
    worker's transitions make them: the tally's trigger counts it as it goes."""
    now = timezone.now()
    created = now - timedelta(seconds=created_ago)
    first = JobStatus.LAUNCHING if status == JobStatus.LAUNCHING else JobStatus.QUEUED
    made = ContainerJob.objects.create(
        docker_host=host, docker_image="busybox:latest", status=first, created_at=created,
        **fields,
    )  # fmt: skip
    rows = ContainerJob.objects.filter(pk=made.pk)
    started = created + timedelta(seconds=start_after) if start_after is not None else None
    if started is not None:
        rows.update(status=JobStatus.RUNNING, started_at=started)
    if JobStatus(status).is_terminal:
        completed = started + timedelta(seconds=run_for) if run_for is not None else now
        rows.update(status=status, completed_at=completed)
    return made


def finished(samples, host, status):
    return samples[
        ("container_jobs_finished_total", frozenset({("host", host), ("status", status)}))
    ]


def test_jobs_by_status_and_queue_depth(client, fake_host):
    job(fake_host, JobStatus.QUEUED)
    job(fake_host, JobStatus.QUEUED, run_after=timezone.now() + timedelta(hours=1))
    job(fake_host, JobStatus.RUNNING, start_after=1)
    for _ in range(3):
        job(fake_host, JobStatus.FAILED, start_after=1, run_for=1)
    samples = scrape(client)
    live = ("queued", "launching", "running")
    status = {
        s: samples.get(("container_jobs_jobs", frozenset({("status", s)})))
        for s in JobStatus.values
    }
    assert status == {
        **dict.fromkeys(JobStatus.values, None),  # ended jobs are counters, not gauges
        **dict.fromkeys(live, 0.0),
        "queued": 2,
        "running": 1,
    }
    assert finished(samples, "fake-engine", "failed") == 3
    assert samples[("container_jobs_queue_depth", frozenset({("scope", "queued")}))] == 2
    assert samples[("container_jobs_queue_depth", frozenset({("scope", "due")}))] == 1


def test_finished_jobs_are_counters_that_pruning_never_lowers(client, fake_host):
    from container_manager.reaper import prune_jobs

    old = [job(fake_host, JobStatus.COMPLETED, start_after=1, run_for=1) for _ in range(3)]
    job(None, JobStatus.CANCELLED)  # cancelled before it was placed
    before = scrape(client)
    assert finished(before, "fake-engine", "completed") == 3
    assert finished(before, "(not placed yet)", "cancelled") == 1
    ContainerJob.objects.filter(pk__in=[j.pk for j in old]).update(
        completed_at=timezone.now() - timedelta(days=30)
    )
    assert prune_jobs(timedelta(days=7)) == 3
    job(fake_host, JobStatus.COMPLETED, start_after=1, run_for=1)
    after = scrape(client)
    assert finished(after, "fake-engine", "completed") == 4
    assert after[("container_jobs_duration_seconds_count", frozenset())] == 4


def test_launch_latency_and_duration_histograms(client, fake_host):
    job(fake_host, JobStatus.COMPLETED, created_ago=600, start_after=0.3, run_for=4)
    job(fake_host, JobStatus.FAILED, created_ago=600, start_after=20, run_for=100)
    job(fake_host, JobStatus.RUNNING, created_ago=600, start_after=3)
    job(fake_host, JobStatus.QUEUED)
    samples = scrape(client)

    def bucket(name, le):
        return samples[(f"{name}_bucket", frozenset({("le", le)}))]

    latency = "container_jobs_launch_latency_seconds"
    assert (bucket(latency, "0.25"), bucket(latency, "0.5"), bucket(latency, "5.0")) == (0, 1, 2)
    assert (bucket(latency, "30.0"), bucket(latency, "+Inf")) == (3, 3)
    assert samples[(f"{latency}_count", frozenset())] == 3
    assert samples[(f"{latency}_sum", frozenset())] == pytest.approx(23.3)
    duration = "container_jobs_duration_seconds"
    assert (bucket(duration, "1.0"), bucket(duration, "5.0"), bucket(duration, "300.0")) == (
        0,
        1,
        2,
    )
    assert samples[(f"{duration}_count", frozenset())] == 2, "only ended jobs"
    assert samples[(f"{duration}_sum", frozenset())] == pytest.approx(104)


def test_host_health_and_load(client, fake_host, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "UNHEALTHY_AFTER": 3}
    ExecutorHost.objects.create(
        name="sick", connection_string="unix:///sick.sock", health_check_failures=4,
        max_concurrent_jobs=2,
    )  # fmt: skip
    job(fake_host, JobStatus.RUNNING, start_after=1)
    job(fake_host, JobStatus.LAUNCHING)
    samples = scrape(client)

    def host(name, value):
        return samples[(f"container_jobs_host_{name}", frozenset({("host", value)}))]

    assert (host("healthy", "fake-engine"), host("healthy", "sick")) == (1, 0)
    assert host("health_check_failures", "sick") == 4
    assert (host("running_jobs", "fake-engine"), host("capacity", "fake-engine")) == (2, 10)
    assert (host("running_jobs", "sick"), host("capacity", "sick")) == (0, 2)


def test_worker_heartbeats(client, fake_host):
    from container_manager.models import WorkerHeartbeat

    seen = timezone.now() - timedelta(seconds=7)
    WorkerHeartbeat.objects.create(worker_id="w-1", running_jobs=2, last_seen=seen)
    WorkerHeartbeat.objects.create(worker_id="idle", running_jobs=0)
    samples = scrape(client)
    last = ("container_jobs_worker_last_seen_timestamp_seconds", frozenset({("worker", "w-1")}))
    assert samples[last] == pytest.approx(seen.timestamp(), abs=0.01)
    assert samples[("container_jobs_worker_jobs", frozenset({("worker", "w-1")}))] == 2
    assert samples[("container_jobs_worker_jobs", frozenset({("worker", "idle")}))] == 0


def test_a_scrape_is_a_fixed_number_of_queries(client, fake_host, django_assert_num_queries):
    for status in JobStatus:
        job(fake_host, status, start_after=1)
    with django_assert_num_queries(5):
        scrape(client)
    for status in JobStatus:  # more history, the same queries
        job(fake_host, status, start_after=1)
    with django_assert_num_queries(5):
        scrape(client)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Basic s3cret-token", 401),
        ("Bearer s3cr\u00e9t-token", 401),
        ("Bearer \u2603", 401),
        ("Bearer s3cret-token", 200),
        ("bearer s3cret-token", 200),
    ],
)
def test_with_a_metrics_token_only_its_bearer_may_scrape(client, settings, header, status):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "METRICS_TOKEN": "s3cret-token"}
    extra = {} if header is None else {"HTTP_AUTHORIZATION": header}

    response = client.get(reverse("container_manager:metrics"), **extra)

    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert b"container_jobs_" not in response.content
        assert b"s3cret" not in response.content
    else:
        samples = parse(response.content.decode())
        assert samples[("container_jobs_queue_depth", frozenset({("scope", "queued")}))] == 0


def test_without_prometheus_client_the_endpoint_answers_501(client, monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import now raises ImportError
    response = client.get(reverse("container_manager:metrics"))
    assert response.status_code == 501
    assert b"pip install 'django-container-jobs[metrics]'" in response.content


def test_no_other_module_of_the_app_imports_prometheus_client():
    package = Path(metrics.__file__).parent
    importers = {
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if re.search(r"^\s*(from|import) prometheus_client", path.read_text(), re.M)
    }
    assert importers == {"metrics.py"}
    source = Path(metrics.__file__).read_text()
    assert not re.search(r"^(from|import) prometheus_client", source, re.M), "lazy imports only"


@pytest.fixture
def observed():
    collector = metrics.connect_signal_metrics()
    yield collector
    metrics.disconnect_signal_metrics()


@pytest.mark.django_db(transaction=True)
def test_signal_fed_histograms_observe_a_worker_run(client, fake_host, observed, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "POLL_INTERVAL": 0.05}
    assert metrics.connect_signal_metrics() is observed, "idempotent"
    for command in ("echo one", "echo two"):
        submit(host=fake_host, image="busybox:latest", command=command)
    Worker(concurrency=2, burst=True, shutdown_timeout=5).run()
    samples = scrape(client)
    latency = "container_jobs_observed_launch_latency_seconds"
    assert samples[(f"{latency}_count", frozenset())] == 2
    assert samples[(f"{latency}_bucket", frozenset({("le", "+Inf")}))] == 2
    done = frozenset({("status", "completed")})
    assert samples[("container_jobs_observed_duration_seconds_count", done)] == 2


def test_a_worker_serves_its_observed_histograms(observed):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server, thread = metrics.start_worker_metrics_server(port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
    finally:
        server.shutdown()
        thread.join(5)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "container_jobs_observed_launch_latency_seconds" in names
    assert "container_jobs_jobs" not in names, "the database figures are the web endpoint's"


def test_check_warns_when_metrics_are_open_without_debug(settings):
    from container_manager.checks import check_metrics_token

    settings.DEBUG = False
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "METRICS_TOKEN": None}
    assert [m.id for m in check_metrics_token()] == ["container_manager.W004"]
    settings.DEBUG = True
    assert check_metrics_token() == []
    settings.DEBUG = False
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "METRICS_TOKEN": "t0ken"}
    assert check_metrics_token() == []
