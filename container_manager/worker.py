"""The worker: claim -> run (in threads, up to ``concurrency`` at once) -> record; leases,
cancellation, adoption of jobs whose worker died, graceful shutdown.

``python manage.py process_container_jobs`` is a thin wrapper around :class:`Worker`.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from django.db import close_old_connections, connection
from django.db.models import Q
from django.utils import timezone

from .conf import get_settings
from .exceptions import ContainerManagerError, JobStateError
from .executors import get_executor, set_pool_size
from .health import check_host, declare_lost_jobs
from .models import ContainerJob, ExecutorHost, JobStatus, WorkerHeartbeat
from .notify import Listener
from .outage import ADOPTIONS, DB_ERRORS, OUTAGE, backoff, close_broken, is_outage
from .queue import Claimed, adopt_expired, claim, expired_leases
from .reaper import prune_jobs, reap
from .runner import JobRunner, RunControl
from .tally import compact

__all__ = ["Worker"]

log = logging.getLogger("container_manager.worker")
_DEAD_WORKER = timedelta(hours=1)  # a heartbeat this old is a dead worker's


def _held_host(job: ContainerJob) -> ExecutorHost:
    """The host of a job this worker holds: claiming places a job, so it always has one."""
    host = job.docker_host
    if host is None:  # it was re-placed (declared lost) since it was read
        raise JobStateError(f"job {job.pk} has no host now; it was queued again")
    return host


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _dead_here(worker_id: str) -> bool:
    """Whether ``worker_id`` (``host:pid:nonce``) names a worker of this machine whose
    process no longer exists."""
    host, _, rest = worker_id.partition(":")
    pid, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    return _process_gone(int(pid))


def release_dead_holders(worker_id: str, lease_seconds: float) -> set[Any]:
    """Expire at once the leases of jobs held by dead workers (a process of this machine that
    is gone, or a heartbeat older than the lease), so that they are adopted now instead of
    when their lease runs out; returns the ids of the jobs released."""
    now = timezone.now()
    holders = set(
        ContainerJob.objects.filter(status__in=JobStatus.active(), lease_expires_at__gte=now)
        .exclude(worker_id__in=["", worker_id])
        .order_by()
        .values_list("worker_id", flat=True)
        .distinct()
    )
    if not holders:
        return set()
    gone = {holder: "its process is gone" for holder in holders if _dead_here(holder)}
    stale = WorkerHeartbeat.objects.filter(
        worker_id__in=holders - set(gone), last_seen__lt=now - timedelta(seconds=lease_seconds)
    ).values_list("worker_id", flat=True)
    gone.update({holder: "its heartbeat is older than the lease" for holder in stale})
    released: set[Any] = set()
    for holder, cause in gone.items():
        jobs = ContainerJob.objects.filter(
            worker_id=holder, status__in=JobStatus.active(), lease_expires_at__gte=now
        )
        pks = set(jobs.values_list("pk", flat=True))
        if pks and jobs.filter(pk__in=pks).update(lease_expires_at=now):
            log.warning("worker=%s is dead (%s): adopting its %d job(s)", holder, cause, len(pks))
            released |= pks
    return released


@dataclass
class _Slot:
    job_id: Any
    control: RunControl
    host: ExecutorHost


class Worker:
    """Runs queued jobs until stopped (or, with ``burst``, until nothing is left to do).

    ``concurrency`` jobs run at once, each in its own thread; every engine host gets one
    long-lived executor (and so one pooled SDK client) per worker process.
    """

    def __init__(
        self,
        *,
        concurrency: int = 1,
        burst: bool = False,
        hosts: Sequence[str] | None = None,
        queues: Sequence[str] | None = None,
        shutdown_timeout: float = 30.0,
        poll_interval: float | None = None,
        worker_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        conf = get_settings()
        self.concurrency = concurrency
        self.burst = burst
        self.hosts = list(hosts or [])
        self.queues = list(queues or [])
        self.shutdown_timeout = shutdown_timeout
        self.poll_interval = conf.POLL_INTERVAL if poll_interval is None else poll_interval
        self.lease_seconds = conf.LEASE_SECONDS
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.processed = 0
        self._slots: dict[Any, _Slot] = {}
        self._slots_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._next_renewal = 0.0
        self._next_adoption = 0.0
        self._next_cancel_check = 0.0
        self._next_health = 0.0
        self._next_reap = time.monotonic() + (conf.REAP_INTERVAL or 0)
        self._health_thread: threading.Thread | None = None
        self.health_interval = conf.HEALTH_CHECK_INTERVAL
        self._jobs: queue.SimpleQueue[tuple[Claimed, RunControl] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    # ---- control ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; running jobs finish (up to ``shutdown_timeout``)."""
        if not self._stopping.is_set():
            log.info("worker=%s stopping: no new jobs", self.worker_id)
        self._stopping.set()
        self._wake.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker gracefully."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # ---- the loop --------------------------------------------------------------------

    def run(self) -> int:
        """Process jobs; returns how many jobs this worker ran to an end or handed back."""
        log.info(
            "worker=%s start concurrency=%d burst=%s", self.worker_id, self.concurrency, self.burst
        )
        set_pool_size(self.concurrency + 2)  # job threads + the health and cancel side threads
        self._start_threads()
        listener = Listener(self._wake.set)
        if listener.enabled and not self.burst:
            # A burst worker runs what is due and exits: job ends and its polls wake it.
            listener.start()
        try:
            self._loop()
        finally:
            listener.stop()
            self._shutdown()
            if listener.is_alive():
                listener.join(5)
            if self._health_thread is not None:
                self._health_thread.join(5)
            self._quietly("clearing the heartbeat", self._clear_heartbeat)
            if not connection.in_atomic_block:
                close_broken()
        log.info("worker=%s exit processed=%d", self.worker_id, self.processed)
        return self.processed

    def _loop(self) -> None:
        """Turns of the loop until stopped; a lost database connection is waited out."""
        tries = 0
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                if self._turn():
                    return
            except DB_ERRORS as err:
                if not is_outage(err):
                    raise
                OUTAGE.failed("worker loop", err, tries=tries)
                close_broken()
                self._next_renewal = 0.0  # renew our leases first once it answers again
                self._stopping.wait(backoff(tries))
                tries += 1
                continue
            if tries:  # the turn after a failure renews the leases: it reached the database
                OUTAGE.recovered()
            tries = 0

    def _turn(self) -> bool:
        """One turn: renew, claim, start; whether a burst worker is done."""
        close_old_connections()
        self._maintain()  # before claiming: our leases are renewed before we adopt any
        started = self._fill()
        self._check_health()
        if self.burst and not started and not self._busy():
            # Jobs may have ended since _fill() saw every slot taken: claim again
            # with all slots free before deciding that nothing is left.
            before = timezone.now()
            started = self._fill()
            if not started and not self._due_soon(before):
                return True
        if not started or self._free() == 0:
            self._wake.wait(self.poll_interval)
        return False

    def _clear_heartbeat(self) -> None:
        WorkerHeartbeat.objects.filter(worker_id=self.worker_id).delete()

    def _quietly(self, what: str, call: Callable[[], Any]) -> None:
        """A database call on the way out: tried once; an outage is logged, not raised."""
        try:
            call()
        except DB_ERRORS as err:
            if not is_outage(err):
                raise
            OUTAGE.failed(what, err)
            close_broken()
            log.warning("worker=%s database unreachable, not done: %s", self.worker_id, what)

    def _free(self) -> int:
        with self._slots_lock:
            return self.concurrency - len(self._slots)

    def _busy(self) -> bool:
        with self._slots_lock:
            return bool(self._slots)

    def _fill(self) -> int:
        """Claim as many jobs as there are free slots and start them."""
        free = self._free()
        if free <= 0:
            return 0
        claimed: list[Claimed] = []
        now = time.monotonic()
        if now >= self._next_adoption:
            released = release_dead_holders(self.worker_id, self.lease_seconds)
            claimed += adopt_expired(self.worker_id, free, hosts=self.hosts, queues=self.queues)
            dead = sum(1 for item in claimed if item.job.pk in released)
            ADOPTIONS.add("holder_dead", dead)
            ADOPTIONS.add("lease_expired", len(claimed) - dead)
            self._next_adoption = now + self.lease_seconds / 3
        claimed += claim(self.worker_id, free - len(claimed), hosts=self.hosts, queues=self.queues)
        held = set(self._held())
        # A job of ours whose lease ran out during an outage is ours still: never run twice.
        claimed = [item for item in claimed if not (item.adopted and item.job.pk in held)]
        for item in claimed:
            self._start(item)
        return len(claimed)

    def _start_threads(self) -> None:
        """Long-lived job threads: each keeps its database connection across jobs."""
        for number in range(self.concurrency):
            thread = threading.Thread(target=self._job_thread, name=f"job-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _job_thread(self) -> None:
        try:
            while (item := self._jobs.get()) is not None:
                self._run_job(*item)
        finally:
            connection.close()

    def _register(self, item: Claimed) -> RunControl:
        """Give the job a slot (the caller holds ``_slots_lock``) and log its start."""
        control = RunControl(container_id=item.job.container_id)
        self._slots[item.job.pk] = _Slot(item.job.pk, control, _held_host(item.job))
        log.info(
            "job=%s status=%s attempt=%d host=%s%s",
            item.job.pk,
            "adopted" if item.adopted else "launching",
            item.job.attempt_count,
            _held_host(item.job).name,
            "" if item.adopted else f" image={item.job.docker_image}",
        )
        return control

    def _start(self, item: Claimed) -> None:
        with self._slots_lock:
            control = self._register(item)
        self._jobs.put((item, control))

    def _run_job(self, item: Claimed, control: RunControl) -> None:
        job = item.job
        close_old_connections()
        try:
            executor = get_executor(_held_host(job))
            JobRunner(job, self.worker_id, executor, control, adopted=item.adopted).run()
        except Exception as err:  # the per-job boundary: one job's bug never stops the worker
            log.exception("job=%s internal error", job.pk)
            if self._record_internal_error(job, err) and control.container_id:
                self._discard_quietly(job, control.container_id)
        finally:
            with self._slots_lock:
                # Only this run's slot: a retry due at once may have been claimed again (a
                # slot of its own, same job id) while this thread was finishing.
                if (slot := self._slots.get(job.pk)) is not None and slot.control is control:
                    del self._slots[job.pk]
                self.processed += 1
            self._wake.set()

    def _record_internal_error(self, job: ContainerJob, err: Exception) -> bool:
        try:
            return job.mark_finished(
                self.worker_id, JobStatus.FAILED, last_error=f"Internal error: {err!r}"
            )
        except Exception:  # the DB itself may be what failed; the lease will expire
            log.exception("job=%s could not record the internal error", job.pk)
            return False

    def _discard_quietly(self, job: ContainerJob, container_id: str) -> None:
        """Remove the container of a job that failed on an internal error (else the
        reaper would, later)."""
        try:
            get_executor(_held_host(job)).discard(container_id)
        except Exception:  # the executor may be what is broken
            log.exception("job=%s container %s not removed", job.pk, container_id[:12])

    # ---- host health -------------------------------------------------------------------

    def _check_health(self) -> None:
        """Every HEALTH_CHECK_INTERVAL, check the active hosts in a side thread (an engine
        that hangs must not stall the loop) and declare lost the jobs of long-dead hosts."""
        now = time.monotonic()
        if now < self._next_health or (self._health_thread and self._health_thread.is_alive()):
            return
        self._next_health = now + self.health_interval
        self._health_thread = threading.Thread(target=self._health_pass, name="health", daemon=True)
        self._health_thread.start()

    def _health_pass(self) -> None:
        try:
            # Active hosts, and any host never checked or whose check was asked for.
            hosts = ExecutorHost.objects.filter(
                Q(is_active=True) | Q(last_health_check__isnull=True)
            )
            if self.hosts:
                hosts = hosts.filter(name__in=self.hosts)
            recovered = []
            for host in hosts:
                was_healthy = host.is_healthy
                healthy, _ = check_host(host)
                if healthy and not was_healthy:
                    log.info("host=%s healthy again", host.name)
                    recovered.append(host)
            if declare_lost_jobs():
                self._wake.set()
            # Heartbeats of workers that died without a word (SIGKILL, a lost machine).
            WorkerHeartbeat.objects.filter(last_seen__lt=timezone.now() - _DEAD_WORKER).delete()
            self._reap(recovered)
        except DB_ERRORS as err:
            if is_outage(err):  # the next pass tries again
                OUTAGE.failed("health pass", err)
            else:  # a side thread's edge: log, and try again next interval
                log.exception("health pass failed")
        except Exception:  # a side thread's edge: log, and try again next interval
            log.exception("health pass failed")
        else:
            OUTAGE.recovered()  # a pass always reads the hosts: it reached the database
        finally:
            close_broken()

    def _reap(self, recovered: list[ExecutorHost]) -> None:
        """Remove stale containers on hosts that came back (attempts declared lost while they
        were away), and every REAP_INTERVAL everywhere; fold the tally's old minutes; prune rows
        past JOB_RETENTION_DAYS."""
        conf = get_settings()
        older_than = timedelta(seconds=conf.REAP_OLDER_THAN)
        if recovered:
            reap(older_than=older_than, hosts=recovered)
        if conf.REAP_INTERVAL is None or time.monotonic() < self._next_reap:
            return
        self._next_reap = time.monotonic() + conf.REAP_INTERVAL
        reap(older_than=older_than)
        compact()  # the tally's rows older than two hours into its totals
        if conf.JOB_RETENTION_DAYS is not None:
            # A bounded share of each pass: the health checks wait for it (a backlog is
            # pruned over several passes, or at once by `cleanup_containers --prune-jobs`).
            prune_jobs(timedelta(days=conf.JOB_RETENTION_DAYS), budget=conf.HEALTH_CHECK_INTERVAL)

    # ---- leases, cancellation, burst ---------------------------------------------------

    def _held(self) -> list[Any]:
        with self._slots_lock:
            return list(self._slots)

    def _beat(self) -> None:
        """Record that this worker is alive (and how busy), idle or not."""
        WorkerHeartbeat.objects.update_or_create(
            worker_id=self.worker_id,
            defaults={
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "concurrency": self.concurrency,
                "running_jobs": len(self._held()),
                "last_seen": timezone.now(),
                "degraded": OUTAGE.last_fault(),
            },
        )

    def _maintain(self) -> None:
        held = self._held()
        now = time.monotonic()
        if now >= self._next_renewal:
            self._beat()
            if held:
                ContainerJob.objects.filter(pk__in=held, worker_id=self.worker_id).update(
                    lease_expires_at=timezone.now() + timedelta(seconds=self.lease_seconds)
                )
            self._next_renewal = now + self.lease_seconds / 3  # once done: a failure retries
        if not held:
            return
        if now >= self._next_cancel_check:
            self._next_cancel_check = now + min(self.poll_interval, 0.5)
            for pk in ContainerJob.objects.filter(pk__in=held, cancel_requested=True).values_list(
                "pk", flat=True
            ):
                self._cancel(pk)

    def _cancel(self, pk: Any) -> None:
        with self._slots_lock:
            slot = self._slots.get(pk)
        if slot is None or slot.control.cancel.is_set():
            return
        log.info("job=%s cancel requested", pk)
        slot.control.cancel.set()
        if slot.control.container_id:
            # Stopping makes the job thread's wait return at once; done off the main loop.
            threading.Thread(
                target=self._stop_quietly,
                args=(pk, slot.host, slot.control.container_id),
                daemon=True,
            ).start()

    def _stop_quietly(self, pk: Any, host: ExecutorHost, container_id: str) -> None:
        try:
            get_executor(host).stop_container(container_id)
        except ContainerManagerError as err:
            log.warning("job=%s stop on cancel failed: %s", pk, err)

    def _due_soon(self, since: datetime) -> bool:
        """Burst mode: retries waiting for their backoff still count as work to do.

        ``since`` is a time taken before the claim that found nothing: a retry that fell
        due after it may have been missed by that claim, so it counts as work still."""
        query = ContainerJob.objects.filter(status=JobStatus.QUEUED, attempt_count__gt=0)
        if self.queues:
            query = query.filter(queue__in=self.queues)
        bound = Q(docker_host__is_active=True)
        if self.hosts:
            bound &= Q(docker_host__name__in=self.hosts)
        # A retry sent back to placement counts while its backoff runs (once due, the
        # claims place it, or it waits for a host like any open job).
        placing = Q(docker_host__isnull=True, run_after__gt=since)
        query = query.filter(bound | placing)
        if query.exists():
            return True
        return expired_leases(timezone.now(), hosts=self.hosts, queues=self.queues).exists()

    # ---- shutdown ----------------------------------------------------------------------

    def _shutdown(self) -> None:
        """Let running jobs finish up to ``shutdown_timeout``; hand the rest back."""
        deadline = time.monotonic() + self.shutdown_timeout
        while self._busy() and time.monotonic() < deadline:
            try:
                self._maintain()
            except DB_ERRORS as err:  # SIGTERM during an outage: the deadline still holds
                if not is_outage(err):
                    raise
                OUTAGE.failed("shutdown", err)
                close_broken()
            self._wake.wait(min(0.2, max(deadline - time.monotonic(), 0)))
            self._wake.clear()
        with self._slots_lock:
            slots = list(self._slots.values())
        for slot in slots:
            slot.control.abandon.set()
        for _ in self._threads:
            self._jobs.put(None)
        if slots:
            # Expire our leases now so another worker adopts these jobs at once.
            left = ContainerJob.objects.filter(
                pk__in=[s.job_id for s in slots], worker_id=self.worker_id
            )
            self._quietly("expiring leases", lambda: left.update(lease_expires_at=timezone.now()))
            log.warning("worker=%s left %d running job(s) for adoption", self.worker_id, len(slots))
