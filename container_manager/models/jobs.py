"""Models: engine hosts, jobs, one row per launch attempt, environment templates.

Status strings exist once, in :class:`JobStatus`. Every status change goes through a
transition method of :class:`ContainerJob`, which writes only the fields it changes and
only if the job is still in the state the caller saw (a conditional UPDATE), so that a
worker whose lease was taken over can never overwrite the new owner's record.
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from .. import compiled
from ..conf import get_settings
from ..environment import (
    merge_environments,
    parse_environment,
    parse_secret_environment,
    resolve_reference,
)
from ..exceptions import InvalidJobError, JobStateError
from ..policy import refusals
from ..spec import (
    ATTEMPT_ENV,
    MAX_COMMAND_CHARS,
    MAX_GPUS,
    MAX_PIDS_LIMIT,
    MAX_SHM_SIZE_MB,
    JobSpec,
    RegistryAuth,
    image_registry,
    parse_capabilities,
    parse_entrypoint,
    parse_mounts,
    parse_user,
)
from .hosts import EnvironmentVariableTemplate, ExecutorHost, RegistryCredential
from .status import JobStatus
from .validators import (
    NETWORK_NAME,
    PRIORITY_MAX,
    PRIORITY_MIN,
    nul_errors,
    validate_command,
    validate_environment_text,
    validate_image_reference,
    validate_labels,
    working_directory_error,
)

__all__ = ["DEFAULT_QUEUE", "ContainerJob"]

#: The queue of a job submitted without one (the Tasks framework's default queue name too).
DEFAULT_QUEUE = "default"


class ContainerJob(models.Model):
    """One job: a command in its own container, and its whole recorded life."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    docker_host = models.ForeignKey(
        ExecutorHost,
        on_delete=models.PROTECT,
        related_name="jobs",
        # cm_job_host_created_idx leads with this column: a second index on it alone only
        # costs every write, and tempts the planner into scanning a host's whole history.
        db_index=False,
        null=True,
        blank=True,
        help_text="Leave empty to let the queue place the job on a fitting host",
    )
    required_labels = models.JSONField(
        default=dict, blank=True, help_text='Host labels the job needs, e.g. {"gpu": "true"}'
    )
    #: The queue chose the host (a retry may go elsewhere); off: the job named it.
    auto_placed = models.BooleanField(default=False, editable=False)
    #: Why the job went to its host, or why it waits.
    placement_reason = models.TextField(blank=True)
    #: A name for people (not unique).
    name = models.CharField(max_length=200, blank=True)
    #: The image reference, e.g. ``busybox:latest`` or ``registry:5000/team/app:1.4``.
    docker_image = models.CharField(max_length=500, validators=[validate_image_reference])
    command = models.TextField(
        blank=True,
        validators=[validate_command],
        help_text="Split with shlex; no shell unless you write one",
    )
    #: Absolute working directory in the container (empty: the image's).
    working_directory = models.CharField(max_length=500, blank=True)
    #: An environment template the job's own lines go on top of.
    environment_template = models.ForeignKey(
        EnvironmentVariableTemplate,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
    )
    override_environment = models.TextField(
        blank=True, validators=[validate_environment_text], help_text="KEY=VALUE, one per line"
    )
    #: Memory limit in MB (empty: none).
    memory_limit = models.PositiveIntegerField("memory limit (MB)", null=True, blank=True)
    #: CPU limit in cores (empty: none).
    cpu_limit = models.FloatField("CPU limit (cores)", null=True, blank=True)
    #: Wall-clock seconds from the start before the container is stopped (``timeout``).
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    priority = models.IntegerField(
        default=0,
        validators=[MinValueValidator(PRIORITY_MIN), MaxValueValidator(PRIORITY_MAX)],
        help_text=f"Higher runs first: {PRIORITY_MIN} to {PRIORITY_MAX}",
    )
    #: Further attempts after a failed one (launch errors; non-zero exits with
    #: ``retry_on_failure``).
    max_retries = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(100)])
    retry_on_failure = models.BooleanField(
        default=False, help_text="Also retry when the command exits non-zero"
    )
    run_after = models.DateTimeField(null=True, blank=True, help_text="Not before this time")
    queue = models.CharField(
        max_length=100,
        default=DEFAULT_QUEUE,
        help_text="Workers started with --queue take only the jobs of their queues",
    )

    # ---- the container spec beyond image, command and limits ----
    entrypoint = models.JSONField(
        default=list, blank=True, help_text="Replaces the image's entrypoint: a list of strings"
    )
    user = models.CharField(max_length=21, blank=True, help_text="UID or UID:GID (numeric)")
    mounts = models.JSONField(
        default=list,
        blank=True,
        help_text='e.g. [{"type": "volume", "source": "data", "target": "/data"}]',
    )
    network = models.CharField(
        max_length=200, blank=True, help_text="A network the host allows, or none"
    )
    secret_environment = models.JSONField(
        default=dict,
        blank=True,
        help_text='NAME -> reference the worker resolves: {"TOKEN": "env:API_TOKEN"}',
    )
    registry_credential = models.ForeignKey(
        RegistryCredential,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="jobs",
        help_text="Empty: the credential registered for the image's registry, if any",
    )
    #: GPUs the container gets (only on hosts that declare them).
    gpus = models.PositiveIntegerField("GPUs", null=True, blank=True)
    #: Size of ``/dev/shm`` in MB (empty: the engine's default).
    shm_size_mb = models.PositiveIntegerField("/dev/shm size (MB)", null=True, blank=True)
    #: Most processes the container may run (empty: ``DEFAULT_PIDS_LIMIT``).
    pids_limit = models.PositiveIntegerField("process limit", null=True, blank=True)
    #: Mount the container's root filesystem read-only.
    read_only_rootfs = models.BooleanField("read-only root filesystem", default=False)
    #: Capabilities added to the default set (only those the host allows).
    cap_add = models.JSONField("capabilities to add", default=list, blank=True)
    #: Capabilities dropped from the default set (``ALL`` for none).
    cap_drop = models.JSONField("capabilities to drop", default=list, blank=True)
    #: Run privileged (only where the host allows it).
    privileged = models.BooleanField(default=False)

    #: Where the job is in its life (a ``JobStatus``).
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED)
    #: Attempts launched so far.
    attempt_count = models.PositiveIntegerField(default=0)
    #: Attempts ended by the infrastructure (an engine that restarted under the job), which
    #: do not count against ``max_retries`` (up to MAX_INFRASTRUCTURE_RETRIES).
    infrastructure_retries = models.PositiveIntegerField(default=0, editable=False)
    #: The current attempt's container (a service id on Swarm, a Job name on Kubernetes).
    container_id = models.CharField(max_length=128, blank=True)
    #: The container's exit code.
    exit_code = models.IntegerField(null=True, blank=True)
    #: The container was killed for exceeding its memory limit.
    oom_killed = models.BooleanField(default=False)
    #: Why the last attempt failed, or the job waits (secrets redacted).
    last_error = models.TextField(blank=True)
    #: The end of the job's stdout (``LOG_TAIL_BYTES``); while it runs, what the worker last
    #: recorded.
    stdout_log = models.TextField(blank=True)
    #: The end of the job's stderr, as ``stdout_log``.
    stderr_log = models.TextField(blank=True)
    #: ``stdout_log`` holds only the end of the output.
    stdout_truncated = models.BooleanField(default=False)
    #: ``stderr_log`` holds only the end of the output.
    stderr_truncated = models.BooleanField(default=False)
    #: Name of the whole stdout in the ``LOG_STORAGE`` storage (empty: not kept).
    stdout_file = models.CharField(max_length=500, blank=True)
    #: Name of the whole stderr in the ``LOG_STORAGE`` storage.
    stderr_file = models.CharField(max_length=500, blank=True)
    #: Highest memory use sampled while the container ran.
    peak_memory_bytes = models.BigIntegerField(null=True, blank=True)
    #: CPU time the container used, as last sampled.
    cpu_seconds = models.FloatField(null=True, blank=True)

    #: The worker holding the job (``host:pid:token``); empty when none does.
    worker_id = models.CharField(max_length=200, blank=True)
    #: When the holder's claim runs out unless renewed.
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    #: A cancellation was asked for; the holder stops the container.
    cancel_requested = models.BooleanField(default=False)

    #: Who submitted the job: ``user:<username>`` (the admin), ``cli:<login>`` (the command
    #: line), or what an API caller says (``submit(submitted_by=...)``).
    submitted_by = models.CharField(max_length=200, blank=True, editable=False)
    #: When the job was submitted.
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    #: When its container started (the current attempt's).
    started_at = models.DateTimeField(null=True, blank=True)
    #: When it ended.
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar = ["-created_at"]
        indexes: ClassVar = [
            models.Index(
                fields=["docker_host", "-priority", "created_at"],
                condition=Q(status="queued"),
                name="cm_job_claim_idx",
            ),
            models.Index(
                fields=["-priority", "created_at"],
                condition=Q(status="queued", docker_host__isnull=True),
                name="cm_job_open_claim_idx",
            ),
            # The same ordered scans for a worker limited to some queues: one per queue.
            models.Index(
                fields=["docker_host", "queue", "-priority", "created_at"],
                condition=Q(status="queued"),
                name="cm_job_queue_claim_idx",
            ),
            models.Index(
                fields=["queue", "-priority", "created_at"],
                condition=Q(status="queued", docker_host__isnull=True),
                name="cm_job_queue_open_claim_idx",
            ),
            models.Index(
                fields=["lease_expires_at"],
                condition=Q(status__in=["launching", "running"]),
                name="cm_job_lease_idx",
            ),
            # The jobs not ended yet (few, whatever the history): exact counts by status and
            # host, a host's load, the claim's busy counts, read from this index alone.
            models.Index(
                fields=["docker_host", "status"],
                condition=Q(status__in=["queued", "launching", "running"]),
                name="cm_job_live_idx",
            ),
            models.Index(fields=["status", "completed_at"], name="cm_job_status_done_idx"),
            # The admin's list: its default order (newest first, then id), and that order
            # within each filter it offers (status, host; the date filter is a range of it).
            models.Index(fields=["created_at", "id"], name="cm_job_created_idx"),
            models.Index(fields=["status", "created_at", "id"], name="cm_job_status_created_idx"),
            models.Index(
                fields=["docker_host", "created_at", "id"], name="cm_job_host_created_idx"
            ),
            models.Index(fields=["queue", "created_at", "id"], name="cm_job_queue_created_idx"),
            # The admin's search by the start of a name or an image (LIKE 'x%' on PostgreSQL
            # needs the pattern operator class; other databases ignore it).
            models.Index(
                fields=["name"], opclasses=["varchar_pattern_ops"], name="cm_job_name_idx"
            ),
            models.Index(
                fields=["docker_image"], opclasses=["varchar_pattern_ops"], name="cm_job_image_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name or self.docker_image} [{self.status}]"

    # ---- what to run -------------------------------------------------------------------

    @property
    def argv(self) -> list[str]:
        """The command split into arguments (empty: the image's default command)."""
        if len(self.command or "") > MAX_COMMAND_CHARS:
            raise InvalidJobError(f"The command is longer than {MAX_COMMAND_CHARS} characters")
        try:
            return shlex.split(self.command or "")
        except ValueError as err:
            raise InvalidJobError(f"The command cannot be split into arguments: {err}") from err

    @property
    def environment(self) -> dict[str, str]:
        """The merged environment: template first, the job's own lines win."""
        template = parse_environment(
            self.environment_template.environment_variables if self.environment_template else ""
        )
        return merge_environments(template, parse_environment(self.override_environment))

    @property
    def output_merged(self) -> bool:
        """Whether the engine of the job's current attempt merged stdout and stderr into one
        stream (Kubernetes): its output is then all in ``stdout_log``, as the attempt's
        record says (``merged_output``)."""
        attempt = self.attempts.filter(number=self.attempt_count).only("spec").first()
        return bool(attempt is not None and (attempt.spec or {}).get("merged_output"))

    @property
    def duration(self) -> float | None:
        """Seconds from start to completion (or to now while running)."""
        if not self.started_at:
            return None
        return ((self.completed_at or timezone.now()) - self.started_at).total_seconds()

    def clean(self) -> None:
        limits = get_settings()
        errors: dict[str, str] = {}
        if self.memory_limit is not None and not 6 <= self.memory_limit <= limits.MAX_MEMORY_MB:
            errors["memory_limit"] = (
                f"Memory limit must be between 6 and {limits.MAX_MEMORY_MB} MB,"
                f" not {self.memory_limit}."
            )
        if self.cpu_limit is not None and not 0.01 <= self.cpu_limit <= limits.MAX_CPU_CORES:
            errors["cpu_limit"] = (
                f"CPU limit must be between 0.01 and {limits.MAX_CPU_CORES} cores,"
                f" not {self.cpu_limit}."
            )
        if (
            self.timeout_seconds is not None
            and not 1 <= self.timeout_seconds <= limits.MAX_TIMEOUT_SECONDS
        ):
            errors["timeout_seconds"] = (
                f"Timeout must be between 1 and {limits.MAX_TIMEOUT_SECONDS} seconds."
            )
        if problem := working_directory_error(self.working_directory):
            errors["working_directory"] = problem
        host = self.docker_host if self.docker_host_id is not None else None
        if host is not None and not host.is_active:
            errors["docker_host"] = f"Host {host.name!r} is not active."
        if label_error := validate_labels(self.required_labels):
            errors["required_labels"] = label_error
        errors.update(self._spec_errors())
        errors.update(nul_errors(self))
        if host is not None and not errors:
            errors.update(self._refusals(host))
        if errors:
            raise ValidationError(errors)

    def _refusals(self, host: ExecutorHost) -> dict[str, str]:
        """What ``host`` (its policy, its executor) refuses of this job."""
        try:
            spec = self.spec(host=host)
        except InvalidJobError:
            return {}  # a malformed command or environment: its field's validator says so
        return refusals(spec, host)

    def _spec_errors(self) -> dict[str, str]:
        """What is wrong with the container-spec fields, whatever the host."""
        errors: dict[str, str] = {}
        checks: dict[str, Callable[[], object]] = {
            "entrypoint": lambda: parse_entrypoint(self.entrypoint),
            "user": lambda: parse_user(self.user),
            "mounts": lambda: parse_mounts(self.mounts),
            "secret_environment": lambda: parse_secret_environment(self.secret_environment),
            "cap_add": lambda: parse_capabilities(self.cap_add),
            "cap_drop": lambda: parse_capabilities(self.cap_drop),
        }
        for name, check in checks.items():
            try:
                check()
            except InvalidJobError as err:
                errors[name] = f"{str(err)[:1].upper()}{str(err)[1:]}."
        bounds = {"gpus": MAX_GPUS, "shm_size_mb": MAX_SHM_SIZE_MB, "pids_limit": MAX_PIDS_LIMIT}
        for name, ceiling in bounds.items():
            value = getattr(self, name)
            if value is not None and not 1 <= value <= ceiling:
                errors[name] = f"Must be between 1 and {ceiling}."
        if self.network and not NETWORK_NAME.fullmatch(self.network):
            errors["network"] = "Not a network name."
        credential = self.registry_credential if self.registry_credential_id else None
        if credential is not None and credential.registry != image_registry(self.docker_image):
            errors["registry_credential"] = (
                f"The credential is for {credential.registry}, the image's registry is"
                f" {image_registry(self.docker_image)}."
            )
        return errors

    def spec(self, attempt: int | None = None, host: ExecutorHost | None = None) -> JobSpec:
        """The spec of the job's attempt (default: its current attempt count, at least 1),
        on ``host`` (default: its own), with secret references unresolved.

        Raises :class:`InvalidJobError` when a field is malformed."""
        if host is None and self.docker_host_id is not None:
            host = self.docker_host
        settings = get_settings()
        credential = self.registry_credential if self.registry_credential_id else None
        number = attempt if attempt is not None else max(self.attempt_count, 1)
        environment = self.environment
        if ATTEMPT_ENV in environment:  # the job asks to be told which attempt it is
            environment[ATTEMPT_ENV] = str(number)
        return JobSpec(
            job_id=str(self.pk),
            attempt=number,
            image=self.docker_image,
            argv=self.argv,
            environment=environment,
            working_directory=self.working_directory,
            memory_limit_mb=self.memory_limit,
            cpu_limit=self.cpu_limit,
            auto_pull=host.auto_pull_images if host else True,
            extra_labels=dict(settings.CONTAINER_LABELS),
            network_mode=self.network
            or (host.default_network if host else "")
            or settings.NETWORK_MODE,
            placement_constraints=[
                f"{k}={v}"
                for k, v in sorted((self.required_labels or {}).items())
                if k != "executor"
            ],
            secret_references=parse_secret_environment(self.secret_environment),
            registry_credential=credential.registry if credential else "",
            registry_username=credential.username if credential else "",
            **self._container_asks(),
        )

    def _container_asks(self) -> dict[str, Any]:
        """The spec's fields read from this row alone: what the container is asked to be."""
        return {
            "entrypoint": parse_entrypoint(self.entrypoint),
            "user": self.user,
            "mounts": tuple(parse_mounts(self.mounts)),
            "gpus": self.gpus or None,
            "shm_size_mb": self.shm_size_mb,
            "pids_limit": self.pids_limit,
            "read_only_rootfs": self.read_only_rootfs,
            "cap_add": tuple(parse_capabilities(self.cap_add)),
            "cap_drop": tuple(parse_capabilities(self.cap_drop)),
            "privileged": self.privileged,
        }

    def request(self) -> JobSpec:
        """What placement checks against a host's policy: the spec's asks, read from this
        row alone (no template, credential or host rows)."""
        return JobSpec(
            job_id=str(self.pk),
            attempt=1,
            image=self.docker_image,
            memory_limit_mb=self.memory_limit,
            cpu_limit=self.cpu_limit,
            network_mode=self.network or None,
            secret_references=dict(self.secret_environment or {}),
            registry_credential="yes" if self.registry_credential_id else "",
            **self._container_asks(),
        )

    def resolved_spec(self, attempt: int | None = None) -> JobSpec:
        """:meth:`spec` with its secret references and registry password resolved, as the
        worker launches it. SecretUnavailableError names a reference that cannot be read."""
        return self.resolve(self.spec(attempt))

    def resolve(self, spec: JobSpec) -> JobSpec:
        """``spec`` (this job's) with its secrets and registry password read now, in this
        process (the worker's): from its environment or files."""
        credential = self.registry_credential if self.registry_credential_id else None
        auth = None
        if credential is not None:
            password = resolve_reference(credential.password_reference)
            auth = RegistryAuth(credential.registry, credential.username, password)
        secrets = {n: resolve_reference(r) for n, r in spec.secret_references.items()}
        return spec.with_secrets(secrets, auth)

    # ---- transitions -------------------------------------------------------------------

    def _transition(
        self, allowed_from: frozenset[str], held_by: str | None, /, **changes: Any
    ) -> bool:
        """Write ``changes`` if the job is still in one of ``allowed_from`` (and held by
        ``held_by`` when given). Returns whether the write took; the instance is updated."""
        where: dict[str, Any] = {"pk": self.pk, "status": allowed_from}
        if held_by is not None:
            where["worker_id"] = held_by
        took = compiled.update(ContainerJob, where, **changes) == 1
        if took:
            for name, value in changes.items():
                setattr(self, name, value)
        return took

    def mark_running(self, worker_id: str, container_id: str) -> bool:
        """The container started."""
        return self._transition(
            frozenset({JobStatus.LAUNCHING, JobStatus.RUNNING}),
            worker_id,
            status=JobStatus.RUNNING,
            container_id=container_id,
            started_at=self.started_at or timezone.now(),
            # What an earlier attempt's live output left: this attempt's replaces it.
            stdout_log="",
            stderr_log="",
        )

    def mark_finished(self, worker_id: str | None, status: JobStatus, **outcome: Any) -> bool:
        """The job reached a terminal status; ``outcome`` carries exit code, logs, figures."""
        if not status.is_terminal:
            raise JobStateError(f"{status} is not a terminal status")
        return self._transition(
            JobStatus.active(),
            worker_id,
            status=status,
            completed_at=timezone.now(),
            worker_id="",
            lease_expires_at=None,
            **outcome,
        )

    def requeue(
        self,
        worker_id: str | None,
        run_after: datetime | None,
        error: str,
        *,
        elsewhere: bool = False,
        infrastructure: bool = False,
    ) -> bool:
        """Put the job back in the queue for another attempt: ``elsewhere`` on another host
        when the queue placed it; ``infrastructure`` not counting against ``max_retries``."""
        changes: dict[str, Any] = {
            "status": JobStatus.QUEUED,
            "run_after": run_after,
            "last_error": error,
            "started_at": None,  # the next attempt's deadline counts from its own start
            "container_id": "",
            "worker_id": "",
            "lease_expires_at": None,
        }
        if infrastructure:
            changes["infrastructure_retries"] = self.infrastructure_retries + 1
        if elsewhere and self.auto_placed:
            changes.update(self._replacing(error))
        return self._transition(JobStatus.active(), worker_id, **changes)

    @staticmethod
    def _replacing(reason: str) -> dict[str, Any]:
        """The changes that send a placed job back to placement."""
        return {
            "docker_host": None,
            "auto_placed": False,
            "placement_reason": f"Re-placing: {reason}",
        }

    def mark_lost(self, reason: str) -> bool:
        """Its host stayed unreachable: queue it for another attempt (elsewhere, when the
        queue placed it), whoever held it. The old container, should the host come back,
        is a stale attempt: stopped and removed, never counted."""
        changes: dict[str, Any] = {
            "status": JobStatus.QUEUED,
            "run_after": None,
            "last_error": reason,
            "container_id": "",
            "worker_id": "",
            "lease_expires_at": None,
        }
        if self.auto_placed:
            changes.update(self._replacing(reason))
        return self._transition(JobStatus.active(), None, **changes)

    def cancel(self) -> bool:
        """Cancel a waiting job at once; ask the worker holding a running one to stop it.

        Returns True when the job is (or will be) cancelled; idempotent.
        """
        if self._transition(
            frozenset({JobStatus.QUEUED}),
            None,
            status=JobStatus.CANCELLED,
            completed_at=timezone.now(),
            last_error="Cancelled before launch.",
        ):
            return True
        if self._transition(JobStatus.active(), None, cancel_requested=True):
            return True
        self.refresh_from_db(fields=["status"])
        return self.status == JobStatus.CANCELLED
