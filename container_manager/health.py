"""Host health: check engines and record the outcome; which hosts count as healthy."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone

from .conf import get_settings
from .exceptions import ContainerManagerError, ExecutorConnectionError
from .executors import get_executor
from .models import ContainerJob, ExecutorHost, JobAttempt, JobStatus

__all__ = ["check_host", "declare_lost_jobs", "healthy_hosts"]

log = logging.getLogger("container_manager.health")


def check_host(host: ExecutorHost) -> tuple[bool, str]:
    """Ping the host's engine and record the result; ``(healthy, detail)`` where detail is
    the engine version or the reason it failed. Never raises for an engine error."""
    try:
        executor = get_executor(host)
        detail = executor.get_version()  # raises with the engine's (or the network's) words
        healthy = executor.health_check()
        capacity = executor.capacity() if healthy else None
        if not healthy:
            detail = f"engine {detail} answers but fails the executor's health check"
    except ContainerManagerError as err:
        healthy, detail, capacity = False, _failure(err), None
    host.record_health(healthy, "" if healthy else detail, capacity)
    if not healthy:
        log.warning(
            "host=%s unhealthy failures=%d: %s", host.name, host.health_check_failures, detail
        )
    return healthy, detail


def _failure(err: ContainerManagerError) -> str:
    """What a failed check records: the engine's status code and a fixed text, never the
    body of its answer (a host may point anywhere; its answer is not ours to show)."""
    if isinstance(err, ExecutorConnectionError):
        return str(err)  # the client's own words: refused, timed out, TLS failure
    status = getattr(err, "status_code", None)
    if status is not None:
        return f"The engine answered HTTP {status}."
    return f"The engine's answer could not be used ({type(err).__name__})."


def healthy_hosts(threshold: int | None = None) -> QuerySet[ExecutorHost]:
    """Active hosts whose consecutive failed checks are under ``threshold`` (by default
    UNHEALTHY_AFTER)."""
    if threshold is None:
        threshold = get_settings().UNHEALTHY_AFTER
    return ExecutorHost.objects.filter(Q(is_active=True) & Q(health_check_failures__lt=threshold))


def declare_lost_jobs() -> int:
    """Queue again the jobs running on hosts that have been unhealthy for longer than
    HOST_LOST_AFTER; returns how many. Their attempts are recorded as lost."""
    conf = get_settings()
    cutoff = timezone.now() - timedelta(seconds=conf.HOST_LOST_AFTER)
    dead = ExecutorHost.objects.filter(health_check_failures__gte=conf.UNHEALTHY_AFTER).filter(
        Q(last_healthy_at__lt=cutoff) | Q(last_healthy_at__isnull=True, created_at__lt=cutoff)
    )
    lost = 0
    for job in ContainerJob.objects.filter(docker_host__in=dead, status__in=JobStatus.active()):
        host_name = job.docker_host.name if job.docker_host else "?"
        reason = f"Lost: host {host_name} unreachable for more than {conf.HOST_LOST_AFTER:.0f}s."
        attempt = job.attempt_count
        if job.mark_lost(reason):
            _close_attempt(
                job, attempt, status=JobStatus.FAILED, error=reason, finished_at=timezone.now()
            )
            log.warning("job=%s status=queued %s", job.pk, reason)
            lost += 1
    return lost


def _close_attempt(job: ContainerJob, number: int, **fields: Any) -> None:
    """Record the end of attempt ``number`` of ``job``, writing its row if its worker had
    not (it was cut off before the attempt's container started)."""
    if JobAttempt.objects.filter(job=job, number=number).update(**fields):
        return
    if job.docker_host_id is None:  # never placed: no attempt to record
        return
    JobAttempt.objects.bulk_create([JobAttempt.of(job, number, **fields)], ignore_conflicts=True)
