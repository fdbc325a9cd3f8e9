"""A worker's slots: a job's retry claimed while its earlier attempt's thread finishes."""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.utils import timezone

from container_manager import worker as worker_module
from container_manager.models import ContainerJob, JobStatus
from container_manager.queue import Claimed, claim, submit
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db


def test_an_attempt_ending_late_leaves_the_next_attempts_slot(fake_host, monkeypatch):
    """The first attempt's thread releases its own slot, not the retry's (else a burst
    worker sees nothing held, exits, and abandons the retry while it launches)."""
    monkeypatch.setattr(
        worker_module, "JobRunner", lambda *args, **kwargs: SimpleNamespace(run=lambda: None)
    )
    submit(host=fake_host, image="busybox:latest", command="true")
    [item] = claim("w", 1)
    worker = Worker(burst=True, worker_id="w")
    with worker._slots_lock:
        first = worker._register(item)
    with worker._slots_lock:  # the retry, claimed before the first attempt's thread ended
        second = worker._register(Claimed(item.job, adopted=False))
    worker._run_job(item, first)
    assert worker._busy() and worker._free() == 0
    worker._run_job(item, second)
    assert not worker._busy()
    assert worker.processed == 2


@pytest.mark.django_db(transaction=True)
def test_a_retry_falling_due_during_the_last_claim_keeps_a_burst_worker(fake_host, monkeypatch):
    """A placed retry whose backoff ends between the claim that found nothing and the
    burst worker's "anything left?" check is still work (else the worker exits under it)."""
    job = submit(image="busybox:latest", command="true")
    due = timezone.now() + timedelta(seconds=1)
    ContainerJob.objects.filter(pk=job.pk).update(attempt_count=1, run_after=due)
    real_claim = worker_module.claim
    calls = []

    def claim_that_ends_late(*args, **kwargs):
        claimed = real_claim(*args, **kwargs)
        calls.append(len(claimed))
        if calls == [0, 0]:  # the burst worker's second look found nothing: end once it is due
            time.sleep(max((due - timezone.now()).total_seconds(), 0) + 0.05)
        return claimed

    monkeypatch.setattr(worker_module, "claim", claim_that_ends_late)
    Worker(concurrency=1, burst=True, shutdown_timeout=5, poll_interval=0.05).run()
    job.refresh_from_db()
    assert calls[:2] == [0, 0] and job.status == JobStatus.COMPLETED
