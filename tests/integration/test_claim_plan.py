"""The claim's statements on PostgreSQL: each an ordered scan of a partial claim index (no
sort, no scan of the table), with and without a worker's queues."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.utils import timezone

from container_manager import queue
from container_manager.testing.factories import ExecutorHostFactory

pytestmark = pytest.mark.django_db(transaction=True)

QUEUES = ("default", "reports", "mail")


@pytest.fixture
def backlog(db):
    if connection.vendor != "postgresql":
        pytest.skip("query plans are PostgreSQL's")
    host = ExecutorHostFactory(name="plan-engine")
    specs = [
        {"image": "busybox:latest", "queue": QUEUES[i % 3], "priority": i % 7}
        | ({"host": host.name} if i % 2 else {})
        for i in range(6000)
    ]
    queue.submit_many(specs)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE container_manager_containerjob")
    return host


def plan(queryset) -> str:
    with transaction.atomic():  # the claim's statements lock rows: only inside one
        return queryset.explain()


@pytest.mark.parametrize(
    ("lane", "pinned_index", "open_index"),
    [
        (None, "cm_job_claim_idx", "cm_job_open_claim_idx"),
        ("reports", "cm_job_queue_claim_idx", "cm_job_queue_open_claim_idx"),
    ],
)
def test_each_claim_statement_is_an_ordered_index_scan(backlog, lane, pinned_index, open_index):
    now = timezone.now()
    for text, index in (
        (plan(queue._due_on_host(backlog.pk, lane, 8, now)), pinned_index),
        (plan(queue._due_open(lane, 8, now)), open_index),
    ):
        assert f"Index Scan using {index}" in text, text
        assert "Sort" not in text and "Seq Scan" not in text, text
