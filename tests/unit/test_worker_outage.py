"""The worker through database outages (simulated: every query of the worker's threads fails
as a dropped connection does) and its adoption of jobs held by dead workers."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import InterfaceError, OperationalError
from django.db.backends import utils as db_utils
from django.utils import timezone

from container_manager.executors import get_executor
from container_manager.executors.base import JobSpec
from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, JobAttempt, JobStatus, WorkerHeartbeat
from container_manager.outage import ADOPTIONS, OUTAGE, backoff, is_outage
from container_manager.queue import adopt_expired, claim, submit
from container_manager.runner import JobRunner, RunControl
from container_manager.worker import Worker, release_dead_holders
from tests.conftest import until

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_URL = "unix:///fake/engine.sock"


class Database:
    """Takes the database away from every thread but the test's own."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.refused = 0
        self.test_thread = threading.get_ident()

    def check(self) -> None:
        if self.down.is_set() and threading.get_ident() != self.test_thread:
            self.refused += 1
            message = "terminating connection due to administrator command"
            raise OperationalError(message) from psycopg.errors.AdminShutdown(message)


@pytest.fixture
def database(monkeypatch: Any) -> Iterator[Database]:
    db = Database()
    execute, executemany = db_utils.CursorWrapper._execute, db_utils.CursorWrapper._executemany

    def _execute(self: Any, *args: Any) -> Any:
        db.check()
        return execute(self, *args)

    def _executemany(self: Any, *args: Any) -> Any:
        db.check()
        return executemany(self, *args)

    monkeypatch.setattr(db_utils.CursorWrapper, "_execute", _execute)
    monkeypatch.setattr(db_utils.CursorWrapper, "_executemany", _executemany)
    OUTAGE.reset()
    yield db
    db.down.clear()
    OUTAGE.reset()


@pytest.fixture
def engine() -> Any:
    return FakeExecutor.engine_for(FAKE_URL)


@pytest.fixture(autouse=True)
def fast(settings: Any) -> None:
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
        "POLL_INTERVAL": 0.05,
        "STATS_INTERVAL": 0.05,
        "LEASE_SECONDS": 30.0,
        "HEALTH_CHECK_INTERVAL": 0.2,
    }


def job(host: Any, command: str = "echo hi") -> ContainerJob:
    return submit(host=host, image="busybox:latest", command=command)


def fresh(j: ContainerJob) -> ContainerJob:
    j.refresh_from_db()
    return j


def outage_lines(caplog: Any) -> tuple[list[str], list[str]]:
    lost = [r.getMessage() for r in caplog.records if "database unreachable" in r.getMessage()]
    back = [r.getMessage() for r in caplog.records if "database back" in r.getMessage()]
    return lost, back


def test_backoff_doubles_and_is_capped():
    assert [backoff(n) for n in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff(50) == 5.0


def sqlite_error(code: int) -> OperationalError:
    cause = sqlite3.OperationalError("x")
    cause.sqlite_errorcode = code
    err = OperationalError("x")
    err.__cause__ = cause
    return err


def test_an_outage_is_a_lost_or_refused_connection_not_a_wrong_query():
    refused = OperationalError("connection refused")
    refused.__cause__ = psycopg.OperationalError("connection refused")  # no SQLSTATE
    shutdown = OperationalError("x")
    shutdown.__cause__ = psycopg.errors.AdminShutdown("x")
    missing = OperationalError("x")
    missing.__cause__ = psycopg.errors.UndefinedTable("x")
    assert is_outage(refused) and is_outage(shutdown) and is_outage(InterfaceError("closed"))
    assert is_outage(sqlite_error(5)), "SQLITE_BUSY"
    assert not is_outage(missing)
    assert not is_outage(sqlite_error(1)), "no such table"
    assert not is_outage(ValueError("x"))


def test_jobs_ride_out_an_outage_and_are_recorded_once_it_ends(fake_host, engine, database, caplog):
    caplog.set_level(logging.INFO, logger="container_manager")
    engine.script(FakeOutcome(duration=0.6, stdout="done"))
    jobs = [job(fake_host) for _ in range(4)]
    worker = Worker(concurrency=4, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    until(lambda: all(fresh(j).status == JobStatus.RUNNING for j in jobs))
    database.down.set()
    time.sleep(1.5)  # the containers exit meanwhile: their results wait for the database
    assert thread.is_alive(), "the worker survived the outage"
    assert {fresh(j).status for j in jobs} == {JobStatus.RUNNING}
    assert len(engine.containers) == 4, "exited containers kept for their results"
    database.down.clear()
    until(lambda: all(fresh(j).status == JobStatus.COMPLETED for j in jobs), timeout=15)
    beat = WorkerHeartbeat.objects.filter(worker_id=worker.worker_id)
    until(lambda: beat.filter(degraded__startswith="database unreachable since ").exists())
    assert beat.get().degraded.endswith("s"), "how long it lasted"
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert database.refused > 4, "every thread kept trying"
    assert {fresh(j).stdout_log for j in jobs} == {"done"}
    assert engine.calls.count("run") == 4, "no container started twice"
    assert JobAttempt.objects.filter(status=JobStatus.COMPLETED).count() == 4
    assert engine.containers == {}
    lost, back = outage_lines(caplog)
    assert (len(lost), len(back)) == (1, 1), (lost, back)
    assert OUTAGE.outages == 1
    assert not [r for r in caplog.records if r.exc_info], "no traceback for an outage"


def test_a_worker_started_during_an_outage_waits_for_the_database(fake_host, engine, database):
    j = job(fake_host, "echo late")
    database.down.set()
    threading.Timer(1.0, database.down.clear).start()
    worker = Worker(concurrency=1, burst=True, shutdown_timeout=5)
    assert worker.run() == 1
    assert (fresh(j).status, fresh(j).stdout_log) == (JobStatus.COMPLETED, "late\n")


def test_stop_during_an_outage_ends_the_worker_within_the_shutdown_timeout(
    fake_host, engine, database
):
    engine.script(FakeOutcome(duration=60))
    j = job(fake_host)
    worker = Worker(concurrency=1, shutdown_timeout=0.5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    until(lambda: fresh(j).status == JobStatus.RUNNING)
    database.down.set()
    time.sleep(0.5)
    began = time.monotonic()
    worker.stop()  # what SIGTERM's handler does
    thread.join(10)
    took = time.monotonic() - began
    assert not thread.is_alive()
    assert took < 2.0, took
    database.down.clear()
    assert fresh(j).status == JobStatus.RUNNING, "left for adoption, never failed"


def test_a_job_taken_by_another_worker_during_an_outage_is_not_overwritten(
    fake_host, engine, database, caplog, settings
):
    """The outage outlasts the lease: another worker adopts the job meanwhile. When the
    database answers again, the first worker's guarded writes do not take."""
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LEASE_SECONDS": 1.0}
    engine.script(FakeOutcome(duration=0.5, stdout="result"))
    j = job(fake_host)
    [claimed] = claim("w1", 1)
    control = RunControl()
    runner = JobRunner(claimed.job, "w1", get_executor(fake_host), control)
    thread = threading.Thread(target=runner.run)
    thread.start()
    until(lambda: fresh(j).status == JobStatus.RUNNING)
    database.down.set()
    time.sleep(1.2)  # the container exits; the lease runs out; w1 cannot write
    [adopted] = adopt_expired("w2", 1)  # the test's thread is "another worker"
    assert adopted.job.pk == j.pk
    database.down.clear()
    thread.join(10)
    assert not thread.is_alive()
    j = fresh(j)
    assert (j.status, j.worker_id) == (JobStatus.RUNNING, "w2"), "w1 wrote nothing over w2"
    assert any("lost its lease before recording" in r.getMessage() for r in caplog.records)
    assert len(engine.containers) == 1, "w1 left the container to its new owner"
    JobRunner(adopted.job, "w2", get_executor(fake_host), RunControl(), adopted=True).run()
    j = fresh(j)
    assert (j.status, j.stdout_log) == (JobStatus.COMPLETED, "result")
    assert engine.calls.count("run") == 1
    assert engine.containers == {}


def test_the_health_pass_logs_an_outage_once_without_a_traceback(
    fake_host, engine, database, caplog
):
    worker = Worker(concurrency=1)

    def health_pass() -> None:  # in a thread of its own, as the worker runs it
        thread = threading.Thread(target=worker._health_pass)
        thread.start()
        thread.join(10)

    database.down.set()
    for _ in range(3):
        health_pass()
    database.down.clear()
    health_pass()
    lost, back = outage_lines(caplog)
    assert (len(lost), len(back)) == (1, 1), (lost, back)
    assert "(health pass)" in lost[0]
    assert not [r for r in caplog.records if r.exc_info]
    assert not OUTAGE.down
    assert OUTAGE.outages == 1 and OUTAGE.seconds > 0
    figures = fault_metrics()
    assert figures[("container_jobs_worker_database_outages_total", ())] == 1
    assert figures[("container_jobs_worker_database_outage_seconds_total", ())] > 0
    assert figures[("container_jobs_worker_database_unreachable", ())] == 0


def fault_metrics() -> dict[tuple[str, tuple[Any, ...]], float]:
    """What this process's FaultCollector exposes, as Prometheus reads it."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from container_manager.metrics import FaultCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FaultCollector())
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_stale_connection_that_reconnects_at_once_is_no_outage(caplog):
    OUTAGE.reset()
    err = OperationalError("server closed the connection unexpectedly")
    err.__cause__ = psycopg.OperationalError("server closed the connection unexpectedly")
    OUTAGE.failed("job=1 recording completed", err, tries=0)
    OUTAGE.recovered()
    assert outage_lines(caplog) == ([], [])
    assert OUTAGE.outages == 0


# ---- adoption of jobs held by dead workers ------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def held_running(host: Any, holder: str, engine: Any, **outcome: Any) -> ContainerJob:
    """A job that ``holder`` launched, its lease far from running out."""
    engine.script(FakeOutcome(**outcome))
    j = job(host)
    [claimed] = claim(holder, 1)
    container_id = get_executor(host).run(JobSpec.from_job(claimed.job))
    claimed.job.mark_running(holder, container_id)
    ContainerJob.objects.filter(pk=j.pk).update(
        lease_expires_at=timezone.now() + timedelta(hours=1)
    )
    return j


def test_a_burst_worker_adopts_at_once_the_jobs_of_a_dead_process_of_its_host(fake_host, engine):
    ADOPTIONS.reset()
    holder = f"{socket.gethostname()}:{dead_pid()}:abcdef"
    WorkerHeartbeat.objects.create(worker_id=holder, last_seen=timezone.now())
    j = held_running(fake_host, holder, engine, duration=0.3, stdout="adopted")
    began = time.monotonic()
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    assert time.monotonic() - began < 5, "not waiting for the hour-long lease"
    j = fresh(j)
    assert (j.status, j.stdout_log, j.attempt_count) == (JobStatus.COMPLETED, "adopted", 1)
    assert engine.calls.count("run") == 1
    assert engine.containers == {}
    assert ADOPTIONS.snapshot() == {"holder_dead": 1, "lease_expired": 0}
    adoptions = "container_jobs_worker_adoptions_total"
    assert fault_metrics()[(adoptions, (("cause", "holder_dead"),))] == 1


def test_a_stale_heartbeat_means_a_dead_holder_and_a_live_one_is_left_alone(fake_host, engine):
    stale = "elsewhere:123:aaaaaa"
    WorkerHeartbeat.objects.create(
        worker_id=stale, last_seen=timezone.now() - timedelta(seconds=60)
    )
    alive = f"{socket.gethostname()}:{os.getppid()}:bbbbbb"  # a process that exists
    WorkerHeartbeat.objects.create(worker_id=alive, last_seen=timezone.now())
    dead_job = held_running(fake_host, stale, engine, duration=0.1)
    live_job = held_running(fake_host, alive, engine, duration=60)
    assert release_dead_holders("me", lease_seconds=30) == {dead_job.pk}
    assert fresh(dead_job).lease_expires_at <= timezone.now()
    assert fresh(live_job).lease_expires_at > timezone.now() + timedelta(minutes=30)
    Worker(concurrency=2, burst=True, shutdown_timeout=5).run()
    assert fresh(dead_job).status == JobStatus.COMPLETED
    assert (fresh(live_job).status, fresh(live_job).worker_id) == (JobStatus.RUNNING, alive)
