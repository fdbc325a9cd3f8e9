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
from .environment import MIN_REDACTED_CHARS, redact, secret_values
from .exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    InvalidJobError,
    PermanentLaunchError,
)
from .executors.base import BaseExecutor, ContainerState, JobSpec, Stream
from .models import ContainerJob, JobAttempt, JobStatus
from .outage import DatabaseUnavailable, retry_db
from .output import CollectedOutput, collect_output
from .queue import backoff_delay, record_attempt
from .signals import job_finished, job_started, send

__all__ = ["JobRunner", "RunControl"]

log = logging.getLogger("container_manager.worker")
T = TypeVar("T")

_ENGINE_RETRY_MAX = 30.0  # seconds between tries while an engine does not answer
# Seconds per wait call: a hung engine connection is noticed within this, and so is a worker
# that shuts down and leaves the job for adoption (its thread, and its database connection,
# end within this).
_WAIT_SLICE = 5.0


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


@dataclass
class _Figures:
    peak_memory: int | None = None
    cpu_seconds: float | None = None

    def add(self, usage: dict[str, Any]) -> None:
        peak = int(usage.get("memory_peak") or usage.get("memory_usage") or 0)
        if peak:
            self.peak_memory = max(self.peak_memory or 0, peak)
        if usage.get("cpu_usage"):
            self.cpu_seconds = float(usage["cpu_usage"])


class _Sampler(threading.Thread):
    """Samples a running container's resource figures every ``interval`` seconds, off the
    job's thread: a stats call can take a second, and must never delay noticing the exit."""

    def __init__(self, executor: BaseExecutor, container_id: str, interval: float) -> None:
        super().__init__(name=f"stats-{container_id[:12]}", daemon=True)
        self.executor = executor
        self.container_id = container_id
        self.interval = interval
        self.figures = _Figures()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval):
            try:
                self.figures.add(self.executor.get_resource_usage(self.container_id))
            except ExecutorError as err:
                log.debug("container=%s no stats: %s", self.container_id[:12], err)


def _secrets_of(spec: JobSpec) -> set[str]:
    """The values to keep out of what is recorded of a job: its secret-looking environment,
    its resolved secret references, its registry password."""
    values = secret_values(spec.environment) | secret_values(
        {f"SECRET_{name}": value for name, value in spec.secrets.items()}
    )
    if spec.registry_auth is not None and len(spec.registry_auth.password) >= MIN_REDACTED_CHARS:
        values.add(spec.registry_auth.password)
    return values


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
        self.figures = _Figures()
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

    # ---- the whole life -------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except DatabaseUnavailable:
            # The worker stopped during a database outage: the job is left for adoption.
            log.warning("job=%s left for adoption: the database did not answer", self.job.pk)

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
            self._secrets = _secrets_of(spec)
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
        while not self.control.abandon.is_set():
            try:
                container_id = self.executor.run(spec)
                break
            except ExecutorConnectionError as err:
                # The container may or may not exist: keep the attempt (its name finds it).
                self._engine_unreachable(err)
            except PermanentLaunchError as err:  # a refused spec or credential: no retry
                self._finish(JobStatus.FAILED, error=f"Launch failed: {err}", exit_code=None)
                return None
            except ExecutorError as err:
                self._fail_or_retry(f"Launch failed: {err}")
                return None
        else:
            return None
        self.control.container_id = container_id
        if not self._db(lambda: self.job.mark_running(self.worker_id, container_id), "running"):
            log.warning("job=%s lost its lease while launching; leaving it", self.job.pk)
            return None
        self._write_attempt(container_id=container_id, status=JobStatus.RUNNING)
        log.info("job=%s status=running container=%s", self.job.pk, container_id[:12])
        send(job_started, self.job, container_id=container_id)
        return container_id

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
            sampler = _Sampler(self.executor, container_id, self.settings.STATS_INTERVAL)
            sampler.start()
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
            wait_for = _WAIT_SLICE
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

    def _stop(self, container_id: str) -> None:
        while not self.control.abandon.is_set():
            try:
                self.executor.stop_container(container_id, self.settings.STOP_GRACE_SECONDS)
                return
            except ExecutorConnectionError as err:
                self._engine_unreachable(err)

    def _engine_unreachable(self, err: ExecutorConnectionError) -> None:
        """Wait before trying the engine again; the job stays as it is (never failed while
        its container may still run)."""
        self._engine_tries += 1
        delay = min(_ENGINE_RETRY_MAX, 0.5 * 2 ** min(self._engine_tries, 6))
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

    def _redacted_output(self, text: str) -> str:
        return redact(text, self._secrets) if self.settings.REDACT_OUTPUT else text

    def _collect(self, container_id: str) -> dict[Stream, CollectedOutput]:
        prefix = f"container_jobs/{self.job.pk}/attempt-{self.job.attempt_count}"
        return collect_output(
            self.executor,
            container_id,
            {"stdout": f"{prefix}.stdout.log", "stderr": f"{prefix}.stderr.log"},
        )

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
        return self.job.attempt_count <= self.job.max_retries

    def _may_retry(self, *, exit_failure: bool) -> bool:
        return self._retries_left() and (self.job.retry_on_failure or not exit_failure)

    def _fail_or_retry(self, error: str) -> None:
        """An engine-side failure (launch error, vanished container): retried while the
        job has retries left, else failed."""
        if self._retries_left():
            self._requeue(error)
        else:
            self._finish(JobStatus.FAILED, error=error, exit_code=None)

    def _write_attempt(self, **fields: Any) -> None:
        """Insert the attempt's row with ``fields`` the first time, update it after."""
        if self._attempt_written:
            where = {"job": self.job.pk, "number": self.job.attempt_count}
            self._db(lambda: compiled.update(JobAttempt, where, **fields), "recording the attempt")
            return
        self._db(
            lambda: record_attempt(
                self.job, started_at=self._attempt_began, spec=self._spec_record, **fields
            ),
            "recording the attempt",
        )
        self._attempt_written = True

    def _requeue(self, error: str, **attempt_fields: Any) -> bool:
        error = redact(error, self._secrets)
        delay = backoff_delay(self.job.attempt_count)
        run_after = timezone.now() + timedelta(seconds=delay)
        took = self._db(lambda: self.job.requeue(self.worker_id, run_after, error), "requeueing")
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
