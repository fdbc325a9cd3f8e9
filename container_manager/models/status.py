"""The one status type of a job."""

from __future__ import annotations

from django.db import models

__all__ = ["JobStatus"]


class JobStatus(models.TextChoices):
    """The one status type of a job."""

    QUEUED = "queued", "Queued"
    LAUNCHING = "launching", "Launching"
    RUNNING = "running", "Running"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    TIMEOUT = "timeout", "Timed out"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def terminal(cls) -> frozenset[JobStatus]:
        """Statuses a job never leaves on its own."""
        return frozenset({cls.COMPLETED, cls.FAILED, cls.TIMEOUT, cls.CANCELLED})

    @classmethod
    def active(cls) -> frozenset[JobStatus]:
        """Statuses of a job a worker holds (it may have a container on an engine)."""
        return frozenset({cls.LAUNCHING, cls.RUNNING})

    @property
    def is_terminal(self) -> bool:
        return self in JobStatus.terminal()
