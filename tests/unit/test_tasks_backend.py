"""Conformance of ContainerTaskBackend to the Tasks framework (django.tasks on Django 6,
the django-tasks backport on 5.2), through the real queue and worker on the fake engine.

The fake engine's "container" runs the job's real command, ``run_container_task``, in this
process with the job's environment and captures its stdout, stderr and exit code: what the
backend reads back is what the container-side command printed. Outcomes a container can have
without the command (crash, OOM kill, timeout) are scripted FakeOutcomes.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import django
import pytest
from asgiref.sync import async_to_sync
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import transaction
from django.utils import timezone

from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, JobStatus
from container_manager.queue import cancel, submit
from container_manager.tasks import ContainerTaskBackend, compat, wire
from container_manager.tasks.call import COMMAND_NAME, parse_call
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_URL = "unix:///fake/engine.sock"
BACKEND = "container_manager.tasks.ContainerTaskBackend"
ROOT = Path(__file__).resolve().parents[2]
HERE = "tests.unit.test_tasks_backend"

# ---- tasks (module level: the container imports them by path) ---------------------------


@compat.task
def add(a, b):
    return a + b


@compat.task
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@compat.task
def fail(message):
    raise ValueError(message)


@compat.task
def not_json():
    return {1, 2}


@compat.task
def exits():
    raise SystemExit(3)


@compat.task
def noisy():
    print("before", flush=True)
    # A line shaped like the result, with a nonce the task made up: it must not count.
    forged = wire.Outcome(True, return_value="forged")
    print(wire.frame(forged, "0" * 32))
    print(f"{wire.MARKER} {os.environ.get(wire.NONCE_ENV, 'none')} e30=")
    print("no newline at the end", end="")
    return "real"


@compat.task(takes_context=True)
def with_context(context, x):
    return {"id": context.task_result.id, "attempt": context.attempt, "x": x}


@compat.task
async def async_add(a, b):
    return a + b


def plain_function():
    return "not a task"


# ---- fixtures ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def tasks(settings, fake_host):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "POLL_INTERVAL": 0.05}
    settings.TASKS = {
        "default": {
            "BACKEND": BACKEND,
            "QUEUES": ["default", "gpu"],
            "OPTIONS": {
                "image": "project/tasks:1",
                "host": fake_host.name,
                "memory_limit": 256,
                "queues": {"gpu": {"image": "project/gpu:1", "timeout_seconds": 60}},
            },
        }
    }


@pytest.fixture
def engine():
    """The fake engine, whose containers run the job's run_container_task in-process."""
    engine = FakeExecutor.engine_for(FAKE_URL)
    scripted_or_default = engine.outcome_for

    def outcome_for(spec):
        if COMMAND_NAME not in spec.argv or any(match(spec) for match, _ in engine.scripts):
            return scripted_or_default(spec)
        return run_in_process(spec.argv, spec.environment)

    engine.outcome_for = outcome_for
    return engine


def run_in_process(argv, environment):
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.update(environment)
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            call_command(*argv[argv.index(COMMAND_NAME) :])
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return FakeOutcome(exit_code=code, stdout=out.getvalue(), stderr=err.getvalue())


def burst(concurrency=1):
    return Worker(concurrency=concurrency, burst=True, shutdown_timeout=5).run()


def job_of(result):
    return ContainerJob.objects.get(pk=result.id)


def backend():
    return compat.task_backends["default"]


# ---- the framework in use ---------------------------------------------------------------


def test_the_framework_of_this_django_is_used():
    expected = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"
    assert expected == compat.FRAMEWORK
    assert compat.BaseTaskBackend.__module__.startswith(expected)
    assert isinstance(backend(), ContainerTaskBackend)
    assert isinstance(backend(), compat.BaseTaskBackend)


def test_capability_flags():
    b = backend()
    assert (b.supports_defer, b.supports_priority, b.supports_get_result) == (True, True, True)
    assert b.supports_async_task is True


# ---- enqueue ----------------------------------------------------------------------------


def test_enqueue_returns_a_ready_result_and_one_job(engine):
    before = timezone.now()
    result = echo.enqueue(1, (2, 3), name="x")
    assert result.status == compat.TaskResultStatus.READY
    assert not result.is_finished
    assert result.args == [1, [2, 3]] and result.kwargs == {"name": "x"}
    assert result.backend == "default" and result.task.func is echo.func
    assert result.enqueued_at >= before
    assert (result.started_at, result.finished_at, result.last_attempted_at) == (None,) * 3
    assert (result.worker_ids, result.errors, result.attempts) == ([], [], 0)
    with pytest.raises(ValueError, match="not finished"):
        _ = result.return_value
    job = job_of(result)
    assert ContainerJob.objects.count() == 1
    assert job.status == JobStatus.QUEUED
    assert (job.docker_image, job.memory_limit, job.priority) == ("project/tasks:1", 256, 0)
    assert job.name == f"task {HERE}.echo"
    call = parse_call(job.argv)
    assert job.argv[:3] == ["python", "manage.py", COMMAND_NAME]
    assert (call.module_path, call.queue_name, call.backend) == (
        f"{HERE}.echo",
        "default",
        "default",
    )
    assert (call.args, call.kwargs) == ([1, [2, 3]], {"name": "x"})
    assert len(job.environment[wire.NONCE_ENV]) == 32


def test_enqueue_sends_task_enqueued(engine):
    seen = []

    def receiver(sender, task_result, **kwargs):
        seen.append((sender, task_result.id, task_result.status))

    compat.task_enqueued.connect(receiver)
    try:
        result = add.enqueue(1, 2)
    finally:
        compat.task_enqueued.disconnect(receiver)
    assert seen == [(ContainerTaskBackend, result.id, compat.TaskResultStatus.READY)]


def test_enqueue_is_part_of_the_callers_transaction(engine):
    with pytest.raises(RuntimeError), transaction.atomic():
        add.enqueue(1, 2)
        assert ContainerJob.objects.count() == 1
        raise RuntimeError("roll back")
    assert ContainerJob.objects.count() == 0


def test_each_enqueue_is_its_own_job_with_its_own_nonce(engine):
    first, second = add.enqueue(1, 2), add.enqueue(1, 2)
    assert first.id != second.id
    nonces = {job_of(r).environment[wire.NONCE_ENV] for r in (first, second)}
    assert len(nonces) == 2


def test_aenqueue(engine):
    result = async_to_sync(add.aenqueue)(2, 5)
    assert result.status == compat.TaskResultStatus.READY
    assert job_of(result).status == JobStatus.QUEUED
    burst()
    async_to_sync(result.arefresh)()
    assert result.return_value == 7


def test_arguments_that_are_not_json_are_refused(engine):
    with pytest.raises(TypeError):
        echo.enqueue(object())
    assert ContainerJob.objects.count() == 0


# ---- results ----------------------------------------------------------------------------


def test_a_task_runs_and_its_result_comes_back(engine):
    result = add.enqueue(2, 3)
    assert burst() == 1
    result.refresh()
    assert result.status == compat.TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.errors == []
    job = job_of(result)
    assert job.status == JobStatus.COMPLETED
    worker = job.attempts.get().worker_id
    assert worker and result.worker_ids == [worker] and result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at == job.attempts.get().started_at
    assert result.started_at == job.started_at and result.finished_at == job.completed_at
    again = backend().get_result(result.id)
    assert (again.id, again.status, again.return_value) == (result.id, result.status, 5)
    assert add.get_result(result.id).return_value == 5
    assert async_to_sync(backend().aget_result)(result.id).return_value == 5


def test_return_values_are_json_normalised(engine):
    result = echo.enqueue("a", (1, 2), k={"n": None})
    burst()
    result.refresh()
    assert result.return_value == {"args": ["a", [1, 2]], "kwargs": {"k": {"n": None}}}


def test_get_result_of_a_missing_or_malformed_id(engine):
    with pytest.raises(compat.TaskResultDoesNotExist):
        backend().get_result(str(uuid4()))
    for malformed in ("not-a-uuid", "", "1; DROP TABLE", "\x00"):
        with pytest.raises(compat.TaskResultDoesNotExist):
            backend().get_result(malformed)


def test_get_result_of_a_job_that_is_not_a_task(engine, fake_host):
    job = submit(host=fake_host, image="busybox:latest", command="echo hi")
    with pytest.raises(compat.TaskResultDoesNotExist):
        backend().get_result(str(job.pk))


def test_task_get_result_of_another_task_is_a_mismatch(engine):
    result = add.enqueue(1, 1)
    exceptions = sys.modules[compat.TaskResultDoesNotExist.__module__]
    with pytest.raises(exceptions.TaskResultMismatch):
        echo.get_result(result.id)


def test_a_failing_task_gives_its_exception_class_and_traceback(engine):
    result = fail.enqueue("boom")
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert "ValueError: boom" in error.traceback and "in fail" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        _ = result.return_value
    job = job_of(result)
    assert (job.status, job.exit_code) == (JobStatus.FAILED, 1)


def test_a_return_value_that_is_not_json_fails_with_type_error(engine):
    result = not_json.enqueue()
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    assert result.errors[0].exception_class is TypeError
    assert "TypeError" in result.errors[0].traceback


def test_system_exit_in_a_task_is_a_failure(engine):
    result = exits.enqueue()
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    assert result.errors[0].exception_class is SystemExit


def test_what_the_task_prints_cannot_forge_its_result(engine):
    result = noisy.enqueue()
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.SUCCESSFUL
    assert result.return_value == "real"
    stdout = job_of(result).stdout_log
    assert "before" in stdout and "forged" not in stdout.split("\n")[-1]
    # The task saw no nonce: the command removed it from the environment first.
    assert f"{wire.MARKER} none e30=" in stdout


def test_context_and_attempt(engine):
    result = with_context.enqueue(7)
    burst()
    result.refresh()
    assert result.return_value == {"id": result.id, "attempt": 1, "x": 7}
    assert result.attempts == 1


def test_an_async_task_runs(engine):
    result = async_add.enqueue(20, 22)
    burst()
    result.refresh()
    assert result.return_value == 42


# ---- signals ----------------------------------------------------------------------------


def test_task_started_and_task_finished_are_sent(engine):
    seen = []

    def started(sender, task_result, **kwargs):
        seen.append(("started", sender, task_result.id, task_result.status))

    def finished(sender, task_result, **kwargs):
        seen.append(("finished", sender, task_result.id, task_result.status))

    compat.task_started.connect(started)
    compat.task_finished.connect(finished)
    try:
        result = add.enqueue(1, 2)
        burst()
    finally:
        compat.task_started.disconnect(started)
        compat.task_finished.disconnect(finished)
    assert seen == [
        ("started", ContainerTaskBackend, result.id, compat.TaskResultStatus.RUNNING),
        ("finished", ContainerTaskBackend, result.id, compat.TaskResultStatus.SUCCESSFUL),
    ]


def test_plain_jobs_send_no_task_signals(engine, fake_host):
    seen = []

    def receiver(**kwargs):
        seen.append(kwargs)

    compat.task_started.connect(receiver)
    compat.task_finished.connect(receiver)
    try:
        job = submit(host=fake_host, image="busybox:latest", command="echo hi")
        burst()
    finally:
        compat.task_started.disconnect(receiver)
        compat.task_finished.disconnect(receiver)
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    assert seen == []


# ---- when the container, not the task, ends it ------------------------------------------


def test_a_crashed_container_fails_with_exit_code_and_stderr(engine):
    engine.script(FakeOutcome(exit_code=139, stderr="x" * 5000 + "Segmentation fault"))
    result = add.enqueue(1, 2)
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class_path == "container_manager.tasks.errors.ContainerTaskCrashed"
    assert issubclass(error.exception_class, Exception)
    assert "exit code 139" in error.traceback
    assert error.traceback.endswith("Segmentation fault")
    assert len(error.traceback) < 4300, "the end of stderr, not all of it"


def test_an_oom_killed_container(engine):
    engine.script(FakeOutcome(exit_code=137, oom_killed=True))
    result = add.enqueue(1, 2)
    burst()
    result.refresh()
    assert result.errors[0].exception_class.__name__ == "ContainerTaskOOMKilled"
    assert "exit code 137" in result.errors[0].traceback
    assert "OOM-killed" in result.errors[0].traceback


def test_a_timed_out_container(engine, settings):
    settings.TASKS["default"]["OPTIONS"]["timeout_seconds"] = 1
    settings.TASKS = dict(settings.TASKS)
    engine.script(FakeOutcome(duration=30))
    result = add.enqueue(1, 2)
    started = time.monotonic()
    burst()
    assert time.monotonic() - started < 20
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    assert result.errors[0].exception_class.__name__ == "ContainerTaskTimeout"
    assert "Timed out after 1s" in result.errors[0].traceback


def test_a_cancelled_task(engine):
    result = add.enqueue(1, 2)
    assert cancel(result.id)
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    assert result.errors[0].exception_class.__name__ == "ContainerTaskCancelled"
    assert burst() == 0


def test_exit_zero_without_a_result_line(engine):
    engine.script(FakeOutcome(exit_code=0, stdout="nothing framed\n"))
    result = add.enqueue(1, 2)
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED
    assert result.errors[0].exception_class.__name__ == "ContainerTaskResultMissing"


def test_a_result_line_of_another_job_does_not_count(engine):
    other = wire.frame(wire.Outcome(True, return_value="other"), wire.new_nonce())
    engine.script(FakeOutcome(exit_code=0, stdout=other + "\n"))
    result = add.enqueue(1, 2)
    burst()
    result.refresh()
    assert result.status == compat.TaskResultStatus.FAILED


# ---- defer, priority, queues ------------------------------------------------------------


def test_run_after_makes_the_job_wait(engine):
    later = timezone.now() + timedelta(hours=1)
    result = add.using(run_after=later).enqueue(1, 2)
    assert job_of(result).run_after == later
    assert result.task.run_after == later
    assert burst() == 0
    result.refresh()
    assert result.status == compat.TaskResultStatus.READY


def test_a_run_after_in_the_past_runs_now(engine):
    result = add.using(run_after=timezone.now() - timedelta(seconds=1)).enqueue(1, 2)
    burst()
    result.refresh()
    assert result.return_value == 3


def test_a_naive_run_after_is_refused(engine):
    with pytest.raises(compat.InvalidTask, match="aware"):
        add.using(run_after=timezone.now().replace(tzinfo=None))


def test_priority_is_the_jobs_and_orders_the_queue(engine):
    low = add.using(priority=-50).enqueue(0, 1)
    normal = add.enqueue(0, 2)
    high = add.using(priority=100).enqueue(0, 3)
    assert [job_of(r).priority for r in (low, normal, high)] == [-50, 0, 100]
    burst(concurrency=1)
    order = sorted((job_of(r).started_at, r.id) for r in (low, normal, high))
    assert [rid for _, rid in order] == [high.id, normal.id, low.id]
    assert backend().get_result(high.id).task.priority == 100


@pytest.mark.parametrize("priority", [101, -101, 1.5])
def test_a_bad_priority_is_refused(engine, priority):
    with pytest.raises(compat.InvalidTask, match="priority"):
        add.using(priority=priority)


def test_a_queue_has_its_own_options(engine):
    result = add.using(queue_name="gpu").enqueue(1, 2)
    job = job_of(result)
    assert (job.docker_image, job.timeout_seconds, job.memory_limit) == ("project/gpu:1", 60, 256)
    assert parse_call(job.argv).queue_name == "gpu"
    burst()
    result.refresh()
    assert (result.return_value, result.task.queue_name) == (3, "gpu")


def test_an_unknown_queue_is_refused(engine):
    with pytest.raises(compat.InvalidTask, match="Queue 'nope' is not valid"):
        add.using(queue_name="nope")


def test_a_queue_can_require_host_labels(engine, settings, fake_host):
    fake_host.labels = {"gpu": "true"}
    fake_host.save()
    options = settings.TASKS["default"]["OPTIONS"]
    del options["host"]
    options["queues"]["gpu"]["labels"] = {"gpu": "true"}
    settings.TASKS = dict(settings.TASKS)
    job = job_of(add.using(queue_name="gpu").enqueue(1, 2))
    assert job.required_labels == {"gpu": "true"}
    burst()
    job.refresh_from_db()
    assert (job.status, job.docker_host_id) == (JobStatus.COMPLETED, fake_host.pk)


# ---- validation and checks --------------------------------------------------------------


def test_a_task_that_is_not_its_modules_name_is_refused(engine):
    alias = compat.task(plain_function)  # a second Task over a function of this module
    with pytest.raises(compat.InvalidTask, match="not this task"):
        alias.enqueue()


def test_check_passes_on_a_good_configuration():
    assert list(backend().check()) == []


def check_ids(options, queues=("default",)):
    b = ContainerTaskBackend("t", {"QUEUES": list(queues), "OPTIONS": options})
    return sorted((m.id, m.msg) for m in b.check())


def test_check_names_what_is_wrong():
    assert [i for i, _ in check_ids({})] == ["container_manager.tasks.E004"]
    ((code, msg),) = check_ids({"image": "a:1", "colour": "red"})
    assert code == "container_manager.tasks.E003" and "colour" in msg
    ((code, msg),) = check_ids({"image": "a:1", "queues": {"other": {}}})
    assert code == "container_manager.tasks.E006" and "'other' is not in QUEUES" in msg
    ((code, _),) = check_ids({"image": "a:1", "command": "python manage.py"})
    assert code == "container_manager.tasks.E005"
    assert [i for i, _ in check_ids({"image": "a:1", "queues": {"b": {"image": ""}}}, "ab")] == [
        "container_manager.tasks.E004"
    ]


def test_manage_py_check_runs_the_backends_check(settings):
    if compat.FRAMEWORK == "django_tasks":  # the backport's checks come with its app
        settings.INSTALLED_APPS = [*settings.INSTALLED_APPS, "django_tasks"]
    settings.TASKS["default"]["OPTIONS"] = {"colour": "red"}
    settings.TASKS = dict(settings.TASKS)  # a new value: the backends are made again
    out = io.StringIO()
    with pytest.raises(SystemCheckError, match=r"container_manager\.tasks\.E003"):
        call_command("check", stdout=out, stderr=out)


# ---- the container-side command on its own ----------------------------------------------


def run_command(path, *extra, nonce="n" * 32):
    env = {
        key: value for key, value in os.environ.items() if key not in {"DATABASE_URL", "PGPASSWORD"}
    }
    env |= {wire.NONCE_ENV: nonce, "DJANGO_SETTINGS_MODULE": "demo.settings"}
    argv = [sys.executable, "manage.py", COMMAND_NAME, path, "--result-id", "r1", *extra]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_the_command_reports_on_stdout_without_database_credentials():
    done = run_command(f"{HERE}.add", "--arguments", json.dumps({"args": [4, 5], "kwargs": {}}))
    assert done.returncode == 0, done.stderr
    outcome = wire.parse(done.stdout, "n" * 32)
    assert outcome == wire.Outcome(True, return_value=9)
    assert wire.parse(done.stdout, "m" * 32) is None


def test_the_command_refuses_what_is_not_a_task():
    done = run_command(f"{HERE}.plain_function")
    assert done.returncode == 2
    outcome = wire.parse(done.stdout, "n" * 32)
    assert outcome.exception_class_path == compat.class_path(compat.InvalidTask)
    assert "is not a task object" in outcome.traceback


def test_the_command_reports_an_import_error():
    done = run_command("no_such_module.task")
    assert done.returncode == 2
    outcome = wire.parse(done.stdout, "n" * 32)
    assert outcome.exception_class_path.endswith("ModuleNotFoundError")


def test_the_command_needs_its_nonce():
    done = run_command(f"{HERE}.add", nonce="")
    assert done.returncode != 0
    assert wire.NONCE_ENV in done.stderr
    assert wire.MARKER not in done.stdout


def test_malformed_result_lines_are_ignored():
    nonce = wire.new_nonce()
    good = wire.frame(wire.Outcome(True, return_value=1), nonce)
    assert wire.parse(f"{good}\n{wire.MARKER} {nonce} !!!not-base64\n", nonce).return_value == 1
    assert wire.parse(f"{wire.MARKER} {nonce} W10=\n", nonce) is None  # a list, not an object
    assert wire.parse(good, "") is None
