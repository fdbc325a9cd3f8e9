"""A worker process outlives its database: a PostgreSQL server of the test's own is restarted
(``pg_ctl restart -m fast``) and, in the second test, stopped for longer than a lease, while
30 two-second jobs run at concurrency 6 on the real engine.

The worker process survives, every job ends completed, exactly 30 containers are started
(counted on the engine, live) and none is left. The test reads the database with psycopg:
the server is not the one pytest-django set up."""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import SESSION_LABEL, _require, session_containers
from tests.postgres import PrivatePostgres, find_bindir, manage, worker

pytestmark = pytest.mark.docker

JOBS = 30
CONCURRENCY = 6
LEASE = 2.0  # seconds: the long stop outlasts it three times over

SUBMIT = """
from container_manager.models import ExecutorHost
from container_manager.queue import submit
host = ExecutorHost.objects.create(
    name="local-engine", connection_string={engine!r}, executor_type="docker",
    auto_pull_images=False, max_concurrent_jobs=20,
)
for i in range({count}):
    submit(host=host, image={image!r}, command="sh -c 'sleep 2; echo done-%d'" % i)
"""


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[PrivatePostgres, str]]:
    """The private server, with a migrated template database."""
    bindir = find_bindir()
    if bindir is None:
        _require("no PostgreSQL server binaries (initdb, pg_ctl); set PG_BIN")
    # Not under pytest's tmp_path (0700, root's): the server may run as the postgres user.
    pg = PrivatePostgres(bindir, Path(tempfile.mkdtemp(prefix="cm-test-pg-")))
    try:
        pg.init()
        pg.start()
        manage(pg.create_database("template_jobs"), "migrate", "--verbosity", "0")
        yield pg, "template_jobs"
    finally:
        pg.destroy()


@pytest.fixture
def database(server: tuple[PrivatePostgres, str], request: Any) -> str:
    pg, template = server
    return pg.create_database(f"jobs_{request.node.name[5:30]}", template=template)


def statuses(url: str) -> dict[str, int]:
    """Jobs by status; {} while the database does not answer."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM container_manager_containerjob GROUP BY status"
            ).fetchall()
    except psycopg.OperationalError:
        return {}
    return dict(rows)


def wait_for(predicate: Any, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not reached in {timeout}s")


def run_through(
    url: str,
    fault: Any,
    *,
    image: str,
    engine: str,
    labels: dict[str, str],
    log: Path,
    start_recorder: Any,
) -> dict[str, Any]:
    """Submit the jobs, start a worker, apply ``fault`` once some jobs run, wait for every
    job's end, stop the worker with SIGTERM; what was observed."""
    manage(url, "shell", "-c", SUBMIT.format(engine=engine, count=JOBS, image=image))
    settings = {
        "CONTAINER_LABELS": labels,
        "LEASE_SECONDS": LEASE,
        "POLL_INTERVAL": 0.2,
        "STATS_INTERVAL": 5.0,
        "HEALTH_CHECK_INTERVAL": 1.0,
    }
    began = time.monotonic()
    process = worker(
        url, log, "--concurrency", str(CONCURRENCY), "--shutdown-timeout", "5", settings=settings
    )
    try:
        wait_for(lambda: statuses(url).get("running", 0) >= CONCURRENCY - 1, 60)
        fault()
        assert process.poll() is None, "the worker survived the fault"
        wait_for(lambda: statuses(url).get("completed", 0) == JOBS, 90)
        took = time.monotonic() - began
        process.send_signal(signal.SIGTERM)
        code = process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    with psycopg.connect(url) as conn:
        ids = [str(pk) for (pk,) in conn.execute("SELECT id FROM container_manager_containerjob")]
        attempts = conn.execute(
            "SELECT count(*), count(DISTINCT job_id) FROM container_manager_jobattempt"
        ).fetchone()
        outputs = {
            o for (o,) in conn.execute("SELECT stdout_log FROM container_manager_containerjob")
        }
    return {
        "code": code,
        "took": took,
        "statuses": statuses(url),
        "starts": start_recorder.per_job(ids),
        "attempts": attempts,
        "outputs": outputs,
        "log": log.read_text(),
    }


def check(observed: dict[str, Any], docker_client: Any, *, outages: range) -> None:
    worker_log = observed["log"]
    assert observed["code"] == 0, worker_log[-3000:]
    assert observed["statuses"] == {"completed": JOBS}
    assert observed["outputs"] == {f"done-{i}\n" for i in range(JOBS)}
    assert set(observed["starts"].values()) == {1}, "exactly one container per job"
    assert sum(observed["starts"].values()) == JOBS
    assert observed["attempts"] == (JOBS, JOBS), "one attempt each: an outage is no attempt"
    assert session_containers(docker_client) == [], "no container left"
    assert "Traceback" not in worker_log, worker_log[-3000:]
    # A line each way per outage, not per attempt (stale connections that reconnect at once
    # say nothing). A restart may read as two: the server answers for a moment while it stops;
    # or as none, when every connection it dropped reconnected at once (seen once).
    said = [line for line in worker_log.splitlines() if "database" in line]
    lost = sum("database unreachable" in line for line in said)
    assert lost in outages, said
    assert sum("database back" in line for line in said) == lost, said


@pytest.fixture
def run(database, test_image, settings, start_recorder, tmp_path) -> Any:
    from tests.conftest import ENGINE_URL

    labels = {SESSION_LABEL: settings.CONTAINER_MANAGER["CONTAINER_LABELS"][SESSION_LABEL]}

    def go(fault: Any) -> dict[str, Any]:
        return run_through(
            database,
            fault,
            image=test_image,
            engine=ENGINE_URL,
            labels=labels,
            log=tmp_path / "worker.log",
            start_recorder=start_recorder,
        )

    return go


def test_a_fast_restart_of_postgresql_loses_no_job_and_runs_none_twice(server, run, docker_client):
    pg, _ = server
    observed = run(pg.restart_fast)
    check(observed, docker_client, outages=range(3))
    print(f"restart: {JOBS} jobs in {observed['took']:.1f}s")


def test_postgresql_stopped_for_longer_than_a_lease(server, run, docker_client):
    pg, _ = server

    def stop_for_three_leases() -> None:
        pg.stop()
        time.sleep(3 * LEASE)
        pg.start()

    observed = run(stop_for_three_leases)
    check(observed, docker_client, outages=range(1, 3))
    print(f"stop: {JOBS} jobs in {observed['took']:.1f}s")
