"""DockerExecutor against the real engine: what the unit tests mock, done for real.

Every container carries this session's label (specs are built with ``JobSpec.from_job`` or
with ``extra_labels``) and each test removes what it created.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import docker
import pytest

from container_manager.exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ImageUnavailableError,
)
from container_manager.executors.base import LABEL_JOB, LABEL_MANAGED, JobSpec
from container_manager.executors.docker import DockerExecutor
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory
from tests.conftest import OOM_COMMAND, SESSION_ID, SESSION_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

#: A registry on loopback that refuses at once: a pull fails fast and goes nowhere.
MISSING_IMAGE = "127.0.0.1:1/container-jobs/missing:latest"
#: An engine URL where nothing answers.
DEAD_ENGINE = "tcp://127.0.0.1:1"
MiB = 1024 * 1024


@pytest.fixture
def executor(engine_host) -> Iterator[DockerExecutor]:
    executor = DockerExecutor({"docker_host": engine_host})
    yield executor
    executor.close()


@pytest.fixture
def remove_later(docker_client) -> Iterator[Callable[[str], str]]:
    """Register a container id to remove at the end of the test."""
    created: list[str] = []

    def register(container_id: str) -> str:
        created.append(container_id)
        return container_id

    yield register
    for container_id in created:
        with suppress(docker.errors.NotFound):
            docker_client.api.remove_container(container_id, force=True)


@pytest.fixture
def case_labels(settings) -> dict[str, str]:
    """Labels that scope the app's containers to this one test (``CONTAINER_LABELS``), so
    that listing and cleaning up cannot see any other test's containers."""
    labels = {SESSION_LABEL: SESSION_ID, "container_manager.test-case": uuid.uuid4().hex}
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "CONTAINER_LABELS": labels}
    return labels


def _spec(image: str, *argv: str, labels: dict[str, str] | None = None, **kwargs: Any) -> JobSpec:
    return JobSpec(
        job_id=uuid.uuid4().hex,
        attempt=1,
        image=image,
        argv=list(argv),
        extra_labels=labels or {SESSION_LABEL: SESSION_ID},
        network_mode="none",
        **kwargs,
    )


def _output(executor: DockerExecutor, container_id: str, stream: str) -> bytes:
    return b"".join(executor.iter_output(container_id, stream))


def _containers_of(docker_client, spec: JobSpec) -> list[Any]:
    return docker_client.containers.list(all=True, filters={"label": f"{LABEL_JOB}={spec.job_id}"})


# ---- running -----------------------------------------------------------------------------


def test_real_stdout_and_exit_code(executor, test_image, remove_later):
    container_id = remove_later(executor.run(_spec(test_image, "sh", "-c", "echo hello; exit 3")))

    assert executor.wait(container_id, timeout=30) == 3
    state = executor.inspect(container_id)
    assert state.status == "exited"
    assert state.exit_code == 3
    assert state.has_exited
    assert state.started_at is not None
    assert state.finished_at is not None  # (the engine may stamp it a hair before StartedAt)
    assert _output(executor, container_id, "stdout") == b"hello\n"
    assert executor.get_logs(container_id) == "hello\n"
    assert executor.check_status(container_id) == "exited"


def test_stderr_is_kept_apart_from_stdout(executor, test_image, remove_later):
    script = "echo out-1; echo err-1 >&2; echo out-2; echo err-2 >&2"
    container_id = remove_later(executor.run(_spec(test_image, "sh", "-c", script)))

    assert executor.wait(container_id, timeout=30) == 0
    assert _output(executor, container_id, "stdout") == b"out-1\nout-2\n"
    assert _output(executor, container_id, "stderr") == b"err-1\nerr-2\n"
    assert executor.get_logs(container_id, tail=1) in {"out-2\n", "err-2\n"}


def test_both_streams_in_one_read_keep_their_own_bytes(executor, test_image, remove_later):
    # 100 KiB lines on stdout (the engine splits them into frames) between stderr lines.
    script = "echo err-1 >&2; head -c 102400 /dev/zero | tr '\\0' x; echo; echo err-2 >&2"
    container_id = remove_later(executor.run(_spec(test_image, "sh", "-c", script)))

    assert executor.wait(container_id, timeout=30) == 0
    read: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for stream, chunk in executor.iter_outputs(container_id):
        read[stream] += chunk
    assert read["stdout"] == b"x" * 102400 + b"\n"
    assert read["stderr"] == b"err-1\nerr-2\n"
    assert read["stdout"] == _output(executor, container_id, "stdout")


def test_both_streams_of_a_vanished_container(executor):
    with pytest.raises(ContainerNotFoundError):
        list(executor.iter_outputs("cm-no-such-container"))


def test_environment_reaches_the_container(executor, engine_host, test_image, remove_later):
    job = ContainerJobFactory(
        docker_host=engine_host,
        docker_image=test_image,
        command="""sh -c 'echo "$GREETING|$EMPTY|$WITH_EQUALS"'""",
        override_environment="GREETING=hello world\nEMPTY=\nWITH_EQUALS=a=b",
    )

    launched, container_id = executor.launch_job(job)
    assert launched is True
    remove_later(container_id)
    assert executor.wait(container_id, timeout=30) == 0
    assert _output(executor, container_id, "stdout") == b"hello world||a=b\n"


def test_cpu_and_memory_limits_are_applied(
    executor, engine_host, test_image, docker_client, remove_later
):
    job = ContainerJobFactory(
        docker_host=engine_host, docker_image=test_image, memory_limit=64, cpu_limit=0.5
    )

    container_id = remove_later(executor.create_container(job))
    attrs = docker_client.api.inspect_container(container_id)
    assert attrs["HostConfig"]["Memory"] == 64 * MiB
    assert attrs["HostConfig"]["MemorySwap"] == 64 * MiB
    assert attrs["HostConfig"]["CpuPeriod"] == 100_000
    assert attrs["HostConfig"]["CpuQuota"] == 50_000
    assert attrs["Config"]["Labels"][LABEL_MANAGED] == "true"
    assert attrs["Config"]["Labels"][SESSION_LABEL] == SESSION_ID
    assert attrs["State"]["Status"] == "created"  # created, not started


def test_a_memory_limit_really_kills(executor, test_image, remove_later):
    spec = _spec(test_image, *OOM_COMMAND, memory_limit_mb=8)
    container_id = remove_later(executor.run(spec))

    assert executor.wait(container_id, timeout=30) == 137
    state = executor.inspect(container_id)
    assert state.oom_killed is True
    assert state.exit_code == 137


def test_a_timeout_really_stops_the_container(executor, test_image, remove_later):
    spec = _spec(test_image, "sh", "-c", "trap '' TERM; sleep 30")
    container_id = remove_later(executor.run(spec))

    assert executor.wait(container_id, timeout=0.5) is None
    assert executor.check_status(container_id) == "running"
    assert executor.stop_container(container_id, grace=1) is True
    state = executor.inspect(container_id)
    assert state.status == "exited"
    assert state.exit_code == 137  # the job ignores SIGTERM: killed after the grace
    assert executor.wait(container_id, timeout=5) == 137


def test_sigterm_reaches_the_job_through_the_init_process(executor, test_image, remove_later):
    """Without an init process, ``sleep`` as PID 1 would ignore SIGTERM (137 after the
    grace); with it, the signal reaches the job, which ends at once (143)."""
    container_id = remove_later(executor.run(_spec(test_image, "sleep", "30")))
    assert executor.wait(container_id, timeout=0.5) is None
    executor.stop_container(container_id, grace=10)
    state = executor.inspect(container_id)
    assert state.exit_code == 143
    assert state.finished_at and state.started_at
    assert (state.finished_at - state.started_at).total_seconds() < 5


def test_a_missing_program_exits_127_with_the_init_processs_word(
    executor, test_image, remove_later
):
    container_id = remove_later(executor.run(_spec(test_image, "/no/such/program")))
    assert executor.wait(container_id, timeout=30) == 127
    stderr = b"".join(executor.iter_output(container_id, "stderr")).decode()
    assert "exec /no/such/program failed" in stderr


def test_run_twice_with_the_same_spec_returns_the_same_container(
    executor, test_image, docker_client, remove_later
):
    spec = _spec(test_image, "sh", "-c", "echo once")

    first = remove_later(executor.run(spec))
    assert executor.wait(first, timeout=30) == 0
    second = executor.run(spec)

    assert second == first
    assert executor.find_container(spec.name) == first
    assert [c.id for c in _containers_of(docker_client, spec)] == [first]
    # The exited container was not started again.
    assert executor.get_logs(first) == "once\n"


# ---- what goes wrong ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auto_pull", "expected"),
    [(True, "could not be pulled"), (False, "the host does not pull images")],
    ids=["auto-pull", "no-pull"],
)
def test_a_missing_image_is_a_clear_error_and_leaves_nothing(
    executor, docker_client, auto_pull, expected
):
    spec = _spec(MISSING_IMAGE, "true", auto_pull=auto_pull)

    with pytest.raises(ImageUnavailableError) as raised:
        executor.run(spec)
    assert MISSING_IMAGE in str(raised.value)
    assert expected in str(raised.value)
    assert executor.find_container(spec.name) is None
    assert _containers_of(docker_client, spec) == []


def test_launch_job_with_a_missing_image(executor, engine_host, docker_client):
    job = ContainerJobFactory(docker_host=engine_host, docker_image=MISSING_IMAGE)

    launched, message = executor.launch_job(job)
    assert launched is False
    assert f"Image {MISSING_IMAGE!r} is not on the host" in message
    assert _containers_of(docker_client, JobSpec.from_job(job)) == []


def test_a_vanished_container(executor, test_image, docker_client, remove_later):
    spec = _spec(test_image, "sleep", "30")
    container_id = remove_later(executor.run(spec))
    docker_client.api.remove_container(container_id, force=True)

    assert executor.check_status(container_id) == "not-found"
    assert "not found" in executor.get_logs(container_id).lower()
    assert container_id in executor.get_logs(container_id)
    assert executor.cleanup(container_id) is True
    assert executor.stop_container(container_id, grace=0) is True
    assert executor.find_container(spec.name) is None
    with pytest.raises(ContainerNotFoundError):
        executor.inspect(container_id)
    with pytest.raises(ContainerNotFoundError):
        executor.wait(container_id, timeout=1)


def test_a_dead_engine():
    host = ExecutorHostFactory(connection_string=DEAD_ENGINE, auto_pull_images=False)
    job = ContainerJobFactory(docker_host=host, docker_image="busybox:latest")
    executor = DockerExecutor({"docker_host": host})

    assert executor.health_check() is False
    launched, message = executor.launch_job(job)
    assert launched is False
    assert f"cannot reach the engine at {DEAD_ENGINE}" in message
    with pytest.raises(ExecutorConnectionError):
        executor.get_version()


def test_cleanup_is_idempotent(executor, test_image, remove_later):
    container_id = remove_later(executor.run(_spec(test_image, "true")))
    assert executor.wait(container_id, timeout=30) == 0

    assert executor.cleanup(container_id) is True
    assert executor.cleanup(container_id) is True
    assert executor.check_status(container_id) == "not-found"


# ---- inspection and maintenance ----------------------------------------------------------


def test_list_containers_returns_only_the_apps_containers(
    executor, test_image, docker_client, remove_later
):
    spec = _spec(test_image, "true")
    ours = remove_later(executor.run(spec))
    # Same session label, but not the app's label: not one of ours.
    unlabelled = docker_client.containers.create(
        test_image, ["true"], labels={SESSION_LABEL: SESSION_ID}, network_mode="none"
    )
    try:
        listed = {c["id"]: c for c in executor.list_containers()}
    finally:
        unlabelled.remove(force=True)

    assert ours in listed
    assert unlabelled.id not in listed
    assert listed[ours]["name"] == spec.name
    assert listed[ours]["image"] == test_image
    assert listed[ours]["labels"][LABEL_JOB] == spec.job_id
    assert all(c["labels"][LABEL_MANAGED] == "true" for c in listed.values())
    assert all(c["labels"][SESSION_LABEL] == SESSION_ID for c in listed.values())


def test_cleanup_old_containers_removes_only_old_exited_app_containers(
    executor, test_image, docker_client, case_labels, remove_later
):
    old = remove_later(executor.run(_spec(test_image, "true", labels=case_labels)))
    assert executor.wait(old, timeout=30) == 0
    recent = remove_later(executor.run(_spec(test_image, "true", labels=case_labels)))
    assert executor.wait(recent, timeout=30) == 0
    running = remove_later(executor.run(_spec(test_image, "sleep", "30", labels=case_labels)))
    foreign = remove_later(
        docker_client.containers.run(
            test_image, ["true"], labels=case_labels, network_mode="none", detach=True
        ).id
    )
    assert docker_client.api.wait(foreign, timeout=30)["StatusCode"] == 0

    cutoff = executor.inspect(recent).finished_at
    assert cutoff is not None
    assert executor.inspect(old).finished_at < cutoff

    assert executor.cleanup_old_containers(cutoff) == 1
    assert executor.check_status(old) == "not-found"
    assert executor.check_status(recent) == "exited"
    assert executor.check_status(running) == "running"
    assert docker_client.containers.get(foreign).status == "exited"
    assert {c["id"] for c in executor.list_containers()} == {recent, running}


def test_get_resource_usage_of_a_running_container(executor, test_image, remove_later):
    container_id = remove_later(executor.run(_spec(test_image, "sleep", "30")))

    usage = executor.get_resource_usage(container_id)
    assert usage["memory_usage"] > 0
    assert usage["cpu_usage"] >= 0
    assert usage["memory_limit"] > 0
    assert executor.get_container_stats(container_id)["memory_usage"] > 0


def test_health_check_and_version_of_the_real_engine(executor, docker_client):
    assert executor.health_check() is True
    assert executor.get_version() == docker_client.version()["Version"]


@pytest.fixture
def image_with_a_volume(docker_client, test_image) -> Iterator[str]:
    """An image that declares ``VOLUME /data`` (built from the offline test image)."""
    import io

    tag = f"container-jobs/with-volume:{SESSION_ID}"
    dockerfile = f"FROM {test_image}\nVOLUME /data\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    yield tag
    with suppress(docker.errors.APIError):
        docker_client.images.remove(tag, force=True)


@pytest.mark.parametrize("removal", ["cleanup", "discard"])
def test_removing_a_container_removes_its_anonymous_volumes(
    executor, image_with_a_volume, docker_client, removal
):
    """An image's VOLUME gets an anonymous volume per container; removing the container
    takes it along (the reaper never sees volumes, so nothing else would)."""
    container_id = executor.run(_spec(image_with_a_volume, "sh", "-c", "echo x > /data/f"))
    assert executor.wait(container_id, timeout=30) == 0
    mounts = docker_client.api.inspect_container(container_id)["Mounts"]
    (volume,) = [m["Name"] for m in mounts if m["Type"] == "volume"]
    assert docker_client.volumes.get(volume)

    try:
        getattr(executor, removal)(container_id)
        with pytest.raises(docker.errors.NotFound):
            docker_client.volumes.get(volume)
    finally:
        with suppress(docker.errors.APIError):
            docker_client.api.remove_container(container_id, force=True, v=True)
        with suppress(docker.errors.APIError):
            docker_client.volumes.get(volume).remove(force=True)


def test_the_engine_keeps_only_the_capped_log_and_the_tail_survives(
    executor, test_image, docker_client, remove_later, settings
):
    """A job's json-file log on the engine's disk stays within ENGINE_LOG_MAX_BYTES (two
    files of half each) however much it prints; its last lines are still there to harvest."""
    import os

    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_LOG_MAX_BYTES": 64 * 1024}
    script = "i=0; while [ $i -lt 8000 ]; do echo line-$i-padding-padding; i=$((i+1)); done"
    container_id = remove_later(executor.run(_spec(test_image, "sh", "-c", script)))
    assert executor.wait(container_id, timeout=60) == 0
    attrs = docker_client.api.inspect_container(container_id)
    assert attrs["HostConfig"]["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-file": "2", "max-size": "32768"},
    }
    log_dir = os.path.dirname(attrs["LogPath"])
    kept = sum(
        os.path.getsize(os.path.join(log_dir, name))
        for name in os.listdir(log_dir)
        if name.startswith(os.path.basename(attrs["LogPath"]))
    )
    assert kept <= 2 * 32768 + 4096, "about 330 KB printed, at most the cap kept"
    assert executor.tail_output(container_id, "stdout", 1) == b"line-7999-padding-padding\n"
