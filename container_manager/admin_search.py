"""The admin's job search: by a job id or its first characters (a range of the primary key),
or by the start of a name or an image (their pattern indexes).

On PostgreSQL a search lists the newest :data:`SEARCH_LIMIT` matches, found one of two ways
whose cost does not grow with the table: among the newest :data:`WALK_ROWS` jobs of the list
(a walk of the creation index, enough when matches are common), else by reading every match
from its index, which carries the creation time (cost grows with the matches, not the jobs).
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

    def arms(self) -> list[Q]:
        arms = [Q(name__startswith=self.prefix), Q(docker_image__startswith=self.prefix)]
        if self.ids is not None:
            arms.append(Q(pk__gte=self.ids[0], pk__lte=self.ids[1]))
        return arms


def job_search(query: QuerySet[Any], term: str) -> QuerySet[Any]:
    """The jobs of ``query`` whose id is or starts with ``term``, or whose name or image
    starts with it; on PostgreSQL, the newest :data:`SEARCH_LIMIT` of them."""
    term = term.strip()
    if not term:
        return query
    parsed = _Term.parse(term)
    if not _bounded(query):
        return query.filter(reduce(operator.or_, parsed.arms()))
    return query.filter(pk__in=newest_matches(query, parsed, SEARCH_LIMIT))


def _bounded(query: QuerySet[Any]) -> bool:
    """Whether a search of ``query`` lists only its newest matches (PostgreSQL's)."""
    return connections[query.db].vendor == "postgresql"


def newest_matches(query: QuerySet[Any], term: _Term, limit: int) -> list[Any]:
    """The ids of the newest ``limit`` jobs of ``query`` that match ``term``, newest first."""
    found = _run(query, *_among_the_newest(query, term, limit))
    if len(found) == limit:  # the newest matches are all among the newest jobs
        return found
    return _run(query, *_every_match(query, term.arms(), limit))


def _newest_first(alias: str, limit: int) -> str:
    """The list's order (newest first, then id) over ``alias``, cut at ``limit`` rows."""
    return f"ORDER BY {alias}.created_at DESC, {alias}.id DESC LIMIT {int(limit)}"


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
    sql, params = newest.query.get_compiler(using=query.db).as_sql()
    like = connections[query.db].ops.prep_for_like_query(term.prefix) + "%"
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


def _every_match(query: QuerySet[Any], arms: list[Q], limit: int) -> tuple[str, list[Any]]:
    """SQL of the newest ``limit`` matches read through each arm's index: behind
    ``OFFSET 0`` an arm is planned on its own, never as a walk of the creation index; each
    arm keeps its own newest ``limit`` (a top-N sort in memory), so the union that removes a
    job matched twice sorts a few rows, not every match."""
    parts: list[str] = []
    params: list[Any] = []
    for arm in arms:
        each = query.filter(arm).order_by().values_list("pk", "created_at")
        sql, arm_params = each.query.get_compiler(using=query.db).as_sql()
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
