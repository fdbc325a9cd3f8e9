"""Several worker processes on one PostgreSQL database and one real engine: every job is
launched exactly once, also when workers are SIGKILLed at random instants and restarted.

"Launched once" is counted on the engine itself: the number of container ``start`` events
carrying each job's label."""

from __future__ import annotations

import random
import signal
import time
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Count

from container_manager.models import ContainerJob, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.reaper import reap
from tests.conftest import job_containers
from tests.processes import worker_process

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

FAST = {"POLL_INTERVAL": 0.1, "LEASE_SECONDS": 3.0, "STATS_INTERVAL": 5.0}


@pytest.fixture(autouse=True)
def postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("many worker processes need PostgreSQL (run with DATABASE_URL)")


def submit_many(host, image, count, command):
    return [
        str(submit(host=host, image=image, command=command.format(i=i)).pk) for i in range(count)
    ]


def labels(session_settings):
    return {**FAST, "CONTAINER_LABELS": session_settings["CONTAINER_LABELS"]}


def test_three_workers_launch_each_of_200_jobs_exactly_once(
    engine_host, test_image, start_recorder, settings
):
    engine_host.max_concurrent_jobs = 12
    engine_host.save()
    ids = submit_many(engine_host, test_image, 200, "echo job-{i}")
    conf = labels(settings.CONTAINER_MANAGER)
    workers = [worker_process("--burst", "--concurrency", "4", settings=conf) for _ in range(3)]
    for process in workers:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, out.decode()[-2000:]
    statuses = dict(ContainerJob.objects.values_list("status").annotate(n=Count("pk")))
    assert statuses == {JobStatus.COMPLETED: 200}
    per_job = (
        JobAttempt.objects.values("job_id").annotate(n=Count("pk")).values_list("n", flat=True)
    )
    assert set(per_job) == {1}
    assert set(start_recorder.per_job(ids).values()) == {1}
    done_by = set(ContainerJob.objects.values_list("attempts__worker_id", flat=True))
    assert len(done_by) == 3, "all three workers took part"


def test_sigkilled_workers_lose_nothing_and_run_nothing_twice(
    engine_host, test_image, start_recorder, settings, docker_client
):
    rng = random.Random(20261121)
    ids = submit_many(engine_host, test_image, 40, "sh -c 'sleep 0.{i:02d}; echo done-{i}'")
    conf = labels(settings.CONTAINER_MANAGER)
    kills = 0
    deadline = time.monotonic() + 240
    while (
        ContainerJob.objects.exclude(status__in=JobStatus.terminal()).exists()
        and time.monotonic() < deadline
    ):
        if kills < 8:
            process = worker_process("--concurrency", "4", settings=conf)
            time.sleep(rng.uniform(0.3, 2.0))
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            kills += 1
        else:
            process = worker_process("--burst", "--concurrency", "4", settings=conf)
            out, _ = process.communicate(timeout=240)
            assert process.returncode == 0, out.decode()[-2000:]
    assert kills == 8
    jobs = list(ContainerJob.objects.all())
    assert {j.status for j in jobs} == {JobStatus.COMPLETED}
    assert all(j.stdout_log.startswith("done-") for j in jobs)
    assert {j.attempt_count for j in jobs} == {1}, "a kill is not a failed attempt"
    assert JobAttempt.objects.count() == 40
    assert set(start_recorder.per_job(ids).values()) == {1}
    # A kill between recording a result and removing the container leaves the container:
    # exactly what the reaper is for. It removes those (and, as orphans, any app containers of
    # jobs this database no longer knows).
    left = job_containers(docker_client, *jobs)
    removed = reap(older_than=timedelta(0))
    assert {c.id for c in left} <= {r.container_id for r in removed}
    assert job_containers(docker_client, *jobs) == []
