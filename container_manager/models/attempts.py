"""One row per launch of a job: where it ran, which container, how it ended, what it ran with."""

from __future__ import annotations

from typing import Any, ClassVar

from django.db import models
from django.utils import timezone

from ..spec import container_name
from .hosts import ExecutorHost
from .jobs import ContainerJob
from .status import JobStatus

__all__ = ["JobAttempt"]


class JobAttempt(models.Model):
    """One launch attempt of a job: where, which container, and how it ended."""

    # The (job, number) unique constraint's index serves lookups by job.
    #: The job this is an attempt of.
    job = models.ForeignKey(
        ContainerJob, on_delete=models.CASCADE, related_name="attempts", db_index=False
    )
    #: 1 for the first launch, 2 for the first retry, and so on.
    number = models.PositiveIntegerField()
    #: The host it ran on.
    host = models.ForeignKey(ExecutorHost, on_delete=models.PROTECT, related_name="attempts")
    #: The worker that launched it.
    worker_id = models.CharField(max_length=200, blank=True)
    #: The container's name, ``cm-<job id>-<number>``.
    container_name = models.CharField(max_length=200)
    #: The container (service, Kubernetes Job) id.
    container_id = models.CharField(max_length=128, blank=True)
    #: How the attempt ended (a ``JobStatus``), or ``running``.
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.LAUNCHING)
    #: The container's exit code.
    exit_code = models.IntegerField(null=True, blank=True)
    #: Killed for exceeding its memory limit.
    oom_killed = models.BooleanField(default=False)
    #: Why it failed (secrets redacted).
    error = models.TextField(blank=True)
    #: The resolved spec the attempt ran with (secrets by name only, no credentials).
    spec = models.JSONField(default=dict, blank=True)
    #: When the container started.
    started_at = models.DateTimeField(default=timezone.now)
    #: When the attempt ended.
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["job", "number"]
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["job", "number"], name="cm_attempt_unique_number")
        ]

    def __str__(self) -> str:
        return f"{self.job_id} attempt {self.number} [{self.status}]"

    @classmethod
    def of(cls, job: ContainerJob, number: int | None = None, **fields: Any) -> JobAttempt:
        """The (unsaved) row of attempt ``number`` (default: the job's current one) of
        ``job``, with ``fields`` (by default on the job's host, by the job's worker)."""
        number = job.attempt_count if number is None else number
        fields.setdefault("host", job.docker_host)
        fields.setdefault("worker_id", job.worker_id)
        return cls(job=job, number=number, container_name=container_name(job.pk, number), **fields)
