"""The queue: submit jobs, claim them atomically, retry policy and backoff, cancel.

Claiming is one short transaction with no engine call inside it. On PostgreSQL the
candidate rows are taken with ``SELECT ... FOR UPDATE SKIP LOCKED`` and the hosts' rows are
locked so that ``max_concurrent_jobs`` holds across all workers; on SQLite the transaction
takes the write lock up front (``transaction_mode=IMMEDIATE``), which serialises claimers.
"""

from __future__ import annotations

import functools
import inspect
import random
import shlex
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ParamSpec, cast

from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from .compiled import fetch, update
from .conf import fixed_settings, get_settings
from .environment import format_environment
from .exceptions import BulkSubmitError, ConfigurationError, InvalidJobError, JobStateError
from .executors import executor_class
from .health import healthy_hosts
from .models import (
    DEFAULT_QUEUE,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobAttempt,
    JobStatus,
    RegistryCredential,
    parse_labels,
)
from .notify import notify_new_job
from .placement import HostRoom, OpenJob, choose_host
from .policy import refusal_text, refusals
from .signals import job_finished, job_queued, send
from .spec import SPEC_FIELDS, image_registry, parse_mounts

__all__ = [
    "BulkSubmission",
    "adopt_expired",
    "backoff_delay",
    "cancel",
    "claim",
    "prepare",
    "requeue_copy",
    "resolve_host",
    "retry",
    "submit",
    "submit_many",
]


def resolve_host(host: ExecutorHost | str | int) -> ExecutorHost:
    """An ExecutorHost from an instance, a name or a primary key; a clear error otherwise."""
    if isinstance(host, ExecutorHost):
        return host
    lookup = Q(name=host) | (Q(pk=host) if str(host).isdigit() else Q())
    found = ExecutorHost.objects.filter(lookup).first()
    if found is None:
        known = ", ".join(ExecutorHost.objects.values_list("name", flat=True)) or "none registered"
        raise InvalidJobError(f"Unknown host {host!r} (known hosts: {known})")
    return found


def _validation_message(err: ValidationError) -> str:
    if hasattr(err, "message_dict"):
        return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in err.message_dict.items())
    return " ".join(err.messages)


def prepare(
    *,
    image: str,
    host: ExecutorHost | str | int | None = None,
    labels: Mapping[str, str] | Sequence[str] | None = None,
    command: str | Sequence[str] = "",
    name: str = "",
    environment: Mapping[str, str] | str | None = None,
    template: EnvironmentVariableTemplate | str | None = None,
    memory_limit: int | None = None,
    cpu_limit: float | None = None,
    timeout_seconds: int | None = None,
    priority: int = 0,
    max_retries: int = 0,
    retry_on_failure: bool = False,
    run_after: datetime | None = None,
    queue: str = DEFAULT_QUEUE,
    working_directory: str = "",
    entrypoint: Sequence[str] | None = None,
    user: str = "",
    mounts: Sequence[str | Mapping[str, Any]] | None = None,
    network: str = "",
    secret_environment: Mapping[str, str] | None = None,
    registry_credential: RegistryCredential | str | None = None,
    gpus: int | None = None,
    shm_size_mb: int | None = None,
    pids_limit: int | None = None,
    read_only_rootfs: bool = False,
    cap_add: Sequence[str] = (),
    cap_drop: Sequence[str] = (),
    privileged: bool = False,
    job_id: uuid.UUID | None = None,
    submitted_by: str = "",
) -> ContainerJob:
    """Validate a job; returns it, unsaved (:func:`submit` saves and queues it, and
    :func:`submit_many` many at once). Bad input raises InvalidJobError.

    ``host`` names the engine host; without it the queue places the job on a fitting host
    (one carrying every label in ``labels``: ``{"gpu": "true"}`` or ``["gpu", "region=eu"]``).

    ``command`` is a string split with shlex, or an argv list (no shell either way unless
    you write one, e.g. ``["sh", "-c", "..."]``).

    The container spec: ``entrypoint`` (a list), ``user`` (``"UID[:GID]"``), ``mounts``
    (``{"type": "volume", "source": "data", "target": "/data"}`` or
    ``"volume:data:/data"``, ``"bind:/srv/in:/in:ro"``, ``"tmpfs:/scratch:64"``),
    ``network``, ``secret_environment`` (``{"TOKEN": "env:API_TOKEN"}``: resolved by the
    worker, never stored), ``registry_credential`` (a RegistryCredential or its name;
    default: the one registered for the image's registry), ``gpus``, ``shm_size_mb``,
    ``pids_limit``, ``read_only_rootfs``, ``cap_add``, ``cap_drop``, ``privileged``. What the
    host's policy or executor does not allow is refused, naming the field.

    ``queue`` names the job's queue (default ``"default"``): a worker started with
    ``--queue`` takes only the jobs of its queues.

    ``submitted_by`` records who submitted it (``user:NAME``, ``cli:LOGIN``, or what an
    API caller says; at most 200 characters).

    ``job_id`` sets the new job's id (default: a fresh one), for a caller that must name
    the job in its own command (the Tasks backend).
    """
    if isinstance(template, str):
        template = cast(EnvironmentVariableTemplate, _looked_up("template", template, _template))
    job = ContainerJob(
        id=job_id or uuid.uuid4(),
        docker_host=_looked_up("host", str(host), lambda _: resolve_host(host))
        if host is not None
        else None,
        required_labels=dict(labels) if isinstance(labels, Mapping) else parse_labels(labels or []),
        name=name,
        docker_image=image,
        command=command if isinstance(command, str) else shlex.join(command),
        override_environment=(
            environment if isinstance(environment, str) else format_environment(environment or {})
        ),
        environment_template=template,
        memory_limit=memory_limit,
        cpu_limit=cpu_limit,
        timeout_seconds=timeout_seconds,
        priority=priority,
        max_retries=max_retries,
        retry_on_failure=retry_on_failure,
        run_after=run_after,
        queue=queue,
        working_directory=working_directory,
        entrypoint=list(entrypoint) if entrypoint is not None else [],
        user=user,
        mounts=_mount_dicts(mounts),
        network=network,
        secret_environment=dict(secret_environment or {}),
        registry_credential=_looked_up(
            "credential",
            (registry_credential, image_registry(image)),
            lambda _: _credential(registry_credential, image),
        ),
        gpus=gpus,
        shm_size_mb=shm_size_mb,
        pids_limit=pids_limit,
        read_only_rootfs=read_only_rootfs,
        cap_add=list(cap_add),
        cap_drop=list(cap_drop),
        privileged=privileged,
        submitted_by=submitted_by[:200],
    )
    bulk = _bulk.get() is not None
    try:
        # Many at once (submit_many), the ids are checked together, and the rows the job
        # names were read by this call: not one query for each.
        job.full_clean(exclude=_FOREIGN_KEYS if bulk else None, validate_unique=not bulk)
    except ValidationError as err:
        raise InvalidJobError(f"Invalid job: {_validation_message(err)}") from err
    return job


P = ParamSpec("P")


def _saved(build: Callable[P, ContainerJob]) -> Callable[P, ContainerJob]:
    @functools.wraps(build)
    def submit(*args: P.args, **kwargs: P.kwargs) -> ContainerJob:
        job = build(*args, **kwargs)
        job.save()
        _queued(job)
        return job

    submit.__doc__ = (
        "Validate and queue a job; returns the saved job. Bad input raises InvalidJobError."
        f"\n\nThe keywords are :func:`prepare`'s:\n\n{inspect.cleandoc(build.__doc__ or '')}"
    )
    return submit


submit = _saved(prepare)

#: While submit_many validates: the rows its jobs name (hosts, templates, credentials), read
#: once for all of them.
_bulk: ContextVar[dict[tuple[str, Hashable], Any] | None] = ContextVar("_bulk", default=None)
_MISSING = object()
_FOREIGN_KEYS = ("docker_host", "environment_template", "registry_credential")


def _looked_up(kind: str, key: Hashable, load: Callable[[Any], Any]) -> Any:
    """``load(key)``, remembered for the rest of a submit_many call."""
    cache = _bulk.get()
    if cache is None:
        return load(key)
    found = cache.get((kind, key), _MISSING)
    if found is _MISSING:
        found = cache[kind, key] = load(key)
    return found


def _template(name: str) -> EnvironmentVariableTemplate:
    return EnvironmentVariableTemplate.objects.filter(name=name).first() or _no_template(name)


def _mount_dicts(mounts: Sequence[str | Mapping[str, Any]] | None) -> Any:
    """Mounts in their stored (dict) form; left as given when malformed, for full_clean to
    name the field."""
    try:
        return [m.as_dict() for m in parse_mounts(mounts)]
    except InvalidJobError:
        return list(mounts) if isinstance(mounts, list | tuple) else mounts


def _credential(
    credential: RegistryCredential | str | None, image: str
) -> RegistryCredential | None:
    if isinstance(credential, RegistryCredential):
        return credential
    if credential:
        found = RegistryCredential.objects.filter(name=credential).first()
        if found is None:
            raise InvalidJobError(f"Invalid job: registry_credential: no credential {credential!r}")
        return found
    return RegistryCredential.for_image(image)


def _queued(job: ContainerJob) -> None:
    notify_new_job()
    transaction.on_commit(lambda: send(job_queued, job))


def _no_template(name: str) -> EnvironmentVariableTemplate:
    raise InvalidJobError(f"Unknown environment template {name!r}")


#: Jobs submit_many inserts per INSERT statement.
BULK_BATCH = 1000
_KEYWORDS = frozenset(inspect.signature(prepare).parameters)


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
    in batches of :data:`BULK_BATCH` in one transaction, and one wake-up of the workers.

    A spec is numbered by ``line_numbers`` (default: 1, 2, ...); an InvalidJobError in
    place of a spec stands for an entry already known to be bad (a line that is not JSON).
    When any is bad, BulkSubmitError lists every bad one by number and nothing is queued;
    with ``skip_invalid`` the good ones are queued and the result lists the others.
    ``submitted_by``, when given, is every job's submitter (a spec's own is then ignored)."""
    jobs, rejected = _validate_all(specs, line_numbers, submitted_by)
    if rejected and not skip_invalid:
        raise BulkSubmitError(rejected, len(jobs) + len(rejected))
    with transaction.atomic():
        _check_new_ids(jobs)
        _insert(jobs)
        notify_new_job()
        transaction.on_commit(functools.partial(_announce, jobs))
    return BulkSubmission(jobs, rejected)


def _validate_all(
    specs: Iterable[Mapping[str, Any] | InvalidJobError],
    line_numbers: Sequence[int] | None,
    submitted_by: str,
) -> tuple[list[ContainerJob], list[tuple[int, str]]]:
    jobs: list[ContainerJob] = []
    rejected: list[tuple[int, str]] = []
    token = _bulk.set({})
    try:
        with fixed_settings():
            for index, spec in enumerate(specs):
                number = line_numbers[index] if line_numbers is not None else index + 1
                try:
                    jobs.append(_prepare_one(spec, submitted_by))
                except InvalidJobError as err:
                    rejected.append((number, str(err)))
    finally:
        _bulk.reset(token)
    return jobs, rejected


def _prepare_one(spec: Mapping[str, Any] | InvalidJobError, submitted_by: str) -> ContainerJob:
    if isinstance(spec, InvalidJobError):
        raise spec
    if not isinstance(spec, Mapping):
        raise InvalidJobError(f"A job is an object of submit()'s keywords, not {_kind(spec)}")
    unknown = sorted(set(spec) - _KEYWORDS)
    if unknown:
        raise InvalidJobError(f"Unknown key(s) {', '.join(map(repr, unknown))}")
    if "image" not in spec:
        raise InvalidJobError("The key 'image' is required")
    keywords = {**spec, "submitted_by": submitted_by or spec.get("submitted_by", "")}
    try:
        return prepare(**keywords)
    except (TypeError, ValueError, AttributeError) as err:  # a value of the wrong shape
        raise InvalidJobError(f"Invalid job: a value has the wrong type ({err})") from err


def _insert(jobs: list[ContainerJob]) -> None:
    """INSERT ``jobs`` (validated, with their ids): on PostgreSQL one COPY, each value
    prepared only where a plain Python value is not already what the column takes (JSON);
    elsewhere Django's batched INSERTs."""
    if connection.vendor != "postgresql":
        ContainerJob.objects.bulk_create(jobs, batch_size=BULK_BATCH)
        return
    fields = ContainerJob._meta.concrete_fields
    prepare = [_preparer(f) for f in fields]
    columns = ", ".join(connection.ops.quote_name(f.column) for f in fields)
    names = [f.attname for f in fields]
    table = connection.ops.quote_name(ContainerJob._meta.db_table)
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(  # type: ignore[attr-defined]
            f"COPY {table} ({columns}) FROM STDIN"
        ) as copy,
    ):
        for job in jobs:
            values = job.__dict__
            copy.write_row(
                [p(values[n]) if p else values[n] for p, n in zip(prepare, names, strict=True)]
            )
    for job in jobs:
        job._state.adding, job._state.db = False, connection.alias


def _preparer(field: models.Field[Any, Any]) -> Callable[[Any], Any] | None:
    """None where the driver takes the field's Python value as it is, else its preparation."""
    if isinstance(field, models.JSONField):
        return functools.partial(field.get_db_prep_save, connection=connection)
    return None


def _announce(jobs: list[ContainerJob]) -> None:
    for job in jobs:
        send(job_queued, job)


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", type(None): "null"}.get(type(value), "a value")


def _check_new_ids(jobs: list[ContainerJob]) -> None:
    """Refuse ids given twice, or already taken (one query, within the insert's
    transaction)."""
    ids = [job.pk for job in jobs]
    if len(set(ids)) != len(ids):
        raise InvalidJobError("Invalid jobs: the same job_id is given twice")
    if ContainerJob.objects.filter(pk__in=ids).exists():
        raise InvalidJobError("Invalid jobs: a job_id is already taken")


def backoff_delay(attempt: int) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, capped, with jitter."""
    conf = get_settings()
    exponent = min(max(attempt - 1, 0), 64)  # 2**64 * base exceeds any sane cap; no overflow
    ceiling = min(conf.RETRY_BACKOFF_MAX, conf.RETRY_BACKOFF_BASE * 2**exponent)
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Claimed:
    """A job a worker now holds, and whether it was adopted from an expired lease."""

    job: ContainerJob
    adopted: bool


@dataclass(frozen=True)
class _Candidate:
    job: ContainerJob
    placement: OpenJob | None = None

    @property
    def order(self) -> tuple[int, datetime]:
        return -self.job.priority, self.job.created_at


#: A claim's queues: ``(None,)`` for every queue, else the names of the worker's queues.
Lanes = tuple[str | None, ...]


def _pinned_candidates(
    rooms: dict[int, HostRoom], limit: int, now: datetime, lanes: Lanes
) -> list[_Candidate]:
    """Due jobs of each host with room. One query per host (and queue, for a worker limited
    to some): each is an ordered scan of that host's part of a partial claim index, so its
    cost does not grow with the number of waiting jobs (nor with other hosts' backlogs)."""
    found: list[_Candidate] = []
    for room in rooms.values():
        if room.free <= 0:
            continue
        for lane in lanes:
            for job in fetch(_due_on_host, room.pk, lane, min(room.free, limit), now=now):
                job.docker_host = room.host  # the row this claim has locked: no second read
                found.append(_Candidate(job))
    return found


def _open_candidates(limit: int, now: datetime, lane: str | None) -> list[_Candidate]:
    """Due jobs that name no host (of one queue, or of all), best first."""
    return [_open_candidate(job) for job in fetch(_due_open, lane, limit, now=now)]


def _open_candidate(job: ContainerJob) -> _Candidate:
    placement = OpenJob(
        dict(job.required_labels or {}), bool(job.memory_limit or job.cpu_limit), _policy_check(job)
    )
    return _Candidate(job, placement)


def _policy_check(job: ContainerJob) -> Callable[[ExecutorHost], str]:
    """Why a host's policy refuses ``job`` ('' when it does not), for placement."""
    try:
        request = job.request()
    except InvalidJobError as err:
        problem = f"its spec is malformed: {err}"
        return lambda host: problem
    return lambda host: refusal_text(refusals(request, host))


def _due(now: datetime, lane: str | None) -> QuerySet[ContainerJob]:
    query = ContainerJob.objects.filter(status=JobStatus.QUEUED)
    if lane is not None:
        query = query.filter(queue=lane)
    query = (
        query.filter(Q(run_after__isnull=True) | Q(run_after__lte=now))
        .order_by("-priority", "created_at")
        .defer("stdout_log", "stderr_log")  # a retried job's old output: not needed to run it
    )
    if _supports_skip_locked():
        query = query.select_for_update(skip_locked=True, of=("self",))
    return query


def _due_on_host(
    host_pk: int, lane: str | None, limit: int, now: datetime
) -> QuerySet[ContainerJob]:
    return _due(now, lane).filter(docker_host=host_pk)[:limit]


def _due_open(lane: str | None, limit: int, now: datetime) -> QuerySet[ContainerJob]:
    return _due(now, lane).filter(docker_host__isnull=True)[:limit]


def _healthy_locked(names: tuple[str, ...], threshold: int) -> QuerySet[ExecutorHost]:
    """Active, healthy hosts, locked on PostgreSQL for the claim."""
    query = healthy_hosts(threshold)
    if names:
        query = query.filter(name__in=names)
    if _supports_skip_locked():
        query = query.select_for_update()
    return query


def _busy_counts(host_pks: tuple[int, ...]) -> QuerySet[ContainerJob, tuple[int, int]]:
    """Jobs launching or running on each host, counting every worker's. A statement of its
    own, after the hosts are locked: it then sees the jobs of the claim that held the locks
    before."""
    return (
        ContainerJob.objects.filter(docker_host__in=host_pks, status__in=JobStatus.active())
        .values_list("docker_host")
        .annotate(n=Count("pk"))
        .order_by()
    )


def _rooms(hosts: Sequence[str] | None) -> dict[int, HostRoom]:
    """Active, healthy hosts (locked, on PostgreSQL, for the claim) with their load."""
    found = fetch(_healthy_locked, tuple(hosts or ()), get_settings().UNHEALTHY_AFTER)
    busy = dict(fetch(_busy_counts, tuple(h.pk for h in found)))
    return {
        h.pk: HostRoom(
            h.pk,
            h.name,
            h.effective_labels(),
            h.weight,
            h.max_concurrent_jobs,
            busy.get(h.pk, 0),
            _supports_limits(h.executor_type),
            host=h,
        )
        for h in found
    }


def _supports_limits(alias: str) -> bool:
    try:
        return executor_class(alias).supports_resource_limits
    except ConfigurationError:
        return False


def _select(
    candidates: list[_Candidate], rooms: dict[int, HostRoom], limit: int
) -> tuple[list[ContainerJob], dict[int, tuple[list[ContainerJob], str]], dict[str, list[object]]]:
    """Walk candidates best first: pinned jobs take their host's room, open jobs are placed.
    Returns pinned picks, placed picks by host (with the reason), and waiting reasons."""
    pinned: list[ContainerJob] = []
    placed: dict[int, tuple[list[ContainerJob], str]] = {}
    waiting: dict[str, list[object]] = {}
    hosts = list(rooms.values())
    for cand in sorted(candidates, key=lambda c: c.order):
        if len(pinned) + sum(len(p) for p, _ in placed.values()) >= limit:
            break
        if cand.placement is None:
            room = rooms[cand.job.docker_host_id]  # type: ignore[index]
            if room.free > 0:
                room.busy += 1
                pinned.append(cand.job)
            continue
        host, reason = choose_host(cand.placement, hosts)
        if host is None:
            waiting.setdefault(reason, []).append(cand.job.pk)
            continue
        host.busy += 1
        placed.setdefault(host.pk, ([], reason))[0].append(cand.job)
    return pinned, placed, waiting


#: Open jobs a claim reads past the first page when those before fit no host (so that a
#: backlog of jobs no host can take never holds up the ones behind it).
MAX_OPEN_SCAN = 512


def _place_beyond(
    page: list[_Candidate],
    limit: int,
    rooms: dict[int, HostRoom],
    pinned: int,
    picks: tuple[dict[int, tuple[list[ContainerJob], str]], dict[str, list[object]]],
    now: datetime,
    lane: str | None,
) -> None:
    """While the open jobs of a full page (of ``limit``) could not all be placed and there
    is room, read the next page (up to MAX_OPEN_SCAN rows in all) and place from it into
    ``picks`` (placed, waiting): waiting jobs never block those behind them, whatever their
    priority."""
    placed, waiting = picks
    size, scanned = limit, len(page)
    left = limit - pinned - sum(len(jobs) for jobs, _ in placed.values())
    while left > 0 and len(page) == size and scanned < MAX_OPEN_SCAN:
        if not any(room.free > 0 for room in rooms.values()):
            return
        page = _open_after(page[-1].job, size * 4, now, lane)
        size, scanned = size * 4, scanned + len(page)
        _, more, more_waiting = _select(page, rooms, left)
        for host_pk, (jobs, reason) in more.items():
            placed.setdefault(host_pk, ([], reason))[0].extend(jobs)
            left -= len(jobs)
        for reason, pks in more_waiting.items():
            waiting.setdefault(reason, []).extend(pks)


def _open_after(job: ContainerJob, limit: int, now: datetime, lane: str | None) -> list[_Candidate]:
    """The open candidates after ``job`` in claim order (a keyset page)."""
    after = Q(priority__lt=job.priority) | Q(priority=job.priority, created_at__gt=job.created_at)
    jobs = _due(now, lane).filter(docker_host__isnull=True).filter(after)[:limit]
    return [_open_candidate(j) for j in jobs]


def _supports_skip_locked() -> bool:
    return connection.features.has_select_for_update_skip_locked


def claim(
    worker_id: str,
    limit: int,
    *,
    hosts: Sequence[str] | None = None,
    queues: Sequence[str] | None = None,
) -> list[Claimed]:
    """Take up to ``limit`` due jobs for ``worker_id`` (of ``queues``, when given; of every
    queue otherwise): highest priority first, then oldest,
    never more on a host than its ``max_concurrent_jobs`` counting every worker's jobs, and
    only on active, healthy hosts. Jobs that name no host are placed (see placement.py);
    those that cannot be placed wait, with the reason in ``placement_reason``.

    Each claimed job is LAUNCHING with a new attempt number and a lease (the worker writes
    the attempt's row when it starts on it).
    """
    if limit <= 0:
        return []
    now = timezone.now()
    claimed: dict[str, Any] = {
        "status": JobStatus.LAUNCHING,
        "worker_id": worker_id,
        "lease_expires_at": now + timedelta(seconds=get_settings().LEASE_SECONDS),
        "cancel_requested": False,
    }
    lanes: Lanes = tuple(dict.fromkeys(queues)) if queues else (None,)
    with transaction.atomic():
        rooms = _rooms(hosts)
        first_open = {lane: _open_candidates(limit, now, lane) for lane in lanes}
        candidates = _pinned_candidates(rooms, limit, now, lanes)
        candidates += [cand for page in first_open.values() for cand in page]
        pinned, placed, waiting = _select(candidates, rooms, limit)
        for lane, page in first_open.items():
            _place_beyond(page, limit, rooms, len(pinned), (placed, waiting), now, lane)
        if pinned:
            _take(pinned, claimed)
        for host_pk, (jobs, reason) in placed.items():
            host = rooms[host_pk].host
            _take(jobs, {**claimed, "docker_host": host, "auto_placed": True,
                         "placement_reason": reason})  # fmt: skip
        for reason, pks in waiting.items():
            ContainerJob.objects.filter(pk__in=pks).exclude(placement_reason=reason).update(
                placement_reason=reason
            )
    picked = pinned + [job for jobs, _ in placed.values() for job in jobs]
    picked.sort(key=lambda j: (-j.priority, j.created_at))
    return [Claimed(job, adopted=False) for job in picked]


def _take(jobs: list[ContainerJob], changes: dict[str, Any]) -> None:
    """Claim ``jobs``, rows read in this claim's transaction, which holds their row locks
    on PostgreSQL and the database's write lock on SQLite (``transaction_mode`` IMMEDIATE),
    so their attempt counts are current: one UPDATE per attempt count among them, usually
    one in all. The instances are brought up to date instead of being read again."""
    by_count: dict[int, list[Any]] = {}
    for job in jobs:
        by_count.setdefault(job.attempt_count, []).append(job.pk)
    for count, pks in by_count.items():
        update(ContainerJob, {"pk": pks}, attempt_count=count + 1, **changes)
    for job in jobs:
        job.attempt_count += 1
        for name, value in changes.items():
            setattr(job, name, value)


def record_attempt(job: ContainerJob, *, adopted: bool = False, **fields: Any) -> None:
    """Write the row of the job's current attempt, with ``fields`` (status, container id,
    outcome). A fresh claim's attempt number is new: one plain INSERT, made once the attempt
    has something to say (its container started, or it failed before one did). An adopted
    attempt may have its row already (kept as it is)."""
    row = JobAttempt.of(job, **fields)
    if adopted:
        JobAttempt.objects.bulk_create([row], ignore_conflicts=True)
    else:
        row.save(force_insert=True)


def adopt_expired(worker_id: str, limit: int) -> list[Claimed]:
    """Take over up to ``limit`` jobs whose worker's lease ran out (it died or was cut off)."""
    if limit <= 0:
        return []
    now = timezone.now()
    lease_until = now + timedelta(seconds=get_settings().LEASE_SECONDS)
    expired = list(
        ContainerJob.objects.filter(status__in=JobStatus.active(), lease_expires_at__lt=now)
        .order_by("lease_expires_at")
        .values_list("pk", "worker_id")[:limit]
    )
    taken = [
        pk
        for pk, old_worker in expired
        if ContainerJob.objects.filter(
            pk=pk, worker_id=old_worker, status__in=JobStatus.active(), lease_expires_at__lt=now
        ).update(worker_id=worker_id, lease_expires_at=lease_until)
    ]
    jobs = ContainerJob.objects.filter(pk__in=taken).select_related("docker_host")
    return [Claimed(job, adopted=True) for job in jobs]


def _get(job: ContainerJob | str) -> ContainerJob:
    if isinstance(job, ContainerJob):
        return job
    try:
        return ContainerJob.objects.get(pk=job)
    except (ContainerJob.DoesNotExist, ValidationError) as err:
        raise InvalidJobError(f"No job with id {job!r}") from err


def retry(job: ContainerJob | str) -> ContainerJob:
    """Queue an ended job again, as a new attempt of the same job (its history is kept).

    Raises JobStateError for a job that has not ended."""
    job = _get(job)
    took = job._transition(
        JobStatus.terminal(),
        None,
        status=JobStatus.QUEUED,
        run_after=None,
        container_id="",
        exit_code=None,
        oom_killed=False,
        started_at=None,  # the new attempt's deadline counts from its own start
        completed_at=None,
        cancel_requested=False,
    )
    if not took:
        raise JobStateError(
            f"Job {job.pk} has not ended ({job.status}); only ended jobs are retried"
        )
    job.refresh_from_db()
    _queued(job)
    return job


def requeue_copy(job: ContainerJob | str) -> ContainerJob:
    """Submit a fresh copy of a job (same image, command, limits, environment, host)."""
    job = _get(job)
    copy = ContainerJob.objects.create(
        # A job the queue had placed is placed afresh; one that named its host keeps it.
        docker_host=None if job.auto_placed else job.docker_host,
        required_labels=dict(job.required_labels),
        name=job.name,
        docker_image=job.docker_image,
        command=job.command,
        working_directory=job.working_directory,
        environment_template=job.environment_template,
        override_environment=job.override_environment,
        memory_limit=job.memory_limit,
        cpu_limit=job.cpu_limit,
        timeout_seconds=job.timeout_seconds,
        priority=job.priority,
        max_retries=job.max_retries,
        retry_on_failure=job.retry_on_failure,
        queue=job.queue,
        **{name: getattr(job, name) for name in SPEC_FIELDS},
    )
    _queued(copy)
    return copy


def cancel(job: ContainerJob | str) -> bool:
    """Cancel a job (by instance or id). A waiting job never launches; a running one is
    stopped by the worker that holds it. Idempotent; False for a job that already ended
    otherwise."""
    job = _get(job)
    was_waiting = job.status == JobStatus.QUEUED
    cancelled = job.cancel()
    if cancelled and was_waiting and job.status == JobStatus.CANCELLED:
        send(job_finished, job, status=JobStatus.CANCELLED)
    return cancelled
