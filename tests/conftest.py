"""Shared fixtures.

Real services: a test that needs the Docker engine uses ``docker_client`` / ``engine_host``;
when no engine answers it is skipped locally and FAILS under CI (``CI`` set), so a missing
service can never pass silently. Every container the tests create carries the label
``container_manager.test-session=<id>`` and is removed at the end of the session; nothing
else is touched.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from container_manager.executors import reset_executors
from container_manager.executors.fake import FakeExecutor

ENGINE_URL = os.environ.get("CONTAINER_JOBS_TEST_ENGINE", "unix:///var/run/docker.sock")
SESSION_LABEL = "container_manager.test-session"
SESSION_ID = uuid.uuid4().hex[:12]


def _require(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"required service missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _isolation(settings: Any) -> Iterator[None]:
    """Label every container with this session's id; fresh executors and fake engines."""
    settings.CONTAINER_MANAGER = {
        **getattr(settings, "CONTAINER_MANAGER", {}),
        "CONTAINER_LABELS": {SESSION_LABEL: SESSION_ID},
    }
    reset_executors()
    FakeExecutor.reset()
    yield
    reset_executors()
    FakeExecutor.reset()


@pytest.fixture(autouse=True)
def _no_worker_left_running(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stop every Worker a test ran, even when the test failed before stopping it: a worker
    thread left running would keep the test process from exiting (a hang, not a failure)."""
    from container_manager.worker import Worker

    ran: list[Worker] = []
    run = Worker.run

    def recorded(self: Worker, *args: Any, **kwargs: Any) -> Any:
        ran.append(self)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Worker, "run", recorded)
    yield
    for worker in ran:
        worker.stop()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A raw Docker SDK client for the test engine, with the offline test image built."""
    import docker

    from container_manager.testing.images import build_busybox_image

    try:
        client = docker.DockerClient(base_url=ENGINE_URL, timeout=30)
        client.ping()
    except Exception as err:  # noqa: BLE001 - any failure means: no engine here
        _require(f"no Docker engine answers at {ENGINE_URL}: {err}")
    build_busybox_image(client)
    yield client
    for container in client.containers.list(
        all=True, filters={"label": f"{SESSION_LABEL}={SESSION_ID}"}
    ):
        container.remove(force=True)
    client.close()


@pytest.fixture
def test_image(docker_client: Any) -> str:
    from container_manager.testing.images import TEST_IMAGE

    return TEST_IMAGE


@pytest.fixture
def engine_host(db: Any, docker_client: Any) -> Any:
    """An ExecutorHost row for the real test engine (images are local: no pulls)."""
    from container_manager.models import ExecutorHost

    return ExecutorHost.objects.create(
        name="local-engine",
        connection_string=ENGINE_URL,
        executor_type="docker",
        auto_pull_images=False,
        max_concurrent_jobs=20,
    )


@pytest.fixture
def fake_host(db: Any) -> Any:
    from container_manager.models import ExecutorHost

    return ExecutorHost.objects.create(
        name="fake-engine", connection_string="unix:///fake/engine.sock", executor_type="fake"
    )


# A job that outgrows a small memory limit. It waits a second first: a container the kernel
# kills within milliseconds of its start can be reported without its OOM (the shim watches
# the cgroup's OOM events only from a moment after the start; containerd issue 8180), which
# a loaded CI machine made happen. Jobs that run out of memory later are reported whole.
OOM_COMMAND = ["sh", "-c", "sleep 1; x=a; while true; do x=$x$x; done"]


def until(predicate: Any, timeout: float = 30.0, interval: float = 0.02) -> None:
    """Wait until ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"condition not reached in {timeout}s")


def session_containers(client: Any) -> list[Any]:
    """Containers this test session created on the engine behind ``client``."""
    return client.containers.list(all=True, filters={"label": f"{SESSION_LABEL}={SESSION_ID}"})


def job_containers(client: Any, *jobs: Any) -> list[Any]:
    """Containers of these jobs (by the app's job label) in this session's containers: a test
    that asserts on its own jobs is not disturbed by what another test left behind."""
    ids = {str(job.pk) for job in jobs}
    return [c for c in session_containers(client) if c.labels.get("container_manager.job") in ids]


class StartRecorder:
    """Counts container ``start`` events per job label, live (the engine keeps only its last
    256 events, so counting afterwards loses some)."""

    def __init__(self, client: Any) -> None:
        import threading

        self.counts: dict[str, int] = {}
        self._stream = client.events(
            decode=True,
            filters={"event": "start", "label": f"{SESSION_LABEL}={SESSION_ID}"},
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                job = event.get("Actor", {}).get("Attributes", {}).get("container_manager.job")
                if job:
                    self.counts[job] = self.counts.get(job, 0) + 1
        except Exception:  # noqa: BLE001 - the stream ends with an error when closed
            return

    def per_job(self, job_ids: Any, settle: float = 1.0) -> dict[str, int]:
        """Start counts for ``job_ids`` (0 for a job never started), after ``settle`` s."""
        import time

        time.sleep(settle)
        return {str(job_id): self.counts.get(str(job_id), 0) for job_id in job_ids}

    def close(self) -> None:
        self._stream.close()


@pytest.fixture
def start_recorder(docker_client: Any) -> Iterator[StartRecorder]:
    recorder = StartRecorder(docker_client)
    yield recorder
    recorder.close()


@pytest.fixture(scope="session", autouse=True)
def _no_sessions_left_on_the_test_database(django_db_setup: Any) -> Iterator[None]:
    """Before the PostgreSQL test database is dropped, give threads that are still closing
    their connections (a worker's side threads) a moment, and name any session that stays:
    Django cannot drop a database that is in use."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    import time

    import psycopg

    params = {**connection.get_connection_params(), "dbname": "postgres"}
    query = (
        "SELECT pid, state, left(query, 200) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    name = connection.settings_dict["NAME"]
    connection.close()
    with psycopg.connect(**params, autocommit=True) as admin:
        deadline = time.monotonic() + 10
        while (left := admin.execute(query, (name,)).fetchall()) and time.monotonic() < deadline:
            time.sleep(0.2)
    if left:
        import warnings

        warnings.warn(f"sessions still on test database {name}: {left}", stacklevel=1)


@pytest.fixture
def quick_retries(settings: Any) -> None:
    """Worker settings for tests that watch retries: short polls and backoffs."""
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
    }


def output_seen_running(job: Any, timeout: float, *, stderr: bool) -> list[tuple[str, str]]:
    """Run a burst Worker (one slot) in a thread until ``job`` ended; the first (stdout,
    stderr) recorded on the job while it was running (with some stderr too, if ``stderr``),
    as a list of one ([] if none was)."""
    import threading
    import time

    from container_manager.models import JobStatus
    from container_manager.worker import Worker

    worker = Worker(concurrency=1, burst=True, shutdown_timeout=10)
    thread = threading.Thread(target=worker.run)
    thread.start()
    seen = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not seen:
            job.refresh_from_db()
            if (
                job.status == JobStatus.RUNNING
                and job.stdout_log
                and (job.stderr_log or not stderr)
            ):
                seen.append((job.stdout_log, job.stderr_log))
            time.sleep(0.05)
    finally:
        thread.join(timeout + 10)
    return seen
