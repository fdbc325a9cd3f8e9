"""Submission: validate one job as :func:`submit` and the admin take it, and queue it.

:func:`prepare` builds and validates a job without saving it; :func:`submit` saves and
queues it. While :mod:`~container_manager.bulk` validates many at once, the rows the jobs
name (hosts, templates, credentials) are read once for all of them (:func:`bulk_lookups`).
"""

from __future__ import annotations

import functools
import inspect
import shlex
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any, ParamSpec, cast

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from .conf import fixed_settings
from .environment import format_environment
from .exceptions import InvalidJobError
from .models import (
    DEFAULT_QUEUE,
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    RegistryCredential,
    parse_labels,
)
from .notify import notify_new_job
from .signals import job_queued, send
from .spec import image_registry, parse_mounts

__all__ = [
    "bulk_lookups",
    "command_text",
    "environment_text",
    "prepare",
    "queued",
    "resolve_host",
    "submit",
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
        command=command_text(command),
        override_environment=environment_text(environment),
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


def command_text(command: str | Sequence[str]) -> str:
    """A command as stored: a string as given, an argv list joined with shlex."""
    return command if isinstance(command, str) else shlex.join(command)


def environment_text(environment: Mapping[str, str] | str | None) -> str:
    """An environment as stored: KEY=VALUE text as given, a mapping formatted so."""
    return environment if isinstance(environment, str) else format_environment(environment or {})


P = ParamSpec("P")


def _saved(build: Callable[P, ContainerJob]) -> Callable[P, ContainerJob]:
    @functools.wraps(build)
    def submit(*args: P.args, **kwargs: P.kwargs) -> ContainerJob:
        job = build(*args, **kwargs)
        job.save()
        queued(job)
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


@contextmanager
def bulk_lookups() -> Iterator[None]:
    """A block that validates many jobs: the rows they name are read once for all of them,
    the ids are left for the caller to check together, and the settings are read once."""
    token = _bulk.set({})
    try:
        with fixed_settings():
            yield
    finally:
        _bulk.reset(token)


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


def queued(job: ContainerJob) -> None:
    """Wake the workers, and once the transaction commits say the job is queued."""
    notify_new_job()
    transaction.on_commit(lambda: send(job_queued, job))


def _no_template(name: str) -> EnvironmentVariableTemplate:
    raise InvalidJobError(f"Unknown environment template {name!r}")
