"""The admin's job search: by a job id or its first characters (a range of the primary key),
or by the start of a name or an image (their pattern indexes).

On PostgreSQL a search lists the newest :data:`SEARCH_LIMIT` matches, found one of three ways
whose cost does not grow with the table: among the newest :data:`WALK_ROWS` jobs of the list
(a walk of the creation index, enough when matches are common); else, for a prefix that starts
at most :data:`FEW_VALUES` distinct names (or images), the newest jobs of each of them, read
in order from its index (keyed by the value, then the creation time); else by reading every
match from the index (cost grows with the matches, not the jobs).
Left to itself, PostgreSQL walks the creation index from the newest job until enough rows
match, whatever their number: when the matches are old, that reads millions of rows.
Elsewhere (SQLite: one worker, a smaller table) the search is the plain filter."""

from __future__ import annotations

import operator
import re
import uuid
from dataclasses import dataclass
from functools import reduce
from typing import Any

from django.db import connections
from django.db.models import Q, QuerySet

#: A search on PostgreSQL lists at most its newest this many matches (10 pages). The page's
#: query then fetches them by id and sorts them: with a thousand, PostgreSQL chose at 1M
#: jobs to walk the creation index until it met them (700,000 rows for old matches).
SEARCH_LIMIT = 500
#: How many of the newest jobs of the list are looked at first. Reading every match from the
#: covering indexes costs about as much a match as this walk costs a job, so the walk is
#: worth it only for common prefixes: with 25,000 a prefix falls to the indexes when fewer
#: than 1 job in 50 of the newest has it.
WALK_ROWS = 25_000
#: A prefix that starts at most this many distinct names (or images) is read value by value:
#: each value's newest matches come in order from its index, so the cost grows with the
#: values, not the matches (a name that every hourly job shares, an image). Finding whether
#: a prefix starts more costs one step of the index a value.
FEW_VALUES = 32

_HEX = re.compile(r"[0-9a-f]{1,32}")


@dataclass(frozen=True)
class _Term:
    """A search term: the start of a name or an image, and the ids it may begin."""

    prefix: str
    ids: tuple[uuid.UUID, uuid.UUID] | None

    @classmethod
    def parse(cls, term: str) -> _Term:
        digits = term.lower().replace("-", "")
        if not _HEX.fullmatch(digits):
            return cls(term, None)
        return cls(term, (uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))))

    def arms(self, few: dict[str, list[str]] | None = None) -> tuple[list[Q], list[Q]]:
        """The term's matches as arms of a union: those read whole, and those whose index
        gives them newest first (a value of ``few``, the distinct values a column's prefix
        starts when they are few; on SQLite, ``few`` is not looked up)."""
        few = few or {}
        whole: list[Q] = []
        ordered: list[Q] = []
        for column in PREFIX_COLUMNS:
            if column in few:
                ordered.extend(Q(**{column: value}) for value in few[column])
            else:
                whole.append(Q(**{f"{column}__startswith": self.prefix}))
        if self.ids is not None:
            whole.append(Q(pk__gte=self.ids[0], pk__lte=self.ids[1]))
        return whole, ordered


#: The columns a search matches by prefix, each with its pattern index.
PREFIX_COLUMNS = ("name", "docker_image")


def job_search(query: QuerySet[Any], term: str) -> QuerySet[Any]:
    """The jobs of ``query`` whose id is or starts with ``term``, or whose name or image
    starts with it; on PostgreSQL, the newest :data:`SEARCH_LIMIT` of them."""
    term = term.strip()
    if not term:
        return query
    parsed = _Term.parse(term)
    if not _bounded(query):
        whole, _ = parsed.arms()
        return query.filter(reduce(operator.or_, whole))
    return query.filter(pk__in=newest_matches(query, parsed, SEARCH_LIMIT))


def _bounded(query: QuerySet[Any]) -> bool:
    """Whether a search of ``query`` lists only its newest matches (PostgreSQL's)."""
    return connections[query.db].vendor == "postgresql"


def newest_matches(query: QuerySet[Any], term: _Term, limit: int) -> list[Any]:
    """The ids of the newest ``limit`` jobs of ``query`` that match ``term``, newest first."""
    found = _run(query, *_among_the_newest(query, term, limit))
    if len(found) == limit:  # the newest matches are all among the newest jobs
        return found
    whole, ordered = term.arms(_few_values(query, term.prefix))
    if not whole and not ordered:  # no name nor image starts so, and it is no id
        return []
    return _run(query, *_every_match(query, whole, ordered, limit))


def _newest_first(alias: str, limit: int) -> str:
    """The list's order (newest first, then id) over ``alias``, cut at ``limit`` rows."""
    return f"ORDER BY {alias}.created_at DESC, {alias}.id DESC LIMIT {int(limit)}"


def _sql(query: QuerySet[Any]) -> tuple[str, list[Any]]:
    """The SQL and parameters ``query`` compiles to, to be placed in a larger statement."""
    sql, params = query.query.get_compiler(using=query.db).as_sql()
    return sql, list(params)


def _like(query: QuerySet[Any], prefix: str) -> str:
    """The LIKE pattern of the values that start with ``prefix`` (its wildcards escaped)."""
    return connections[query.db].ops.prep_for_like_query(prefix) + "%"


def _run(query: QuerySet[Any], sql: str, params: list[Any]) -> list[Any]:
    with connections[query.db].cursor() as cursor:
        cursor.execute(sql, params)
        return [row[0] for row in cursor.fetchall()]


def _among_the_newest(query: QuerySet[Any], term: _Term, limit: int) -> tuple[str, list[Any]]:
    """SQL of the matches among the newest :data:`WALK_ROWS` jobs of ``query``: those rows
    are taken first (a derived table), then matched, so the walk never goes further. The
    match is :meth:`_Term.arms` written against the derived table's columns."""
    newest = query.order_by("-created_at", "-pk").values_list(
        "pk", "name", "docker_image", "created_at"
    )[:WALK_ROWS]
    sql, params = _sql(newest)
    like = _like(query, term.prefix)
    match = "w.name LIKE %s OR w.docker_image LIKE %s"
    params = [*params, like, like]
    if term.ids is not None:
        match += " OR w.id BETWEEN %s AND %s"
        params.extend(term.ids)
    return (
        f"SELECT w.id FROM ({sql}) AS w(id, name, docker_image, created_at) WHERE {match}"
        f" {_newest_first('w', limit)}",
        params,
    )


def _few_values(query: QuerySet[Any], prefix: str) -> dict[str, list[str]]:
    """The distinct values of each of :data:`PREFIX_COLUMNS` that start with ``prefix``,
    for the columns where they are at most :data:`FEW_VALUES`. One query: each column's
    values are found one index step at a time (a recursive skip scan: each step the next
    value after the last, until one does not start with the prefix or the ``LIMIT`` one
    past the cap stops it), whatever the list's filters (a superset of theirs). A step has
    no upper bound on purpose: bounded by the prefix too, a rare prefix's step is estimated
    to read its whole range, and the planner's cost for the query (millions) then pays
    about 100 ms to compile it (JIT) to save nothing."""
    connection = connections[query.db]
    table = connection.ops.quote_name(query.model._meta.db_table)
    like = _like(query, prefix)
    parts, params = [], []
    for column in PREFIX_COLUMNS:
        col = "t." + connection.ops.quote_name(query.model._meta.get_field(column).column)
        first = f"SELECT {col} FROM {table} AS t WHERE {col} LIKE %s"
        after = f"SELECT {col} FROM {table} AS t WHERE {col} ~>~ v.value"
        order = f"ORDER BY {col} USING ~<~ LIMIT 1"
        parts.append(
            f"(WITH RECURSIVE v(value) AS (({first} {order}) UNION ALL"
            f" SELECT ({after} {order}) FROM v WHERE v.value LIKE %s)"
            f" SELECT %s, value FROM v WHERE value LIKE %s LIMIT {FEW_VALUES + 1})"
        )
        params.extend([like, like, column, like])
    found: dict[str, list[str]] = {column: [] for column in PREFIX_COLUMNS}
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        for column, value in cursor.fetchall():
            found[column].append(value)
    return {column: values for column, values in found.items() if len(values) <= FEW_VALUES}


def _every_match(
    query: QuerySet[Any], whole: list[Q], ordered: list[Q], limit: int
) -> tuple[str, list[Any]]:
    """SQL of the newest ``limit`` matches read through each arm's index. An arm of
    ``ordered`` is an index's own order (a value, newest first): its first ``limit`` rows.
    An arm of ``whole`` is read whole behind ``OFFSET 0`` (planned on its own, never as a
    walk of the creation index) and keeps its own newest ``limit`` (a top-N sort in
    memory). Either way the union that removes a job matched twice sorts a few rows, not
    every match."""
    parts: list[str] = []
    params: list[Any] = []
    for arm in ordered:
        each = query.filter(arm).order_by("-created_at", "-pk").values_list("pk", "created_at")
        sql, arm_params = _sql(each[:limit])
        parts.append(f"({sql})")
        params.extend(arm_params)
    for arm in whole:
        each = query.filter(arm).order_by().values_list("pk", "created_at")
        sql, arm_params = _sql(each)
        parts.append(
            f"(SELECT * FROM ({sql} OFFSET 0) AS a(id, created_at) {_newest_first('a', limit)})"
        )
        params.extend(arm_params)
    return (
        f"SELECT m.id FROM ({' UNION '.join(parts)}) AS m(id, created_at)"
        f" {_newest_first('m', limit)}",
        params,
    )


def search_note(query: QuerySet[Any], term: str, found: int) -> str:
    """What the list says when a search reached :data:`SEARCH_LIMIT` ('' otherwise)."""
    if not term.strip() or found < SEARCH_LIMIT or not _bounded(query):
        return ""
    return (
        f"A search lists its newest {SEARCH_LIMIT:,} matches: a longer start of the name, "
        "or a filter (created, status, host), reaches older ones."
    )
