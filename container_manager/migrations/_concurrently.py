"""An index of the job table rebuilt ``CONCURRENTLY`` on PostgreSQL, for the migrations that
change one in place (its name kept, so the models' state is unchanged). Its name starts with
an underscore: Django's migration loader skips it."""

from __future__ import annotations

from typing import Any

TABLE = "container_manager_containerjob"


def rebuild(schema_editor: Any, name: str, columns: str) -> None:
    """Build the index ``name`` again as ``columns`` (the parenthesised part of a CREATE
    INDEX and what follows it), under a new name that takes the old one's once built. A
    build that was interrupted leaves an invalid index behind: it is dropped first."""
    if schema_editor.connection.vendor != "postgresql":
        return
    new = f"{name}_new"
    for statement in (
        f"DROP INDEX CONCURRENTLY IF EXISTS {new}",
        f"CREATE INDEX CONCURRENTLY {new} ON {TABLE} {columns}",
        f"DROP INDEX CONCURRENTLY IF EXISTS {name}",
        f"ALTER INDEX {new} RENAME TO {name}",
    ):
        schema_editor.execute(statement, None)


#: The admin search's pattern indexes, by name, with their column.
SEARCH_INDEXES = (("cm_job_name_idx", "name"), ("cm_job_image_idx", "docker_image"))
#: The search indexes' columns: plain (0007), covering (0009), keyed by value (0010).
PLAIN = "({column} varchar_pattern_ops)"
COVERING = "({column} varchar_pattern_ops) INCLUDE (created_at, id)"
KEYED = "({column} varchar_pattern_ops, created_at, id)"


def rebuild_search_indexes(schema_editor: Any, columns: str) -> None:
    """Both search indexes rebuilt as ``columns`` (one of the forms above)."""
    for name, column in SEARCH_INDEXES:
        rebuild(schema_editor, name, columns.format(column=column))
