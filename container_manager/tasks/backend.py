"""ContainerTaskBackend: each enqueued ``@task`` call is a container job.

::

    TASKS = {
        "default": {
            "BACKEND": "container_manager.tasks.ContainerTaskBackend",
            "QUEUES": ["default", "gpu"],
            "OPTIONS": {
                "image": "registry.example.com/myproject:1.4",
                "command": ["python", "manage.py"],        # what runs run_container_task
                "timeout_seconds": 600,
                "memory_limit": 512,
                "template": "project-env",                  # an EnvironmentVariableTemplate
                "secret_environment": {"DATABASE_URL": "env:TASKS_DATABASE_URL"},
                "queues": {"gpu": {"labels": {"gpu": "true"}, "gpus": 1}},
            },
        }
    }

The backend writes nothing itself: it calls :func:`container_manager.queue.submit` (enqueue,
in the caller's transaction) and reads the job back (results). The task's priority is the
job's priority (both run from -100 to 100, higher first); ``run_after`` is the job's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID, uuid4

from django.conf import settings
from django.core import checks
from django.core.exceptions import ValidationError
from django.utils.module_loading import import_string

from ..environment import parse_environment
from ..models import ContainerJob, JobStatus
from ..spec import ATTEMPT_ENV
from .call import COMMAND_NAME, TaskCall, parse_call
from .compat import (
    BaseTaskBackend,
    InvalidTask,
    Task,
    TaskError,
    TaskResult,
    TaskResultDoesNotExist,
    TaskResultStatus,
    class_path,
    normalize_json,
    task_enqueued,
)
from .errors import (
    ContainerTaskCancelled,
    ContainerTaskCrashed,
    ContainerTaskError,
    ContainerTaskOOMKilled,
    ContainerTaskResultMissing,
    ContainerTaskTimeout,
)
from .wire import NONCE_ENV, new_nonce, parse

__all__ = ["JOB_OPTIONS", "ContainerTaskBackend"]

#: OPTIONS (and per-queue options) passed to queue.submit as they are.
JOB_OPTIONS = frozenset(
    {
        "image",
        "host",
        "labels",
        "memory_limit",
        "cpu_limit",
        "max_retries",
        "retry_on_failure",
        "timeout_seconds",
        "template",
        "environment",
        "secret_environment",
        "network",
        "user",
        "working_directory",
        "mounts",
        "entrypoint",
        "registry_credential",
        "gpus",
        "shm_size_mb",
        "pids_limit",
        "read_only_rootfs",
        "cap_add",
        "cap_drop",
    }
)
_OWN_OPTIONS = frozenset({"command", "queues"})
DEFAULT_COMMAND = ("python", "manage.py")
#: Characters of the container's stderr an error of the container carries.
STDERR_TAIL = 4000


class ContainerTaskBackend(BaseTaskBackend):
    """Runs every task in its own container, through the app's queue and workers."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    # ---- enqueue -----------------------------------------------------------------------

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Submit one job for this call of ``task`` and return its result (``READY``)."""
        from .. import queue

        self.validate_task(task)
        self._check_importable(task)
        call = TaskCall(
            module_path=task.module_path,
            result_id=str(uuid4()),
            backend=self.alias,
            queue_name=task.queue_name,
            args=normalize_json(list(args)),
            kwargs=normalize_json(dict(kwargs)),
        )
        options = self.queue_options(task.queue_name)
        command = [*options.pop("command", DEFAULT_COMMAND), COMMAND_NAME, *call.argv()]
        environment = dict(options.pop("environment", None) or {})
        environment[NONCE_ENV] = new_nonce()
        environment[ATTEMPT_ENV] = ""  # the worker writes the attempt's number at each launch
        job = queue.submit(
            **options,
            command=command,
            name=f"task {task.module_path}"[:200],
            environment=environment,
            priority=task.priority,
            run_after=task.run_after,
            queue=task.queue_name,
            job_id=UUID(call.result_id),
        )
        result = self._result(job, call, task, attempts=[])
        task_enqueued.send(type(self), task_result=result)
        return result

    def _check_importable(self, task: Task) -> None:
        """The container finds the task by its path: it must be the module-level name."""
        try:
            found = import_string(task.module_path)
        except ImportError as err:
            raise InvalidTask(f"Task {task.module_path!r} cannot be imported: {err}") from err
        if getattr(found, "func", None) is not task.func:
            raise InvalidTask(
                f"{task.module_path!r} is not this task: a task is run by its import path,"
                " so it must be the module-level object its @task decorator made."
            )

    def queue_options(self, queue_name: str) -> dict[str, Any]:
        """OPTIONS with the queue's own options (``OPTIONS["queues"][name]``) over them."""
        base = {k: v for k, v in self.options.items() if k != "queues"}
        return {**base, **self.options.get("queues", {}).get(queue_name, {})}

    # ---- results -----------------------------------------------------------------------

    def get_result(self, result_id: str) -> TaskResult:
        """The task's result as its job stands now; TaskResultDoesNotExist for an id that
        names no task job of this backend (malformed ids included)."""
        try:
            job = ContainerJob.objects.get(pk=result_id)
        except (ContainerJob.DoesNotExist, ValidationError, ValueError, TypeError) as err:
            raise TaskResultDoesNotExist(result_id) from err
        call = parse_call(job.argv)
        if call is None or call.backend != self.alias or call.result_id != str(job.pk):
            raise TaskResultDoesNotExist(result_id)
        return self.result_of(job, call)

    def result_of(self, job: ContainerJob, call: TaskCall) -> TaskResult:
        """The result of a task job (whose command ``call`` was read from)."""
        try:
            task = import_string(call.module_path)
        except ImportError as err:
            raise TaskResultDoesNotExist(f"{job.pk}: task {call.module_path!r}: {err}") from err
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(f"{job.pk}: {call.module_path!r} is not a task")
        task = task.using(
            priority=job.priority,
            queue_name=call.queue_name,
            run_after=job.run_after,
            backend=self.alias,
        )
        attempts = list(job.attempts.order_by("number").values_list("worker_id", "started_at"))
        return self._result(job, call, task, attempts)

    def _result(
        self, job: ContainerJob, call: TaskCall, task: Task, attempts: list[tuple[str, Any]]
    ) -> TaskResult:
        status, value, errors = self._outcome(job)
        result: TaskResult[Any] = TaskResult(
            task=task,
            id=call.result_id,
            status=status,
            enqueued_at=job.created_at,
            started_at=job.started_at or (attempts[0][1] if attempts else None),
            finished_at=job.completed_at if status in _FINISHED else None,
            last_attempted_at=attempts[-1][1] if attempts else None,
            args=call.args,
            kwargs=call.kwargs,
            backend=self.alias,
            errors=errors,
            worker_ids=[worker for worker, _ in attempts],
        )
        object.__setattr__(result, "_return_value", value)
        return result

    def _outcome(self, job: ContainerJob) -> tuple[TaskResultStatus, Any, list[TaskError]]:
        status = JobStatus(job.status)
        if status == JobStatus.QUEUED:
            return TaskResultStatus.READY, None, []
        if status in JobStatus.active():
            return TaskResultStatus.RUNNING, None, []
        nonce = parse_environment(job.override_environment).get(NONCE_ENV, "")
        reported = parse(job.stdout_log or "", nonce, max(job.attempt_count, 1))
        if reported is not None and reported.successful and status == JobStatus.COMPLETED:
            return TaskResultStatus.SUCCESSFUL, reported.return_value, []
        if reported is not None and not reported.successful:
            error = TaskError(
                exception_class_path=reported.exception_class_path,
                traceback=reported.traceback,
            )
            return TaskResultStatus.FAILED, None, [error]
        return TaskResultStatus.FAILED, None, [container_error(job)]

    # ---- checks ------------------------------------------------------------------------

    def check(self, **kwargs: Any) -> Iterable[checks.CheckMessage]:
        """Errors in OPTIONS: unknown names, a queue without an image, per-queue options
        for a queue the backend does not have, a command that is not a list of strings."""
        yield from super().check(**kwargs)
        if "container_manager" not in settings.INSTALLED_APPS:
            yield self._error("'container_manager' must be in INSTALLED_APPS", "E001")
        queue_options = self.options.get("queues", {})
        if not isinstance(queue_options, Mapping):
            yield self._error("OPTIONS['queues'] must map queue names to options", "E002")
            return
        yield from self._check_names(self.options, "OPTIONS", _OWN_OPTIONS)
        for name, options in queue_options.items():
            where = f"OPTIONS['queues'][{name!r}]"
            if self.queues and name not in self.queues:
                yield self._error(
                    f"{where}: {name!r} is not in QUEUES {sorted(self.queues)}", "E006"
                )
            yield from self._check_names(options, where, frozenset({"command"}))
        for name in sorted(self.queues or {"default"}):
            options = self.queue_options(name)
            if not options.get("image"):
                yield self._error(f"queue {name!r} has no image (OPTIONS['image'])", "E004")
            command = options.get("command", DEFAULT_COMMAND)
            if not isinstance(command, list | tuple) or not all(
                isinstance(part, str) for part in command
            ):
                yield self._error(f"queue {name!r}: 'command' must be a list of strings", "E005")

    def _check_names(
        self, options: Mapping[str, Any], where: str, own: frozenset[str]
    ) -> Iterable[checks.CheckMessage]:
        unknown = sorted(set(options) - JOB_OPTIONS - own)
        if unknown:
            known = ", ".join(sorted(JOB_OPTIONS | own))
            yield self._error(f"{where}: unknown option(s) {unknown} (known: {known})", "E003")

    def _error(self, message: str, code: str) -> checks.Error:
        return checks.Error(
            f"TASKS[{self.alias!r}]: {message}", obj=self, id=f"container_manager.tasks.{code}"
        )


_FINISHED = frozenset({TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED})


def container_error(job: ContainerJob) -> TaskError:
    """The error of a task whose container ended without reporting: which way it ended,
    its exit code, the job's last error and the end of its stderr."""
    cls: type[ContainerTaskError] = ContainerTaskCrashed
    if job.status == JobStatus.TIMEOUT:
        cls = ContainerTaskTimeout
    elif job.status == JobStatus.CANCELLED:
        cls = ContainerTaskCancelled
    elif job.oom_killed:
        cls = ContainerTaskOOMKilled
    elif job.status == JobStatus.COMPLETED:
        cls = ContainerTaskResultMissing
    lines = [f"{class_path(cls)}: job {job.pk} ended {job.status}, exit code {job.exit_code}"]
    if job.oom_killed:
        lines.append("The container was OOM-killed.")
    if job.last_error:
        lines.append(f"Last error: {job.last_error}")
    tail = (job.stderr_log or "")[-STDERR_TAIL:]
    lines.append(f"--- end of stderr ---\n{tail}" if tail else "(stderr is empty)")
    return TaskError(exception_class_path=class_path(cls), traceback="\n".join(lines))
