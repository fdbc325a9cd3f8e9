"""The container spec of issue 11 on the real Docker engine: mounts, networks, users,
hardening, secrets and capacity, each seen from inside the job (or by inspecting it).

Jobs go end to end: ``queue.submit(...)``, then the real :class:`Worker` in burst mode.
Everything created on the engine (containers, volumes, networks) carries this session's id
and is removed at teardown; nothing else is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import re
import threading
from io import StringIO

import pytest
from django.core.management import call_command

from container_manager import health
from container_manager.exceptions import InvalidJobError
from container_manager.models import ContainerJob, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker
from tests.conftest import SESSION_ID, SESSION_LABEL, job_containers, until

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

#: Docker's default capability set (moby's oci/caps/defaults.go), by capability number.
_DEFAULT_CAPS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "SYS_CHROOT": 18,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}
_NET_ADMIN = 12
_MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def fast(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "STATS_INTERVAL": 0.2,
        "STOP_GRACE_SECONDS": 1,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
    }


@pytest.fixture
def volume_name(docker_client):
    """A volume name of this session; the volume (made by the first job using it) is removed."""
    import docker

    name = f"cm-test-{SESSION_ID}-data"
    with pytest.raises(docker.errors.NotFound):
        docker_client.volumes.get(name)  # not there before: whatever is there at the end is ours
    yield name
    _remove_session_containers(docker_client, volume=name)
    with contextlib.suppress(docker.errors.NotFound):
        docker_client.volumes.get(name).remove(force=True)


@pytest.fixture
def network(docker_client):
    """A network of this session on the engine, removed at teardown.

    The engine runs with ``--bridge=none --iptables=false``: that removes only the default
    ``docker0`` bridge and the NAT rules, so a user-defined bridge network can still be made.
    It is ``internal`` (no route out) since a test network needs none.
    """
    made = docker_client.networks.create(
        f"cm-test-{SESSION_ID}-net",
        driver="bridge",
        internal=True,
        labels={SESSION_LABEL: SESSION_ID},
    )
    made.reload()
    yield made
    _remove_session_containers(docker_client, network=made.id)
    made.remove()


def _remove_session_containers(client, **using: str) -> None:
    """This session's containers still using a volume or network (a failed test's): the
    volume or network cannot be removed while they exist."""
    filters = {"label": f"{SESSION_LABEL}={SESSION_ID}", **using}
    for container in client.containers.list(all=True, filters=filters, ignore_removed=True):
        container.remove(force=True)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def burst(concurrency: int = 4) -> None:
    Worker(concurrency=concurrency, burst=True, shutdown_timeout=10).run()


def fresh(job: ContainerJob) -> ContainerJob:
    job.refresh_from_db()
    return job


def completed(job: ContainerJob) -> ContainerJob:
    job = fresh(job)
    assert (job.status, job.exit_code) == (JobStatus.COMPLETED, 0), (
        job.last_error,
        job.stderr_log,
    )
    return job


def attempt_spec(job: ContainerJob) -> dict:
    return JobAttempt.objects.get(job=job, number=1).spec


def running(client, job: ContainerJob) -> list:
    """The job's running containers (of this session); one that ends meanwhile is skipped."""
    labels = [f"{SESSION_LABEL}={SESSION_ID}", f"container_manager.job={job.pk}"]
    return client.containers.list(filters={"label": labels}, ignore_removed=True)


def status_field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in {text!r}"
    return match[1]


def df_kilobytes(text: str, mount_point: str) -> int:
    """The size column (1K blocks) of ``df -k``'s line for ``mount_point``."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[-1] == mount_point:
            return int(parts[1])
    raise AssertionError(f"{mount_point} not in df output {text!r}")


# ---- mounts ----------------------------------------------------------------------------


def test_a_named_volume_keeps_data_from_one_job_to_the_next(
    engine_host, test_image, volume_name, docker_client
):
    writer = submit(
        host=engine_host,
        image=test_image,
        command=sh(f"echo written-by-{SESSION_ID} > /data/note"),
        mounts=[f"volume:{volume_name}:/data"],
    )
    burst()
    completed(writer)
    reader = submit(
        host=engine_host,
        image=test_image,
        command=sh("cat /data/note; touch /data/other || echo refused"),
        mounts=[{"type": "volume", "source": volume_name, "target": "/data", "read_only": True}],
    )
    burst()
    reader = completed(reader)
    assert reader.stdout_log.splitlines() == [f"written-by-{SESSION_ID}", "refused"]
    assert "Read-only file system" in reader.stderr_log
    assert docker_client.volumes.get(volume_name).attrs["Driver"] == "local"
    assert attempt_spec(writer)["mounts"] == [
        {"type": "volume", "source": volume_name, "target": "/data", "read_only": False}
    ]
    assert attempt_spec(reader)["mounts"][0]["read_only"] is True


def test_a_bind_under_an_allowed_prefix_is_read_only_by_default(engine_host, test_image, tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    outputs.mkdir()
    (inputs / "input.txt").write_text("input for the job\n")
    engine_host.allowed_bind_prefixes = [str(tmp_path)]
    engine_host.save()
    job = submit(
        host=engine_host,
        image=test_image,
        command=sh(
            "cat /in/input.txt; touch /in/new || echo in-refused;"
            " echo result > /out/result && echo out-written"
        ),
        mounts=[f"bind:{inputs}:/in", f"bind:{outputs}:/out:rw"],
    )
    assert job.mounts[0]["read_only"] is True, "a bind is read-only unless it says rw"
    missing = submit(
        host=engine_host,
        image=test_image,
        command="true",
        mounts=[f"bind:{tmp_path}/gone:/in"],
        max_retries=2,
    )
    burst()
    job, missing = completed(job), fresh(missing)
    # The engine does not make a missing source (as `docker run -v` would): the job fails,
    # at once (a 400 at create: a retry would only repeat it).
    assert (missing.status, missing.attempt_count) == (JobStatus.FAILED, 1)
    assert f"bind source path does not exist: {tmp_path}/gone" in missing.last_error
    assert not (tmp_path / "gone").exists()
    assert job.stdout_log.splitlines() == ["input for the job", "in-refused", "out-written"]
    assert "Read-only file system" in job.stderr_log
    assert not (inputs / "new").exists()
    assert (outputs / "result").read_text() == "result\n"
    assert [m["read_only"] for m in attempt_spec(job)["mounts"]] == [True, False]


def test_a_bind_outside_the_allowed_prefixes_is_refused_at_submission(
    engine_host, test_image, tmp_path
):
    with pytest.raises(InvalidJobError, match="mounts: Host local-engine allows no bind"):
        submit(host=engine_host, image=test_image, mounts=[f"bind:{tmp_path}:/in"])
    engine_host.allowed_bind_prefixes = [str(tmp_path / "allowed")]
    engine_host.save()
    with pytest.raises(InvalidJobError, match=r"mounts: .*only under"):
        submit(host=engine_host, image=test_image, mounts=[f"bind:{tmp_path}/allowedx:/in"])
    assert not ContainerJob.objects.exists()


# ---- hardening, user, init, limits ----------------------------------------------------

_PROBE = (
    "grep -E '^(NoNewPrivs|CapEff|CapBnd):' /proc/self/status;"
    " echo pids=$(cat /sys/fs/cgroup/pids/pids.max);"
    " echo init=$(cat /proc/1/comm);"
    " touch /probe 2>/dev/null && echo rootfs=writable || echo rootfs=read-only;"
    " df -k /dev/shm; df -k /scratch 2>/dev/null || true"
)


def test_secure_defaults_and_hardening_are_seen_inside_the_job(
    engine_host, test_image, settings, docker_client
):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "DEFAULT_PIDS_LIMIT": 777}
    engine_host.allowed_capabilities = ["NET_ADMIN"]
    engine_host.save()
    plain = submit(host=engine_host, image=test_image, command=sh(_PROBE))
    hardened = submit(
        host=engine_host,
        image=test_image,
        command=sh(
            _PROBE + "; echo x > /scratch/f && echo scratch=writable;"
            " touch /frozen/f 2>/dev/null || echo frozen=read-only"
        ),
        read_only_rootfs=True,
        pids_limit=64,
        shm_size_mb=32,
        mounts=[
            "tmpfs:/scratch:16",
            {"type": "tmpfs", "target": "/frozen", "read_only": True, "size_mb": 1},
        ],
        cap_add=["NET_ADMIN"],
        cap_drop=["CHOWN"],
    )
    burst()
    plain, hardened = completed(plain), completed(hardened)
    default_caps = sum(1 << bit for bit in _DEFAULT_CAPS.values())
    # Secure defaults: no new privileges, Docker's default capabilities and no more, the
    # DEFAULT_PIDS_LIMIT setting, an init process as PID 1.
    out = plain.stdout_log
    assert status_field(out, "NoNewPrivs") == "1"
    assert int(status_field(out, "CapEff"), 16) == default_caps
    assert int(status_field(out, "CapBnd"), 16) == default_caps
    assert "pids=777" in out
    assert "init=docker-init" in out
    assert "rootfs=writable" in out
    assert df_kilobytes(out, "/dev/shm") == 64 * 1024, "the engine's default /dev/shm"
    # The job's own hardening and its exceptions.
    out = hardened.stdout_log
    expected = (default_caps | 1 << _NET_ADMIN) & ~(1 << _DEFAULT_CAPS["CHOWN"])
    assert status_field(out, "NoNewPrivs") == "1"
    assert int(status_field(out, "CapEff"), 16) == expected
    assert int(status_field(out, "CapBnd"), 16) == expected
    assert "pids=64" in out
    assert "init=docker-init" in out
    assert "rootfs=read-only" in out
    assert df_kilobytes(out, "/dev/shm") == 32 * 1024
    assert df_kilobytes(out, "/scratch") == 16 * 1024
    assert "scratch=writable" in out, "a tmpfs is writable under a read-only root"
    assert "frozen=read-only" in out, "a tmpfs that asks to be read-only is"
    recorded = attempt_spec(hardened)
    assert recorded["cap_add"] == ["NET_ADMIN"]
    assert recorded["cap_drop"] == ["CHOWN"]
    assert (recorded["read_only_rootfs"], recorded["pids_limit"], recorded["shm_size_mb"]) == (
        True,
        64,
        32,
    )
    assert (recorded["no_new_privileges"], recorded["init"]) == (True, True)
    assert recorded["mounts"] == [
        {"type": "tmpfs", "target": "/scratch", "read_only": False, "size_mb": 16},
        {"type": "tmpfs", "target": "/frozen", "read_only": True, "size_mb": 1},
    ]
    assert attempt_spec(plain)["pids_limit"] is None, "the spec records what the job asked"
    assert job_containers(docker_client, plain, hardened) == []


def test_what_the_host_does_not_allow_is_refused_at_submission(engine_host, test_image):
    with pytest.raises(InvalidJobError, match=r"cap_add: Host local-engine does not allow adding"):
        submit(host=engine_host, image=test_image, cap_add=["SYS_ADMIN"])
    engine_host.allowed_capabilities = ["NET_ADMIN"]
    engine_host.save()
    with pytest.raises(InvalidJobError, match=r"cap_add: .*SYS_ADMIN \(allowed: NET_ADMIN\)"):
        submit(host=engine_host, image=test_image, cap_add=["NET_ADMIN", "SYS_ADMIN"])
    with pytest.raises(InvalidJobError, match="privileged: Host local-engine does not allow"):
        submit(host=engine_host, image=test_image, privileged=True)
    with pytest.raises(InvalidJobError, match=r"user: Host local-engine does not allow .*root"):
        submit(host=engine_host, image=test_image, user="0")
    with pytest.raises(InvalidJobError, match=r"user: .*root"):
        submit(host=engine_host, image=test_image, user="0:1000")
    assert not ContainerJob.objects.exists()


def test_the_user_is_seen_by_id_inside_the_job(engine_host, test_image):
    both = submit(host=engine_host, image=test_image, command=sh("id -u; id -g"), user="1234:2345")
    uid_only = submit(host=engine_host, image=test_image, command=sh("id -u; id -g"), user="1234")
    engine_host.allow_root = True
    engine_host.save()
    root = submit(host=engine_host, image=test_image, command=sh("id -u; id -g"), user="0")
    burst()
    assert completed(both).stdout_log == "1234\n2345\n"
    assert completed(uid_only).stdout_log == "1234\n0\n", "no group: the engine's gid 0"
    assert completed(root).stdout_log == "0\n0\n"
    assert attempt_spec(both)["user"] == "1234:2345"


def test_gpus_reach_the_engine_as_a_device_request(engine_host, test_image, docker_client):
    """This engine has no GPU runtime: the request reaches it (and is refused by it, with
    its own words, the container removed); the mapping itself is unit-tested."""
    with pytest.raises(InvalidJobError, match="gpus: Host local-engine declares no GPUs"):
        submit(host=engine_host, image=test_image, gpus=1)
    engine_host.gpus = 1
    engine_host.save()
    with pytest.raises(InvalidJobError, match="gpus: Host local-engine declares 1 GPUs"):
        submit(host=engine_host, image=test_image, gpus=2)
    job = submit(host=engine_host, image=test_image, command="true", gpus=1)
    burst()
    job = fresh(job)
    assert job.status == JobStatus.FAILED
    assert "with capabilities: [[gpu]]" in job.last_error
    assert job_containers(docker_client, job) == []


# ---- networks ----------------------------------------------------------------------------


def test_a_job_on_an_allowed_network_is_attached_to_it(
    engine_host, test_image, network, docker_client
):
    engine_host.allowed_networks = [network.name]
    engine_host.save()
    attached = submit(
        host=engine_host,
        image=test_image,
        command=sh("ip -4 -o addr show; sleep 2"),
        network=network.name,
    )
    default = submit(host=engine_host, image=test_image, command=sh("ip -4 -o addr show"))
    worker = Worker(concurrency=2, burst=True, shutdown_timeout=10)
    thread = threading.Thread(target=worker.run)
    thread.start()
    try:
        until(lambda: running(docker_client, attached))
        (container,) = running(docker_client, attached)
        settings = container.attrs["NetworkSettings"]["Networks"]
    finally:
        thread.join(30)
    assert set(settings) == {network.name}
    subnet = ipaddress.ip_network(network.attrs["IPAM"]["Config"][0]["Subnet"])
    address = ipaddress.ip_address(settings[network.name]["IPAddress"])
    assert address in subnet
    attached, default = completed(attached), completed(default)
    assert f"inet {address}/" in attached.stdout_log, "the job sees the address inspect shows"
    assert "eth0" not in default.stdout_log, "a job naming no network gets NETWORK_MODE none"
    assert attempt_spec(attached)["network"] == network.name
    assert attempt_spec(default)["network"] == "none"


def test_a_job_naming_a_network_the_host_does_not_allow_is_refused(
    engine_host, test_image, network
):
    with pytest.raises(InvalidJobError, match="network: Host local-engine does not allow"):
        submit(host=engine_host, image=test_image, network=network.name)
    engine_host.allowed_networks = [network.name]
    engine_host.save()
    with pytest.raises(InvalidJobError, match=rf"network: .*allowed: none, {network.name}"):
        submit(host=engine_host, image=test_image, network=f"cm-test-{SESSION_ID}-other")
    assert not ContainerJob.objects.exists()


# ---- secrets -------------------------------------------------------------------------------


def _text_of(row) -> str:
    """Every column of a row as text (JSON columns included)."""
    return "\n".join(str(getattr(row, f.attname)) for f in row._meta.concrete_fields)


def test_secret_environment_reaches_the_job_and_nothing_else(
    engine_host, test_image, monkeypatch, tmp_path, caplog
):
    token = f"tok-{SESSION_ID}-value"
    from_file = f"file-{SESSION_ID}-value"
    monkeypatch.setenv("CM_TEST_WORKER_TOKEN", token)
    secret_file = tmp_path / "secret"
    secret_file.write_text(from_file + "\n")
    caplog.set_level(logging.DEBUG, logger="container_manager")
    job = submit(
        host=engine_host,
        image=test_image,
        command=sh('printf %s "$TOKEN" | sha256sum; printf %s "$FROM_FILE" | sha256sum'),
        environment={"PLAIN": "visible"},
        secret_environment={
            "TOKEN": "env:CM_TEST_WORKER_TOKEN",
            "FROM_FILE": f"file:{secret_file}",
        },
    )
    burst()
    job = completed(job)
    assert job.stdout_log.split()[::2] == [
        hashlib.sha256(token.encode()).hexdigest(),
        hashlib.sha256(from_file.encode()).hexdigest(),
    ]
    attempt = JobAttempt.objects.get(job=job)
    assert attempt.spec["secret_environment"] == ["FROM_FILE", "TOKEN"]
    assert attempt.spec["environment"] == ["PLAIN"]
    show = StringIO()
    call_command("container_job", "show", str(job.pk), stdout=show)
    assert "completed" in show.getvalue()
    assert f"job={job.pk}" in caplog.text, "the worker logged about the job"
    for where, text in {
        "job row": _text_of(job),
        "attempt row": _text_of(attempt),
        "worker log": caplog.text,
        "container_job show": show.getvalue(),
    }.items():
        assert token not in text, where
        assert from_file not in text, where


def test_an_unresolvable_secret_fails_the_job_without_retries(
    engine_host, test_image, monkeypatch, docker_client
):
    token = f"tok-{SESSION_ID}-value"
    monkeypatch.setenv("CM_TEST_WORKER_TOKEN", token)
    monkeypatch.delenv("CM_TEST_NOT_SET", raising=False)
    job = submit(
        host=engine_host,
        image=test_image,
        command="true",
        secret_environment={"TOKEN": "env:CM_TEST_WORKER_TOKEN", "MISSING": "env:CM_TEST_NOT_SET"},
        max_retries=2,
        retry_on_failure=True,
    )
    burst()
    job = fresh(job)
    assert (job.status, job.attempt_count, job.exit_code) == (JobStatus.FAILED, 1, None)
    assert "env:CM_TEST_NOT_SET" in job.last_error
    assert token not in _text_of(job)
    assert all(token not in _text_of(a) for a in JobAttempt.objects.filter(job=job))
    assert job_containers(docker_client, job) == [], "no container was made"


# ---- capacity ---------------------------------------------------------------------------


def test_capacity_is_read_from_the_engine_and_limits_beyond_it_are_refused_or_wait(
    engine_host, test_image, docker_client
):
    info = docker_client.info()
    healthy, _ = health.check_host(engine_host)
    assert healthy
    engine_host.refresh_from_db()
    assert engine_host.cpu_capacity == info["NCPU"]
    assert engine_host.memory_capacity_mb == info["MemTotal"] // _MIB
    cpus = info["NCPU"]
    with pytest.raises(InvalidJobError, match=rf"cpu_limit: Host local-engine has {cpus} CPUs"):
        submit(host=engine_host, image=test_image, cpu_limit=cpus + 1)
    memory = engine_host.memory_capacity_mb
    with pytest.raises(InvalidJobError, match=rf"memory_limit: .*has {memory} MB of memory"):
        submit(host=engine_host, image=test_image, memory_limit=memory + 1)
    too_big = submit(image=test_image, command="echo big", cpu_limit=cpus + 1)
    fits = submit(image=test_image, command="echo fits", cpu_limit=cpus)
    burst()
    too_big, fits = fresh(too_big), completed(fits)
    assert fits.stdout_log == "fits\n"
    assert fits.docker_host == engine_host
    assert (too_big.status, too_big.docker_host) == (JobStatus.QUEUED, None)
    assert "cpu_limit" in too_big.placement_reason
    assert f"has {cpus} CPUs" in too_big.placement_reason


def test_the_attempt_row_records_what_ran(engine_host, test_image, tmp_path, volume_name):
    engine_host.allowed_bind_prefixes = [str(tmp_path)]
    engine_host.save()
    job = submit(
        host=engine_host,
        image=test_image,
        entrypoint=["/bin/sh", "-c"],
        command=["echo from-entrypoint; id -u"],
        user="4321",
        mounts=[f"volume:{volume_name}:/data", f"bind:{tmp_path}:/in", "tmpfs:/t:8"],
        working_directory="/data",
        memory_limit=64,
        cpu_limit=0.5,
    )
    burst()
    job = completed(job)
    assert job.stdout_log == "from-entrypoint\n4321\n"
    assert attempt_spec(job) == {
        **attempt_spec(job),
        "image": test_image,
        "entrypoint": ["/bin/sh", "-c"],
        "argv": ["echo from-entrypoint; id -u"],
        "user": "4321",
        "working_directory": "/data",
        "network": "none",
        "memory_limit_mb": 64,
        "cpu_limit": 0.5,
        "mounts": [
            {"type": "volume", "source": volume_name, "target": "/data", "read_only": False},
            {"type": "bind", "source": str(tmp_path), "target": "/in", "read_only": True},
            {"type": "tmpfs", "target": "/t", "read_only": False, "size_mb": 8},
        ],
    }
