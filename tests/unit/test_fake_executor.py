"""FakeExecutor: the scripted in-memory engine users test their own code with.

What it shares with DockerExecutor is pinned by tests/integration/test_executor_contract.py
(which runs the fake always); these tests cover what is the fake's own: scripting, a
missing image, an engine that is down, per-URL engines, and its bookkeeping.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from container_manager.exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageUnavailableError,
)
from container_manager.executors import get_executor
from container_manager.executors.base import LABEL_MANAGED, JobSpec
from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.testing.factories import ContainerJobFactory
from tests.conftest import SESSION_ID, SESSION_LABEL

URL = "unix:///fake/unit.sock"


@pytest.fixture
def executor() -> FakeExecutor:
    return FakeExecutor({"docker_host": URL})


def _spec(*argv: str, image: str = "busybox:latest", **kwargs) -> JobSpec:
    kwargs.setdefault("extra_labels", {SESSION_LABEL: SESSION_ID})
    return JobSpec(job_id=uuid.uuid4().hex, attempt=1, image=image, argv=list(argv), **kwargs)


def _stdout(executor: FakeExecutor, container_id: str) -> bytes:
    return b"".join(executor.iter_output(container_id, "stdout"))


# ---- default and scripted outcomes -------------------------------------------------------


def test_echo_prints_its_arguments_by_default(executor):
    container_id = executor.run(_spec("echo", "hello", "world"))

    assert executor.wait(container_id, timeout=1) == 0
    assert _stdout(executor, container_id) == b"hello world\n"


def test_other_commands_exit_zero_silently_by_default(executor):
    container_id = executor.run(_spec("make", "all"))

    assert executor.wait(container_id, timeout=1) == 0
    assert _stdout(executor, container_id) == b""
    assert b"".join(executor.iter_output(container_id, "stderr")) == b""


def test_script_by_argv_prefix(executor):
    executor.engine.script(FakeOutcome(exit_code=2, stderr="boom\n"), argv_prefix=["false"])

    failing = executor.run(_spec("false", "--loudly"))
    other = executor.run(_spec("true"))

    assert executor.wait(failing, timeout=1) == 2
    assert b"".join(executor.iter_output(failing, "stderr")) == b"boom\n"
    assert executor.wait(other, timeout=1) == 0


def test_script_by_image_and_by_predicate(executor):
    executor.engine.script(FakeOutcome(exit_code=4), image="python:3.12")
    executor.engine.script(FakeOutcome(exit_code=5), when=lambda spec: spec.attempt == 2)

    by_image = executor.run(_spec("python", "-V", image="python:3.12"))
    by_attempt = executor.run(JobSpec(job_id="j", attempt=2, image="busybox:latest"))

    assert executor.wait(by_image, timeout=1) == 4
    assert executor.wait(by_attempt, timeout=1) == 5


def test_the_latest_matching_script_wins(executor):
    executor.engine.script(FakeOutcome(exit_code=1))
    executor.engine.script(FakeOutcome(exit_code=7), argv_prefix=["task"])

    assert executor.wait(executor.run(_spec("task")), timeout=1) == 7
    assert executor.wait(executor.run(_spec("other")), timeout=1) == 1


def test_outcome_output_accepts_text_and_bytes():
    outcome = FakeOutcome(stdout="text\n", stderr=b"bytes\n")

    assert outcome.output("stdout") == b"text\n"
    assert outcome.output("stderr") == b"bytes\n"


def test_large_output_comes_in_chunks(executor):
    big = b"x" * (200 * 1024)
    executor.engine.script(FakeOutcome(stdout=big))
    container_id = executor.run(_spec("dump"))

    chunks = list(executor.iter_output(container_id, "stdout"))
    assert len(chunks) == 4
    assert b"".join(chunks) == big


def test_an_oom_kill(executor):
    executor.engine.script(FakeOutcome(exit_code=137, oom_killed=True))
    container_id = executor.run(_spec("hog"))

    assert executor.wait(container_id, timeout=1) == 137
    state = executor.inspect(container_id)
    assert state.oom_killed is True
    assert state.exit_code == 137


# ---- time --------------------------------------------------------------------------------


def test_a_container_runs_for_its_duration(executor):
    executor.engine.script(FakeOutcome(duration=0.2, exit_code=0))
    container_id = executor.run(_spec("work"))

    assert executor.check_status(container_id) == "running"
    assert executor.wait(container_id, timeout=0.01) is None
    started = time.monotonic()
    assert executor.wait(container_id, timeout=5) == 0
    assert time.monotonic() - started < 1
    assert executor.check_status(container_id) == "exited"
    assert executor.inspect(container_id).finished_at is not None


def test_stop_kills_a_running_container_and_leaves_an_exited_one(executor):
    executor.engine.script(FakeOutcome(duration=60), argv_prefix=["sleep"])
    running = executor.run(_spec("sleep", "60"))
    done = executor.run(_spec("true"))
    assert executor.wait(done, timeout=1) == 0

    assert executor.stop_container(running) is True
    assert executor.stop_container(done) is True
    assert executor.inspect(running).exit_code == 137
    assert executor.inspect(done).exit_code == 0


# ---- failures ----------------------------------------------------------------------------


def test_a_failing_create_leaves_no_container(executor):
    executor.engine.script(FakeOutcome(fail_on="create", error="no space left on device"))
    spec = _spec("true")

    with pytest.raises(ExecutorError, match="no space left on device"):
        executor.run(spec)
    assert executor.find_container(spec.name) is None
    assert executor.engine.containers == {}


def test_a_failing_start_removes_the_container(executor):
    executor.engine.script(FakeOutcome(fail_on="start", error="exec format error"))
    spec = _spec("true")

    with pytest.raises(ExecutorError, match="exec format error"):
        executor.run(spec)
    assert executor.engine.containers == {}


def test_a_missing_image(executor):
    executor.engine.missing_images.add("private/app:1")

    with pytest.raises(ImageUnavailableError, match="private/app:1"):
        executor.run(_spec("true", image="private/app:1"))
    assert executor.engine.containers == {}


@pytest.mark.parametrize("image", ["", "Not An Image", "busybox:"])
def test_a_malformed_image_is_refused_like_an_engine_does(executor, image):
    with pytest.raises(ExecutorError, match="invalid reference format"):
        executor.run(_spec("true", image=image))
    assert executor.engine.containers == {}


def test_a_down_engine_refuses_every_call(executor):
    container_id = executor.run(_spec("true"))
    executor.engine.down = True

    assert executor.health_check() is False
    calls = [
        lambda: executor.run(_spec("true")),
        lambda: executor.wait(container_id, timeout=1),
        lambda: executor.inspect(container_id),
        lambda: list(executor.iter_output(container_id, "stdout")),
        lambda: executor.find_container("cm-x-1"),
        lambda: executor.stop_container(container_id),
        lambda: executor.cleanup(container_id),
        lambda: executor.check_status(container_id),
        lambda: executor.get_logs(container_id),
        lambda: executor.get_resource_usage(container_id),
        lambda: executor.list_containers(),
        lambda: executor.get_version(),
    ]
    for call in calls:
        with pytest.raises(ExecutorConnectionError, match=URL):
            call()

    executor.engine.down = False
    assert executor.check_status(container_id) == "exited"  # nothing changed meanwhile


# ---- logs, figures, listing --------------------------------------------------------------


def test_get_logs_combines_the_streams_and_honours_tail(executor):
    executor.engine.script(FakeOutcome(stdout="a\nb\nc\n", stderr="oops\n"))
    container_id = executor.run(_spec("job"))

    assert executor.get_logs(container_id) == "a\nb\nc\noops\n"
    assert executor.get_logs(container_id, tail=2) == "c\noops\n"


def test_resource_usage_is_zero_and_not_claimed_as_real(executor):
    container_id = executor.run(_spec("true"))

    assert FakeExecutor.supports_stats is False
    assert executor.get_resource_usage(container_id) == {
        "memory_usage": 0,
        "memory_peak": 0,
        "cpu_usage": 0.0,
    }
    with pytest.raises(ContainerNotFoundError):
        executor.get_resource_usage("nope")


def test_list_containers_is_scoped_by_the_app_labels(executor, settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "CONTAINER_LABELS": {"deployment": "blue"},
    }
    ours = executor.run(_spec("true", extra_labels={"deployment": "blue"}))
    executor.run(_spec("true", extra_labels={"deployment": "green"}))

    listed = executor.list_containers()
    assert [c["id"] for c in listed] == [ours]
    assert listed[0]["labels"] == {
        "deployment": "blue",
        LABEL_MANAGED: "true",
        "container_manager.job": listed[0]["labels"]["container_manager.job"],
        "container_manager.attempt": "1",
    }
    assert listed[0]["image"] == "busybox:latest"


def test_cleanup_old_containers(executor):
    old = executor.run(_spec("true"))
    executor.wait(old, timeout=1)
    executor.engine.containers[old].finished_at = datetime.now(UTC) - timedelta(days=2)
    recent = executor.run(_spec("true"))
    executor.wait(recent, timeout=1)

    assert executor.cleanup_old_containers(datetime.now(UTC) - timedelta(days=1)) == 1
    assert executor.check_status(old) == "not-found"
    assert executor.check_status(recent) == "exited"


def test_version_and_health(executor):
    assert executor.get_version() == "fake-1.0"
    assert executor.health_check() is True


# ---- engines and bookkeeping -------------------------------------------------------------


def test_executors_on_one_url_share_an_engine():
    first = FakeExecutor({"docker_host": URL})
    second = FakeExecutor({"docker_host": URL})
    elsewhere = FakeExecutor({"docker_host": "unix:///fake/other.sock"})

    container_id = first.run(_spec("true"))
    assert second.check_status(container_id) == "exited"
    assert elsewhere.check_status(container_id) == "not-found"
    assert FakeExecutor.engine_for(URL) is first.engine


def test_reset_forgets_every_engine(executor):
    container_id = executor.run(_spec("true"))

    FakeExecutor.reset()
    assert FakeExecutor({"docker_host": URL}).check_status(container_id) == "not-found"


def test_calls_are_recorded(executor):
    container_id = executor.run(_spec("true"))
    executor.wait(container_id, timeout=1)
    executor.check_status(container_id)
    executor.cleanup(container_id)

    assert executor.engine.calls == ["run", "find", "wait", "status", "cleanup"]


@pytest.mark.django_db
def test_the_registry_builds_a_fake_for_a_fake_host(fake_host):
    executor = get_executor(fake_host)

    assert isinstance(executor, FakeExecutor)
    assert get_executor(fake_host) is executor
    assert executor.engine is FakeExecutor.engine_for(fake_host.connection_string)


@pytest.mark.django_db
def test_launch_job_runs_the_jobs_command(fake_host):
    job = ContainerJobFactory(docker_host=fake_host, command="echo from a job")
    executor = get_executor(fake_host)

    launched, container_id = executor.launch_job(job)
    assert launched is True
    assert _stdout(executor, container_id) == b"from a job\n"
    assert executor.find_container(JobSpec.from_job(job).name) == container_id


@pytest.mark.django_db
def test_fake_serves_the_docker_service_facade(fake_host):
    from container_manager.docker_service import DockerService
    from container_manager.exceptions import ContainerExecutionError
    from container_manager.testing.factories import ContainerJobFactory

    service = DockerService()
    job = ContainerJobFactory(docker_host=fake_host, command="echo via-facade")
    job.container_id = service.create_container(job)
    assert service.create_container(job) == job.container_id, "deterministic name: same one"
    assert service.start_container(job) is True
    assert service.get_container_stats(fake_host, job.container_id)["memory_usage"] == 0
    assert service.pull_image(fake_host, "busybox:latest") is True
    FakeExecutor.engine_for(fake_host.connection_string).missing_images.add("gone:1")
    with pytest.raises(ContainerExecutionError, match="gone:1"):
        service.pull_image(fake_host, "gone:1")
    assert service.remove_container(job) is True


@pytest.mark.django_db
def test_a_host_without_engine_url_is_a_configuration_error(fake_host):
    from container_manager.exceptions import ConfigurationError

    fake_host.connection_string = ""
    with pytest.raises(ConfigurationError, match="has no engine URL"):
        FakeExecutor({"docker_host": fake_host})


def test_tail_output_keeps_the_last_lines_of_a_stream(fake_host):
    engine = FakeExecutor.engine_for(fake_host.connection_string)
    engine.script(FakeOutcome(stdout=b"".join(b"line %d\n" % i for i in range(100)) + b"partial"))
    executor = FakeExecutor({"docker_host": fake_host})
    spec = JobSpec(job_id="t", attempt=1, image="busybox")
    container_id = executor.run(spec)
    assert executor.tail_output(container_id, "stdout", 3) == b"line 98\nline 99\npartial"
    assert executor.tail_output(container_id, "stderr", 3) == b""
