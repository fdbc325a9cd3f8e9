"""Launches that do not reach running within START_TIMEOUT (the host's override first): the
worker gives up, removes what the stuck call leaves, records why and retries under the
job's policy (elsewhere when the queue placed it); the stuck call never holds the worker."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker
from tests.conftest import until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def fast(settings: Any, quick_retries: None) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "START_TIMEOUT": 0.5}


class StuckRuns:
    """Makes FakeExecutor.run hang (as an engine stuck on a create does) on the engines
    named, until released; then the call goes through, late."""

    def __init__(self, monkeypatch: Any, *urls: str, on_stuck: Any = None) -> None:
        self.release = threading.Event()
        self.stuck = 0
        self.late_ids: list[str] = []
        run = FakeExecutor.run

        def stuck_run(executor: FakeExecutor, spec: Any) -> str:
            if executor.base_url not in urls:
                return run(executor, spec)
            self.stuck += 1
            if on_stuck is not None:
                on_stuck()
            self.release.wait(30)
            container_id = run(executor, spec)
            self.late_ids.append(container_id)
            return container_id

        monkeypatch.setattr(FakeExecutor, "run", stuck_run)


def test_a_stuck_launch_is_given_up_and_retried(fake_host: Any, monkeypatch: Any) -> None:
    stuck = StuckRuns(monkeypatch, fake_host.connection_string)
    job = submit(host=fake_host, image="busybox:latest", command="echo hi", max_retries=1)
    began = time.monotonic()
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    took = time.monotonic() - began
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED, "both attempts stuck: out of retries"
    assert stuck.stuck == 2 and took < 5, "each stuck call was let go after START_TIMEOUT"
    errors = list(JobAttempt.objects.filter(job=job).order_by("number").values_list("error"))
    expected = "Launch did not reach running within 0.5s (the engine did not answer); given up."
    assert errors == [(expected,), (expected,)]
    assert job.last_error == expected


def test_a_stuck_calls_late_container_is_removed(fake_host: Any, monkeypatch: Any) -> None:
    stuck = StuckRuns(monkeypatch, fake_host.connection_string)
    job = submit(host=fake_host, image="busybox:latest", command="echo hi")
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    stuck.release.set()  # the engine answers at last: the container it made is unwanted
    engine = FakeExecutor.engine_for(fake_host.connection_string)
    until(lambda: len(stuck.late_ids) == 1)
    until(lambda: stuck.late_ids[0] not in engine.containers)


def test_the_hosts_start_timeout_overrides_the_setting(
    fake_host: Any, monkeypatch: Any, settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "START_TIMEOUT": 60}
    fake_host.start_timeout = 1
    fake_host.save()
    StuckRuns(monkeypatch, fake_host.connection_string)
    job = submit(host=fake_host, image="busybox:latest", command="echo hi")
    began = time.monotonic()
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    assert time.monotonic() - began < 10
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.last_error.startswith("Launch did not reach running within 1s")


def test_a_placed_job_stuck_on_one_host_is_retried_on_another(monkeypatch: Any) -> None:
    stuck_host = ExecutorHost.objects.create(
        name="stuck", connection_string="unix:///fake/stuck.sock", executor_type="fake"
    )
    other = ExecutorHost.objects.create(  # takes jobs once the first launch is stuck
        name="other", connection_string="unix:///fake/other.sock", executor_type="fake",
        is_active=False,
    )  # fmt: skip
    FakeExecutor.engine_for(other.connection_string).script(FakeOutcome(stdout="ran\n"))
    StuckRuns(
        monkeypatch,
        stuck_host.connection_string,
        on_stuck=lambda: ExecutorHost.objects.filter(pk=other.pk).update(is_active=True),
    )
    job = submit(image="busybox:latest", command="echo hi", max_retries=1)
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    job.refresh_from_db()
    assert (job.status, job.stdout_log, job.docker_host) == (JobStatus.COMPLETED, "ran\n", other)
    attempts = JobAttempt.objects.filter(job=job).order_by("number")
    assert list(attempts.values_list("host__name", "status")) == [
        ("stuck", JobStatus.FAILED), ("other", JobStatus.COMPLETED)
    ]  # fmt: skip


def test_other_jobs_run_while_a_launch_is_stuck(fake_host: Any, monkeypatch: Any) -> None:
    stuck_host = ExecutorHost.objects.create(
        name="stuck", connection_string="unix:///fake/stuck.sock", executor_type="fake"
    )
    StuckRuns(monkeypatch, stuck_host.connection_string)
    FakeExecutor.engine_for(fake_host.connection_string).script(FakeOutcome(stdout="ok\n"))
    stuck = submit(host=stuck_host, image="busybox:latest", command="echo hi")
    ordinary = [submit(host=fake_host, image="busybox:latest", command="echo") for _ in range(3)]
    Worker(concurrency=2, burst=True, shutdown_timeout=5).run()
    for job in ordinary:
        job.refresh_from_db()
        assert job.status == JobStatus.COMPLETED
    stuck.refresh_from_db()
    assert stuck.status == JobStatus.FAILED
