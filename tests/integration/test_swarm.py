"""The ``swarm`` executor on a real single-node swarm.

The tests start their own engine (tests/engines.py: own data root and socket), make it a
one-node swarm on loopback ports, run jobs through the real Worker (output, a failure, a
timeout, a cancellation, the job spec: mounts, user, read-only root, secrets, hardening,
network), and run the executor contract (test_executor_contract.py) against it. At the end
the engine leaves the swarm and is destroyed; the main engine is not touched.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import docker
import pytest
from django.core import serializers

from container_manager.exceptions import InvalidJobError
from container_manager.executors.base import BaseExecutor, JobSpec
from container_manager.executors.swarm import SwarmExecutor
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.testing.images import TEST_IMAGE, build_busybox_image
from container_manager.worker import Worker
from tests.conftest import SESSION_ID, SESSION_LABEL, _require, until
from tests.engines import DedicatedEngine, free_port

# The executor contract, run here against the swarm executor (where every concept matches).
from tests.integration.test_executor_contract import Engine, contract

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

globals().update(contract())


@pytest.fixture(scope="module")
def swarm_engine() -> Iterator[DedicatedEngine]:
    """A dedicated engine made a single-node swarm (manager) on loopback, with the offline
    test image; it leaves the swarm and is destroyed afterwards."""
    engine = DedicatedEngine("swarm")
    try:
        engine.start()
    except RuntimeError as err:
        _require(f"cannot start a dedicated engine for the swarm: {err}")
    try:
        with engine.client() as client:
            try:
                client.swarm.init(
                    advertise_addr="127.0.0.1",
                    listen_addr=f"127.0.0.1:{free_port()}",
                    data_path_port=free_port(socket.SOCK_DGRAM),
                )
            except docker.errors.APIError as err:
                _require(f"the dedicated engine cannot become a swarm manager: {err}")
            build_busybox_image(client)
        yield engine
    finally:
        with suppress(docker.errors.DockerException), engine.client() as client:
            client.swarm.leave(force=True)
        engine.destroy()


@pytest.fixture
def swarm_client(swarm_engine) -> Iterator[Any]:
    with swarm_engine.client() as client:
        yield client


@pytest.fixture
def swarm_host(db, swarm_engine) -> ExecutorHost:
    return ExecutorHost.objects.create(
        name="swarm",
        connection_string=swarm_engine.url,
        executor_type="swarm",
        auto_pull_images=False,
        max_concurrent_jobs=10,
    )


@pytest.fixture(autouse=True)
def fast(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "STATS_INTERVAL": 0.2,
        "STOP_GRACE_SECONDS": 1,
    }


class SwarmEngine(Engine):
    """The contract's engine, for the swarm executor."""

    def dead(self) -> BaseExecutor:
        return SwarmExecutor({"docker_host": "tcp://127.0.0.1:1"})


@pytest.fixture
def engine(swarm_host, swarm_client) -> Iterator[Engine]:
    """What the contract tests run against: the swarm executor on the swarm engine."""
    executor = SwarmExecutor({"docker_host": swarm_host})
    under_test = SwarmEngine("swarm", executor, swarm_host)
    yield under_test
    for service_id in under_test.created:
        with suppress(docker.errors.NotFound):
            swarm_client.api.remove_service(service_id)
    executor.close()


def services_named(client: Any, name: str) -> list[Any]:
    return [s for s in client.services.list(filters={"name": name}) if s.name == name]


def burst(concurrency: int = 2) -> None:
    Worker(concurrency=concurrency, burst=True, shutdown_timeout=10).run()


def fresh(job):
    job.refresh_from_db()
    return job


# ---- jobs through the worker ---------------------------------------------------------------


def test_jobs_complete_and_fail_with_their_output_and_exit_codes(swarm_host, swarm_client):
    ok = submit(
        host=swarm_host,
        image=TEST_IMAGE,
        command=["sh", "-c", 'echo "hello $GREETING"; echo "to stderr" >&2'],
        environment={"GREETING": "from the swarm"},
    )
    bad = submit(host=swarm_host, image=TEST_IMAGE, command=["sh", "-c", "echo partial; exit 7"])
    workdir = submit(host=swarm_host, image=TEST_IMAGE, command="pwd", working_directory="/tmp")

    burst()

    ok, bad, workdir = map(fresh, (ok, bad, workdir))
    assert (ok.status, ok.exit_code) == (JobStatus.COMPLETED, 0)
    assert ok.stdout_log == "hello from the swarm\n"
    assert ok.stderr_log == "to stderr\n"
    assert (bad.status, bad.exit_code, bad.stdout_log) == (JobStatus.FAILED, 7, "partial\n")
    assert bad.last_error == "Exited with code 7."
    assert (workdir.status, workdir.stdout_log) == (JobStatus.COMPLETED, "/tmp\n")
    for job in (ok, bad, workdir):
        attempt = JobAttempt.objects.get(job=job)
        assert attempt.container_id == job.container_id, "the service id is the container id"
        assert services_named(swarm_client, attempt.container_name) == [], "service removed"


def test_a_timeout_stops_the_task_and_removes_the_service(swarm_host, swarm_client):
    job = submit(host=swarm_host, image=TEST_IMAGE, command="sleep 60", timeout_seconds=2)
    started = time.monotonic()

    burst()

    job = fresh(job)
    assert job.status == JobStatus.TIMEOUT
    assert job.last_error.startswith("Timed out after 2s")
    assert time.monotonic() - started < 20, "stopped, not waited out"
    name = JobAttempt.objects.get(job=job).container_name
    assert services_named(swarm_client, name) == []


def test_cancelling_a_running_job_stops_it_and_removes_the_service(swarm_host, swarm_client):
    job = submit(host=swarm_host, image=TEST_IMAGE, command="sleep 60")
    worker = Worker(concurrency=1, burst=True, shutdown_timeout=10)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while fresh(job).status != JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.status == JobStatus.RUNNING
        assert job.cancel() is True
        thread.join(30)
        assert not thread.is_alive(), "the cancelled job ended the burst"
    finally:
        worker.stop()
        thread.join(30)

    job = fresh(job)
    assert job.status == JobStatus.CANCELLED
    assert job.last_error == "Cancelled while running; the container was stopped."
    name = JobAttempt.objects.get(job=job).container_name
    assert services_named(swarm_client, name) == []
    # Removing the service removed its task's container too (job mode on 20.10 would not).
    # (The low-level listing: no inspection of each container, which races its removal.)
    until(lambda: not swarm_client.api.containers(
        all=True, filters={"label": f"container_manager.job={job.pk}"}
    ), timeout=15)  # fmt: skip


# ---- what the engine was asked ---------------------------------------------------------------


def test_limits_environment_and_labels_reach_the_task(engine, swarm_client):
    spec = JobSpec(
        job_id="limits",
        attempt=1,
        image=TEST_IMAGE,
        argv=["sh", "-c", 'echo "$GREETING"; sleep 30'],
        environment={"GREETING": "limited"},
        memory_limit_mb=64,
        cpu_limit=0.5,
        extra_labels={SESSION_LABEL: SESSION_ID},
    )
    service_id = engine.run(spec)

    service = swarm_client.api.inspect_service(service_id)
    assert service["Spec"]["Name"] == spec.name
    # 20.10 (API 1.41): one replica, never restarted; job mode only where removal works.
    assert service["Spec"]["Mode"] == {"Replicated": {"Replicas": 1}}
    assert service["Spec"]["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    assert service["Spec"]["Labels"][SESSION_LABEL] == SESSION_ID
    task = swarm_client.api.tasks(filters={"service": service_id})[0]
    container = swarm_client.api.inspect_container(task["Status"]["ContainerStatus"]["ContainerID"])
    assert container["HostConfig"]["Memory"] == 64 * 1024 * 1024, "the limit is enforced"
    assert container["HostConfig"]["NanoCpus"] == 500_000_000
    assert "GREETING=limited" in container["Config"]["Env"]
    assert container["Config"]["Labels"][SESSION_LABEL] == SESSION_ID, "labels on the container"
    assert container["Config"]["Labels"]["container_manager.job"] == "limits"
    assert engine.executor.get_resource_usage(service_id)["memory_limit"] == 64 * 1024 * 1024
    assert engine.executor.stop_container(service_id, grace=0) is True
    assert engine.executor.get_logs(service_id) == "limited\n"


def test_health_check_is_false_for_an_engine_that_is_no_swarm_manager(docker_client):
    """The main engine is not in a swarm: it answers, but it cannot run services."""
    from tests.conftest import ENGINE_URL

    executor = SwarmExecutor({"docker_host": ENGINE_URL})
    try:
        assert executor.health_check() is False
        assert executor.get_version()
    finally:
        executor.close()


# ---- the job spec on the swarm ----------------------------------------------------------------


def remove_leftovers(client: Any, **filters: str) -> None:
    """Remove the task containers (matching ``filters``) that removed services left behind:
    on this engine (20.10) removing a ``replicated-job`` service does not remove its tasks
    or their containers (moby/moby#44312, fixed in swarmkit by moby/swarmkit#3112)."""
    for container in client.containers.list(all=True, filters=filters):
        with suppress(docker.errors.NotFound):
            container.remove(force=True)


@pytest.fixture
def swarm_volume(swarm_client) -> Iterator[str]:
    """The name of a volume the test's jobs create on the swarm's node; removed afterwards."""
    name = f"cm-swarm-data-{uuid.uuid4().hex[:8]}"
    yield name
    remove_leftovers(swarm_client, volume=name)
    with suppress(docker.errors.NotFound):
        swarm_client.volumes.get(name).remove()
    assert swarm_client.volumes.list(filters={"name": name}) == []


JOB_SCRIPT = r"""
id -u; id -g
df -k /scratch /dev/shm | sed 1d
cat /data/note
touch /rootfs-probe 2>/dev/null && echo "rootfs: writable" || echo "rootfs: read-only"
printf %s "$API_TOKEN" | sha256sum
grep CapBnd /proc/self/status
echo "pids.max $(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)"
"""
CAP_NET_ADMIN, CAP_MKNOD = 12, 27


def test_a_job_with_mounts_user_read_only_root_secret_and_limits(
    swarm_host, swarm_volume, monkeypatch, settings
):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "DEFAULT_PIDS_LIMIT": 321}
    secret = f"swarm-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("CM_SWARM_TEST_TOKEN", secret)
    swarm_host.allowed_capabilities = ["NET_ADMIN"]
    swarm_host.save()
    # As the image's user (root): write a note into the fresh volume, hand it to uid 1000.
    writer = submit(
        host=swarm_host,
        image=TEST_IMAGE,
        command=[
            "sh",
            "-c",
            "echo persisted > /data/note && chown -R 1000:1000 /data && "
            "{ cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max; }",
        ],
        mounts=[f"volume:{swarm_volume}:/data"],
    )
    burst()
    job = submit(
        host=swarm_host,
        image=TEST_IMAGE,
        command=["sh", "-c", JOB_SCRIPT],
        user="1000:1000",
        mounts=[f"volume:{swarm_volume}:/data", "tmpfs:/scratch:16"],
        read_only_rootfs=True,
        secret_environment={"API_TOKEN": "env:CM_SWARM_TEST_TOKEN"},
        shm_size_mb=32,
        pids_limit=64,
        cap_add=["NET_ADMIN"],
        cap_drop=["MKNOD"],
    )

    burst()

    writer, job = fresh(writer), fresh(job)
    assert (writer.status, writer.stdout_log) == (JobStatus.COMPLETED, "321\n"), (
        "the DEFAULT_PIDS_LIMIT setting applies on the swarm"
    )
    assert job.status == JobStatus.COMPLETED, job.stderr_log or job.last_error
    lines = job.stdout_log.splitlines()
    assert lines[:2] == ["1000", "1000"], "id -u, id -g"
    assert re.fullmatch(r"tmpfs\s+16384\s+\d+\s+\d+\s+\d+%\s+/scratch", lines[2]), lines[2]
    assert re.fullmatch(r"tmpfs\s+32768\s+\d+\s+\d+\s+\d+%\s+/dev/shm", lines[3]), lines[3]
    assert lines[4] == "persisted", "the volume kept what the previous job wrote"
    assert lines[5] == "rootfs: read-only"
    assert lines[6] == f"{hashlib.sha256(secret.encode()).hexdigest()}  -", "the secret arrived"
    bounding = int(lines[7].split()[1], 16)
    assert bounding >> CAP_NET_ADMIN & 1, "NET_ADMIN added"
    assert not bounding >> CAP_MKNOD & 1, "MKNOD dropped"
    assert lines[8] == "pids.max 64"
    rows = serializers.serialize("json", [job, *JobAttempt.objects.filter(job=job)])
    assert secret not in rows, "the secret's value is in no job or attempt row"
    attempt = JobAttempt.objects.get(job=job)
    assert attempt.spec["secret_environment"] == ["API_TOKEN"], "recorded by name"
    assert attempt.spec["user"] == "1000:1000"


def test_a_job_is_attached_to_the_swarm_network_it_names(engine, swarm_client):
    network = swarm_client.networks.create(f"cm-swarm-net-{uuid.uuid4().hex[:8]}", driver="overlay")
    service_id = ""
    try:
        spec = JobSpec(
            job_id=uuid.uuid4().hex,
            attempt=1,
            image=TEST_IMAGE,
            argv=["sleep", "30"],
            extra_labels={SESSION_LABEL: SESSION_ID},
            network_mode=network.name,
        )
        service_id = engine.run(spec)

        task = swarm_client.api.tasks(filters={"service": service_id})[0]
        container = swarm_client.api.inspect_container(
            task["Status"]["ContainerStatus"]["ContainerID"]
        )
        assert list(container["NetworkSettings"]["Networks"]) == [network.name]
        assert engine.executor.stop_container(service_id, grace=0) is True
    finally:
        if service_id:
            engine.executor.cleanup(service_id)
        remove_leftovers(swarm_client, network=network.id)
        network.remove()
    assert gone_eventually(lambda: swarm_client.networks.get(network.id)), "network removed"


def gone_eventually(get: Callable[[], Any], timeout: float = 10) -> bool:
    """Whether ``get`` raises NotFound within ``timeout``: the swarm removes a network's
    copy on its node a moment after the network is removed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get()
        except docker.errors.NotFound:
            return True
        time.sleep(0.1)
    return False


def test_network_none_is_refused_at_submission_or_fails_the_launch_once(
    swarm_host, swarm_client, settings
):
    """Swarm has no "none" network (only a plain engine's NETWORK_MODE setting may say
    "none", and Swarm ignores that): a job naming it is refused at submission; one that
    reaches a worker anyway (saved without validation) fails once, before anything is asked
    of the engine."""
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": None}
    refusal = (
        "The swarm executor cannot honour network 'none': Swarm has no such"
        " network (its predefined networks are bridge and host)."
    )
    with pytest.raises(InvalidJobError, match="network: The swarm executor cannot honour"):
        submit(host=swarm_host, image=TEST_IMAGE, command="true", network="none")
    job = ContainerJob.objects.create(
        docker_host=swarm_host, docker_image=TEST_IMAGE, command="true", network="none",
        max_retries=2,
    )  # fmt: skip

    burst()

    job = fresh(job)
    assert job.status == JobStatus.FAILED
    assert job.last_error == f"Launch failed: {refusal}"
    assert JobAttempt.objects.filter(job=job).count() == 1, "not retried"
    assert services_named(swarm_client, JobAttempt.objects.get(job=job).container_name) == []
