"""Placement: open jobs go to a fitting, healthy host with room, least loaded by weight;
the reason is recorded; a job that fits nowhere waits with the reason visible."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from container_manager.executors.base import JobSpec
from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.health import declare_lost_jobs
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus, parse_labels
from container_manager.placement import HostRoom, OpenJob, choose_host, missing_labels
from container_manager.queue import claim, submit
from container_manager.worker import Worker


def room(name, busy=0, capacity=10, weight=100, labels=None, limits=True):
    return HostRoom(
        hash(name) % 1000,
        name,
        {"executor": "docker", **(labels or {})},
        weight,
        capacity,
        busy,
        limits,
    )


class TestChooseHost:
    def test_least_loaded_by_weight_wins(self):
        a, b = room("a", busy=2, weight=100), room("b", busy=3, weight=300)
        host, reason = choose_host(OpenJob(), [a, b])
        assert host is b
        assert reason.startswith("Placed on b: least loaded by weight among a (2/10, weight 100)")

    def test_labels_must_all_hold(self):
        gpu = room("gpu", busy=9, labels={"gpu": "true", "region": "eu"})
        plain = room("plain")
        host, _ = choose_host(OpenJob({"gpu": "true"}), [gpu, plain])
        assert host is gpu
        host, reason = choose_host(OpenJob({"gpu": "true", "region": "us"}), [gpu, plain])
        assert host is None
        assert reason == (
            "Waiting: no active, healthy host fits (labels required: gpu=true, region=us)."
        )

    def test_executor_is_an_implicit_label(self):
        host, _ = choose_host(OpenJob({"executor": "swarm"}), [room("a")])
        assert host is None

    def test_full_hosts_make_the_job_wait_with_their_load(self):
        host, reason = choose_host(OpenJob(), [room("a", busy=2, capacity=2)])
        assert host is None
        assert reason == "Waiting: every fitting host is full: a (2/2, weight 100)."

    def test_limits_need_an_executor_that_enforces_them(self):
        host, reason = choose_host(OpenJob(needs_limits=True), [room("x", limits=False)])
        assert host is None and "needs resource limits" in reason

    def test_missing_labels_and_parse(self):
        assert parse_labels(["gpu", "region=eu"]) == {"gpu": "true", "region": "eu"}
        assert missing_labels({"gpu": "true"}, {"gpu": "true"}) == []
        assert missing_labels({"gpu": "true"}, {}) == ["gpu=true"]


@pytest.mark.django_db
class TestClaimPlacement:
    def hosts(self, **kw):
        a = ExecutorHost.objects.create(
            name="a",
            connection_string="unix:///a.sock",
            executor_type="fake",
            weight=200,
            max_concurrent_jobs=100,
        )
        b = ExecutorHost.objects.create(
            name="b",
            connection_string="unix:///b.sock",
            executor_type="fake",
            weight=100,
            max_concurrent_jobs=100,
            labels={"gpu": "true"},
        )
        return a, b

    def test_open_jobs_spread_by_weight(self):
        self.hosts()
        for _ in range(30):
            submit(image="busybox", command="true")
        claimed = claim("w", 30)
        spread = Counter(c.job.docker_host.name for c in claimed)
        assert spread == {"a": 20, "b": 10}
        job = claimed[0].job
        assert job.auto_placed is True
        assert job.placement_reason.startswith(f"Placed on {job.docker_host.name}: least loaded")

    def test_required_labels_place_only_where_they_hold(self):
        self.hosts()
        jobs = [submit(image="busybox", command="true", labels=["gpu"]) for _ in range(5)]
        claimed = claim("w", 10)
        assert {c.job.docker_host.name for c in claimed} == {"b"}
        assert len(claimed) == 5 == len(jobs)

    def test_capacity_counts_jobs_of_every_worker(self):
        a, b = self.hosts()
        a.max_concurrent_jobs, b.max_concurrent_jobs = 2, 1
        a.save()
        b.save()
        for _ in range(6):
            submit(image="busybox", command="true")
        assert len(claim("w1", 10)) == 3
        assert claim("w2", 10) == []

    def test_no_fitting_host_waits_with_the_reason(self):
        self.hosts()
        job = submit(image="busybox", command="true", labels={"region": "mars"})
        assert claim("w", 5) == []
        job.refresh_from_db()
        assert job.status == JobStatus.QUEUED and job.docker_host is None
        assert "labels required: region=mars" in job.placement_reason

    def test_unhealthy_and_drained_hosts_get_no_jobs(self, settings):
        a, b = self.hosts()
        a.health_check_failures = 3
        a.save()
        b.is_active = False
        b.save()
        pinned = submit(image="busybox", command="true", host="a")
        submit(image="busybox", command="true")
        assert claim("w", 5) == []
        b.is_active = True
        b.save()
        claimed = claim("w", 5)
        assert [c.job.docker_host.name for c in claimed] == ["b"]
        pinned.refresh_from_db()
        assert pinned.status == JobStatus.QUEUED, "its host is unhealthy: it waits"

    def test_priority_orders_pinned_and_open_jobs_together(self):
        self.hosts()
        low = submit(image="busybox", command="true", host="a")
        high = submit(image="busybox", command="true", priority=5)
        assert [c.job.pk for c in claim("w", 1)] == [high.pk]
        assert [c.job.pk for c in claim("w", 1)] == [low.pk]


@pytest.mark.django_db(transaction=True)
def test_jobs_of_a_dead_host_are_declared_lost_and_rerun_elsewhere(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "UNHEALTHY_AFTER": 1,
        "HOST_LOST_AFTER": 0.5,
        "HEALTH_CHECK_INTERVAL": 0.1,
        "POLL_INTERVAL": 0.05,
        "RETRY_BACKOFF_BASE": 0.01,
    }
    a = ExecutorHost.objects.create(
        name="a", connection_string="unix:///a.sock", executor_type="fake", weight=1000
    )
    ExecutorHost.objects.create(name="b", connection_string="unix:///b.sock", executor_type="fake")
    engine_a = FakeExecutor.engine_for("unix:///a.sock")
    engine_b = FakeExecutor.engine_for("unix:///b.sock")
    engine_a.script(FakeOutcome(duration=60))
    engine_b.script(FakeOutcome(duration=0.2, stdout="ran on b"))
    job = submit(image="busybox", command="work")
    worker = Worker(concurrency=2, burst=True, shutdown_timeout=5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ContainerJob.objects.get(pk=job.pk).status != "running":
        time.sleep(0.02)
    assert ContainerJob.objects.get(pk=job.pk).docker_host == a
    engine_a.down = True
    thread.join(30)
    assert not thread.is_alive()
    job.refresh_from_db()
    assert (job.status, job.stdout_log, job.docker_host.name) == (
        JobStatus.COMPLETED,
        "ran on b",
        "b",
    )
    attempts = list(JobAttempt.objects.filter(job=job).order_by("number"))
    assert [(x.host.name, x.status) for x in attempts] == [("a", "failed"), ("b", "completed")]
    assert attempts[0].error.startswith("Lost: host a unreachable")
    assert declare_lost_jobs() == 0


@pytest.mark.django_db
def test_a_job_lost_before_its_container_started_still_gets_its_attempt_recorded(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "UNHEALTHY_AFTER": 1,
        "HOST_LOST_AFTER": 0.0,
    }
    host = ExecutorHost.objects.create(
        name="a", connection_string="unix:///a.sock", executor_type="fake"
    )
    job = submit(image="busybox", command="work", host=host)
    [claimed] = claim("w", 1)  # LAUNCHING, its worker cut off before writing the attempt
    ExecutorHost.objects.filter(pk=host.pk).update(
        health_check_failures=1, last_healthy_at=timezone.now() - timedelta(seconds=5)
    )

    assert declare_lost_jobs() == 1

    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    [attempt] = JobAttempt.objects.filter(job=job)
    assert (attempt.number, attempt.host, attempt.status) == (1, host, JobStatus.FAILED)
    assert attempt.container_name == JobSpec.from_job(claimed.job).name
    assert attempt.error.startswith("Lost: host a unreachable")
