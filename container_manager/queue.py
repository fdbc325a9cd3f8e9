"""The queue: submit jobs, claim them atomically, retry policy and backoff, cancel.

Claiming is one short transaction with no engine call inside it. On PostgreSQL the
candidate rows are taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` and the hosts' rows are
locked so that ``max_concurrent_jobs`` holds across all workers; on SQLite the transaction
takes the write lock up front (``transaction_mode=IMMEDIATE``), which serialises claimers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .bulk import BulkSubmission, submit_many
from .compiled import fetch, update
from .conf import get_settings
from .exceptions import ConfigurationError, InvalidJobError, JobStateError
from .executors import executor_class
from .health import healthy_hosts
from .models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from .placement import HostRoom, OpenJob, choose_host
from .policy import refusal_text, refusals
from .signals import job_finished, send
from .spec import SPEC_FIELDS
from .submission import prepare, queued, resolve_host, submit

__all__ = [
    "BulkSubmission",
    "adopt_expired",
    "backoff_delay",
    "cancel",
    "claim",
    "expired_leases",
    "prepare",
    "requeue_copy",
    "resolve_host",
    "retry",
    "submit",
    "submit_many",
]


def backoff_delay(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, capped, with jitter."""
    conf = get_settings()
    exponent = min(max(attempt - 1, 0), 64)  # 2**64 * base exceeds any sane cap; no overflow
    ceiling = min(conf.RETRY_BACKOFF_MAX, conf.RETRY_BACKOFF_BASE * 2**exponent)
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Claimed:
    """A job a worker now holds, and whether it was adopted from an expired lease."""

    job: ContainerJob
    adopted: bool


@dataclass(frozen=True)
class _Candidate:
    job: ContainerJob
    placement: OpenJob | None = None

    @property
    def order(self) -> tuple[int, datetime]:
        return -self.job.priority, self.job.created_at


#: A claim's queues: ``(None,)`` for every queue, else the names of the worker's queues.
Lanes = tuple[str | None, ...]


def _pinned_candidates(
    rooms: dict[int, HostRoom], limit: int, now: datetime, lanes: Lanes
) -> list[_Candidate]:
    """Due jobs of each host with room. One query per host (and queue, for a worker limited
    to some): each is an ordered scan of that host's part of a partial claim index, so its
    cost does not grow with the number of waiting jobs (nor with other hosts' backlogs)."""
    found: list[_Candidate] = []
    for room in rooms.values():
        if room.free <= 0:
            continue
        for lane in lanes:
            for job in fetch(_due_on_host, room.pk, lane, min(room.free, limit), now=now):
                job.docker_host = room.host  # the row this claim has locked: no second read
                found.append(_Candidate(job))
    return found


def _open_candidates(limit: int, now: datetime, lane: str | None) -> list[_Candidate]:
    """Due jobs that name no host (of one queue, or of all), best first."""
    return [_open_candidate(job) for job in fetch(_due_open, lane, limit, now=now)]


def _open_candidate(job: ContainerJob) -> _Candidate:
    placement = OpenJob(
        dict(job.required_labels or {}), bool(job.memory_limit or job.cpu_limit), _policy_check(job)
    )
    return _Candidate(job, placement)


def _policy_check(job: ContainerJob) -> Callable[[ExecutorHost], str]:
    """Why a host's policy refuses ``job`` ('' when it does not), for placement."""
    try:
        request = job.request()
    except InvalidJobError as err:
        problem = f"its spec is malformed: {err}"
        return lambda host: problem
    return lambda host: refusal_text(refusals(request, host))


def _due(now: datetime, lane: str | None) -> QuerySet[ContainerJob]:
    query = ContainerJob.objects.filter(status=JobStatus.QUEUED)
    if lane is not None:
        query = query.filter(queue=lane)
    query = (
        query.filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
        .order_by("-priority", "created_at")
        .defer("stdout_log", "stderr_log")  # a retried job's old output: not needed to run it
    )
    if _supports_skip_locked():
        query = query.select_for_update(skip_locked=True, of=("self",))
    return query


def _due_on_host(
    host_pk: int, lane: str | None, limit: int, now: datetime
) -> QuerySet[ContainerJob]:
    return _due(now, lane).filter(docker_host=host_pk)[:limit]


def _due_open(lane: str | None, limit: int, now: datetime) -> QuerySet[ContainerJob]:
    return _due(now, lane).filter(docker_host__isnull=True)[:limit]


def _healthy_locked(names: tuple[str, ...], threshold: int) -> QuerySet[ExecutorHost]:
    """Active, healthy hosts, locked on PostgreSQL for the claim."""
    query = healthy_hosts(threshold)
    if names:
        query = query.filter(name__in=names)
    if _supports_skip_locked():
        query = query.select_for_update()
    return query


def _busy_counts(host_pks: tuple[int, ...]) -> QuerySet[ContainerJob, tuple[int, int]]:
    """Jobs launching or running on each host, counting every worker's. A statement of its
    own, after the hosts are locked: it then sees the jobs of the claim that held the locks
    before."""
    return (
        ContainerJob.objects.filter(docker_host__in=host_pks, status__in=JobStatus.active())
        .values_list("docker_host")
        .annotate(n=Count("pk"))
        .order_by()
    )


def _rooms(hosts: Sequence[str] | None) -> dict[int, HostRoom]:
    """Active, healthy hosts (locked, on PostgreSQL, for the claim) with their load."""
    found = fetch(_healthy_locked, tuple(hosts or ()), get_settings().UNHEALTHY_AFTER)
    busy = dict(fetch(_busy_counts, tuple(h.pk for h in found)))
    return {
        h.pk: HostRoom(
            h.pk,
            h.name,
            h.effective_labels(),
            h.weight,
            h.max_concurrent_jobs,
            busy.get(h.pk, 0),
            _supports_limits(h.executor_type),
            host=h,
        )
        for h in found
    }


def _supports_limits(alias: str) -> bool:
    try:
        return executor_class(alias).supports_resource_limits
    except ConfigurationError:
        return False


def _select(
    candidates: list[_Candidate], rooms: dict[int, HostRoom], limit: int
) -> tuple[list[ContainerJob], dict[int, tuple[list[ContainerJob], str]], dict[str, list[object]]]:
    """Walk candidates best first: pinned jobs take their host's room, open jobs are placed.
    Returns pinned picks, placed picks by host (with the reason), and waiting reasons."""
    pinned: list[ContainerJob] = []
    placed: dict[int, tuple[list[ContainerJob], str]] = {}
    waiting: dict[str, list[object]] = {}
    hosts = list(rooms.values())
    for cand in sorted(candidates, key=lambda c: c.order):
        if len(pinned) + sum(len(p) for p, _ in placed.values()) >= limit:
            break
        if cand.placement is None:
            room = rooms[cand.job.docker_host_id]  # type: ignore[index]
            if room.free > 0:
                room.busy += 1
                pinned.append(cand.job)
            continue
        host, reason = choose_host(cand.placement, hosts)
        if host is None:
            waiting.setdefault(reason, []).append(cand.job.pk)
            continue
        host.busy += 1
        placed.setdefault(host.pk, ([], reason))[0].append(cand.job)
    return pinned, placed, waiting


#: Open jobs a claim reads past the first page when those before fit no host (so that a
#: backlog of jobs no host can take never holds up the ones behind it).
MAX_OPEN_SCAN = 512


def _place_beyond(
    page: list[_Candidate],
    limit: int,
    rooms: dict[int, HostRoom],
    pinned: int,
    picks: tuple[dict[int, tuple[list[ContainerJob], str]], dict[str, list[object]]],
    now: datetime,
    lane: str | None,
) -> None:
    """While the open jobs of a full page (of ``limit``) could not all be placed and there
    is room, read the next page (up to MAX_OPEN_SCAN rows in all) and place from it into
    ``picks`` (placed, waiting): waiting jobs never block those behind them, whatever their
    priority."""
    placed, waiting = picks
    size, scanned = limit, len(page)
    left = limit - pinned - sum(len(jobs) for jobs, _ in placed.values())
    while left > 0 and len(page) == size and scanned < MAX_OPEN_SCAN:
        if not any(room.free > 0 for room in rooms.values()):
            return
        page = _open_after(page[-1].job, size * 4, now, lane)
        size, scanned = size * 4, scanned + len(page)
        _, more, more_waiting = _select(page, rooms, left)
        for host_pk, (jobs, reason) in more.items():
            placed.setdefault(host_pk, ([], reason))[0].extend(jobs)
            left -= len(jobs)
        for reason, pks in more_waiting.items():
            waiting.setdefault(reason, []).extend(pks)


def _open_after(job: ContainerJob, limit: int, now: datetime, lane: str | None) -> list[_Candidate]:
    """The open candidates after ``job`` in claim order (a keyset page)."""
    after = Q(priority__lt=job.priority) | Q(priority=job.priority, created_at__gt=job.created_at)
    jobs = _due(now, lane).filter(docker_host__isnull=True).filter(after)[:limit]
    return [_open_candidate(j) for j in jobs]


def _supports_skip_locked() -> bool:
    return connection.features.has_select_for_update_skip_locked


def claim(
    worker_id: str,
    limit: int,
    *,
    hosts: Sequence[str] | None = None,
    queues: Sequence[str] | None = None,
) -> list[Claimed]:
    """Take up to ``limit`` due jobs for ``worker_id`` (of ``queues``, when given; of every
    queue otherwise): highest priority first, then oldest,
    never more on a host than its ``max_concurrent_jobs`` counting every worker's jobs, and
    only on active, healthy hosts. Jobs that name no host are placed (see placement.py);
    those that cannot be placed wait, with the reason in ``placement_reason``.

    Each claimed job is LAUNCHING with a new attempt number and a lease (the worker writes
    the attempt's row when it starts on it).
    """
    if limit <= 0:
        return []
    now = timezone.now()
    claimed: dict[str, Any] = {
        "status": JobStatus.LAUNCHING,
        "worker_id": worker_id,
        "lease_expires_at": now + timedelta(seconds=get_settings().LEASE_SECONDS),
        "cancel_requested": False,
    }
    lanes: Lanes = tuple(dict.fromkeys(queues)) if queues else (None,)
    with transaction.atomic():
        rooms = _rooms(hosts)
        first_open = {lane: _open_candidates(limit, now, lane) for lane in lanes}
        candidates = _pinned_candidates(rooms, limit, now, lanes)
        candidates += [cand for page in first_open.values() for cand in page]
        pinned, placed, waiting = _select(candidates, rooms, limit)
        for lane, page in first_open.items():
            _place_beyond(page, limit, rooms, len(pinned), (placed, waiting), now, lane)
        if pinned:
            _take(pinned, claimed)
        for host_pk, (jobs, reason) in placed.items():
            host = rooms[host_pk].host
            _take(jobs, {**claimed, "docker_host": host, "auto_placed": True,
                         "placement_reason": reason})  # fmt: skip
        for reason, pks in waiting.items():
            ContainerJob.objects.filter(pk__in=pks).exclude(placement_reason=reason).update(
                placement_reason=reason
            )
    picked = pinned + [job for jobs, _ in placed.values() for job in jobs]
    picked.sort(key=lambda j: (-j.priority, j.created_at))
    return [Claimed(job, adopted=False) for job in picked]


def _take(jobs: list[ContainerJob], changes: dict[str, Any]) -> None:
    """Claim ``jobs``, rows read in this claim's transaction, which holds their row locks
    on PostgreSQL and the database's write lock on SQLite (``transaction_mode`` IMMEDIATE),
    so their attempt counts are current: one UPDATE per attempt count among them, usually
    one in all. The instances are brought up to date instead of being read again."""
    by_count: dict[int, list[Any]] = {}
    for job in jobs:
        by_count.setdefault(job.attempt_count, []).append(job.pk)
    for count, pks in by_count.items():
        update(ContainerJob, {"pk": pks}, attempt_count=count + 1, **changes)
    for job in jobs:
        job.attempt_count += 1
        for name, value in changes.items():
            setattr(job, name, value)


def record_attempt(job: ContainerJob, *, adopted: bool = False, **fields: Any) -> None:
    """Write the row of the job's current attempt, with ``fields`` (status, container id,
    outcome). A fresh claim's attempt number is new: one plain INSERT, made once the attempt
    has something to say (its container started, or it failed before one did). An adopted
    attempt may have its row already (kept as it is)."""
    row = JobAttempt.of(job, **fields)
    if adopted:
        JobAttempt.objects.bulk_create([row], ignore_conflicts=True)
    else:
        row.save(force_insert=True)


def adopt_expired(
    worker_id: str,
    limit: int,
    *,
    hosts: Sequence[str] | None = None,
    queues: Sequence[str] | None = None,
) -> list[Claimed]:
    """Take over up to ``limit`` jobs whose worker's lease ran out (it died or was cut off):
    of ``hosts`` and ``queues`` when given, as :func:`claim` takes them."""
    if limit <= 0:
        return []
    now = timezone.now()
    lease_until = now + timedelta(seconds=get_settings().LEASE_SECONDS)
    expired = list(
        expired_leases(now, hosts=hosts, queues=queues)
        .order_by("lease_expires_at")
        .values_list("pk", "worker_id")[:limit]
    )
    taken = [
        pk
        for pk, old_worker in expired
        if expired_leases(now)
        .filter(pk=pk, worker_id=old_worker)
        .update(worker_id=worker_id, lease_expires_at=lease_until)
    ]
    jobs = ContainerJob.objects.filter(pk__in=taken).select_related("docker_host")
    return [Claimed(job, adopted=True) for job in jobs]


def expired_leases(
    now: datetime,
    *,
    hosts: Sequence[str] | None = None,
    queues: Sequence[str] | None = None,
) -> QuerySet[ContainerJob]:
    """The held jobs whose lease ran out by ``now``: of ``hosts`` and ``queues`` when given."""
    expired = ContainerJob.objects.filter(status__in=JobStatus.active(), lease_expires_at__lt=now)
    if hosts:
        expired = expired.filter(docker_host__name__in=hosts)
    if queues:
        expired = expired.filter(queue__in=queues)
    return expired


def _get(job: ContainerJob | str) -> ContainerJob:
    if isinstance(job, ContainerJob):
        return job
    try:
        return ContainerJob.objects.get(pk=job)
    except (ContainerJob.DoesNotExist, ValidationError) as err:
        raise InvalidJobError(f"No job with id {job!r}") from err


def retry(job: ContainerJob | str) -> ContainerJob:
    """Queue an ended job again, as a new attempt of the same job (its history is kept).

    Raises JobStateError for a job that has not ended."""
    job = _get(job)
    took = job._transition(
        JobStatus.terminal(),
        None,
        status=JobStatus.QUEUED,
        run_after=None,
        container_id="",
        exit_code=None,
        oom_killed=False,
        started_at=None,  # the new attempt's deadline counts from its own start
        completed_at=None,
        cancel_requested=False,
    )
    if not took:
        raise JobStateError(
            f"Job {job.pk} has not ended ({job.status}); only ended jobs are retried"
        )
    job.refresh_from_db()
    queued(job)
    return job


def requeue_copy(job: ContainerJob | str) -> ContainerJob:
    """Submit a fresh copy of a job (same image, command, limits, environment, host)."""
    job = _get(job)
    copy = ContainerJob.objects.create(
        # A job the queue had placed is placed afresh; one that named its host keeps it.
        docker_host=None if job.auto_placed else job.docker_host,
        required_labels=dict(job.required_labels),
        name=job.name,
        docker_image=job.docker_image,
        command=job.command,
        working_directory=job.working_directory,
        environment_template=job.environment_template,
        override_environment=job.override_environment,
        memory_limit=job.memory_limit,
        cpu_limit=job.cpu_limit,
        timeout_seconds=job.timeout_seconds,
        priority=job.priority,
        max_retries=job.max_retries,
        retry_on_failure=job.retry_on_failure,
        queue=job.queue,
        **{name: getattr(job, name) for name in SPEC_FIELDS},
    )
    queued(copy)
    return copy


def cancel(job: ContainerJob | str) -> bool:
    """Cancel a job (by instance or id). A waiting job never launches; a running one is
    stopped by the worker that holds it. Idempotent; False for a job that already ended
    otherwise."""
    job = _get(job)
    was_waiting = job.status == JobStatus.QUEUED
    cancelled = job.cancel()
    if cancelled and was_waiting and job.status == JobStatus.CANCELLED:
        send(job_finished, job, status=JobStatus.CANCELLED)
    return cancelled
