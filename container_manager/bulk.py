"""Bulk submission: many jobs validated as :func:`~container_manager.submission.submit`
validates one, then inserted in one transaction with one wake-up of the workers.

Jobs of one bulk are mostly alike: the same image, host and spec, each with its own name,
command, id or environment. A job's *shape* is everything it gives but :data:`PER_JOB`; the
first job of each shape is validated whole (:func:`~container_manager.submission.prepare`:
every field, the model's checks, the host's policy and executor), and the others of that
shape only in their :data:`PER_JOB` fields, by those fields' own checks (their validators
and the NUL check). That is sound because nothing else reads those fields: the model's
``clean()``, the host policy and the executors' refusals look at the image, the host, the
limits and the container spec, never at a job's name, command, environment, priority, retry
settings or id. A job whose own fields do not pass is validated whole again, so that its
error is word for word the one :func:`submit` gives.

On PostgreSQL the rows go in as one COPY, each shape's columns prepared once; elsewhere as
Django's batched INSERTs.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import uuid
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.db.models.base import ModelState
from django.utils import timezone

from .exceptions import BulkSubmitError, InvalidJobError
from .models import ContainerJob
from .notify import notify_new_job
from .signals import job_queued, send
from .spec import MAX_COMMAND_CHARS
from .submission import bulk_lookups, command_text, environment_text, prepare

__all__ = ["BULK_BATCH", "PER_JOB", "BulkSubmission", "submit_many"]

#: Jobs per INSERT statement where there is no COPY (SQLite).
BULK_BATCH = 1000
_KEYWORDS = frozenset(inspect.signature(prepare).parameters)

#: The keywords a job of a bulk may vary without being validated whole again (see the
#: module's docstring), each with the field it is stored in.
PER_JOB: dict[str, str] = {
    "job_id": "id",
    "name": "name",
    "command": "command",
    "environment": "override_environment",
    "priority": "priority",
    "max_retries": "max_retries",
    "retry_on_failure": "retry_on_failure",
    "run_after": "run_after",
    "submitted_by": "submitted_by",
}
#: Stored values of each job of a bulk; created_at is the job's own too (its claim order).
_OWN_COLUMNS = (*PER_JOB.values(), "created_at")


@dataclass(frozen=True)
class BulkSubmission:
    """What :func:`submit_many` did: the jobs it queued, and (with ``skip_invalid``) the
    specs it did not, as (line number, what is wrong)."""

    jobs: list[ContainerJob]
    rejected: list[tuple[int, str]] = field(default_factory=list)


def submit_many(
    specs: Iterable[Mapping[str, Any] | InvalidJobError],
    *,
    line_numbers: Sequence[int] | None = None,
    skip_invalid: bool = False,
    submitted_by: str = "",
) -> BulkSubmission:
    """Validate every spec (the keywords of :func:`submit`) and queue them all: inserted
    in one transaction (one COPY on PostgreSQL), and one wake-up of the workers.

    A spec is numbered by ``line_numbers`` (default: 1, 2, ...); an InvalidJobError in
    place of a spec stands for an entry already known to be bad (a line that is not JSON).
    When any is bad, BulkSubmitError lists every bad one by number and nothing is queued;
    with ``skip_invalid`` the good ones are queued and the result lists the others.
    ``submitted_by``, when given, is every job's submitter (a spec's own is then ignored)."""
    validator = _Validator(submitted_by)
    rejected: list[tuple[int, str]] = []
    with bulk_lookups():
        for index, spec in enumerate(specs):
            try:
                validator.add(spec)
            except InvalidJobError as err:
                number = line_numbers[index] if line_numbers is not None else index + 1
                rejected.append((number, str(err)))
    jobs = [job for job, _ in validator.entries]
    if rejected and not skip_invalid:
        raise BulkSubmitError(rejected, len(jobs) + len(rejected))
    with transaction.atomic():
        _check_given_ids(validator.given_ids)
        _insert(validator.entries)
        notify_new_job()
        transaction.on_commit(functools.partial(_announce, jobs))
    return BulkSubmission(jobs, rejected)


class _Shape:
    """A job validated whole, and what jobs of its shape share: its stored values, and (on
    PostgreSQL) its COPY row."""

    def __init__(self, job: ContainerJob) -> None:
        self.job = job
        self._row: list[Any] | None = None
        self._values = {k: v for k, v in job.__dict__.items() if k != "_state"}
        #: Its lists and mappings, which each job gets a copy of (an empty one, a new one).
        self._containers = [
            (k, bool(v)) for k, v in self._values.items() if isinstance(v, list | dict)
        ]

    def copy_row(self, columns: Sequence[tuple[str, Any]]) -> list[Any]:
        """The COPY values of this shape's job (``columns``: (attname, preparer))."""
        if self._row is None:
            values = self.job.__dict__
            self._row = [p(values[n]) if p else values[n] for n, p in columns]
        return self._row

    def derive(self, own: dict[str, Any]) -> ContainerJob:
        """A job of this shape with its own stored values ``own`` (and its own copies of
        the shape's lists and mappings)."""
        job = ContainerJob.__new__(ContainerJob)
        values = job.__dict__
        values.update(self._values)
        for name, filled in self._containers:
            values[name] = copy.deepcopy(values[name]) if filled else type(values[name])()
        values.update(own)
        job._state = ModelState()
        job._state.fields_cache = dict(self.job._state.fields_cache)
        return job


class _Validator:
    """Validates the specs of one bulk, one by one, remembering each shape's first job."""

    def __init__(self, submitted_by: str) -> None:
        self.submitted_by = submitted_by
        self.entries: list[tuple[ContainerJob, _Shape]] = []
        self.given_ids: list[Any] = []  # the ids callers gave (not fresh ones)
        self._shapes: dict[Hashable, _Shape] = {}
        self._kept: list[Any] = []  # the objects a shape's key names by id()

    def add(self, spec: Mapping[str, Any] | InvalidJobError) -> None:
        keywords = self._keywords(spec)
        key = self._key(keywords)
        shape = self._shapes.get(key) if key is not None else None
        own = _own_values(keywords) if shape is not None else None
        if shape is not None and own is not None:
            job = shape.derive(own)
        else:
            job = _prepare(keywords)
            shape = _Shape(job)
            if key is not None:
                self._shapes.setdefault(key, shape)
        self.entries.append((job, shape))
        if keywords.get("job_id"):
            self.given_ids.append(job.pk)

    def _keywords(self, spec: Mapping[str, Any] | InvalidJobError) -> dict[str, Any]:
        if isinstance(spec, InvalidJobError):
            raise spec
        if not isinstance(spec, Mapping):
            raise InvalidJobError(f"A job is an object of submit()'s keywords, not {_kind(spec)}")
        unknown = sorted(set(spec) - _KEYWORDS)
        if unknown:
            raise InvalidJobError(f"Unknown key(s) {', '.join(map(repr, unknown))}")
        if "image" not in spec:
            raise InvalidJobError("The key 'image' is required")
        return {**spec, "submitted_by": self.submitted_by or spec.get("submitted_by", "")}

    def _key(self, keywords: Mapping[str, Any]) -> Hashable | None:
        """What the job gives but its own fields; None when a value cannot be told apart
        from another's (it is then validated whole)."""
        key: list[Hashable] = []
        try:
            for name, value in keywords.items():
                if name not in PER_JOB:
                    plain = value.__class__ in _PLAIN
                    key += (name, value.__class__, value if plain else _frozen(value, self._kept))
        except TypeError:
            return None
        return tuple(key)


_PLAIN = frozenset({str, int, float, bool, type(None)})


def _frozen(value: Any, kept: list[Any]) -> Hashable:
    """``value`` as a key that equals another's only when they are the same value of the
    same types (``1``, ``1.0`` and ``True`` differ); any other object by its identity."""
    if value is None or isinstance(value, str | int | float | bool):
        return (type(value), value)
    if isinstance(value, list | tuple):
        return (type(value), tuple(_frozen(v, kept) for v in value))
    if isinstance(value, dict):
        return (dict, tuple((_frozen(k, kept), _frozen(v, kept)) for k, v in value.items()))
    kept.append(value)  # alive for the whole bulk, so that its id() is not reused
    return (type(value), id(value))


_FIELDS = {
    f.attname: f for f in ContainerJob._meta.concrete_fields if f.attname in PER_JOB.values()
}


def _cleaned(field: models.Field[Any, Any], value: Any) -> Any:
    """What ``Model.clean_fields`` stores of ``value`` (empty values are not checked)."""
    if field.blank and value in field.empty_values:
        return value
    return field.clean(value, None)


def _stored(key: str, value: Any) -> Any:
    """The stored value of a :data:`PER_JOB` keyword, cleaned by its field as
    ``full_clean`` cleans it (ValidationError when it does not pass)."""
    if key == "command":
        text = command_text(value)
        if isinstance(value, list | tuple) and all(isinstance(a, str) for a in value):
            # shlex always splits what shlex.join wrote: of validate_command, the length.
            if len(text) > MAX_COMMAND_CHARS:
                raise ValidationError("too long")
            return text
        value = text
    elif key == "environment":
        value = environment_text(value)
    elif key == "submitted_by":
        value = value[:200]
    return _cleaned(_FIELDS[PER_JOB[key]], value)


#: The stored values of the PER_JOB keywords a job does not give: prepare()'s defaults.
_DEFAULTS = {
    PER_JOB[key]: _stored(key, parameter.default)
    for key, parameter in inspect.signature(prepare).parameters.items()
    if key in PER_JOB and key != "job_id"
}


def _own_values(keywords: Mapping[str, Any]) -> dict[str, Any] | None:
    """The job's stored values of its :data:`PER_JOB` fields; None when one does not pass
    its field's checks (or has the wrong type)."""
    own = dict(_DEFAULTS)
    try:
        for key, value in keywords.items():
            if key in PER_JOB and (key != "job_id" or value):
                own[PER_JOB[key]] = _stored(key, value)
    except (ValidationError, InvalidJobError, TypeError, ValueError, AttributeError):
        return None
    # nul_errors' check: only the text fields among these can hold a string after cleaning.
    for value in own.values():
        if isinstance(value, str) and "\0" in value:
            return None
    own.setdefault("id", uuid.uuid4())
    own["created_at"] = timezone.now()
    return own


def _prepare(keywords: dict[str, Any]) -> ContainerJob:
    try:
        return prepare(**keywords)
    except (TypeError, ValueError, AttributeError) as err:  # a value of the wrong shape
        raise InvalidJobError(f"Invalid job: a value has the wrong type ({err})") from err


def _insert(entries: list[tuple[ContainerJob, _Shape]]) -> None:
    """INSERT the jobs: on PostgreSQL one COPY, each shape's values prepared once (JSON as
    its text) and each job's own put in; elsewhere Django's batched INSERTs."""
    jobs = [job for job, _ in entries]
    if connection.vendor != "postgresql":
        ContainerJob.objects.bulk_create(jobs, batch_size=BULK_BATCH)
        return
    fields = ContainerJob._meta.concrete_fields
    columns = [(f.attname, _preparer(f)) for f in fields]
    own = [(i, f.attname) for i, f in enumerate(fields) if f.attname in _OWN_COLUMNS]
    names = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    table = connection.ops.quote_name(ContainerJob._meta.db_table)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({names}) FROM STDIN") as out,  # type: ignore[attr-defined]
    ):
        for job, shape in entries:
            row = list(shape.copy_row(columns))
            values = job.__dict__
            for index, name in own:
                row[index] = values[name]
            out.write_row(row)
    for job in jobs:
        job._state.adding, job._state.db = False, connection.alias


def _preparer(field: models.Field[Any, Any]) -> Any:
    """None where COPY takes the field's Python value as it is; a JSON field's text."""
    if isinstance(field, models.JSONField):
        return functools.partial(json.dumps, cls=field.encoder)
    return None


def _announce(jobs: list[ContainerJob]) -> None:
    for job in jobs:
        send(job_queued, job)


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), "a value")


def _check_given_ids(ids: list[Any]) -> None:
    """Refuse ids the caller gave twice, or that are already taken (one query, within the
    insert's transaction). A fresh id (uuid4) is neither."""
    if len(set(ids)) != len(ids):
        raise InvalidJobError("Invalid jobs: the same job_id is given twice")
    if ids and ContainerJob.objects.filter(pk__in=ids).exists():
        raise InvalidJobError("Invalid jobs: a job_id is already taken")
