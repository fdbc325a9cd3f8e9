"""The worker against the in-package FakeExecutor: lifecycle, retries, timeouts, cancel,
outages, adoption, shutdown. Threads share the database, hence ``transactional_db``."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from container_manager import runner as runner_module
from container_manager.executors import get_executor
from container_manager.executors.base import JobSpec
from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, JobAttempt, JobStatus
from container_manager.queue import claim, submit
from container_manager.runner import JobRunner, RunControl
from container_manager.worker import Worker
from tests.conftest import until

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_URL = "unix:///fake/engine.sock"


@pytest.fixture
def engine():
    return FakeExecutor.engine_for(FAKE_URL)


@pytest.fixture(autouse=True)
def fast(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
        "POLL_INTERVAL": 0.05,
        "STATS_INTERVAL": 0.05,
        "LEASE_SECONDS": 2.0,
    }


def job(host, command="echo hi", **kwargs):
    return submit(host=host, image="busybox:latest", command=command, **kwargs)


def burst(concurrency=2, **kwargs):
    return Worker(concurrency=concurrency, burst=True, shutdown_timeout=5, **kwargs).run()


def fresh(j):
    j.refresh_from_db()
    return j


def test_burst_runs_every_waiting_job_and_records_output(fake_host, engine):
    engine.script(FakeOutcome(stdout="out\n", stderr="err\n"), argv_prefix=["report"])
    jobs = [job(fake_host, "report"), job(fake_host, "echo hello world")]
    assert burst() == 2
    first, second = (fresh(j) for j in jobs)
    assert (first.status, first.exit_code) == (JobStatus.COMPLETED, 0)
    assert (first.stdout_log, first.stderr_log) == ("out\n", "err\n")
    assert second.stdout_log == "hello world\n"
    assert first.started_at and first.completed_at and first.completed_at >= first.started_at
    assert first.worker_id == "" and first.lease_expires_at is None
    assert engine.containers == {}, "containers are removed after their result is recorded"


def test_non_zero_exit_fails_with_exit_code_and_no_retry_by_default(fake_host, engine):
    engine.script(FakeOutcome(exit_code=3, stderr="boom"), argv_prefix=["false"])
    j = job(fake_host, "false", max_retries=2)
    burst()
    j = fresh(j)
    assert (j.status, j.exit_code, j.attempt_count) == (JobStatus.FAILED, 3, 1)
    assert j.last_error == "Exited with code 3."
    assert j.stderr_log == "boom"


def test_non_zero_exit_is_retried_when_asked_and_every_attempt_recorded(fake_host, engine):
    engine.script(FakeOutcome(exit_code=1), argv_prefix=["flaky"])
    j = job(fake_host, "flaky", max_retries=2, retry_on_failure=True)
    burst()
    j = fresh(j)
    assert (j.status, j.attempt_count) == (JobStatus.FAILED, 3)
    attempts = list(JobAttempt.objects.filter(job=j).order_by("number"))
    assert [a.number for a in attempts] == [1, 2, 3]
    assert all(a.status == JobStatus.FAILED and a.exit_code == 1 for a in attempts)
    assert len({a.container_name for a in attempts}) == 3


def test_retry_succeeds_on_a_later_attempt(fake_host, engine):
    tries = []

    def second_time(spec: JobSpec) -> bool:
        tries.append(spec.attempt)
        return spec.attempt == 1

    engine.script(FakeOutcome(exit_code=0, stdout="ok"), argv_prefix=["once"])
    engine.script(FakeOutcome(exit_code=2), when=second_time)
    j = job(fake_host, "once", max_retries=3, retry_on_failure=True)
    burst()
    j = fresh(j)
    assert (j.status, j.attempt_count, j.stdout_log) == (JobStatus.COMPLETED, 2, "ok")
    assert list(JobAttempt.objects.filter(job=j).values_list("status", flat=True)) == [
        JobStatus.FAILED,
        JobStatus.COMPLETED,
    ]


def test_launch_error_is_retried_then_fails_with_the_engine_message(fake_host, engine):
    engine.script(FakeOutcome(fail_on="create", error="no space left on device"))
    j = job(fake_host, max_retries=1)
    burst()
    j = fresh(j)
    assert (j.status, j.attempt_count) == (JobStatus.FAILED, 2)
    assert "no space left on device" in j.last_error
    assert j.exit_code is None


def test_start_failure_leaves_no_container(fake_host, engine):
    engine.script(FakeOutcome(fail_on="start", error="exec format error"))
    j = job(fake_host)
    burst()
    assert fresh(j).status == JobStatus.FAILED
    assert "exec format error" in fresh(j).last_error
    assert engine.containers == {}


def test_bad_job_reaching_the_worker_fails_and_the_others_go_on(fake_host, engine):
    bad = job(fake_host)
    ContainerJob.objects.filter(pk=bad.pk).update(override_environment="not a pair")
    good = job(fake_host)
    burst()
    assert fresh(bad).status == JobStatus.FAILED
    assert "Invalid job" in fresh(bad).last_error and "KEY=VALUE" in fresh(bad).last_error
    assert fresh(good).status == JobStatus.COMPLETED


def test_oom_kill_fails_with_the_reason(fake_host, engine):
    engine.script(FakeOutcome(exit_code=137, oom_killed=True))
    j = job(fake_host, memory_limit=16)
    burst()
    j = fresh(j)
    assert (j.status, j.exit_code, j.oom_killed) == (JobStatus.FAILED, 137, True)
    assert j.last_error == "Killed: out of memory (limit 16 MB)."


def test_timeout_stops_the_container_and_records_timeout(fake_host, engine):
    engine.script(FakeOutcome(duration=30))
    j = job(fake_host, timeout_seconds=1)
    began = time.monotonic()
    burst()
    j = fresh(j)
    assert j.status == JobStatus.TIMEOUT
    assert j.last_error == "Timed out after 1s; stopped."
    assert time.monotonic() - began < 10
    assert "stop" in engine.calls


def test_cancelling_a_waiting_job_means_it_never_launches(fake_host, engine):
    j = job(fake_host)
    assert j.cancel() is True
    assert j.cancel() is True, "idempotent"
    burst()
    assert fresh(j).status == JobStatus.CANCELLED
    assert "run" not in engine.calls


def test_cancelling_a_running_job_stops_it_and_records_cancelled(fake_host, engine):
    engine.script(FakeOutcome(duration=30))
    j = job(fake_host)
    worker = Worker(concurrency=1, burst=True)
    thread = threading.Thread(target=worker.run)
    thread.start()
    until(lambda: fresh(j).status == JobStatus.RUNNING)
    assert fresh(j).cancel() is True
    thread.join(10)
    assert not thread.is_alive()
    j = fresh(j)
    assert j.status == JobStatus.CANCELLED
    assert j.completed_at is not None
    assert engine.containers == {}


def test_engine_outage_at_launch_waits_and_never_fails_the_job(fake_host, engine):
    engine.down = True
    j = job(fake_host)
    threading.Timer(0.6, lambda: setattr(engine, "down", False)).start()
    burst()
    j = fresh(j)
    assert (j.status, j.attempt_count) == (JobStatus.COMPLETED, 1)


def test_engine_outage_while_running_keeps_the_job_running_until_reconciled(
    fake_host, engine, settings
):
    # Short wait slices: the worker asks the engine again soon after it went down.
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LIVE_OUTPUT_INTERVAL": 0.1}
    engine.script(FakeOutcome(duration=1.0, stdout="done"))
    j = job(fake_host)
    worker = Worker(concurrency=1, burst=True)
    thread = threading.Thread(target=worker.run)
    thread.start()
    until(lambda: fresh(j).status == JobStatus.RUNNING)
    engine.down = True
    time.sleep(1.5)  # the container has exited meanwhile; the worker cannot know it yet
    assert fresh(j).status == JobStatus.RUNNING, "never failed while the container may run"
    engine.down = False
    thread.join(15)
    j = fresh(j)
    assert (j.status, j.stdout_log, j.attempt_count) == (JobStatus.COMPLETED, "done", 1)


def test_adopts_a_running_job_whose_worker_died(fake_host, engine):
    engine.script(FakeOutcome(duration=0.2, stdout="adopted"))
    j = job(fake_host)
    [claimed] = claim("dead-worker", 1)
    executor = get_executor(fake_host)
    container_id = executor.run(JobSpec.from_job(claimed.job))
    claimed.job.mark_running("dead-worker", container_id)
    expire_lease(j)
    burst()
    j = fresh(j)
    assert (j.status, j.stdout_log, j.attempt_count) == (JobStatus.COMPLETED, "adopted", 1)
    assert j.container_id == container_id
    assert engine.calls.count("run") == 1, "the adopter did not launch a second container"


def test_adopts_a_job_created_but_never_started(fake_host, engine):
    j = job(fake_host, "echo once")
    [claimed] = claim("dead-worker", 1)
    spec = JobSpec.from_job(claimed.job)
    engine.containers["pre"] = __import__(
        "container_manager.executors.fake", fromlist=["FakeContainer"]
    ).FakeContainer(id="pre", spec=spec, outcome=engine.outcome_for(spec))
    expire_lease(j)
    burst()
    j = fresh(j)
    assert (j.status, j.container_id, j.stdout_log) == (JobStatus.COMPLETED, "pre", "once\n")


def test_concurrency_runs_jobs_side_by_side_within_host_capacity(fake_host, engine):
    fake_host.max_concurrent_jobs = 3
    fake_host.save()
    engine.script(FakeOutcome(duration=1.5))
    jobs = [job(fake_host) for _ in range(6)]
    burst(concurrency=5)
    done = [fresh(j) for j in jobs]
    assert all(j.status == JobStatus.COMPLETED for j in done)
    peak = _peak_overlap(done)
    assert 2 <= peak <= 3, f"peak overlap {peak}: concurrency used, capacity 3 respected"


def test_priority_then_age_decides_the_order(fake_host, engine):
    low = job(fake_host, "echo low")
    high = job(fake_host, "echo high", priority=10)
    later = job(fake_host, "echo later", run_after=timezone.now() + timedelta(hours=1))
    burst(concurrency=1)
    assert fresh(high).started_at < fresh(low).started_at
    assert fresh(later).status == JobStatus.QUEUED, "not due yet"


def test_output_beyond_the_tail_is_cut_and_flagged(fake_host, engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LOG_TAIL_BYTES": 4096}
    engine.script(FakeOutcome(stdout=b"x" * 100_000 + b"END"))
    j = job(fake_host)
    burst()
    j = fresh(j)
    assert j.stdout_truncated and not j.stderr_truncated
    assert len(j.stdout_log) == 4096 and j.stdout_log.endswith("END")


def test_full_output_is_kept_in_storage_when_configured(fake_host, engine, settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "joblogs": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "LOG_TAIL_BYTES": 1024,
        "LOG_STORAGE": "joblogs",
    }
    engine.script(FakeOutcome(stdout=b"y" * 5000))
    j = job(fake_host)
    burst()
    j = fresh(j)
    assert j.stdout_truncated and j.stdout_file
    assert (tmp_path / j.stdout_file).read_bytes() == b"y" * 5000
    assert j.stderr_file == ""


def test_output_is_read_again_after_the_exit_when_following_it_ended_early(
    fake_host, engine, monkeypatch, caplog
):
    from container_manager.exceptions import ExecutorConnectionError

    def broken_follow(self, container_id):
        yield "stdout", b"par"
        raise ExecutorConnectionError("the engine closed the connection")

    monkeypatch.setattr(FakeExecutor, "follow_outputs", broken_follow)
    engine.script(FakeOutcome(stdout="partial and the rest\n", stderr="e\n", duration=1.5))
    j = job(fake_host)
    burst()
    j = fresh(j)
    assert (j.status, j.stdout_log, j.stderr_log) == (
        JobStatus.COMPLETED, "partial and the rest\n", "e\n"
    )  # fmt: skip
    assert "output read again after the exit" in caplog.text


def test_an_executor_that_cannot_follow_has_its_output_read_after_the_exit(
    fake_host, engine, monkeypatch
):
    from container_manager.exceptions import ExecutorError
    from container_manager.executors.base import BaseExecutor

    monkeypatch.setattr(FakeExecutor, "follows_output", False)
    monkeypatch.setattr(FakeExecutor, "follow_outputs", BaseExecutor.follow_outputs)
    engine.script(FakeOutcome(stdout="after\n", duration=0.1))
    j = job(fake_host)
    burst()
    assert fresh(j).stdout_log == "after\n"
    with pytest.raises(ExecutorError, match="cannot follow"):
        next(get_executor(fake_host).follow_outputs("x"))


def _live_records(j, seconds):
    """The (stdout, stderr) records seen while ``j`` ran, polled for ``seconds`` at most."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = ContainerJob.objects.values("status", "stdout_log", "stderr_log").get(pk=j.pk)
        if row["status"] == JobStatus.RUNNING and (row["stdout_log"] or row["stderr_log"]):
            seen.append((row["stdout_log"], row["stderr_log"]))
        if JobStatus(row["status"]).is_terminal:
            break
        time.sleep(0.02)
    return seen


def test_a_running_jobs_output_is_recorded_redacted_and_bounded(fake_host, engine, settings):
    from container_manager.environment import MASK

    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER, "LIVE_OUTPUT_INTERVAL": 0.05, "LIVE_OUTPUT_BYTES": 12,
    }  # fmt: skip
    engine.script(FakeOutcome(stdout="token=s3cr3t-value-1234\n", stderr="w\n", duration=2))
    j = job(fake_host, environment={"API_TOKEN": "s3cr3t-value-1234"})
    thread = threading.Thread(target=burst)
    thread.start()
    seen = _live_records(j, 10)
    thread.join(10)
    assert seen and set(seen) == {(f"token={MASK}\n"[-12:], "w\n")}, seen
    j = fresh(j)
    assert (j.status, j.stdout_log) == (JobStatus.COMPLETED, f"token={MASK}\n")


def test_no_output_is_recorded_while_running_when_live_output_is_off(fake_host, engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LIVE_OUTPUT_INTERVAL": None}
    engine.script(FakeOutcome(stdout="done\n", duration=0.5))
    j = job(fake_host)
    thread = threading.Thread(target=burst)
    thread.start()
    seen = _live_records(j, 10)
    thread.join(10)
    assert seen == [] and fresh(j).stdout_log == "done\n"


def test_nul_bytes_in_output_are_stored_safely(fake_host, engine):
    engine.script(FakeOutcome(stdout=b"a\x00b\xffc"))
    j = job(fake_host)
    burst()
    assert fresh(j).stdout_log == "a\ufffdb\ufffdc"


def stop_once_running(worker: Worker, j: ContainerJob) -> threading.Thread:
    """Run ``worker`` in a thread, stop it once ``j`` runs; its (joined) thread."""
    thread = threading.Thread(target=worker.run)
    thread.start()
    until(lambda: fresh(j).status == JobStatus.RUNNING)
    worker.stop()
    thread.join(5)
    return thread


def test_job_threads_of_a_stopped_worker_end_within_a_wait_slice(fake_host, engine, monkeypatch):
    monkeypatch.setattr(runner_module, "_WAIT_SLICE", 0.3)
    engine.script(FakeOutcome(duration=60))
    j = job(fake_host)
    worker = Worker(concurrency=2, shutdown_timeout=0.1)
    thread = stop_once_running(worker, j)
    for job_thread in worker._threads:
        job_thread.join(3)
    assert not thread.is_alive()
    assert not [t.name for t in worker._threads if t.is_alive()], "left blocked in a wait"
    assert fresh(j).status == JobStatus.RUNNING, "left for adoption, not failed"


def test_shutdown_leaves_running_jobs_for_adoption(fake_host, engine):
    engine.script(FakeOutcome(duration=1.0, stdout="finished by another"))
    j = job(fake_host)
    thread = stop_once_running(Worker(concurrency=1, shutdown_timeout=0.1), j)
    assert not thread.is_alive()
    j = fresh(j)
    assert j.status == JobStatus.RUNNING, "not killed, not lost"
    assert j.lease_expires_at <= timezone.now()
    burst()
    j = fresh(j)
    assert (j.status, j.stdout_log, j.attempt_count) == (
        JobStatus.COMPLETED,
        "finished by another",
        1,
    )


def test_runner_query_count_is_constant(fake_host, engine, django_assert_num_queries):
    engine.script(FakeOutcome(stdout="x"))
    job(fake_host)
    [claimed] = claim("w1", 1)
    runner = JobRunner(claimed.job, "w1", get_executor(fake_host), RunControl())
    # mark_running, attempt row (inserted running), mark_finished, attempt->finished
    with django_assert_num_queries(4):
        runner.run()
    assert fresh(claimed.job).status == JobStatus.COMPLETED
    [attempt] = JobAttempt.objects.filter(job=claimed.job)
    assert (attempt.status, attempt.container_id) == (
        JobStatus.COMPLETED,
        runner.control.container_id,
    )
    assert attempt.started_at <= attempt.finished_at


def test_worker_rejects_bad_concurrency():
    with pytest.raises(ValueError, match="concurrency"):
        Worker(concurrency=0)


def expire_lease(job):
    ContainerJob.objects.filter(pk=job.pk).update(
        lease_expires_at=timezone.now() - timedelta(seconds=1)
    )


def _peak_overlap(jobs):
    events = sorted(
        [(j.started_at, 1) for j in jobs] + [(j.completed_at, -1) for j in jobs],
        key=lambda e: (e[0], e[1]),
    )
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_a_worker_beats_while_it_runs_idle_or_not_and_clears_its_row_on_exit(fake_host, engine):
    from container_manager.models import WorkerHeartbeat

    worker = Worker(concurrency=3)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: WorkerHeartbeat.objects.filter(worker_id=worker.worker_id).exists())
        beat = WorkerHeartbeat.objects.get(worker_id=worker.worker_id)
        assert (beat.concurrency, beat.running_jobs) == (3, 0), "idle, and still seen"
        first = beat.last_seen
        until(lambda: WorkerHeartbeat.objects.get(worker_id=worker.worker_id).last_seen > first)
    finally:
        worker.stop()
        thread.join(10)
    assert not WorkerHeartbeat.objects.filter(worker_id=worker.worker_id).exists()


def test_every_executor_of_a_worker_process_gets_a_pool_as_large_as_its_concurrency(fake_host):
    job(fake_host)
    Worker(concurrency=7, burst=True).run()
    assert get_executor(fake_host).config["pool_size"] == 9


class _BuggyExecutor(FakeExecutor):
    """A third-party executor with a bug: inspecting a container raises a plain error."""

    def inspect(self, container_id):
        raise RuntimeError("plugin bug")


def test_an_executor_bug_fails_that_job_removes_its_container_and_the_worker_goes_on(
    fake_host, engine, settings
):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "EXECUTORS": {"fake": f"{__name__}._BuggyExecutor"},
    }
    engine.script(FakeOutcome(exit_code=3), argv_prefix=["false"])  # non-zero: inspected
    buggy = job(fake_host, "false")
    fine = job(fake_host, "echo fine")  # exit 0: not inspected
    burst(concurrency=1)
    buggy, fine = fresh(buggy), fresh(fine)
    assert buggy.status == JobStatus.FAILED
    assert buggy.last_error == "Internal error: RuntimeError('plugin bug')"
    assert (fine.status, fine.stdout_log) == (JobStatus.COMPLETED, "fine\n")
    assert engine.containers == {}, "the buggy job's container was removed too"


@pytest.mark.parametrize(("burst", "listens"), [(False, True), (True, False)])
def test_only_a_long_lived_worker_listens_for_new_jobs(fake_host, monkeypatch, burst, listens):
    started = []

    class Listener(threading.Thread):
        enabled = True

        def __init__(self, wake):
            super().__init__(daemon=True)

        def start(self):
            started.append(True)

        def stop(self):
            pass

    monkeypatch.setattr("container_manager.worker.Listener", Listener)
    worker = Worker(concurrency=1, burst=burst, poll_interval=0.05)
    thread = threading.Thread(target=worker.run)
    thread.start()
    until(lambda: bool(started) or not thread.is_alive())
    worker.stop()
    thread.join(10)
    assert started == ([True] if listens else [])
