"""The statements a worker runs for every job, without Django's query building.

Django builds and compiles a queryset in 1-2 ms of CPU on a small machine: several times
what the database takes to run one of the claim's queries or a job's status write, and taken
from the engine when the worker shares its machine.

- :func:`fetch` (the claim's SELECTs) builds a queryset once per database connection and
  argument tuple, keeps its SQL, and runs that again with only ``now`` replaced. The rows
  become model instances the way Django's own iteration makes them (converters,
  ``from_db``, annotations), or tuples for a ``values_list()`` queryset.
- :func:`update` (a job's transitions, its attempt's row) writes
  ``filter(**where).update(**changes)`` as one plain UPDATE, each value prepared by its field
  as the ORM prepares it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Hashable, Mapping, Set
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from weakref import WeakKeyDictionary

from django.core.exceptions import EmptyResultSet
from django.db import DEFAULT_DB_ALIAS, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, QuerySet
from django.db.models.query import ModelIterable, ValuesListIterable
from django.db.models.sql.compiler import SQLCompiler

__all__ = ["fetch", "update"]

#: Stands for ``now`` while a queryset is compiled, to find where ``now`` goes in its
#: parameters.
_NOW = datetime(1999, 12, 31, 23, 59, 59, 987654, tzinfo=UTC)


@dataclass(frozen=True)
class _Statement:
    sql: str | None  # None: the queryset matches nothing (``filter(pk__in=())``)
    params: tuple[Any, ...]
    now_at: tuple[int, ...]
    compiler: SQLCompiler
    #: For a queryset of model instances: the model, its fields' attnames and place in a
    #: row, and the annotations' places; None for ``values_list()`` (rows as tuples).
    model: tuple[type[Model], tuple[str, ...], slice, tuple[tuple[str, int], ...]] | None

    @classmethod
    def compile(cls, queryset: QuerySet[Any], *, with_now: bool) -> _Statement:
        as_models = queryset._iterable_class is ModelIterable
        if not as_models and queryset._iterable_class is not ValuesListIterable:
            raise TypeError("fetch() takes a queryset of model instances or of tuples")
        compiler = queryset.query.get_compiler(using=queryset.db)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:
            return cls(None, (), (), compiler, None)
        info = compiler.klass_info
        if info and info.get("related_klass_infos"):
            raise TypeError("fetch() takes no select_related() queryset")
        now = compiler.connection.ops.adapt_datetimefield_value(_NOW)
        now_at = tuple(i for i, value in enumerate(params) if with_now and value == now)
        if with_now and not now_at:
            raise ValueError("the queryset was built without the `now` it was given")
        model = None
        if as_models and info:
            start, end = info["select_fields"][0], info["select_fields"][-1] + 1
            attnames = tuple(col.target.attname for col, _, _ in compiler.select[start:end])
            annotations = tuple(compiler.annotation_col_map.items())
            model = (info["model"], attnames, slice(start, end), annotations)
        return cls(sql, tuple(params), now_at, compiler, model)

    def run(self, now: datetime | None) -> list[Any]:
        if self.sql is None:
            return []
        params = list(self.params)
        if self.now_at:
            value = self.compiler.connection.ops.adapt_datetimefield_value(now)
            for position in self.now_at:
                params[position] = value
        with self.compiler.connection.cursor() as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchall()
        if self.compiler.has_extra_select:
            rows = [row[: self.compiler.col_count] for row in rows]
        converted = self.compiler.results_iter(results=[rows], tuple_expected=True)
        if self.model is None:
            return list(converted)
        model, attnames, fields, annotations = self.model
        alias = self.compiler.using
        found = []
        for row in converted:
            obj = model.from_db(alias, list(attnames), row[fields])
            for name, position in annotations:
                setattr(obj, name, row[position])
            found.append(obj)
        return found


_statements: WeakKeyDictionary[BaseDatabaseWrapper, dict[Hashable, _Statement]] = (
    WeakKeyDictionary()
)
_lock = threading.Lock()
#: Statements kept per connection. The claim's arguments (host ids, batch sizes, the set of
#: healthy hosts) take few values, but a long-lived worker must not keep every one it saw.
MAX_STATEMENTS = 256


def fetch(
    build: Callable[..., QuerySet[Any]],
    *args: Hashable,
    now: datetime | None = None,
    using: str = DEFAULT_DB_ALIAS,
) -> list[Any]:
    """``list(build(*args, now).using(using))`` (``build(*args)`` without ``now``), its SQL
    compiled once per connection, ``build`` and ``args``. ``build`` is a module-level function
    (its identity is part of the key) that depends on nothing but its arguments: settings it
    reads belong in ``args``. Run it where the queryset itself could run (a
    ``select_for_update()`` inside a transaction)."""
    connection = connections[using]
    with _lock:
        statements = _statements.setdefault(connection, {})
    key = (build, args, now is not None)
    statement = statements.get(key)
    if statement is None:
        queryset = build(*args, _NOW) if now is not None else build(*args)
        statement = _Statement.compile(queryset.using(using), with_now=now is not None)
        if len(statements) >= MAX_STATEMENTS:  # arguments seen over months: start afresh
            statements.clear()
        statements[key] = statement
    return statement.run(now)


def _column(model: type[Model], name: str) -> Field[Any, Any]:
    field = model._meta.pk if name == "pk" else model._meta.get_field(name)
    if not isinstance(field, Field) or not field.concrete:
        raise TypeError(f"{model.__name__}.{name} is not a column")
    return field


def update(
    model: type[Model], where: Mapping[str, Any], /, using: str | None = None, **changes: Any
) -> int:
    """``model.objects.filter(**where).update(**changes)``; the number of rows changed.

    ``where`` maps a field's name (or attname, or ``pk``) to a value it must equal, or to a
    tuple, list or set of values it must be one of. ``changes`` are plain values (a model
    instance for a foreign key), prepared by their fields as the ORM prepares an update's;
    expressions such as ``F()`` are refused. Like ``QuerySet.update()`` it sends no signal.
    """
    using = using or router.db_for_write(model)
    connection = connections[using]
    quote = connection.ops.quote_name
    if not changes:
        raise ValueError("update() needs at least one change")
    assignments, params = [], []
    for name, value in changes.items():
        field = _column(model, name)
        if hasattr(value, "resolve_expression"):
            raise TypeError(f"update() takes plain values, not {value!r} for {name!r}")
        if field.remote_field and isinstance(value, Model):
            value = value.prepare_database_save(field)
        assignments.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    conditions = []
    for name, wanted in where.items():
        field = _column(model, name)
        column = quote(field.column)
        if isinstance(wanted, Model):
            wanted = wanted.pk
        if isinstance(wanted, Collection) and not isinstance(wanted, (str, bytes)):
            # A set's order would vary from run to run: sorted, the statement's text does not.
            values = sorted(wanted) if isinstance(wanted, Set) else list(wanted)
            if not values:
                return 0
            conditions.append(f"{column} IN ({', '.join(['%s'] * len(values))})")
            params += [field.get_db_prep_value(v, connection, prepared=False) for v in values]
        elif wanted is None:
            conditions.append(f"{column} IS NULL")
        else:
            conditions.append(f"{column} = %s")
            params.append(field.get_db_prep_value(wanted, connection, prepared=False))
    sql = f"UPDATE {quote(model._meta.db_table)} SET {', '.join(assignments)}"
    if conditions:
        sql += f" WHERE {' AND '.join(conditions)}"
    with transaction.mark_for_rollback_on_error(using), connection.cursor() as cursor:
        cursor.execute(sql, params)
        return int(cursor.rowcount)
