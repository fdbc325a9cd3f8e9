"""A worker's slots: a job's retry claimed while its earlier attempt's thread finishes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from container_manager import worker as worker_module
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
