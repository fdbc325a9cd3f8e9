"""The integrators' signals: job_queued after the submitting transaction commits, job_started
and job_finished from a worker run on the fake engine, and a raising receiver that never
breaks the worker."""

from __future__ import annotations

import threading

import pytest
from django.db import transaction

from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, JobStatus
from container_manager.queue import cancel, retry, submit
from container_manager.signals import job_finished, job_queued, job_started
from container_manager.worker import Worker


class Recorder:
    """A receiver that records (signal name, job id, extra kwargs), thread-safely."""

    def __init__(self):
        self.calls = []
        self.lock = threading.Lock()

    def receiver(self, name):
        def receive(sender, job, **kwargs):
            kwargs.pop("signal")
            with self.lock:
                self.calls.append((name, job.pk, sender, kwargs))

        return receive

    def names(self, job):
        return [name for name, pk, _, _ in self.calls if pk == job.pk]


@pytest.fixture
def recorder():
    recorder = Recorder()
    receivers = {
        signal: recorder.receiver(name)
        for signal, name in (
            (job_queued, "queued"),
            (job_started, "started"),
            (job_finished, "finished"),
        )
    }
    for signal, receive in receivers.items():
        signal.connect(receive)
    yield recorder
    for signal, receive in receivers.items():
        signal.disconnect(receive)


@pytest.fixture(autouse=True)
def fast(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "POLL_INTERVAL": 0.05}


def burst():
    return Worker(concurrency=2, burst=True, shutdown_timeout=5).run()


@pytest.mark.django_db
def test_job_queued_is_sent_only_after_the_transaction_commits(
    fake_host, recorder, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        job = submit(host=fake_host, image="busybox:latest", command="echo hi")
        assert recorder.calls == [], "not before the commit"
    assert recorder.calls == [("queued", job.pk, ContainerJob, {})]


@pytest.mark.django_db(transaction=True)
def test_job_queued_is_not_sent_for_a_rolled_back_submit(fake_host, recorder):
    with pytest.raises(RuntimeError), transaction.atomic():
        submit(host=fake_host, image="busybox:latest")
        raise RuntimeError("roll back")
    assert recorder.calls == [] and not ContainerJob.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_retry_sends_job_queued_again_and_cancel_of_a_waiting_job_sends_finished(
    fake_host, recorder
):
    waiting = submit(host=fake_host, image="busybox:latest")
    cancel(waiting)
    retry(waiting)
    assert recorder.names(waiting) == ["queued", "finished", "queued"]
    finished = [kw for name, _, _, kw in recorder.calls if name == "finished"]
    assert finished == [{"status": JobStatus.CANCELLED}]


@pytest.mark.django_db(transaction=True)
def test_a_worker_run_sends_started_and_finished_with_details(fake_host, recorder):
    engine = FakeExecutor.engine_for(fake_host.connection_string)
    engine.script(FakeOutcome(exit_code=4), argv_prefix=["false"])
    ok = submit(host=fake_host, image="busybox:latest", command="echo ok")
    bad = submit(host=fake_host, image="busybox:latest", command="false")
    burst()
    for job, status in ((ok, JobStatus.COMPLETED), (bad, JobStatus.FAILED)):
        assert recorder.names(job) == ["queued", "started", "finished"]
        started, finished = (
            kw for name, pk, _, kw in recorder.calls if pk == job.pk and name != "queued"
        )
        assert started["container_id"].startswith("fake")
        assert finished == {"status": status}
    assert {sender for _, _, sender, _ in recorder.calls} == {ContainerJob}


@pytest.mark.django_db(transaction=True)
def test_a_raising_receiver_is_logged_and_the_worker_goes_on(fake_host, recorder, caplog):
    def broken(sender, job, **kwargs):
        raise ValueError("integrator bug")

    job_started.connect(broken)
    job_finished.connect(broken)
    try:
        jobs = [
            submit(host=fake_host, image="busybox:latest", command=f"echo {n}") for n in range(3)
        ]
        assert burst() == 3
    finally:
        job_started.disconnect(broken)
        job_finished.disconnect(broken)
    for job in jobs:
        job.refresh_from_db()
        assert job.status == JobStatus.COMPLETED and job.stdout_log.strip().isdigit()
        assert recorder.names(job) == ["queued", "started", "finished"], "others still receive"
    ours = [r for r in caplog.records if r.name == "container_manager.signals"]
    assert len(ours) == 6, "2 signals x 3 jobs, each logged with the job id"
    assert {str(r.args[1]) for r in ours} == {str(job.pk) for job in jobs}
    assert all("integrator bug" in r.getMessage() for r in ours)
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 6, "each failure's traceback logged once (by Django)"
    assert all(r.name == "django.dispatch" for r in tracebacks)
