"""SQLite: a worker process and the admin (web-process writes and reads) side by side, with
no "database is locked": WAL, IMMEDIATE transactions and a lock timeout."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.db import connection

from container_manager.models import ContainerJob, ExecutorHost, JobStatus
from container_manager.queue import cancel, submit
from tests.processes import worker_process

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_and_admin_write_side_by_side(client):
    if connection.vendor != "sqlite":
        pytest.skip("the SQLite locking test")
    host = ExecutorHost.objects.create(
        name="fake",
        connection_string="unix:///fake.sock",
        executor_type="fake",
        max_concurrent_jobs=8,
    )
    first = [submit(host=host, image="busybox", command=f"echo {i}") for i in range(60)]
    worker = worker_process(
        "--burst", "--concurrency", "4", settings={"POLL_INTERVAL": 0.05, "LEASE_SECONDS": 5}
    )
    admin = User.objects.create_superuser("admin", "a@example.com", "pw")
    client.force_login(admin)
    later = []
    for i in range(60):
        later.append(submit(host=host, image="busybox", command=f"echo later-{i}"))
        if i % 5 == 0:
            cancel(later[-1])
        assert client.get("/admin/container_manager/containerjob/").status_code == 200
    # The burst may end before the last submissions: a second burst takes what is left.
    for process in (worker, worker_process("--burst", "--concurrency", "4")):
        out, _ = process.communicate(timeout=180)
        text = out.decode()
        assert process.returncode == 0, text[-3000:]
        assert "locked" not in text
    statuses = set(ContainerJob.objects.values_list("status", flat=True))
    assert statuses <= {JobStatus.COMPLETED, JobStatus.CANCELLED}
    assert ContainerJob.objects.filter(status=JobStatus.CANCELLED).count() == 12
    assert ContainerJob.objects.filter(status=JobStatus.COMPLETED).count() == 108
    assert all(j.stdout_log for j in ContainerJob.objects.filter(pk__in=[f.pk for f in first]))
