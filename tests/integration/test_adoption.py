"""A worker SIGKILLed mid-run, then a ``--burst`` worker on the same machine: the burst worker
sees that the holder's process is gone, adopts its jobs at once (their leases have a minute
to run), finishes them and every other job, each exactly once, and leaves no container."""

from __future__ import annotations

import time

import pytest
from django.db.models import Count

from container_manager.models import ContainerJob, JobAttempt, JobStatus
from container_manager.queue import submit
from tests.conftest import job_containers
from tests.processes import worker_killed_mid_run, worker_process

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

LEASE = 60.0  # far longer than the test: only the dead holder's process can explain adoption


def test_a_burst_worker_adopts_the_jobs_of_a_killed_worker_at_once(
    engine_host, test_image, start_recorder, settings, docker_client
):
    jobs = [
        submit(host=engine_host, image=test_image, command=f"sh -c 'sleep 3; echo done-{i}'")
        for i in range(8)
    ]
    conf = {
        "POLL_INTERVAL": 0.1,
        "LEASE_SECONDS": LEASE,
        "STATS_INTERVAL": 5.0,
        "CONTAINER_LABELS": settings.CONTAINER_MANAGER["CONTAINER_LABELS"],
    }
    first = worker_killed_mid_run(4, conf)
    held = set(
        ContainerJob.objects.filter(status__in=JobStatus.active()).values_list(
            "worker_id", flat=True
        )
    )
    assert len(held) == 1 and str(first.pid) in held.pop().split(":"), "held by the dead one"
    began = time.monotonic()
    second = worker_process("--burst", "--concurrency", "8", settings=conf)
    out, _ = second.communicate(timeout=60)
    took = time.monotonic() - began
    assert second.returncode == 0, out.decode()[-3000:]
    assert took < 15, f"the burst worker took {took:.1f}s: it waited for the leases"
    statuses = dict(ContainerJob.objects.values_list("status").annotate(n=Count("pk")))
    assert statuses == {JobStatus.COMPLETED: 8}
    outputs = set(ContainerJob.objects.values_list("stdout_log", flat=True))
    assert outputs == {f"done-{i}\n" for i in range(8)}
    assert set(
        JobAttempt.objects.values_list("job_id").annotate(n=Count("pk")).values_list("n", flat=True)
    ) == {1}, "a kill is not an attempt"
    assert set(start_recorder.per_job([j.pk for j in jobs]).values()) == {1}, "started once"
    assert job_containers(docker_client, *jobs) == []
    print(f"burst worker after the kill: {took:.1f}s")
