"""Jobs made the way the worker makes them: inserted waiting, then moved through their
statuses by UPDATEs, so that the tally's trigger counts them (a job inserted with an ended
status is not counted, as in production)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.utils import timezone

from container_manager.models import ContainerJob, JobStatus


def lived_job(
    host: Any,
    status: str = JobStatus.QUEUED,
    *,
    started_at: datetime | None = None,
    completed_at: datetime | None = None,
    **fields: Any,
) -> ContainerJob:
    """A job of ``host`` that reached ``status``: started at ``started_at`` (it becomes
    running first, when given) and ended at ``completed_at`` (default now) for an ended
    status."""
    first = status if status in (JobStatus.QUEUED, JobStatus.LAUNCHING) else JobStatus.QUEUED
    job = ContainerJob.objects.create(docker_host=host, status=first, **fields)
    rows = ContainerJob.objects.filter(pk=job.pk)
    if started_at is not None or status == JobStatus.RUNNING:
        rows.update(status=JobStatus.RUNNING, started_at=started_at or timezone.now())
    if JobStatus(status).is_terminal:
        rows.update(status=status, completed_at=completed_at or timezone.now())
    job.refresh_from_db()
    return job
