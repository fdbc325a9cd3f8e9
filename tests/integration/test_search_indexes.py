"""On PostgreSQL the search's name and image indexes carry each job's creation time and id
(migration 0009), so the search reads a prefix's matches from the index alone; the migration
goes back to the plain indexes and forward again."""

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
        pytest.skip("INCLUDE indexes are PostgreSQL's")


def definitions() -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s"
            " AND indexname IN ('cm_job_name_idx', 'cm_job_image_idx')",
            [TABLE],
        )
        return dict(cursor.fetchall())


def test_the_name_and_image_indexes_cover_the_searchs_columns():
    found = definitions()
    assert set(found) == {"cm_job_name_idx", "cm_job_image_idx"}
    for name, column in (("cm_job_name_idx", "name"), ("cm_job_image_idx", "docker_image")):
        assert f"({column} varchar_pattern_ops) INCLUDE (created_at, id)" in found[name]


def test_a_prefixs_matches_are_read_from_the_index_alone():
    queue.submit_many([{"image": f"img-{i % 7}:1", "name": f"etl-{i}"} for i in range(300)])
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {TABLE}")  # the visibility map an index-only scan needs
    term = admin_search._Term.parse("etl-1")
    sql, params = admin_search._every_match(ContainerJob.objects.all(), term.arms(), 10)
    with connection.cursor() as cursor:
        # Small tables are read whole otherwise: what is asked is whether the index suffices.
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_bitmapscan = off")
        try:
            cursor.execute(f"EXPLAIN {sql}", params)
            plan = "\n".join(row[0] for row in cursor.fetchall())
        finally:
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET enable_bitmapscan")
    assert "Index Only Scan using cm_job_name_idx" in plan, plan
    assert "Index Only Scan using cm_job_image_idx" in plan, plan


def test_the_migration_goes_back_to_the_plain_indexes_and_forward_again():
    try:
        call_command("migrate", "container_manager", "0008", verbosity=0)
        back = definitions()
        assert set(back) == {"cm_job_name_idx", "cm_job_image_idx"}
        assert not any("INCLUDE" in definition for definition in back.values())
    finally:
        call_command("migrate", "container_manager", verbosity=0)
    assert all("INCLUDE (created_at, id)" in d for d in definitions().values())
