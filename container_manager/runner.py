"""One job attempt's life in a worker: launch (or adopt) -> watch -> harvest -> record.

A :class:`JobRunner` runs in a worker thread. It talks to the engine through an executor and
writes every status change through the job's transition methods, guarded by the worker id,
so that a worker that lost its lease never overwrites the new owner. No database
transaction is open while it calls the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, TypeVar

from django.utils import timezone

from . import compiled
from .conf import get_settings
from .deadline import CallTimedOut, call_before
from .engine_faults import killed_by_engine, remove_named, remove_once_back
from .environment import redact, secrets_of
from .exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    InvalidJobError,
    PermanentLaunchError,
)
from .executors.base import BaseExecutor, ContainerState, JobSpec, Stream
from .models import ContainerJob, JobAttempt, JobStatus
from .outage import (
    DB_ERRORS,
    INFRASTRUCTURE_RETRIES,
    STUCK_LAUNCHES,
    DatabaseUnavailable,
    close_broken,
    retry_db,
)
from .output import CollectedOutput, OutputCollection, collect_output
from .queue import backoff_delay, record_attempt
from .signals import job_finished, job_started, send
from .watchers import Figures, Follower, Sampler

__all__ = ["JobRunner", "RunControl"]

log = logging.getLogger("container_manager.worker")
T = TypeVar("T")

_ENGINE_RETRY_MAX = 30.0  # seconds between tries while an engine does not answer
# Seconds per wait call: a hung engine connection is noticed within this, and so is a worker
# that shuts down and leaves the job for adoption (its thread, and its database connection,
# end within this).
_WAIT_SLICE = 5.0
# Seconds a job runs before its output is followed: most jobs end sooner, and their output
# is read in one request after the exit (the engine's log can lose nothing in a second
# unless the job writes more than half of ENGINE_LOG_MAX_BYTES in it).
_FOLLOW_AFTER = 1.0
# Seconds the harvest waits for the followed output to end after the container exited (the
# engine ends it within milliseconds; a hung follow is given up and the output read again).
_FOLLOW_DRAIN = 10.0


class Ending(Enum):
    """Why watching a container stopped."""

    EXITED = "exited"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    VANISHED = "vanished"
    ABANDONED = "abandoned"


@dataclass
class RunControl:
    """Signals from the worker to one running job."""

    cancel: threading.Event = field(default_factory=threading.Event)
    abandon: threading.Event = field(default_factory=threading.Event)
    container_id: str = ""


class JobRunner:
    """Runs one claimed job to a recorded end (or leaves it for adoption)."""

    def __init__(
        self,
        job: ContainerJob,
        worker_id: str,
        executor: BaseExecutor,
        control: RunControl,
        *,
        adopted: bool = False,
    ) -> None:
        self.job = job
        self.adopted = adopted
        self.worker_id = worker_id
        self.executor = executor
        self.control = control
        self.figures = Figures()
        self.settings = get_settings()
        self._engine_tries = 0
        #: Whether the attempt's row exists: a fresh attempt writes it once, when it has an
        #: outcome to record (running, or ended before a container started).
        self._attempt_written = adopted
        self._attempt_began = timezone.now()
        #: What the attempt's row records of the spec it ran with (no secret values).
        self._spec_record: dict[str, Any] = {}
        #: The job's secret values, redacted from every text recorded or logged about it.
        self._secrets: set[str] = set()
        #: The reader of the running container's output, when its executor follows it.
        self._follower: Follower | None = None
        self._live_written = 0  # output bytes the last live record covered
        self._live_due = 0.0  # monotonic time of the next live record
        self._follow_at: float | None = None  # monotonic time to start following the output
        self._began = time.monotonic()  # the launch's START_TIMEOUT counts from here
        self._host = job.docker_host  # the attempt's host (placement may change the job's)
        #: Whether the engine stopped answering during this attempt.
        self._engine_lost = False

    # ---- the whole life -------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except DatabaseUnavailable:
            # The worker stopped during a database outage: the job is left for adoption.
            log.warning("job=%s left for adoption: the database did not answer", self.job.pk)
        finally:
            if self._follower is not None:
                self._follower.output.close()

    def _db(self, call: Callable[[], T], where: str) -> T:
        """A database call of this job's thread, retried through an outage (the container
        runs on meanwhile) until the worker abandons the job."""
        return retry_db(call, stop=self.control.abandon, where=f"job={self.job.pk} {where}")

    def _run(self) -> None:
        if self.adopted:
            self._db(lambda: record_attempt(self.job, adopted=True), "adopting")
        try:
            spec = self._db(self.job.spec, "reading the job")
            self._spec_record = self.executor.effective(spec).describe()
            spec = self._db(lambda: self.job.resolve(spec), "reading the job")
            self._secrets = secrets_of(spec)
        except InvalidJobError as err:
            self._finish(JobStatus.FAILED, error=f"Invalid job: {err}", exit_code=None)
            return
        container_id = self._launch(spec)
        if container_id is None:
            return
        ending, exit_code = self._watch(container_id)
        if ending is Ending.ABANDONED:
            return
        if ending is Ending.VANISHED:
            self._fail_or_retry("The container disappeared before its result was recorded.")
            return
        self._harvest(container_id, ending, exit_code)

    # ---- launch ------------------------------------------------------------------------

    def _launch(self, spec: JobSpec) -> str | None:
        """Start the attempt's container (or find the one a previous owner started)."""
        if self.control.cancel.is_set() or self.job.cancel_requested:
            self._finish(JobStatus.CANCELLED, error="Cancelled before launch.", exit_code=None)
            return None
        if self.job.status == JobStatus.RUNNING and self.job.container_id:
            log.info("job=%s adopting container=%s", self.job.pk, self.job.container_id[:12])
            return self.job.container_id
        limit = self._start_timeout()
        deadline = None if limit is None else self._began + limit
        while not self.control.abandon.is_set():
            try:
                container_id = self._start(spec, deadline)
                if container_id is None:  # the worker is stopping: left for adoption
                    return None
                break
            except CallTimedOut:
                self._give_up_launch(spec, limit, "the engine did not answer")
                return None
            except ExecutorConnectionError as err:
                # The container may or may not exist: keep the attempt (its name finds it).
                if deadline is not None and time.monotonic() >= deadline:
                    self._give_up_launch(spec, limit, "the engine was unreachable")
                    return None
                self._engine_unreachable(err, deadline)
            except PermanentLaunchError as err:  # a refused spec or credential: no retry
                self._finish(JobStatus.FAILED, error=f"Launch failed: {err}", exit_code=None)
                return None
            except ExecutorError as err:
                self._fail_or_retry(f"Launch failed: {err}")
                return None
        else:
            return None
        self.control.container_id = container_id
        self._engine_lost = False  # what counts from here is losing it while the job runs
        if not self._db(lambda: self.job.mark_running(self.worker_id, container_id), "running"):
            log.warning("job=%s lost its lease while launching; leaving it", self.job.pk)
            return None
        self._write_attempt(container_id=container_id, status=JobStatus.RUNNING)
        log.info("job=%s status=running container=%s", self.job.pk, container_id[:12])
        send(job_started, self.job, container_id=container_id)
        return container_id

    def _start_timeout(self) -> float | None:
        host = self.job.docker_host
        if host is not None and host.start_timeout:
            return float(host.start_timeout)
        return self.settings.START_TIMEOUT

    def _start(self, spec: JobSpec, deadline: float | None) -> str | None:
        """``executor.run(spec)`` within the launch's deadline (CallTimedOut after it; a
        container the call makes after that is removed). None if the worker stops first."""
        if deadline is None:
            return self.executor.run(spec)
        return call_before(
            lambda: self.executor.run(spec),
            deadline,
            stop=self.control.abandon,
            late=self._remove,
            name=f"launch-{str(self.job.pk)[:8]}",
        )

    def _give_up_launch(self, spec: JobSpec, limit: float | None, why: str) -> None:
        """The launch took longer than its START_TIMEOUT: remove what it may have made (in
        the background: the engine may hang on that too; the reaper removes what is left)
        and retry the job under its policy, elsewhere when it was placed."""
        log.warning("job=%s launch given up after %gs: %s", self.job.pk, limit or 0, why)
        STUCK_LAUNCHES.add()
        threading.Thread(
            target=remove_named,
            args=(self.executor, spec.name),
            name="remove-stuck",
            daemon=True,
        ).start()
        self._fail_or_retry(
            f"Launch did not reach running within {limit:g}s ({why}); given up.", elsewhere=True
        )

    # ---- watch ------------------------------------------------------------------------

    def _deadline(self) -> float | None:
        if not self.job.timeout_seconds:
            return None
        started = self.job.started_at or timezone.now()
        end = started + timedelta(seconds=self.job.timeout_seconds)
        return time.monotonic() + (end - timezone.now()).total_seconds()

    def _watch(self, container_id: str) -> tuple[Ending, int | None]:
        """Wait for the container to exit, hit its deadline, or be cancelled; sample its
        resource figures meanwhile."""
        sampler = None
        if self.executor.supports_stats:
            sampler = Sampler(self.executor, container_id, self.settings.STATS_INTERVAL)
            sampler.start()
        if self.executor.follows_output:
            self._follow_at = time.monotonic() + _FOLLOW_AFTER
        try:
            return self._wait_for_end(container_id)
        finally:
            if sampler is not None:
                sampler.done.set()
                self.figures = sampler.figures

    def _wait_for_end(self, container_id: str) -> tuple[Ending, int | None]:
        deadline = self._deadline()
        while True:
            if self.control.abandon.is_set():
                return Ending.ABANDONED, None
            if self.control.cancel.is_set():
                self._stop(container_id)
                return Ending.CANCELLED, None
            wait_for = self._pace(container_id)
            if deadline is not None:
                wait_for = min(wait_for, deadline - time.monotonic())
                if wait_for <= 0:
                    self._stop(container_id)
                    return Ending.TIMEOUT, None
            try:
                code = self.executor.wait(container_id, timeout=max(wait_for, 0.01))
            except ContainerNotFoundError:
                return Ending.VANISHED, None
            except ExecutorConnectionError as err:
                self._engine_unreachable(err)
                continue
            if code is not None:
                return (Ending.CANCELLED if self.control.cancel.is_set() else Ending.EXITED), code

    def _pace(self, container_id: str) -> float:
        """Follow the output of a job that has run for _FOLLOW_AFTER seconds (a shorter
        one's is read once, after its exit: no thread, no second request) and record it as
        it goes; the seconds the next wait may take."""
        if self._follow_at is not None:
            now = time.monotonic()
            if now < self._follow_at:
                return min(_WAIT_SLICE, self._follow_at - now)
            self._follow_at = None
            output = OutputCollection(self._storage_names())
            self._follower = Follower(self.executor, container_id, output)
            self._follower.start()
            self._live_due = now + (self.settings.LIVE_OUTPUT_INTERVAL or 0)
        return self._record_live_output()

    def _record_live_output(self) -> float:
        """Record the latest output of the running job when LIVE_OUTPUT_INTERVAL has passed
        and it wrote something since; the seconds the next wait may take."""
        interval = self.settings.LIVE_OUTPUT_INTERVAL
        if self._follower is None or not interval:
            return _WAIT_SLICE
        now = time.monotonic()
        if now < self._live_due:
            return min(_WAIT_SLICE, self._live_due - now)
        self._live_due = now + interval
        output = self._follower.output
        if output.written != self._live_written:
            self._live_written = output.written
            limit = self.settings.LIVE_OUTPUT_BYTES
            # Redacted before it is cut: a secret the cut splits is still found whole.
            longest = max((len(secret.encode()) for secret in self._secrets), default=0)
            recent = {
                stream: self._redacted_output(text)[-limit:]
                for stream, text in output.recent(limit + longest).items()
            }
            where = {"pk": self.job.pk, "worker_id": self.worker_id, "status": JobStatus.RUNNING}
            try:  # a view of the job, not its record: a database error skips one
                compiled.update(
                    ContainerJob, where, stdout_log=recent["stdout"], stderr_log=recent["stderr"]
                )
            except DB_ERRORS as err:
                log.debug("job=%s live output not recorded: %s", self.job.pk, err)
                close_broken()
        return min(_WAIT_SLICE, interval)

    def _stop(self, container_id: str) -> None:
        while not self.control.abandon.is_set():
            try:
                self.executor.stop_container(container_id, self.settings.STOP_GRACE_SECONDS)
                return
            except ExecutorConnectionError as err:
                self._engine_unreachable(err)

    def _engine_unreachable(
        self, err: ExecutorConnectionError, deadline: float | None = None
    ) -> None:
        """Wait before trying the engine again (not past ``deadline``); the job stays as it
        is (never failed while its container may still run)."""
        self._engine_tries += 1
        self._engine_lost = True
        delay = min(_ENGINE_RETRY_MAX, 0.5 * 2 ** min(self._engine_tries, 6))
        if deadline is not None:
            delay = max(min(delay, deadline - time.monotonic()), 0.0)
        log.warning(
            "job=%s engine unreachable (retry in %.1fs): %s",
            self.job.pk,
            delay,
            redact(str(err), self._secrets),
        )
        self.control.abandon.wait(delay)
        if not self._still_held():
            log.warning("job=%s was taken over (lost or adopted); leaving it", self.job.pk)
            self.control.abandon.set()

    def _still_held(self) -> bool:
        held = ContainerJob.objects.filter(
            pk=self.job.pk, worker_id=self.worker_id, status__in=JobStatus.active()
        )
        return self._db(held.exists, "checking its lease")

    # ---- harvest and record ------------------------------------------------------------

    def _state(self, container_id: str, ending: Ending, exit_code: int | None) -> ContainerState:
        """The container's end state; a clean exit needs no inspection (no OOM, no error)."""
        if ending is Ending.EXITED and exit_code == 0:
            return ContainerState(status="exited", exit_code=0)
        return self.executor.inspect(container_id)

    def _harvest(self, container_id: str, ending: Ending, exit_code: int | None) -> None:
        while not self.control.abandon.is_set():
            try:
                state = self._state(container_id, ending, exit_code)
                output = self._collect(container_id)
                stdout, stderr = output["stdout"], output["stderr"]
                break
            except ContainerNotFoundError:
                if ending in (Ending.TIMEOUT, Ending.CANCELLED):
                    # Stopping removed it (a Swarm service elsewhere): the verdict stands.
                    status, error = self._verdict(ending, None, False, "")
                    self._finish(status, error=error, exit_code=None)
                    return
                self._fail_or_retry("The container disappeared before its result was recorded.")
                return
            except ExecutorConnectionError as err:
                self._engine_unreachable(err)
        else:
            return
        status, error = self._verdict(ending, state.exit_code, state.oom_killed, state.error)
        if status == JobStatus.FAILED and self._killed_by_engine(container_id, ending, state):
            if self.job.infrastructure_retries < self.settings.MAX_INFRASTRUCTURE_RETRIES:
                self._infrastructure_retry(container_id, state.exit_code)
                return
            error = f"Killed by its engine, which stopped (exit code {state.exit_code})."
        outcome = {
            "exit_code": state.exit_code,
            "oom_killed": state.oom_killed,
            "stdout_log": self._redacted_output(stdout.text),
            "stderr_log": self._redacted_output(stderr.text),
            "stdout_truncated": stdout.truncated,
            "stderr_truncated": stderr.truncated,
            "stdout_file": stdout.stored_as,
            "stderr_file": stderr.stored_as,
            "peak_memory_bytes": self.figures.peak_memory,
            "cpu_seconds": self.figures.cpu_seconds,
        }
        retry = status == JobStatus.FAILED and self._may_retry(exit_failure=not state.oom_killed)
        if retry:
            took = self._requeue(error, exit_code=state.exit_code, oom_killed=state.oom_killed)
        else:
            took = self._finish(status, error=error, **outcome)
        if took:
            self._remove(container_id)

    def _killed_by_engine(self, container_id: str, ending: Ending, state: ContainerState) -> bool:
        """Whether its engine shutting down killed the container (see :mod:`.engine_faults`)."""
        return ending is Ending.EXITED and killed_by_engine(
            self.executor,
            container_id,
            state,
            engine_lost=self._engine_lost,
            probe=self.settings.ENGINE_SHUTDOWN_PROBE,
            stop=self.control.abandon,
        )

    def _infrastructure_retry(self, container_id: str, exit_code: int | None) -> None:
        retry = self.job.infrastructure_retries + 1
        error = (
            f"Infrastructure failure: the engine stopped the container (exit code {exit_code});"
            f" retried without counting against max_retries ({retry} of"
            f" {self.settings.MAX_INFRASTRUCTURE_RETRIES})."
        )
        if self._requeue(error, exit_code=exit_code, infrastructure=True, elsewhere=True):
            INFRASTRUCTURE_RETRIES.add()
            threading.Thread(
                target=remove_once_back,
                args=(self.executor, container_id),
                name="remove",
                daemon=True,
            ).start()

    def _redacted_output(self, text: str) -> str:
        return redact(text, self._secrets) if self.settings.REDACT_OUTPUT else text

    def _storage_names(self) -> dict[Stream, str]:
        prefix = f"container_jobs/{self.job.pk}/attempt-{self.job.attempt_count}"
        return {"stdout": f"{prefix}.stdout.log", "stderr": f"{prefix}.stderr.log"}

    def _collect(self, container_id: str) -> dict[Stream, CollectedOutput]:
        """The exited container's output: as followed while it ran, or (when following
        ended early: an engine that dropped the connection) read again from the start."""
        follower = self._follower
        if follower is not None:
            follower.join(_FOLLOW_DRAIN)
            # An engine that stopped (live restore keeps its containers running) ends the
            # streams it serves as if they were whole: after losing the engine, what was
            # followed is not trusted.
            if follower.complete and not self._engine_lost:
                return follower.output.result()
            log.warning(
                "job=%s output read again after the exit: following it ended early (with"
                " a capped engine log, output beyond the cap is missing)",
                self.job.pk,
            )
        return collect_output(self.executor, container_id, self._storage_names())

    def _verdict(
        self, ending: Ending, exit_code: int | None, oom: bool, engine_error: str
    ) -> tuple[JobStatus, str]:
        if ending is Ending.TIMEOUT:
            return JobStatus.TIMEOUT, f"Timed out after {self.job.timeout_seconds}s; stopped."
        if ending is Ending.CANCELLED:
            return JobStatus.CANCELLED, "Cancelled while running; the container was stopped."
        if oom:
            limit = f" (limit {self.job.memory_limit} MB)" if self.job.memory_limit else ""
            return JobStatus.FAILED, f"Killed: out of memory{limit}."
        if exit_code == 0:
            return JobStatus.COMPLETED, ""
        detail = f": {engine_error}" if engine_error else ""
        return JobStatus.FAILED, f"Exited with code {exit_code}{detail}."

    def _retries_left(self) -> bool:
        """Whether the job may have another attempt: the infrastructure's do not count."""
        return self.job.attempt_count - self.job.infrastructure_retries <= self.job.max_retries

    def _may_retry(self, *, exit_failure: bool) -> bool:
        return self._retries_left() and (self.job.retry_on_failure or not exit_failure)

    def _fail_or_retry(self, error: str, *, elsewhere: bool = False) -> None:
        """An engine-side failure (launch error, vanished container): retried while the
        job has retries left (``elsewhere``: on another host, if it was placed), else
        failed."""
        if self._retries_left():
            self._requeue(error, elsewhere=elsewhere)
        else:
            self._finish(JobStatus.FAILED, error=error, exit_code=None)

    def _write_attempt(self, **fields: Any) -> None:
        """Insert the attempt's row with ``fields`` the first time, update it after."""
        if self._attempt_written:
            where = {"job": self.job.pk, "number": self.job.attempt_count}
            self._db(lambda: compiled.update(JobAttempt, where, **fields), "recording the attempt")
            return
        # The host and worker of the attempt as claimed (a requeue has cleared the job's).
        self._db(
            lambda: record_attempt(
                self.job,
                started_at=self._attempt_began,
                spec=self._spec_record,
                host=self._host,
                worker_id=self.worker_id,
                **fields,
            ),
            "recording the attempt",
        )
        self._attempt_written = True

    def _requeue(
        self,
        error: str,
        *,
        elsewhere: bool = False,
        infrastructure: bool = False,
        **attempt_fields: Any,
    ) -> bool:
        error = redact(error, self._secrets)
        delay = backoff_delay(self.job.attempt_count)
        run_after = timezone.now() + timedelta(seconds=delay)
        took = self._db(
            lambda: self.job.requeue(
                self.worker_id,
                run_after,
                error,
                elsewhere=elsewhere,
                infrastructure=infrastructure,
            ),
            "requeueing",
        )
        if took:
            self._write_attempt(
                status=JobStatus.FAILED, error=error, finished_at=timezone.now(), **attempt_fields
            )
            log.info("job=%s status=queued retry_in=%.1fs error=%s", self.job.pk, delay, error)
        return took

    def _finish(self, status: JobStatus, *, error: str, **outcome: Any) -> bool:
        error = redact(error, self._secrets)
        took = self._db(
            lambda: self.job.mark_finished(self.worker_id, status, last_error=error, **outcome),
            f"recording {status}",
        )
        if took:
            self._write_attempt(
                status=status,
                error=error,
                exit_code=outcome.get("exit_code"),
                oom_killed=outcome.get("oom_killed", False),
                finished_at=self.job.completed_at,
            )
            send(job_finished, self.job, status=status)
            log.info(
                "job=%s status=%s exit_code=%s%s",
                self.job.pk,
                status,
                outcome.get("exit_code"),
                f" error={error}" if error else "",
            )
        else:
            log.warning(
                "job=%s lost its lease before recording %s; leaving it", self.job.pk, status
            )
        return took

    def _remove(self, container_id: str) -> None:
        try:
            self.executor.discard(container_id)
        except ExecutorError as err:
            log.warning("job=%s container %s not removed: %s", self.job.pk, container_id[:12], err)
