"""On PostgreSQL the search's name and image indexes are keyed by the value, then each job's
creation time and id (migration 0010; 0009 carried the two as INCLUDE columns): the search
reads a prefix's matches from the index alone, and a value's newest jobs in order; the
migrations go back to the covering and the plain indexes and forward again."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.db import connection

from container_manager import admin_search, queue
from container_manager.models import ContainerJob

pytestmark = pytest.mark.django_db(transaction=True)

TABLE = "container_manager_containerjob"


@pytest.fixture(autouse=True)
def _postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("the search's index definitions are PostgreSQL's")


def definitions() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s"
            " AND indexname IN ('cm_job_name_idx', 'cm_job_image_idx')",
            [TABLE],
        )
        return dict(cursor.fetchall())


def test_the_name_and_image_indexes_are_keyed_by_value_then_creation():
    found = definitions()
    assert set(found) == {"cm_job_name_idx", "cm_job_image_idx"}
    for name, column in (("cm_job_name_idx", "name"), ("cm_job_image_idx", "docker_image")):
        assert f"({column} varchar_pattern_ops, created_at, id)" in found[name]


def _plan(sql, params):
    with connection.cursor() as cursor:
        # Small tables are read whole otherwise: what is asked is whether the index suffices.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
        try:
            cursor.execute(f"EXPLAIN {sql}", params)
            return "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET enable_bitmapscan")


def test_a_prefixs_matches_are_read_from_the_index_alone():
    queue.submit_many([{"image": f"img-{i % 7}:1", "name": f"etl-{i}"} for i in range(300)])
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {TABLE}")  # the visibility map an index-only scan needs
    whole, ordered = admin_search._Term.parse("etl-1").arms()
    plan = _plan(*admin_search._every_match(ContainerJob.objects.all(), whole, ordered, 10))
    assert "Index Only Scan using cm_job_name_idx" in plan, plan
    assert "Index Only Scan using cm_job_image_idx" in plan, plan


def test_a_values_newest_jobs_come_in_order_from_its_index_and_stop():
    queue.submit_many([{"image": f"img-{i % 3}:1", "name": f"etl-{i % 2}"} for i in range(300)])
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {TABLE}")
    everything = ContainerJob.objects.all()
    term = admin_search._Term.parse("img-1")
    few = admin_search._few_values(everything, term.prefix)
    assert few == {"name": [], "docker_image": ["img-1:1"]}
    whole, ordered = term.arms(few)
    assert whole == [] and len(ordered) == 1
    plan = _plan(*admin_search._every_match(everything, whole, ordered, 10))
    # The index's own order: no sort of the value's 100 jobs, read backwards and cut at 10.
    assert "Index Only Scan Backward using cm_job_image_idx" in plan, plan
    assert "Sort" not in plan.split("Limit")[-1], plan


def test_the_migrations_go_back_to_the_covering_and_plain_indexes_and_forward_again():
    try:
        call_command("migrate", "container_manager", "0009", verbosity=0)
        back = definitions()
        assert set(back) == {"cm_job_name_idx", "cm_job_image_idx"}
        assert all("varchar_pattern_ops) INCLUDE (created_at, id)" in d for d in back.values())
        call_command("migrate", "container_manager", "0008", verbosity=0)
        back = definitions()
        assert set(back) == {"cm_job_name_idx", "cm_job_image_idx"}
        assert not any("INCLUDE" in d or "created_at" in d for d in back.values())
    finally:
        call_command("migrate", "container_manager", verbosity=0)
    assert all("varchar_pattern_ops, created_at, id)" in d for d in definitions().values())
