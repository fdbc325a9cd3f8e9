"""Containers killed by their engine shutting down (a restart without live restore) are the
infrastructure's failure, not the job's: retried without counting against max_retries, up to
MAX_INFRASTRUCTURE_RETRIES. A SIGTERM or SIGKILL death with the engine staying up is the
job's own end."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import JobAttempt, JobStatus
from container_manager.outage import INFRASTRUCTURE_RETRIES
from container_manager.queue import submit
from container_manager.worker import Worker
from tests.conftest import until

pytestmark = pytest.mark.django_db(transaction=True)

INFRA = "Infrastructure failure: the engine stopped the container (exit code {code}); retried"


@pytest.fixture(autouse=True)
def fast(settings: Any, quick_retries: None) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_SHUTDOWN_PROBE": 3.0}
    INFRASTRUCTURE_RETRIES.reset()


def killed_then_fine(engine: Any, code: int, killed_attempts: int = 1) -> None:
    engine.script(FakeOutcome(stdout="done\n"))
    engine.script(
        FakeOutcome(exit_code=code, duration=0.3), when=lambda spec: spec.attempt <= killed_attempts
    )


def blip_after_each_exit(engine: Any, times: int) -> threading.Thread:
    """Take the engine away for 0.4 s soon after each killed container exited (as a
    restarting engine does), ``times`` times."""

    def blip() -> None:
        for _ in range(times):
            until(lambda: any(c.exit_code in (137, 143) and c.id not in done
                              for c in list(engine.containers.values())))  # fmt: skip
            for c in list(engine.containers.values()):
                if c.exit_code in (137, 143):
                    done.add(c.id)
            time.sleep(0.2)
            engine.down = True
            time.sleep(0.4)
            engine.down = False

    done: set[str] = set()
    thread = threading.Thread(target=blip, daemon=True)
    thread.start()
    return thread


def test_a_container_killed_by_its_engine_stopping_is_retried_not_counted(
    fake_host: Any,
) -> None:
    engine = FakeExecutor.engine_for(fake_host.connection_string)
    killed_then_fine(engine, 143)
    blipper = blip_after_each_exit(engine, 1)
    job = submit(host=fake_host, image="busybox:latest", command="work", max_retries=0)
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    blipper.join(5)
    job.refresh_from_db()
    assert (job.status, job.stdout_log) == (JobStatus.COMPLETED, "done\n")
    assert (job.attempt_count, job.infrastructure_retries) == (2, 1)
    first = JobAttempt.objects.get(job=job, number=1)
    assert (first.status, first.exit_code) == (JobStatus.FAILED, 143)
    assert first.error.startswith(INFRA.format(code=143))
    assert first.error.endswith("(1 of 3).")
    assert INFRASTRUCTURE_RETRIES.count == 1


def test_a_signal_death_with_the_engine_up_is_the_jobs_own_failure(
    fake_host: Any, settings: Any
) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_SHUTDOWN_PROBE": 0.5}
    engine = FakeExecutor.engine_for(fake_host.connection_string)
    killed_then_fine(engine, 137)
    job = submit(host=fake_host, image="busybox:latest", command="work", max_retries=0)
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    job.refresh_from_db()
    assert (job.status, job.last_error) == (JobStatus.FAILED, "Exited with code 137.")
    assert job.infrastructure_retries == 0


def test_infrastructure_retries_have_their_own_limit(fake_host: Any, settings: Any) -> None:
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "MAX_INFRASTRUCTURE_RETRIES": 1}
    engine = FakeExecutor.engine_for(fake_host.connection_string)
    killed_then_fine(engine, 143, killed_attempts=2)
    blipper = blip_after_each_exit(engine, 2)
    job = submit(host=fake_host, image="busybox:latest", command="work", max_retries=0)
    Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
    blipper.join(10)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert job.last_error == "Killed by its engine, which stopped (exit code 143)."
    assert (job.attempt_count, job.infrastructure_retries) == (2, 1)


def test_an_engine_outage_around_a_signal_death_needs_no_probe(fake_host: Any) -> None:
    """The worker lost the engine while the job ran, and the container died of SIGTERM
    meanwhile: the engine stopped it."""
    engine = FakeExecutor.engine_for(fake_host.connection_string)
    engine.script(FakeOutcome(stdout="done\n"))
    engine.script(FakeOutcome(exit_code=143, duration=1.0), when=lambda spec: spec.attempt == 1)
    job = submit(host=fake_host, image="busybox:latest", command="work")
    thread = threading.Thread(target=Worker(concurrency=1, burst=True, shutdown_timeout=5).run)
    thread.start()
    until(lambda: JobAttempt.objects.filter(job=job, status=JobStatus.RUNNING).exists())
    engine.down = True
    time.sleep(1.5)
    engine.down = False
    thread.join(20)
    job.refresh_from_db()
    assert (job.status, job.infrastructure_retries) == (JobStatus.COMPLETED, 1)
