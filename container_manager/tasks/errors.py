"""Exceptions a task's result names when its container, not its code, ended it.

A task's own exception comes back with its own class path. When the container ends without
reporting (timeout, OOM kill, crash, cancellation, a result line that is missing), the
result's error names one of these importable classes; its ``traceback`` text carries the
exit code and the end of the container's stderr.
"""

from __future__ import annotations

from ..exceptions import ContainerManagerError

__all__ = [
    "ContainerTaskCancelled",
    "ContainerTaskCrashed",
    "ContainerTaskError",
    "ContainerTaskOOMKilled",
    "ContainerTaskResultMissing",
    "ContainerTaskTimeout",
]


class ContainerTaskError(ContainerManagerError):
    """The container of a task ended without the task reporting an outcome."""


class ContainerTaskTimeout(ContainerTaskError):
    """The container ran past the job's timeout and was stopped."""


class ContainerTaskOOMKilled(ContainerTaskError):
    """The container went over its memory limit and the engine killed it."""


class ContainerTaskCrashed(ContainerTaskError):
    """The container exited (or failed to start) without reporting an outcome."""


class ContainerTaskCancelled(ContainerTaskError):
    """The job was cancelled before the task reported an outcome."""


class ContainerTaskResultMissing(ContainerTaskError):
    """The container exited 0 but its stdout carries no result line for this job."""
