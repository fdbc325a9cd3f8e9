"""SIGTERM/SIGINT on a real worker process: stop claiming, let running jobs finish up to
--shutdown-timeout, then exit leaving the rest to be adopted: not killed, not lost."""

from __future__ import annotations

import signal
import time

import pytest

from container_manager.models import ContainerJob, JobStatus
from container_manager.queue import submit
from tests.conftest import until
from tests.processes import worker_process

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


def status(job):
    return ContainerJob.objects.get(pk=job.pk).status


def labels(settings):
    return {
        "POLL_INTERVAL": 0.1,
        "CONTAINER_LABELS": settings.CONTAINER_MANAGER["CONTAINER_LABELS"],
    }


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_a_running_job_finish(engine_host, test_image, settings, signum):
    job = submit(host=engine_host, image=test_image, command="sh -c 'sleep 1.5; echo finished'")
    waiting = submit(host=engine_host, image=test_image, command="echo never", priority=-1)
    engine_host.max_concurrent_jobs = 1
    engine_host.save()
    worker = worker_process("--shutdown-timeout", "30", settings=labels(settings))
    until(lambda: status(job) == JobStatus.RUNNING)
    worker.send_signal(signum)
    out, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, out.decode()[-2000:]
    job.refresh_from_db()
    assert (job.status, job.stdout_log) == (JobStatus.COMPLETED, "finished\n")
    assert status(waiting) == JobStatus.QUEUED, "no new claims after the signal"


def test_shutdown_timeout_leaves_the_job_for_adoption(engine_host, test_image, settings):
    job = submit(host=engine_host, image=test_image, command="sh -c 'sleep 4; echo adopted'")
    worker = worker_process("--shutdown-timeout", "0.5", settings=labels(settings))
    until(lambda: status(job) == JobStatus.RUNNING)
    began = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out.decode()[-2000:]
    assert time.monotonic() - began < 4, "did not wait for the job"
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING, "not killed, not failed"
    successor = worker_process("--burst", settings=labels(settings))
    out, _ = successor.communicate(timeout=60)
    assert successor.returncode == 0, out.decode()[-2000:]
    job.refresh_from_db()
    assert (job.status, job.stdout_log, job.attempt_count) == (
        JobStatus.COMPLETED,
        "adopted\n",
        1,
    )
