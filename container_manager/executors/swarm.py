"""SwarmExecutor: each job attempt runs once as a Docker Swarm service, on a swarm manager.

The id the rest of the app sees as the "container id" is the **service id**. The service is
named after the attempt (``spec.name``), so a repeated launch finds the service a previous try
created instead of creating a second one. It runs once: mode ``replicated-job`` (one
completion) where the engine's API has it (1.41+), else ``replicated`` with one replica; the
restart condition is ``none`` in both. Status, exit code and output come from the service's
task; the service is removed by :meth:`cleanup`.

Client creation, TLS and the one translation point for SDK errors (``_engine``) are
:class:`DockerExecutor`'s: this class only changes what is asked of the engine.

What Swarm cannot do like a plain engine, and what this executor does instead:

- **Stopping** (timeout, cancel): Swarm has no "stop this task" call; scaling a service to zero
  or removing it deletes the task, its exit code and its output. So the task's container is
  stopped through the engine's container API (SIGTERM, then SIGKILL after ``grace``): the task
  ends ``failed`` with the container's exit code and keeps its output, exactly as a stopped
  container does. When the container is not on the node this executor talks to (a multi-node
  swarm), or the task has no container yet (it waits for a node), the **service is removed**
  instead; that task's output and exit code are then lost.
- **Resource figures and OOM** come from the task's container when it runs on the node this
  executor talks to (always so on a single-node swarm); elsewhere they are zeros and False.
- **Image pulls** are done by the node that runs the task, as its engine is configured; a
  host's ``auto_pull_images = False`` cannot be enforced (a node falls back to its local image
  when the pull fails). An image no node has makes the launch fail with
  :class:`ImageUnavailableError`.
- **Placement constraints**: ``spec.placement_constraints`` items in Swarm syntax
  (``node.role==worker``) are used as they are; ``name=value`` becomes
  ``node.labels.name==value`` and a bare ``name`` becomes ``node.labels.name==true``.
- **Mode**: ``replicated-job`` from API 1.42 (Docker 23.0); on older engines ``replicated``
  with one replica and restart condition ``none``. 20.10 has job mode, but removing such a
  service neither stops its task nor removes its container (moby/moby#44312).

How the job spec maps onto the service, what is refused, and which secure defaults Swarm can
apply (not no-new-privileges): :mod:`container_manager.executors.swarm_spec`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from docker.types import (
    DriverConfig,
    Placement,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)
from docker.utils import version_gte

from ..conf import get_settings
from ..exceptions import (
    ContainerManagerError,
    ContainerNotFoundError,
    ExecutorError,
    ImageUnavailableError,
    PermanentLaunchError,
)
from ..spec import JobSource
from . import swarm_spec
from .base import LABEL_MANAGED, ContainerState, JobSpec, Stream, no_usage
from .docker import DockerExecutor
from .docker_errors import parse_time
from .docker_spec import engine_log_config

__all__ = ["SwarmExecutor", "swarm_constraint"]

Task = dict[str, Any]

#: Task states after which the task never runs again.
TERMINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
#: Task state -> the container word the rest of the app knows (``check_status``, ``inspect``).
_WORDS = {
    "new": "created",
    "allocated": "created",
    "pending": "created",
    "assigned": "created",
    "accepted": "created",
    "preparing": "created",
    "ready": "created",
    "starting": "created",
    "running": "running",
}
#: The exit code of a task that ended without a container having run (Docker's "the engine
#: could not run the command" code, as ``docker run`` uses it).
NO_CONTAINER_EXIT = 125
# replicated-job services exist from API 1.41 (20.10), but there removing one neither stops
# its task nor removes the task's container (moby/moby#44312, fixed by moby/swarmkit#3112 in
# 23.0, API 1.42): on 20.10 a job runs as a replicated service with restart condition none.
_JOB_MODE_API = "1.42"
_POLL_FIRST = 0.05  # seconds between task polls, doubling up to _POLL_MAX
_POLL_MAX = 0.1
_SETTLE_SECONDS = 10.0  # how long a stopped container's task may take to report its end
_EXITED = "task: non-zero exit"  # Swarm's error text for a container that ran and failed


def swarm_constraint(item: str) -> str:
    """A placement constraint in Swarm syntax: ``gpu`` -> ``node.labels.gpu==true``,
    ``region=eu`` -> ``node.labels.region==eu``; ``node.role==worker`` stays as it is."""
    if "==" in item or "!=" in item:
        return item
    name, sep, value = item.partition("=")
    return f"node.labels.{name.strip()}=={value.strip() if sep else 'true'}"


def _log_driver() -> DriverConfig | None:
    """The task's capped json-file log, as for a plain container (ENGINE_LOG_MAX_BYTES)."""
    config = engine_log_config()
    return DriverConfig(config.type, config.config) if config is not None else None


def _state(task: Task) -> str:
    return str((task.get("Status") or {}).get("State", "unknown"))


def _container_id(task: Task) -> str:
    return str(((task.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID") or "")


def _is_terminal(task: Task) -> bool:
    return _state(task) in TERMINAL_STATES


def _word(task: Task | None) -> str:
    """The container word for the task's state: created, running, exited (its container ran)
    or dead (it ended without one), removing."""
    if task is None:
        return "created"  # the orchestrator has not made the task yet
    state = _state(task)
    if state == "remove":
        return "removing"
    if state in TERMINAL_STATES:
        return "exited" if _container_id(task) else "dead"
    return _WORDS.get(state, state)


def _exit_code(task: Task) -> int:
    """A terminal task's exit code: its container's, or NO_CONTAINER_EXIT without one."""
    if not _container_id(task):
        return NO_CONTAINER_EXIT
    return int(task["Status"]["ContainerStatus"].get("ExitCode") or 0)


def _task_error(task: Task) -> str:
    """Swarm's error text of the task, without the redundant "non-zero exit (N)"."""
    error = str((task.get("Status") or {}).get("Err") or "")
    return "" if error.startswith(_EXITED) else error


def _launch_error(task: Task) -> str:
    """Why the task ended without its command having run ('' when it ran)."""
    state = _state(task)
    error = str((task.get("Status") or {}).get("Err") or "")
    if state == "rejected" or (state == "failed" and not error.startswith(_EXITED)):
        return error or f"the task was {state}"
    return ""


def _created(task: Task) -> datetime:
    return parse_time(task.get("CreatedAt")) or datetime.min.replace(tzinfo=UTC)


class SwarmExecutor(DockerExecutor):
    """Runs jobs as run-once services on a Docker Swarm, through one of its managers.

    ``config`` as for :class:`DockerExecutor`, plus ``start_timeout`` (seconds a launch waits
    for the task to start or fail; default the engine timeout).
    """

    #: Swarm enforces the service's memory and CPU limits on its task.
    supports_resource_limits: ClassVar[bool] = True
    #: Real figures for tasks on the node this executor talks to; zeros for other nodes'.
    supports_stats: ClassVar[bool] = True
    runs_as: ClassVar[str] = "service"
    #: A service's followed log does not end when its task exits (the service stays):
    #: Swarm output is read after the exit.
    follows_output: ClassVar[bool] = False

    def engine_restarted(
        self, container_id: str, since: datetime | None, watch: float
    ) -> bool | None:
        """A service's task runs on any node of the swarm: one manager's events cannot
        tell; the worker watches the engine's health instead."""
        return None

    #: What the service honours (:mod:`~container_manager.executors.swarm_spec`).
    supported_fields: ClassVar[frozenset[str]] = swarm_spec.SUPPORTED_FIELDS

    @classmethod
    def spec_refusals(cls, spec: JobSpec) -> dict[str, str]:
        """Field -> why a value of a supported field cannot run on any swarm (network
        ``"none"``, ...): :func:`~container_manager.executors.swarm_spec.spec_refusals`."""
        return swarm_spec.spec_refusals(spec)

    def effective(self, spec: JobSpec) -> JobSpec:
        """A service cannot set no-new-privileges on API 1.41 (the engine drops the key)."""
        return replace(spec, no_new_privileges=False)

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.start_timeout = float(self.config.get("start_timeout", self.timeout))

    # ---- launching ----------------------------------------------------------------

    def _service_kwargs(self, spec: JobSpec) -> dict[str, Any]:
        """The ``create_service`` arguments of the spec's run-once service.
        PermanentLaunchError (no retry) when the spec asks for what this swarm cannot honour
        (:meth:`refusals`): nothing is asked of the engine then."""
        network = swarm_spec.swarm_network(spec)
        if errors := self.refusals(replace(spec, network_mode=network)):
            raise PermanentLaunchError("; ".join(errors[name] for name in sorted(errors)))
        api_version = self.client.api.api_version
        constraints = [swarm_constraint(c) for c in spec.placement_constraints]
        kwargs: dict[str, Any] = {
            "task_template": TaskTemplate(
                container_spec=swarm_spec.container_spec(spec, api_version),
                resources=swarm_spec.resources(spec, api_version),
                restart_policy=RestartPolicy(condition="none"),
                placement=Placement(constraints=constraints) if constraints else None,
                log_driver=_log_driver(),
            ),
            "name": spec.name,
            "labels": spec.labels,
            "mode": self._run_once_mode(),
        }
        if network:
            kwargs["networks"] = [network]
        return kwargs

    def refusals(self, spec: JobSpec) -> dict[str, str]:
        """:meth:`spec_refusals`, and the requested fields this engine's API is too old for."""
        version_errors = swarm_spec.version_refusals(spec, self.client.api.api_version)
        return {**self.spec_refusals(spec), **version_errors}

    def _run_once_mode(self) -> ServiceMode:
        if version_gte(self.client.api.api_version, _JOB_MODE_API):
            return ServiceMode("replicated-job", replicas=1)
        return ServiceMode("replicated", replicas=1)

    def run(self, spec: JobSpec) -> str:
        """Create the spec's service (or find the one a previous try created) and wait until
        its task runs or ends; a task that could not start raises, and its service is removed."""
        kwargs = self._service_kwargs(spec)
        try:
            with self._engine(f"Create service for image {spec.image!r}"):
                created = swarm_spec.create_service(self.client.api, kwargs, spec.registry_auth)
                service_id = str(created["ID"])
        except ExecutorError as err:
            existing = self._existing_service(spec.name, err)
            if existing is None:
                raise
            return existing
        self._await_start(service_id, spec)
        return service_id

    def _existing_service(self, name: str, err: ExecutorError) -> str | None:
        """After a name conflict (a 409), the service a previous try of this attempt created."""
        if err.status_code != 409:
            return None
        return self.find_container(name)

    def _await_start(self, service_id: str, spec: JobSpec) -> None:
        """Wait (up to ``start_timeout``) until the task runs, ends, or waits for a node."""

        def started(task: Task) -> bool:
            if _state(task) == "pending" and task["Status"].get("Err"):
                return True  # the scheduler says why no node fits: no use waiting here
            return _state(task) == "running" or _is_terminal(task)

        task = self._poll(service_id, started, self.start_timeout)
        reason = _launch_error(task) if task is not None else ""
        if not reason:
            return
        with suppress(ContainerManagerError):
            self.cleanup(service_id)
        if "No such image" in reason:
            raise ImageUnavailableError(
                f"Image {spec.image!r} is not available on the swarm node: {reason}"
            )
        raise ExecutorError(f"Start service {spec.name}: {reason}")

    def create(self, spec: JobSpec) -> str:
        """A service is scheduled as soon as it exists: this is :meth:`run`."""
        return self.run(spec)

    def _create_container(self, job: JobSource) -> str:
        return self.run(JobSpec.from_job(job))

    def _start_container(self, job: JobSource, container_id: str) -> bool:
        """Services start themselves; True when the service exists."""
        self._service(container_id)
        return True

    # ---- the service and its task -----------------------------------------------------

    def _service(self, service_id: str) -> dict[str, Any]:
        with self._engine(f"Inspect service {service_id}"):
            return dict(self.client.api.inspect_service(service_id))

    def _task(self, service_id: str) -> Task | None:
        """The service's newest task; None while the orchestrator has not made one yet.
        ContainerNotFoundError when the service does not exist."""
        with self._engine(f"Tasks of service {service_id}"):
            tasks = self.client.api.tasks(filters={"service": service_id})
        if not tasks:
            self._service(service_id)
            return None
        newest: Task = max(tasks, key=_created)
        return newest

    def _poll(
        self, service_id: str, done: Callable[[Task], bool], timeout: float | None
    ) -> Task | None:
        """Poll the service's task until ``done(task)``; the task, or None after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_FIRST
        while True:
            task = self._task(service_id)
            if task is not None and done(task):
                return task
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def _local_container(self, task: Task) -> dict[str, Any]:
        """The State of the task's container when it is on this engine's node, else {}."""
        container_id = _container_id(task)
        if not container_id:
            return {}
        try:
            with self._engine(f"Inspect container {container_id}"):
                return dict(self.client.api.inspect_container(container_id).get("State") or {})
        except ContainerNotFoundError:
            return {}

    # ---- watching and harvesting ------------------------------------------------------

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        """Poll the service's task until it ends: its exit code, or None after ``timeout``."""
        task = self._poll(container_id, _is_terminal, timeout)
        return None if task is None else _exit_code(task)

    def inspect(self, container_id: str) -> ContainerState:
        task = self._task(container_id)
        if task is None:
            return ContainerState(status="created")
        if not _is_terminal(task):
            return ContainerState(status=_word(task))
        container = self._local_container(task)
        return ContainerState(
            status=_word(task),
            exit_code=_exit_code(task),
            oom_killed=bool(container.get("OOMKilled")),
            error=_task_error(task),
            started_at=parse_time(container.get("StartedAt")),
            finished_at=parse_time(task["Status"].get("Timestamp")),
        )

    def iter_output(self, container_id: str, stream: Stream) -> Iterator[bytes]:
        with self._engine(f"Read {stream} of service {container_id}"):
            yield from self.client.api.service_logs(
                container_id,
                stdout=stream == "stdout",
                stderr=stream == "stderr",
                follow=False,
                is_tty=False,  # never allocated; saves the SDK an inspect call
            )

    def find_container(self, name: str) -> str | None:
        """The id of the service with this name, or None."""
        try:
            return str(self._service(name)["ID"])
        except ContainerNotFoundError:
            return None

    def stop_container(self, container_id: str, grace: int | None = None) -> bool:
        """Stop the task's container (SIGTERM, SIGKILL after ``grace``) and wait until the task
        reports its end; the service, the task's exit code and its output stay. When the
        container is not on this engine's node, or not started yet, remove the service."""
        grace = get_settings().STOP_GRACE_SECONDS if grace is None else grace
        try:
            task = self._task(container_id)
        except ContainerNotFoundError:
            return True
        if task is not None and _is_terminal(task):
            return True
        task_container = _container_id(task) if task is not None else ""
        if task_container:
            try:
                with self._engine(f"Stop container {task_container} of service {container_id}"):
                    self.client.api.stop(task_container, timeout=grace)
            except ContainerNotFoundError:
                pass  # on another node: fall back to removing the service
            else:
                with suppress(ContainerNotFoundError):
                    self._poll(container_id, _is_terminal, grace + _SETTLE_SECONDS)
                return True
        return self.cleanup(container_id)

    def discard(self, container_id: str) -> None:
        """A service, not a container: removed as :meth:`cleanup` does."""
        self.cleanup(container_id)

    def cleanup(self, container_id: str) -> bool:
        """Remove the service (its task's container goes with it); True also when gone."""
        try:
            with self._engine(f"Remove service {container_id}"):
                self.client.api.remove_service(container_id)
        except ContainerNotFoundError:
            pass
        return True

    # ---- inspection and maintenance ------------------------------------------------

    def check_status(self, container_id: str) -> str:
        """The container word of the service's task state, or ``'not-found'``."""
        try:
            return _word(self._task(container_id))
        except ContainerNotFoundError:
            return "not-found"

    def get_logs(self, container_id: str, tail: int | None = None) -> str:
        try:
            with self._engine(f"Logs of service {container_id}"):
                raw = b"".join(
                    self.client.api.service_logs(
                        container_id,
                        stdout=True,
                        stderr=True,
                        follow=False,
                        tail="all" if tail is None else tail,
                        is_tty=False,
                    )
                )
        except ContainerNotFoundError:
            return f"Service not found: {container_id} (it was removed or never existed)"
        return raw.decode("utf-8", errors="replace")

    def get_resource_usage(self, container_id: str) -> dict[str, Any]:
        """Figures of the task's container when it is on this engine's node, else zeros.
        ContainerNotFoundError when the service does not exist."""
        task = self._task(container_id)
        task_container = _container_id(task) if task is not None else ""
        if task_container:
            with suppress(ContainerNotFoundError):
                return super().get_resource_usage(task_container)
        return no_usage()

    def list_containers(self) -> list[dict[str, Any]]:
        """This app's services: labelled managed, and with every ``CONTAINER_LABELS`` label."""
        scope = {**get_settings().CONTAINER_LABELS, LABEL_MANAGED: "true"}
        with self._engine("List services"):
            services = self.client.api.services(
                filters={"label": [f"{key}={value}" for key, value in scope.items()]}
            )
        listed = []
        for service in services:
            try:
                task = self._task(service["ID"])
            except ContainerNotFoundError:
                continue  # removed between the listing and now
            listed.append(self._entry(service, task))
        return listed

    @staticmethod
    def _entry(service: dict[str, Any], task: Task | None) -> dict[str, Any]:
        spec = service.get("Spec") or {}
        image = str(((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", ""))
        finished = None
        if task is not None and _is_terminal(task):
            finished = parse_time(task["Status"].get("Timestamp"))
        return {
            "id": service["ID"],
            "name": spec.get("Name", ""),
            "status": _word(task),
            "labels": dict(spec.get("Labels") or {}),
            "image": image.split("@", 1)[0],  # without a pinned digest
            "finished_at": finished,
        }

    def health_check(self) -> bool:
        """Whether the engine answers and is an active swarm manager."""
        try:
            with self._engine("Ping the engine"):
                if not self.client.ping():
                    return False
                swarm = self.client.info().get("Swarm") or {}
        except ContainerManagerError:
            return False
        return bool(swarm.get("ControlAvailable")) and swarm.get("LocalNodeState") == "active"
