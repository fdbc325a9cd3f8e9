"""The executor contract: one test body, run against every executor.

``fake`` (the in-package FakeExecutor) always runs; ``docker`` runs against the real engine
(skipped locally when none answers, failing under CI). The fake is scripted with the outcome
the real command has, so both must give the same answers to the same assertions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

import docker
import pytest

from container_manager.exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageUnavailableError,
)
from container_manager.executors.base import (
    LABEL_JOB,
    LABEL_MANAGED,
    BaseExecutor,
    JobSpec,
    Stream,
)
from container_manager.executors.docker import DockerExecutor
from container_manager.executors.fake import FakeEngine, FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.testing.factories import ContainerJobFactory
from container_manager.testing.images import TEST_IMAGE
from tests.conftest import SESSION_ID, SESSION_LABEL

pytestmark = pytest.mark.django_db

#: An image no engine has: the docker engine's pull goes to a loopback port that refuses.
MISSING_IMAGE = "127.0.0.1:1/container-jobs/missing:latest"


@dataclass
class Engine:
    """One executor under contract, and how to script it where it is a fake."""

    kind: str
    executor: BaseExecutor
    host: ExecutorHost
    fake: FakeEngine | None = None
    created: list[str] = field(default_factory=list)

    def spec(self, argv: list[str], outcome: FakeOutcome) -> JobSpec:
        """A spec running ``argv``; on the fake, it does what ``outcome`` says."""
        spec = JobSpec(
            job_id=uuid.uuid4().hex,
            attempt=1,
            image=TEST_IMAGE,
            argv=argv,
            extra_labels={SESSION_LABEL: SESSION_ID},
            network_mode="none",
        )
        self._script(spec.job_id, outcome)
        return spec

    def job(self, command: str, outcome: FakeOutcome, **fields: Any) -> ContainerJob:
        fields.setdefault("docker_image", TEST_IMAGE)
        job = ContainerJobFactory(docker_host=self.host, command=command, **fields)
        self._script(str(job.pk), outcome)
        return job

    def _script(self, job_id: str, outcome: FakeOutcome) -> None:
        if self.fake is not None:
            self.fake.script(outcome, when=lambda spec: spec.job_id == job_id)

    def run(self, spec: JobSpec) -> str:
        return self.track(self.executor.run(spec))

    def track(self, container_id: str) -> str:
        self.created.append(container_id)
        return container_id

    def missing_image(self) -> str:
        if self.fake is not None:
            self.fake.missing_images.add(MISSING_IMAGE)
        return MISSING_IMAGE

    def dead(self) -> BaseExecutor:
        """An executor of the same kind whose engine does not answer."""
        if self.kind == "fake":
            executor = FakeExecutor({"docker_host": "unix:///fake/dead-engine.sock"})
            executor.engine.down = True
            return executor
        return DockerExecutor({"docker_host": "tcp://127.0.0.1:1"})


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def engine(request) -> Iterator[Engine]:
    if request.param == "fake":
        host = request.getfixturevalue("fake_host")
        executor = FakeExecutor({"docker_host": host})
        yield Engine("fake", executor, host, fake=executor.engine)
        return
    docker_client = request.getfixturevalue("docker_client")
    host = request.getfixturevalue("engine_host")
    executor = DockerExecutor({"docker_host": host})
    under_test = Engine("docker", executor, host)
    yield under_test
    for container_id in under_test.created:
        with suppress(docker.errors.NotFound):
            docker_client.api.remove_container(container_id, force=True)
    executor.close()


def _output(executor: BaseExecutor, container_id: str, stream: Stream) -> bytes:
    return b"".join(executor.iter_output(container_id, stream))


# ---- running and harvesting --------------------------------------------------------------


def test_run_wait_and_inspect_agree_on_the_exit_code(engine):
    spec = engine.spec(["sh", "-c", "exit 3"], FakeOutcome(exit_code=3))
    container_id = engine.run(spec)

    assert engine.executor.wait(container_id, timeout=30) == 3
    state = engine.executor.inspect(container_id)
    assert state.status == "exited"
    assert state.exit_code == 3
    assert state.has_exited
    assert state.oom_killed is False
    assert engine.executor.check_status(container_id) == "exited"


def test_stdout_and_stderr_are_kept_apart(engine):
    spec = engine.spec(
        ["sh", "-c", "echo out; echo err >&2"], FakeOutcome(stdout="out\n", stderr="err\n")
    )
    container_id = engine.run(spec)
    assert engine.executor.wait(container_id, timeout=30) == 0

    assert _output(engine.executor, container_id, "stdout") == b"out\n"
    assert _output(engine.executor, container_id, "stderr") == b"err\n"
    logs = engine.executor.get_logs(container_id)
    assert "out\n" in logs
    assert "err\n" in logs


def test_find_container_by_the_specs_name(engine):
    spec = engine.spec(["true"], FakeOutcome())
    container_id = engine.run(spec)

    assert engine.executor.find_container(spec.name) == container_id
    assert engine.executor.find_container(f"cm-{uuid.uuid4().hex}-1") is None


def test_run_twice_with_the_same_spec_returns_the_same_container(engine):
    spec = engine.spec(["sh", "-c", "echo once"], FakeOutcome(stdout="once\n"))
    first = engine.run(spec)
    assert engine.executor.wait(first, timeout=30) == 0

    assert engine.executor.run(spec) == first
    assert _output(engine.executor, first, "stdout") == b"once\n"  # not run a second time


def test_wait_times_out_then_stop_ends_the_container(engine):
    # The job ignores SIGTERM (the init process passes it on): killed after the grace.
    spec = engine.spec(["sh", "-c", "trap '' TERM; sleep 30"], FakeOutcome(duration=30))
    container_id = engine.run(spec)

    assert engine.executor.wait(container_id, timeout=0.3) is None
    assert engine.executor.check_status(container_id) == "running"
    assert engine.executor.inspect(container_id).exit_code is None
    assert engine.executor.stop_container(container_id, grace=0) is True
    state = engine.executor.inspect(container_id)
    assert state.status == "exited"
    assert state.exit_code == 137
    assert engine.executor.wait(container_id, timeout=5) == 137


def test_a_failed_start_raises_and_leaves_no_container(engine):
    # The working directory is a file: the runtime cannot enter it when the container starts.
    # (A missing program is no start failure: the init process runs, and exits 127.)
    spec = replace(
        engine.spec(
            ["true"],
            FakeOutcome(fail_on="start", error="chdir to cwd (/bin/busybox): not a directory"),
        ),
        working_directory="/bin/busybox",
    )

    with pytest.raises(ExecutorError, match="not a directory"):
        engine.executor.run(spec)
    assert engine.executor.find_container(spec.name) is None


# ---- gone, and never there ---------------------------------------------------------------


def test_cleanup_is_idempotent_and_the_container_is_then_gone(engine):
    spec = engine.spec(["true"], FakeOutcome())
    container_id = engine.run(spec)
    assert engine.executor.wait(container_id, timeout=30) == 0

    assert engine.executor.cleanup(container_id) is True
    assert engine.executor.cleanup(container_id) is True
    assert engine.executor.check_status(container_id) == "not-found"
    assert engine.executor.stop_container(container_id, grace=0) is True
    assert engine.executor.find_container(spec.name) is None
    assert "not found" in engine.executor.get_logs(container_id).lower()


def test_an_unknown_container(engine):
    unknown = f"nonexistent-{uuid.uuid4().hex}"

    assert engine.executor.check_status(unknown) == "not-found"
    assert engine.executor.stop_container(unknown, grace=0) is True
    assert engine.executor.cleanup(unknown) is True
    assert "not found" in engine.executor.get_logs(unknown).lower()
    with pytest.raises(ContainerNotFoundError):
        engine.executor.inspect(unknown)
    with pytest.raises(ContainerNotFoundError):
        engine.executor.wait(unknown, timeout=1)
    with pytest.raises(ContainerNotFoundError):
        engine.executor.get_resource_usage(unknown)


# ---- launch_job --------------------------------------------------------------------------


def test_launch_job_returns_true_and_the_container_id(engine):
    job = engine.job("echo hello", FakeOutcome(stdout="hello\n"))

    launched, container_id = engine.executor.launch_job(job)
    assert launched is True
    engine.track(container_id)
    assert engine.executor.wait(container_id, timeout=30) == 0
    assert _output(engine.executor, container_id, "stdout") == b"hello\n"
    assert engine.executor.find_container(JobSpec.from_job(job).name) == container_id


def test_launch_job_with_a_missing_image_returns_false_and_why(engine):
    job = engine.job("true", FakeOutcome(), docker_image=engine.missing_image())

    launched, message = engine.executor.launch_job(job)
    assert launched is False
    assert MISSING_IMAGE in message
    assert engine.executor.find_container(JobSpec.from_job(job).name) is None
    with pytest.raises(ImageUnavailableError):
        engine.executor.run(JobSpec.from_job(job))


def test_launch_job_with_a_malformed_image_returns_false(engine):
    job = engine.job("true", FakeOutcome(), docker_image="Not An Image")

    launched, message = engine.executor.launch_job(job)
    assert launched is False
    assert "Not An Image" in message
    assert engine.executor.find_container(JobSpec.from_job(job).name) is None


def test_an_engine_that_does_not_answer(engine):
    dead = engine.dead()
    job = engine.job("true", FakeOutcome())

    assert dead.health_check() is False
    launched, message = dead.launch_job(job)
    assert launched is False
    assert message
    with pytest.raises(ExecutorConnectionError):
        dead.run(JobSpec.from_job(job))
    with pytest.raises(ExecutorConnectionError):
        dead.check_status("any")
    with pytest.raises(ExecutorConnectionError):
        dead.list_containers()


# ---- listing -----------------------------------------------------------------------------


def test_list_containers_includes_what_the_app_ran(engine):
    spec = engine.spec(["true"], FakeOutcome())
    container_id = engine.run(spec)
    assert engine.executor.wait(container_id, timeout=30) == 0

    listed = {c["id"]: c for c in engine.executor.list_containers()}
    assert container_id in listed
    entry = listed[container_id]
    assert entry["name"] == spec.name
    assert entry["status"] == "exited"
    assert entry["image"] == TEST_IMAGE
    assert entry["labels"][LABEL_MANAGED] == "true"
    assert entry["labels"][LABEL_JOB] == spec.job_id
    assert entry["finished_at"] is not None
    assert all(c["labels"][SESSION_LABEL] == SESSION_ID for c in listed.values())

    engine.executor.cleanup(container_id)
    assert container_id not in {c["id"] for c in engine.executor.list_containers()}


def test_health_check_and_version(engine):
    assert engine.executor.health_check() is True
    assert engine.executor.get_version()


def contract(*, but: tuple[str, ...] = ()) -> dict[str, Any]:
    """The contract's tests by name, but ``but``: a module that runs them against its own
    ``engine`` fixture takes them in with ``globals().update(contract())``."""
    tests = {name: test for name, test in globals().items() if name.startswith("test_")}
    assert set(but) <= set(tests), f"not tests of the contract: {set(but) - set(tests)}"
    return {name: test for name, test in tests.items() if name not in but}
