"""The Tasks framework this process has: ``django.tasks`` (Django 6.0 and later) or the
``django-tasks`` backport (0.12 or later, for Django 5.2).

Everything the backend and the container-side command use of the framework is imported
from here, under one set of names: the exception the framework raises for an invalid task
is ``InvalidTask`` (the backport calls it ``InvalidTaskError``), and ``normalize_json`` is
``django.utils.json.normalize_json`` on Django 6 and ``django_tasks.utils.normalize_json``
in the backport. On Django 6 with the backport also installed, ``django.tasks`` wins: tasks
must then be declared with ``django.tasks.task``.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

import django

#: Which framework is in use: "django.tasks" or "django_tasks".
FRAMEWORK = "django.tasks" if django.VERSION >= (6, 0) else "django_tasks"

if TYPE_CHECKING:  # mypy checks against the backport's annotations (Django 5.2's stubs)
    from django_tasks import task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import (
        DEFAULT_TASK_QUEUE_NAME,
        TASK_MAX_PRIORITY,
        TASK_MIN_PRIORITY,
        Task,
        TaskContext,
        TaskError,
        TaskResult,
        TaskResultStatus,
        task,
    )
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
elif FRAMEWORK == "django.tasks":
    from django.tasks import task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import (
        DEFAULT_TASK_QUEUE_NAME,
        TASK_MAX_PRIORITY,
        TASK_MIN_PRIORITY,
        Task,
        TaskContext,
        TaskError,
        TaskResult,
        TaskResultStatus,
        task,
    )
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
else:
    try:
        from django_tasks import task_backends
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            "container_manager.tasks needs Django 6.0+ (django.tasks) or, on Django 5.2,"
            " the backport: pip install 'django-tasks>=0.12'"
        ) from err
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import (
        DEFAULT_TASK_QUEUE_NAME,
        TASK_MAX_PRIORITY,
        TASK_MIN_PRIORITY,
        Task,
        TaskContext,
        TaskError,
        TaskResult,
        TaskResultStatus,
        task,
    )
    from django_tasks.exceptions import InvalidTaskError as InvalidTask
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

__all__ = [
    "DEFAULT_TASK_QUEUE_NAME",
    "FRAMEWORK",
    "TASK_MAX_PRIORITY",
    "TASK_MIN_PRIORITY",
    "BaseTaskBackend",
    "InvalidTask",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "class_path",
    "normalize_json",
    "task",
    "task_backends",
    "task_enqueued",
    "task_error",
    "task_finished",
    "task_started",
]


def class_path(cls: type) -> str:
    """``module.QualName`` of a class, as the framework records exception classes."""
    return f"{cls.__module__}.{cls.__qualname__}"


def task_error(err: BaseException) -> TaskError:
    """The framework's record of ``err``: its class path and its formatted traceback."""
    return TaskError(
        exception_class_path=class_path(type(err)),
        traceback="".join(traceback.format_exception(err)),
    )
