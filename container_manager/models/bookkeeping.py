"""The workers' heartbeats and the jobs' tally: rows the app keeps about itself."""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from django.utils import timezone

from .status import JobStatus

__all__ = ["JobTally", "WorkerHeartbeat"]


class WorkerHeartbeat(models.Model):
    """A worker process's last sign of life: written when it starts and every
    ``LEASE_SECONDS / 3`` (idle or not), deleted when it exits cleanly."""

    #: The worker's id (``host:pid:token``).
    worker_id = models.CharField(max_length=200, primary_key=True)
    #: The machine the worker runs on.
    hostname = models.CharField(max_length=255, blank=True)
    #: The worker's process id there.
    pid = models.PositiveIntegerField(null=True, blank=True)
    #: Jobs the worker runs at once (``--concurrency``).
    concurrency = models.PositiveIntegerField(default=1)
    #: Jobs it held at its last heartbeat.
    running_jobs = models.PositiveIntegerField(default=0)
    #: When the worker started.
    started_at = models.DateTimeField(default=timezone.now)
    #: Its last heartbeat (every ``LEASE_SECONDS / 3``).
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    #: The worker's last fault, written once it is over: "database unreachable since ...".
    degraded = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering: ClassVar = ["worker_id"]

    def __str__(self) -> str:
        return f"{self.worker_id} ({self.running_jobs}/{self.concurrency})"


class JobTally(models.Model):
    """How many jobs reached a status, per minute, host and histogram bucket: written by a
    database trigger in the statement that changes a job's status (so every path counts,
    in the same transaction), read by the overview and the metrics instead of counting
    history. See :mod:`container_manager.tally`.

    ``status`` is a terminal status (a job ended: ``bucket`` is its run time's histogram
    bucket) or ``running`` (an attempt started: ``bucket`` is its launch latency's).
    ``seconds`` is the sum of those durations. Rows older than two hours are folded into
    the rows of minute :data:`~container_manager.tally.EPOCH` (the totals before)."""

    #: The minute counted (older rows are folded into one row of totals).
    minute = models.DateTimeField()
    #: The job's host (a plain id, 0: never placed); not a foreign key, so that a host's
    #: totals outlive it.
    host_id = models.BigIntegerField(default=0)
    #: An ended status (a job ended), or ``running`` (an attempt started).
    status = models.CharField(max_length=20, choices=JobStatus.choices)
    #: Index of the first histogram bound the duration is within; len(bounds): beyond them;
    #: -1: no duration (a job cancelled before it started).
    bucket = models.SmallIntegerField(default=-1)
    #: Jobs counted.
    count = models.BigIntegerField(default=0)
    #: Sum of their durations.
    seconds = models.FloatField(default=0.0)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["minute", "host_id", "status", "bucket"], name="cm_tally_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} host {self.host_id} {self.status}: {self.count}"
