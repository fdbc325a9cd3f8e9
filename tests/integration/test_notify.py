"""PostgreSQL LISTEN/NOTIFY: an idle worker claims a new job at once, not at its next poll."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from container_manager.models import JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)


def test_idle_worker_is_woken_by_a_submitted_job(fake_host):
    if connection.vendor != "postgresql":
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite workers poll")
    worker = Worker(concurrency=1, poll_interval=60)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        time.sleep(0.5)  # the worker has polled once and now sleeps for 60 s
        job = submit(host=fake_host, image="busybox:latest", command="echo woken")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status == JobStatus.COMPLETED:
                break
            time.sleep(0.02)
        assert job.status == JobStatus.COMPLETED, "woken by NOTIFY well before the 60 s poll"
        assert job.stdout_log == "woken\n"
    finally:
        worker.stop()
        thread.join(10)
