"""Inside a task's container: import the task by its path, call it, report the outcome.

Run by the job that ContainerTaskBackend submits (never by hand, though it can be)::

    python manage.py run_container_task myapp.tasks.send_report --result-id <id> \\
        --backend default --queue default --arguments '{"args": [1], "kwargs": {}}'

The outcome is one framed line on stdout (container_manager.tasks.wire): the return value,
or the exception's class path and traceback. The exit code is 0 on success, 1 when the task
raised (or returned something that is not JSON), 2 when the path names no task. The
container needs no database credentials for this.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.module_loading import import_string

from ...spec import ATTEMPT_ENV
from ...tasks.call import COMMAND_NAME
from ...tasks.wire import NONCE_ENV, Outcome, frame


class Command(BaseCommand):
    help = "Run one task of the Tasks framework and report its outcome (inside its container)."
    requires_system_checks: list[str] = []  # noqa: RUF012 - Django's own declaration

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_path", help="The task's import path (module.name)")
        parser.add_argument("--result-id", required=True, help="The task result's id")
        parser.add_argument("--backend", default="default", help="The TASKS alias")
        parser.add_argument("--queue", default="default", help="The task's queue")
        parser.add_argument(
            "--arguments", default='{"args": [], "kwargs": {}}', help="JSON: args and kwargs"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        nonce = os.environ.pop(NONCE_ENV, "")
        if not nonce:
            raise CommandError(f"{NONCE_ENV} is not set: {COMMAND_NAME} runs in a task's job")
        options["attempt"] = _attempt()
        outcome, code = run(options)
        outcome = replace(outcome, attempt=options["attempt"])
        sys.stdout.flush()
        sys.stderr.flush()
        # On a line of its own, after everything the task printed (even without a newline).
        self.stdout.write("\n" + frame(outcome, nonce))
        self.stdout.flush()
        if code:
            sys.exit(code)


def run(options: dict[str, Any]) -> tuple[Outcome, int]:
    """Import and call the task; the outcome and the exit code."""
    from ...tasks import compat

    try:
        task = import_string(options["task_path"])
    except ImportError as err:
        return _failed(err), 2
    if not isinstance(task, compat.Task):
        refused = compat.InvalidTask(f"{options['task_path']!r} is not a task object")
        return _failed(refused), 2
    try:
        arguments = json.loads(options["arguments"])
        call_args, call_kwargs = list(arguments["args"]), dict(arguments["kwargs"])
        task = task.using(queue_name=options["queue"], backend=options["backend"])
        if task.takes_context:
            call_args.insert(0, compat.TaskContext(task_result=_result(task, options, arguments)))
        value = compat.normalize_json(task.call(*call_args, **call_kwargs))
        return Outcome(True, return_value=value), 0
    except KeyboardInterrupt:
        raise
    except BaseException as err:  # noqa: BLE001 - SystemExit too: the task's outcome
        return _failed(err), 1


def _attempt() -> int:
    """This container's attempt number, as the worker set it (1 when it is not set)."""
    text = os.environ.get(ATTEMPT_ENV, "")
    return int(text) if text.isdigit() and int(text) > 0 else 1


def _result(task: Any, options: dict[str, Any], arguments: dict[str, Any]) -> Any:
    """The result the task's context carries: this run, as attempt number ``attempt``. The
    container cannot read the earlier attempts' workers (it has no database access): their
    entries in ``worker_ids`` are empty strings; ``get_result()`` has the real ones."""
    from ...tasks import compat

    now = timezone.now()
    return compat.TaskResult(
        task=task,
        id=options["result_id"],
        status=compat.TaskResultStatus.RUNNING,
        enqueued_at=None,
        started_at=now,
        finished_at=None,
        last_attempted_at=now,
        args=arguments["args"],
        kwargs=arguments["kwargs"],
        backend=options["backend"],
        errors=[],
        worker_ids=[""] * (options["attempt"] - 1) + [os.environ.get("HOSTNAME", "container")],
    )


def _failed(err: BaseException) -> Outcome:
    from ...tasks import compat

    error = compat.task_error(err)
    return Outcome(
        False, exception_class_path=error.exception_class_path, traceback=error.traceback
    )
