"""The framework's ``task_started`` and ``task_finished``, sent when a task's job starts
and ends (in the worker that runs it). Connected once by the app's ``ready()``; a job that
is not a task's costs one substring test."""

from __future__ import annotations

from typing import Any

from ..signals import job_finished, job_started
from .call import COMMAND_NAME, parse_call

__all__ = ["connect"]


def connect() -> None:
    job_started.connect(_started, dispatch_uid="container_manager.tasks.started")
    job_finished.connect(_finished, dispatch_uid="container_manager.tasks.finished")


def _send(job: Any, which: str) -> None:
    if COMMAND_NAME not in (job.command or ""):
        return
    call = parse_call(job.argv)
    if call is None:
        return
    from . import compat
    from .backend import ContainerTaskBackend

    backend = compat.task_backends[call.backend]
    if not isinstance(backend, ContainerTaskBackend):
        return
    from ..models import ContainerJob

    job = ContainerJob.objects.get(pk=job.pk)  # as written, not the worker's own instance
    signal = compat.task_started if which == "started" else compat.task_finished
    signal.send(type(backend), task_result=backend.result_of(job, call))


def _started(sender: Any, job: Any, **kwargs: Any) -> None:
    _send(job, "started")


def _finished(sender: Any, job: Any, **kwargs: Any) -> None:
    _send(job, "finished")
