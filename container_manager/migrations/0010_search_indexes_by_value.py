"""On PostgreSQL, the search's name and image indexes are keyed by the value, then the creation
time and id (they carried the two as ``INCLUDE`` columns since 0009): a value's newest jobs
come in the list's order straight from the index, so a search for a name that many jobs share,
or for an image, reads its newest matches and stops, instead of reading every match to sort
them. A prefix of many distinct values is still read from the index alone, as with 0009. The
indexes keep their names and operator class, so the models' state is unchanged; other
databases keep the plain indexes.

Built ``CONCURRENTLY`` like 0009 (workers go on claiming while it runs); a build that was
interrupted leaves an invalid index behind, which running the migration again drops first."""

from django.db import migrations

from ._concurrently import COVERING, KEYED, rebuild_search_indexes


def keyed(apps, schema_editor):
    rebuild_search_indexes(schema_editor, KEYED)


def covering(apps, schema_editor):
    rebuild_search_indexes(schema_editor, COVERING)


class Migration(migrations.Migration):
    # CREATE INDEX CONCURRENTLY cannot run inside a transaction.
    atomic = False

    dependencies = [
        ("container_manager", "0009_covering_search_indexes"),
    ]

    operations = [
        migrations.RunPython(keyed, covering, elidable=False),
    ]
