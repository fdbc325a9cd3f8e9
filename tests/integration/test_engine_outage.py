"""An engine outage loses nothing: on a dedicated engine (live restore on), a running job
stays RUNNING while the engine is down and completes when it answers again; waiting jobs
wait. The worker never crashes and never fails a job because of the outage."""

from __future__ import annotations

import threading
import time

import pytest

from container_manager.models import ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker
from tests.conftest import until
from tests.engines import started_engine

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def engine(docker_client):
    engine = started_engine("outage", live_restore=True)
    yield engine
    engine.destroy()


def test_outage_loses_nothing_and_runs_nothing_twice(engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "POLL_INTERVAL": 0.1}
    host = ExecutorHost.objects.create(
        name="outage", connection_string=engine.url, auto_pull_images=False, max_concurrent_jobs=1
    )
    image = "container-jobs/busybox:latest"
    running = submit(host=host, image=image, command="sh -c 'sleep 4; echo survived'")
    waiting = [submit(host=host, image=image, command=f"echo waited-{i}") for i in range(2)]
    worker = Worker(concurrency=2, burst=True, shutdown_timeout=30)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: _status(running) == JobStatus.RUNNING)
        engine.stop()
        time.sleep(2.5)
        assert _status(running) == JobStatus.RUNNING, "not failed while its container may run"
        assert {_status(j) for j in waiting} == {JobStatus.QUEUED}, "waiting jobs wait"
        assert thread.is_alive(), "the worker did not crash"
        engine.start()
        thread.join(60)
        assert not thread.is_alive()
    finally:
        worker.stop()
        thread.join(30)
    running.refresh_from_db()
    assert (running.status, running.stdout_log) == (JobStatus.COMPLETED, "survived\n")
    for job in waiting:
        job.refresh_from_db()
        assert job.status == JobStatus.COMPLETED
    assert JobAttempt.objects.filter(job__docker_host=host).count() == 3, "one attempt each"


def _status(job):
    job.refresh_from_db(fields=["status"])
    return job.status
