"""The worker on the real Docker engine: what users see recorded for real containers."""

from __future__ import annotations

import threading
import time

import pytest

from container_manager.models import ContainerJob, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker
from tests.conftest import OOM_COMMAND, job_containers, output_seen_running

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def fast(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "STATS_INTERVAL": 0.2,
        "STOP_GRACE_SECONDS": 1,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
    }


def run(host, image, command, **kwargs):
    return submit(host=host, image=image, command=command, **kwargs)


def burst(concurrency=4):
    Worker(concurrency=concurrency, burst=True, shutdown_timeout=10).run()


def fresh(job):
    job.refresh_from_db()
    return job


def test_real_jobs_record_output_exit_codes_and_environment(engine_host, test_image, docker_client):
    ok = run(
        engine_host,
        test_image,
        ["sh", "-c", 'echo "hello $GREETING"; echo "to stderr" >&2'],
        environment={"GREETING": "from the job"},
    )
    bad = run(engine_host, test_image, ["sh", "-c", "echo partial; exit 7"])
    quoted = run(engine_host, test_image, "echo 'two  spaces' \"and;no-shell\"")
    workdir = run(engine_host, test_image, "pwd", working_directory="/tmp")
    burst()
    ok, bad, quoted, workdir = map(fresh, (ok, bad, quoted, workdir))
    assert (ok.status, ok.exit_code) == (JobStatus.COMPLETED, 0)
    assert ok.stdout_log == "hello from the job\n"
    assert ok.stderr_log == "to stderr\n"
    assert (bad.status, bad.exit_code, bad.stdout_log) == (JobStatus.FAILED, 7, "partial\n")
    assert bad.last_error == "Exited with code 7."
    assert quoted.stdout_log == "two  spaces and;no-shell\n", "argv, not a shell"
    assert workdir.stdout_log == "/tmp\n"
    assert len(ok.container_id) == 64
    assert job_containers(docker_client, ok, bad, quoted, workdir) == [], "removed after harvest"


def test_memory_limit_really_kills_and_is_recorded_as_oom(engine_host, test_image):
    job = run(engine_host, test_image, OOM_COMMAND, memory_limit=8)
    burst()
    job = fresh(job)
    assert (job.status, job.oom_killed, job.exit_code) == (JobStatus.FAILED, True, 137)
    assert job.last_error == "Killed: out of memory (limit 8 MB)."
    assert JobAttempt.objects.get(job=job).oom_killed is True


def test_timeout_really_stops_the_container(engine_host, test_image, docker_client):
    job = run(
        engine_host,
        test_image,
        ["sh", "-c", "trap 'exit 143' TERM; sleep 60 & wait"],
        timeout_seconds=1,
    )
    began = time.monotonic()
    burst()
    job = fresh(job)
    assert job.status == JobStatus.TIMEOUT
    assert job.exit_code == 143, "SIGTERM first, within the grace period"
    assert time.monotonic() - began < 8
    assert job_containers(docker_client, job) == []


def test_timeout_kills_a_container_that_ignores_sigterm(engine_host, test_image):
    job = run(engine_host, test_image, ["sh", "-c", "trap '' TERM; sleep 60"], timeout_seconds=1)
    burst()
    job = fresh(job)
    assert (job.status, job.exit_code) == (JobStatus.TIMEOUT, 137)


def test_cpu_and_memory_figures_are_recorded_for_a_busy_job(engine_host, test_image):
    job = run(
        engine_host,
        test_image,
        ["sh", "-c", "end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do :; done"],
    )
    burst()
    job = fresh(job)
    assert job.status == JobStatus.COMPLETED
    assert job.peak_memory_bytes and job.peak_memory_bytes > 0
    assert job.cpu_seconds and job.cpu_seconds > 0


def test_missing_image_fails_with_a_clear_message(engine_host):
    job = run(engine_host, "container-jobs/does-not-exist:1", "true")
    burst()
    job = fresh(job)
    assert job.status == JobStatus.FAILED
    assert "container-jobs/does-not-exist:1" in job.last_error
    assert "does not pull images" in job.last_error


def test_pull_failure_is_reported_with_the_registry_answer(engine_host):
    engine_host.auto_pull_images = True
    engine_host.save()
    job = run(engine_host, "container-jobs/not-in-any-registry:1", "true")
    burst()
    job = fresh(job)
    assert job.status == JobStatus.FAILED
    assert "could not be pulled" in job.last_error


def test_cancel_running_job_on_the_engine(engine_host, test_image, docker_client):
    job = run(engine_host, test_image, "sleep 60")
    worker = Worker(concurrency=1, burst=True, shutdown_timeout=10)
    thread = threading.Thread(target=worker.run)
    thread.start()
    deadline = time.monotonic() + 15
    while fresh(job).status != JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.cancel()
    thread.join(20)
    job = fresh(job)
    assert job.status == JobStatus.CANCELLED
    assert job_containers(docker_client, job) == []


def test_big_output_keeps_a_bounded_tail(engine_host, test_image, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LOG_TAIL_BYTES": 64 * 1024}
    job = run(
        engine_host,
        test_image,
        ["sh", "-c", "i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done"],
    )
    burst()
    job = fresh(job)
    assert job.status == JobStatus.COMPLETED
    assert job.stdout_truncated is True
    assert len(job.stdout_log.encode()) <= 64 * 1024
    assert job.stdout_log.endswith("line-19999\n")


def test_many_jobs_each_launched_exactly_once(engine_host, test_image, start_recorder):
    jobs = [run(engine_host, test_image, f"echo {i}") for i in range(20)]
    burst(concurrency=6)
    assert all(fresh(j).status == JobStatus.COMPLETED for j in jobs)
    assert sorted(int(fresh(j).stdout_log) for j in jobs) == list(range(20))
    assert set(start_recorder.per_job(j.pk for j in jobs).values()) == {1}
    assert ContainerJob.objects.filter(status=JobStatus.COMPLETED).count() == 20


def test_a_running_jobs_latest_output_is_recorded_while_it_runs(engine_host, test_image, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LIVE_OUTPUT_INTERVAL": 0.2}
    job = run(
        engine_host, test_image, ["sh", "-c", "echo first; echo oops >&2; sleep 3; echo second"]
    )
    seen = output_seen_running(job, timeout=15, stderr=True)
    assert seen == [("first\n", "oops\n")], "recorded while the container ran"
    job = fresh(job)
    assert (job.status, job.stdout_log, job.stderr_log) == (
        JobStatus.COMPLETED, "first\nsecond\n", "oops\n"
    )  # fmt: skip


def test_output_beyond_the_engines_log_cap_is_kept_in_full(
    engine_host, test_image, settings, tmp_path
):
    """The engine keeps 512 KiB of the job's log (two json-file files of 256 KiB); the job
    prints 20,000 lines (1.8 MB as the engine logs them) in a few seconds. Read while it
    runs, the stored output is whole and in order, though the engine rotated its log about
    seven times (and, Docker 20.10, sent a few hundred lines again at each): after the exit,
    only the lines in the engine's last 512 KiB would be left to read."""
    settings.STORAGES = {
        **settings.STORAGES,
        "joblogs": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "ENGINE_LOG_MAX_BYTES": 512 * 1024,
        "LOG_TAIL_BYTES": 16 * 1024,
        "LOG_STORAGE": "joblogs",
    }
    script = (  # it starts printing once the worker follows it (after its first second)
        "sleep 1.5; i=0; while [ $i -lt 20000 ]; do echo line-$i-padding-padding;"
        " if [ $((i % 500)) = 0 ]; then sleep 0.05; fi; i=$((i+1)); done"
    )
    job = run(engine_host, test_image, ["sh", "-c", script])
    burst(concurrency=1)
    job = fresh(job)
    assert (job.status, job.stdout_truncated) == (JobStatus.COMPLETED, True)
    stored = (tmp_path / job.stdout_file).read_text().splitlines()
    assert stored == [f"line-{i}-padding-padding" for i in range(20000)]
    assert job.stdout_log.endswith("line-19999-padding-padding\n")
