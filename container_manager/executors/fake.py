"""FakeExecutor: an in-memory engine with scripted outcomes, for users' own tests.

Each engine URL gets its own :class:`FakeEngine`; script what a job does, run the worker,
and assert on the recorded jobs::

    from container_manager.executors.fake import FakeExecutor, FakeOutcome

    engine = FakeExecutor.engine_for("unix:///fake.sock")
    engine.script(FakeOutcome(exit_code=3, stderr="boom"), argv_prefix=["false"])
    engine.down = True          # every call now raises ExecutorConnectionError
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from ..conf import get_settings
from ..exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageUnavailableError,
)
from ..spec import image_reference_problem
from .base import LABEL_MANAGED, SPEC_FIELDS, BaseExecutor, ContainerState, JobSpec, Stream

__all__ = ["FakeContainer", "FakeEngine", "FakeExecutor", "FakeOutcome"]


@dataclass(frozen=True)
class FakeOutcome:
    """What a fake container does: how long it runs, what it prints, how it ends."""

    exit_code: int = 0
    stdout: bytes | str = b""
    stderr: bytes | str = b""
    duration: float = 0.0
    oom_killed: bool = False
    #: Make the launch fail at this step, with ``error`` as the engine's message.
    fail_on: Literal["create", "start"] | None = None
    error: str = ""

    def output(self, stream: Stream) -> bytes:
        data = self.stdout if stream == "stdout" else self.stderr
        return data.encode() if isinstance(data, str) else data


@dataclass
class FakeContainer:
    """One container of a fake engine."""

    id: str
    spec: JobSpec
    outcome: FakeOutcome
    status: str = "created"
    started: float | None = None
    exit_code: int | None = None
    finished_at: datetime | None = None
    stopped: threading.Event = field(default_factory=threading.Event)

    def settle(self) -> None:
        """Move a running container to 'exited' once its duration has passed."""
        if (
            self.status == "running"
            and self.started is not None
            and time.monotonic() - self.started >= self.outcome.duration
        ):
            self.finish(self.outcome.exit_code)

    def finish(self, exit_code: int) -> None:
        self.status = "exited"
        self.exit_code = exit_code
        self.finished_at = datetime.now(UTC)
        self.stopped.set()


class FakeEngine:
    """The state of one fake engine: containers, scripts, images, and whether it is down."""

    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.scripts: list[tuple[Callable[[JobSpec], bool], FakeOutcome]] = []
        self.missing_images: set[str] = set()
        self.down = False
        self.calls: list[str] = []
        #: Every spec a container was created from, in order (secrets resolved): for tests
        #: that check what a job would have run with.
        self.specs: list[JobSpec] = []
        self.lock = threading.RLock()
        self._ids = itertools.count(1)

    def script(
        self,
        outcome: FakeOutcome,
        *,
        argv_prefix: list[str] | None = None,
        image: str | None = None,
        when: Callable[[JobSpec], bool] | None = None,
    ) -> None:
        """Jobs that match get ``outcome``; the latest matching script wins."""

        def matches(spec: JobSpec) -> bool:
            if argv_prefix is not None and spec.argv[: len(argv_prefix)] != argv_prefix:
                return False
            if image is not None and spec.image != image:
                return False
            return when(spec) if when else True

        self.scripts.append((matches, outcome))

    def outcome_for(self, spec: JobSpec) -> FakeOutcome:
        for matches, outcome in reversed(self.scripts):
            if matches(spec):
                return outcome
        if spec.argv[:1] == ["echo"]:
            return FakeOutcome(stdout=" ".join(spec.argv[1:]) + "\n")
        return FakeOutcome()

    def new_id(self) -> str:
        return f"fake{next(self._ids):012d}"


class FakeExecutor(BaseExecutor):
    """An executor over a :class:`FakeEngine`; same interface and errors as DockerExecutor."""

    supports_stats = False
    #: Every spec field: the fake records the spec it was given, for users' tests to read.
    supported_fields = frozenset(SPEC_FIELDS)
    #: A fake container prints all of its output as it starts; following it ends at its exit.
    follows_output = True
    engines: ClassVar[dict[str, FakeEngine]] = {}

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.engine = self.engine_for(self.base_url)

    @classmethod
    def engine_for(cls, base_url: str) -> FakeEngine:
        """The fake engine behind ``base_url`` (created on first use)."""
        return cls.engines.setdefault(base_url, FakeEngine())

    @classmethod
    def reset(cls) -> None:
        """Forget every fake engine."""
        cls.engines.clear()

    def _call(self, name: str) -> None:
        self.engine.calls.append(name)
        if self.engine.down:
            raise ExecutorConnectionError(f"Cannot connect to the engine at {self.base_url}: down")

    def _get(self, container_id: str) -> FakeContainer:
        container = self.engine.containers.get(container_id)
        if container is None:
            raise ContainerNotFoundError(f"No such container: {container_id}")
        container.settle()
        return container

    def run(self, spec: JobSpec) -> str:
        self._call("run")
        with self.engine.lock:
            existing = self.find_container(spec.name)
            container = self.engine.containers[existing] if existing else self._create(spec)
            if container.status == "created":
                if container.outcome.fail_on == "start":
                    self.engine.containers.pop(container.id)
                    raise ExecutorError(f"Failed to start container: {container.outcome.error}")
                container.status = "running"
                container.started = time.monotonic()
            return container.id

    def _create(self, spec: JobSpec) -> FakeContainer:
        if image_reference_problem(spec.image):
            # What a real engine answers (400) for a malformed reference.
            raise ExecutorError(
                f"Create container for image {spec.image!r}: invalid reference format",
                status_code=400,
            )
        if spec.image in self.engine.missing_images:
            raise ImageUnavailableError(
                f"Image {spec.image!r} is not on the host and cannot be pulled"
            )
        outcome = self.engine.outcome_for(spec)
        if outcome.fail_on == "create":
            raise ExecutorError(f"Failed to create container: {outcome.error}")
        self.engine.specs.append(spec)
        container = FakeContainer(id=self.engine.new_id(), spec=spec, outcome=outcome)
        self.engine.containers[container.id] = container
        return container

    def create_container(self, job: Any) -> str:
        """Create (not start) the job's container; its id (as DockerExecutor)."""
        self._call("create")
        with self.engine.lock:
            spec = JobSpec.from_job(job)
            return self.find_container(spec.name) or self._create(spec).id

    def _start_container(self, job: Any, container_id: str) -> bool:
        self._call("start")
        container = self._get(container_id)
        if container.status == "created":
            container.status = "running"
            container.started = time.monotonic()
        return True

    def pull_image(self, image: str) -> bool:
        """True, or ImageUnavailableError for an image scripted as missing."""
        self._call("pull")
        if image in self.engine.missing_images:
            raise ImageUnavailableError(f"Image {image!r} could not be pulled: not found")
        return True

    def wait(self, container_id: str, timeout: float | None) -> int | None:
        self._call("wait")
        container = self._get(container_id)
        if container.status == "running" and container.started is not None:
            remaining = container.outcome.duration - (time.monotonic() - container.started)
            limit = remaining if timeout is None else min(remaining, timeout)
            container.stopped.wait(max(limit, 0))
            container.settle()
        return container.exit_code if container.status == "exited" else None

    def inspect(self, container_id: str) -> ContainerState:
        self._call("inspect")
        container = self._get(container_id)
        exited = container.status == "exited"
        return ContainerState(
            status=container.status,
            exit_code=container.exit_code,
            oom_killed=exited and container.outcome.oom_killed and container.exit_code == 137,
            finished_at=container.finished_at,
        )

    def iter_output(self, container_id: str, stream: Stream) -> Iterator[bytes]:
        self._call("output")
        data = self._get(container_id).outcome.output(stream)
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    def follow_outputs(self, container_id: str) -> Iterator[tuple[Stream, bytes]]:
        yield from self.iter_outputs(container_id)
        container = self._get(container_id)
        while container.status == "running":
            self.wait(container_id, timeout=None)
            container = self._get(container_id)

    def find_container(self, name: str) -> str | None:
        self._call("find")
        for container in self.engine.containers.values():
            if container.spec.name == name:
                return container.id
        return None

    def stop_container(self, container_id: str, grace: int | None = None) -> bool:
        self._call("stop")
        container = self.engine.containers.get(container_id)
        if container is not None:
            container.settle()
            if container.status == "running":
                container.finish(137)
        return True

    def cleanup(self, container_id: str) -> bool:
        self._call("cleanup")
        self.engine.containers.pop(container_id, None)
        return True

    def check_status(self, container_id: str) -> str:
        self._call("status")
        try:
            return self._get(container_id).status
        except ContainerNotFoundError:
            return "not-found"

    def get_logs(self, container_id: str, tail: int | None = None) -> str:
        self._call("logs")
        try:
            outcome = self._get(container_id).outcome
        except ContainerNotFoundError:
            return f"Container not found: {container_id}"
        text = (outcome.output("stdout") + outcome.output("stderr")).decode(errors="replace")
        return "".join(text.splitlines(keepends=True)[-tail:]) if tail else text

    def get_resource_usage(self, container_id: str) -> dict[str, Any]:
        self._call("stats")
        self._get(container_id)
        return {"memory_usage": 0, "memory_peak": 0, "cpu_usage": 0.0}

    def get_container_stats(self, container_id: str) -> dict[str, Any]:
        return self.get_resource_usage(container_id)

    def list_containers(self) -> list[dict[str, Any]]:
        """Containers labelled as this app's (managed, plus ``CONTAINER_LABELS``)."""
        self._call("list")
        scope = {**get_settings().CONTAINER_LABELS, LABEL_MANAGED: "true"}
        return [
            {
                "id": c.id,
                "name": c.spec.name,
                "status": c.status,
                "labels": dict(c.spec.labels),
                "image": c.spec.image,
                "finished_at": c.finished_at,
            }
            for c in self.engine.containers.values()
            if all(c.spec.labels.get(key) == value for key, value in scope.items())
        ]

    def health_check(self) -> bool:
        return not self.engine.down

    def get_version(self) -> str:
        self._call("version")
        return "fake-1.0"
