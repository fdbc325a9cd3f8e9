"""Conformance of ContainerTaskBackend, continued: queue filtering and attempts, through the
real queue and worker on the fake engine (whose "containers" run run_container_task in this
process: see test_tasks_backend)."""

from __future__ import annotations

import pytest

from container_manager.models import ContainerJob, JobStatus
from container_manager.spec import ATTEMPT_ENV
from container_manager.tasks import compat, wire
from container_manager.worker import Worker
from tests.unit.test_tasks_backend import add, backend, burst, engine, job_of, tasks

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["engine", "tasks"]  # the fixtures, from the conformance module


@compat.task(takes_context=True)
def flaky(context):
    """Fails on its first attempt; reports what its context said on the next."""
    if context.attempt < 2:
        raise RuntimeError(f"attempt {context.attempt} fails")
    return {"attempt": context.attempt, "workers": len(context.task_result.worker_ids)}


@pytest.fixture
def retrying(settings, quick_retries):
    """The default queue retries a failed container once."""
    options = settings.TASKS["default"]["OPTIONS"]
    options.update(max_retries=1, retry_on_failure=True)
    settings.TASKS = dict(settings.TASKS)


# ---- queue filtering --------------------------------------------------------------------


def test_the_job_records_the_tasks_queue(engine):
    assert job_of(add.enqueue(1, 1)).queue == "default"
    assert job_of(add.using(queue_name="gpu").enqueue(1, 1)).queue == "gpu"


def test_a_worker_limited_to_a_queue_runs_only_its_tasks(engine):
    default = add.enqueue(1, 1)
    gpu = add.using(queue_name="gpu").enqueue(2, 2)
    assert Worker(burst=True, queues=["gpu"], shutdown_timeout=5).run() == 1
    gpu.refresh()
    default.refresh()
    assert (gpu.status, gpu.return_value) == (compat.TaskResultStatus.SUCCESSFUL, 4)
    assert default.status == compat.TaskResultStatus.READY
    assert Worker(burst=True, queues=["default"], shutdown_timeout=5).run() == 1
    default.refresh()
    assert (default.status, default.return_value) == (compat.TaskResultStatus.SUCCESSFUL, 2)


# ---- attempts ---------------------------------------------------------------------------


def test_a_retried_task_runs_again_as_its_next_attempt(engine, retrying):
    result = flaky.enqueue()
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.SUCCESSFUL, result.errors
    assert result.return_value == {"attempt": 2, "workers": 2}
    job = job_of(result)
    workers = list(job.attempts.order_by("number").values_list("worker_id", flat=True))
    assert result.attempts == job.attempt_count == 2
    assert result.worker_ids == workers and all(workers)
    first = job.attempts.get(number=1)
    assert (first.status, first.exit_code) == (JobStatus.FAILED, 1)


def test_without_retries_a_failed_task_has_one_attempt(engine):
    result = flaky.enqueue()
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    assert result.errors[0].exception_class is RuntimeError
    assert "attempt 1 fails" in result.errors[0].traceback
    assert result.attempts == 1


def test_each_launch_is_told_its_attempt(engine):
    job = job_of(add.enqueue(1, 1))
    assert job.environment[ATTEMPT_ENV] == ""  # asked for at enqueue, filled at launch
    assert job.spec(attempt=3).environment[ATTEMPT_ENV] == "3"
    plain = ContainerJob.objects.create(docker_image="busybox:latest", command="true")
    assert ATTEMPT_ENV not in plain.spec().environment  # only a job that asks is told


def test_an_earlier_attempts_result_line_is_not_this_attempts(engine):
    result = add.enqueue(2, 3)
    burst()
    job = job_of(result)
    assert backend().get_result(result.id).return_value == 5
    # As if a second attempt ended with the first one's output still in the job's record.
    ContainerJob.objects.filter(pk=job.pk).update(attempt_count=2)
    again = backend().get_result(result.id)
    assert again.status == compat.TaskResultStatus.FAILED
    assert again.errors[0].exception_class.__name__ == "ContainerTaskResultMissing"


def test_the_result_line_names_its_attempt():
    nonce = wire.new_nonce()
    first = wire.frame(wire.Outcome(True, return_value="one", attempt=1), nonce)
    second = wire.frame(wire.Outcome(True, return_value="two", attempt=2), nonce)
    stdout = f"{second}\n{first}\n"
    assert wire.parse(stdout, nonce).return_value == "one"  # the last line, any attempt
    assert wire.parse(stdout, nonce, 2).return_value == "two"
    assert wire.parse(stdout, nonce, 3) is None
