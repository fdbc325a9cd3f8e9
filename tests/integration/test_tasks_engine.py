"""The Tasks backend end to end on the real engine: a project image built by the tests
(tests/task_image.py: a debootstrapped Debian root, this project and its dependencies) runs
each enqueued @task in its own container, and its real result comes back.
"""

from __future__ import annotations

import sys

import pytest

from tests.task_image import TASKS_MODULE, TASKS_SOURCE, build_task_image

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="session")
def task_image(docker_client) -> str:
    return build_task_image(docker_client)


@pytest.fixture(scope="session")
def tasks_module(tmp_path_factory):
    """The generated tasks module, importable by this process too (it enqueues them)."""
    where = tmp_path_factory.mktemp("e2e_tasks")
    (where / f"{TASKS_MODULE}.py").write_text(TASKS_SOURCE)
    sys.path.insert(0, str(where))
    module = __import__(TASKS_MODULE)
    yield module
    sys.path.remove(str(where))


@pytest.fixture
def tasks(settings, engine_host, task_image, tasks_module, monkeypatch):
    monkeypatch.setenv("E2E_TASK_TOKEN", "s3cr3t-by-reference")
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "POLL_INTERVAL": 0.05}
    settings.TASKS = {
        "default": {
            "BACKEND": "container_manager.tasks.ContainerTaskBackend",
            "QUEUES": ["default", "batch"],
            "OPTIONS": {
                "image": task_image,
                "host": engine_host.name,
                "command": ["python3", "/app/manage.py"],
                "memory_limit": 128,
                "timeout_seconds": 60,
                "secret_environment": {"TASK_TOKEN": "env:E2E_TASK_TOKEN"},
            },
        }
    }
    return tasks_module


def burst(queues=None):
    from container_manager.worker import Worker

    return Worker(concurrency=4, burst=True, shutdown_timeout=10, queues=queues).run()


def test_a_task_runs_in_a_real_container_and_its_result_comes_back(tasks):
    from container_manager.models import ContainerJob
    from container_manager.tasks import compat

    result = tasks.add.enqueue(40, 2)
    context = tasks.where.enqueue()
    assert burst() == 2
    result.refresh()
    assert result.status == compat.TaskResultStatus.SUCCESSFUL
    assert result.return_value == 42
    assert result.attempts == 1 and result.worker_ids[0]
    context.refresh()
    inside = context.return_value
    assert inside["id"] == context.id and inside["attempt"] == 1
    assert inside["python"].startswith(".".join(map(str, sys.version_info[:2])))
    assert inside["nonce_seen"] is False
    assert inside["secret"] == "s3cr3t-by-reference"
    job = ContainerJob.objects.get(pk=context.id)
    assert "s3cr3t-by-reference" not in f"{job.command}{job.override_environment}"
    assert job.exit_code == 0 and job.container_id


def test_failures_in_a_real_container(tasks, settings):
    from container_manager.tasks import compat

    failing = tasks.fail.enqueue("missing")
    not_json = tasks.not_json.enqueue()
    oom = tasks.hog.enqueue()
    settings.TASKS["default"]["OPTIONS"] = {
        **settings.TASKS["default"]["OPTIONS"],
        "timeout_seconds": 2,
    }
    settings.TASKS = dict(settings.TASKS)
    slow = tasks.sleep.enqueue(30)
    burst()
    for result in (failing, not_json, slow, oom):
        result.refresh()
        assert result.status == compat.TaskResultStatus.FAILED, result.id
    assert failing.errors[0].exception_class is KeyError
    assert "KeyError: 'missing'" in failing.errors[0].traceback
    assert failing.errors[0].traceback.count("in fail") == 1
    assert not_json.errors[0].exception_class is TypeError
    assert slow.errors[0].exception_class.__name__ == "ContainerTaskTimeout"
    assert "Timed out after 2s" in slow.errors[0].traceback
    assert oom.errors[0].exception_class.__name__ == "ContainerTaskOOMKilled"
    assert "exit code 137" in oom.errors[0].traceback


def test_a_worker_of_one_queue_and_a_retried_task_in_real_containers(tasks, settings):
    """The batch queue retries a failed container once: the task's second attempt knows it
    is the second; a worker of the batch queue leaves the default queue's task alone."""
    from container_manager.tasks import compat

    options = settings.TASKS["default"]["OPTIONS"]
    options["queues"] = {"batch": {"max_retries": 1, "retry_on_failure": True}}
    settings.TASKS = dict(settings.TASKS)
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
    }
    waiting = tasks.add.enqueue(1, 1)
    flaky = tasks.flaky.using(queue_name="batch").enqueue()
    burst(queues=["batch"])
    flaky.refresh()
    assert flaky.status == compat.TaskResultStatus.SUCCESSFUL, flaky.errors
    assert flaky.return_value == {"attempt": 2, "worker_ids": 2}
    assert flaky.attempts == 2 and all(flaky.worker_ids)
    waiting.refresh()
    assert waiting.status == compat.TaskResultStatus.READY
    assert burst(queues=["default"]) == 1
    waiting.refresh()
    assert (waiting.status, waiting.return_value) == (compat.TaskResultStatus.SUCCESSFUL, 2)
