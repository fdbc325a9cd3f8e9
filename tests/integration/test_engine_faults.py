"""Engine faults a worker rides out, on real engines: an engine that accepts a connection and
never answers (as Docker 20.10 stuck on a container create does) costs a launch its
START_TIMEOUT, not the worker; an engine restarted under running jobs (live restore off: it
stops their containers) is an infrastructure failure, retried without counting against the
jobs' max_retries."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from container_manager.models import ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker
from tests.conftest import job_containers, until
from tests.engines import started_engine

pytestmark = [
    pytest.mark.docker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("quick_retries"),
]

IMAGE = "container-jobs/busybox:latest"


@pytest.fixture
def silent_engine(tmp_path: Path) -> Iterator[str]:
    """A unix socket that accepts connections, reads what it is sent, and never answers."""
    path = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"unix://{path}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    server.close()


def test_an_engine_that_never_answers_costs_a_launch_its_start_timeout(
    silent_engine: str, engine_host: Any, settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER, "START_TIMEOUT": 60, "ENGINE_TIMEOUT": 120,
    }  # fmt: skip
    silent = ExecutorHost.objects.create(
        name="silent", connection_string=silent_engine, start_timeout=2, auto_pull_images=False
    )
    stuck = submit(host=silent, image=IMAGE, command="echo never", max_retries=0)
    fine = [submit(host=engine_host, image=IMAGE, command=f"echo fine-{i}") for i in range(3)]
    began = time.monotonic()
    Worker(concurrency=2, burst=True, shutdown_timeout=5).run()
    took = time.monotonic() - began
    stuck.refresh_from_db()
    assert stuck.status == JobStatus.FAILED
    assert stuck.last_error == (
        "Launch did not reach running within 2s (the engine did not answer); given up."
    )
    assert took < 30, f"the worker was held up for {took:.0f}s"
    for job in fine:
        job.refresh_from_db()
        assert (job.status, job.stdout_log) == (JobStatus.COMPLETED, f"{job.command[5:]}\n")
    [attempt] = JobAttempt.objects.filter(job=stuck)
    assert (attempt.status, attempt.host) == (JobStatus.FAILED, silent)


@pytest.fixture
def restartable(docker_client: Any) -> Iterator[Any]:
    engine = started_engine("restart")  # live restore off: a restart stops the containers
    yield engine
    engine.destroy()


def test_an_engine_restarted_under_running_jobs_is_an_infrastructure_failure(
    restartable: Any, settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "HOST_LOST_AFTER": 600.0}
    host = ExecutorHost.objects.create(
        name="restart", connection_string=restartable.url, auto_pull_images=False
    )
    jobs = [
        submit(host=host, image=IMAGE, command=f"sh -c 'sleep 3; echo done-{i}'", max_retries=0)
        for i in range(2)
    ]
    worker = Worker(concurrency=2, burst=True, shutdown_timeout=30)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: all(_status(j) == JobStatus.RUNNING for j in jobs))
        restartable.stop()
        restartable.start()
        thread.join(90)
        assert not thread.is_alive()
    finally:
        worker.stop()
        thread.join(30)
    for i, job in enumerate(jobs):
        job.refresh_from_db()
        errors = list(JobAttempt.objects.filter(job=job).values_list("error", flat=True))
        assert (job.status, job.stdout_log) == (JobStatus.COMPLETED, f"done-{i}\n"), errors
        assert (job.attempt_count, job.infrastructure_retries) == (2, 1)
        first = JobAttempt.objects.get(job=job, number=1)
        assert first.error.startswith("Infrastructure failure: the engine stopped the container")
    with restartable.client() as client:  # the killed attempts' containers are removed too
        until(lambda: job_containers(client, *jobs) == [])


def _status(job: Any) -> str:
    job.refresh_from_db(fields=["status"])
    return str(job.status)


def test_a_job_that_dies_of_sigterm_on_a_steady_engine_failed_by_itself(
    engine_host: Any, settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_SHUTDOWN_PROBE": 1.0}
    job = submit(host=engine_host, image=IMAGE, command="sh -c 'kill -TERM $$'", max_retries=0)
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    job.refresh_from_db()
    assert (job.status, job.exit_code, job.last_error) == (
        JobStatus.FAILED, 143, "Exited with code 143."
    )  # fmt: skip
    assert job.infrastructure_retries == 0
