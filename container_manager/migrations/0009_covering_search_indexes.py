"""On PostgreSQL, the search's name and image indexes also carry each job's creation time and
id (``INCLUDE``): the admin's search reads a prefix's matches and sorts them newest first from
the index alone, without visiting a row per match (at ten million jobs, 278,000 matches of one
prefix were read in 170 ms instead of 860). The indexes keep their names and operator class,
so the models' state is unchanged; other databases keep the plain indexes (SQLite has no
``INCLUDE``).

Built ``CONCURRENTLY``: workers go on claiming and finishing jobs while it runs (at a million
jobs it took 4.8 s here, a worker's claims meanwhile at most 70 ms and none waiting on a lock;
at ten million a plain build of one such index took 13.5 s). A build that was interrupted
leaves an invalid index behind: running the migration again drops it first."""

from django.db import migrations

from ._concurrently import PLAIN, COVERING, rebuild_search_indexes


def covering(apps, schema_editor):
    rebuild_search_indexes(schema_editor, COVERING)


def plain(apps, schema_editor):
    rebuild_search_indexes(schema_editor, PLAIN)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("container_manager", "0008_job_queue"),
    ]

    operations = [
        migrations.RunPython(covering, plain, elidable=False),
    ]
