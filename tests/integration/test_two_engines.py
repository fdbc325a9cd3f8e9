"""Two real engines: open jobs spread by weight and capacity; one engine stopped mid-run:
its waiting work goes to the other, its running jobs are declared lost and re-run there,
nothing is lost and nothing completes twice."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import claim, submit
from container_manager.worker import Worker
from tests.conftest import ENGINE_URL, session_containers
from tests.engines import started_engine

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]
IMAGE = "container-jobs/busybox:latest"


@pytest.fixture
def second(docker_client):
    engine = started_engine("second", extra=["--shutdown-timeout=1"])
    yield engine
    engine.destroy()


def hosts(second, *, main_weight=100, second_weight=100, capacity=4):
    main = ExecutorHost.objects.create(
        name="main",
        connection_string=ENGINE_URL,
        auto_pull_images=False,
        weight=main_weight,
        max_concurrent_jobs=capacity,
    )
    other = ExecutorHost.objects.create(
        name="second",
        connection_string=second.url,
        auto_pull_images=False,
        weight=second_weight,
        max_concurrent_jobs=capacity,
    )
    return main, other


def test_open_jobs_spread_by_weight_and_capacity(second):
    hosts(second, main_weight=300, second_weight=100, capacity=100)
    for _ in range(40):
        submit(image=IMAGE, command="true")
    spread = Counter(c.job.docker_host.name for c in claim("w", 40))
    assert spread == {"main": 30, "second": 10}
    ContainerJob.objects.update(status=JobStatus.CANCELLED)


def test_engine_stopped_mid_run_loses_nothing_and_runs_nothing_twice(
    second, settings, start_recorder
):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.1,
        "UNHEALTHY_AFTER": 1,
        "HEALTH_CHECK_INTERVAL": 0.3,
        "HOST_LOST_AFTER": 1.0,
        "RETRY_BACKOFF_BASE": 0.05,
    }
    _, other = hosts(second, capacity=3)
    jobs = [submit(image=IMAGE, command=f"sh -c 'sleep 2; echo done-{i}'") for i in range(12)]
    worker = Worker(concurrency=6, burst=True, shutdown_timeout=30)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            running = Counter(
                ContainerJob.objects.filter(status=JobStatus.RUNNING).values_list(
                    "docker_host__name", flat=True
                )
            )
            if running["main"] == 3 and running["second"] == 3:
                break
            time.sleep(0.05)
        assert running == {"main": 3, "second": 3}, "spread over both engines, capacity held"
        second.stop()
        thread.join(120)
        assert not thread.is_alive()
    finally:
        worker.stop()
        thread.join(30)
    for job in jobs:
        job.refresh_from_db()
    assert {j.status for j in jobs} == {JobStatus.COMPLETED}, [j.last_error for j in jobs]
    assert sorted(j.stdout_log for j in jobs) == sorted(f"done-{i}\n" for i in range(12))
    completed = JobAttempt.objects.filter(status=JobStatus.COMPLETED)
    assert sorted(Counter(completed.values_list("job_id", flat=True)).values()) == [1] * 12
    # The engine stopped their containers as it shut down (SIGTERM, exit 143) and went away:
    # an infrastructure failure, retried elsewhere (or, had the worker not seen the exit,
    # declared lost once the host stayed away for HOST_LOST_AFTER).
    ended_there = JobAttempt.objects.filter(host=other).exclude(status=JobStatus.COMPLETED)
    assert ended_there.count() == 3, "the three running there ended with the engine"
    why = ("Infrastructure failure: the engine stopped the container", "Lost: host second")
    assert all(error.startswith(why) for error in ended_there.values_list("error", flat=True))
    assert set(ended_there.values_list("job__docker_host__name", flat=True)) == {"main"}
    other.refresh_from_db()
    assert other.health_check_failures >= 1 and not other.is_healthy

    # The dead engine comes back with the lost attempts' containers: a worker's health pass
    # sees it recover and removes them; they are never recorded as a second run.
    second.start()
    with second.client() as client:
        assert len(session_containers(client)) == 3
    Worker(concurrency=1, burst=True).run()
    with second.client() as client:
        assert session_containers(client) == []
    other.refresh_from_db()
    assert other.is_healthy
    assert sorted(Counter(completed.values_list("job_id", flat=True)).values()) == [1] * 12
