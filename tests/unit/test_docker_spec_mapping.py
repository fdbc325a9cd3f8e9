"""How DockerExecutor maps the container spec onto the Docker SDK's ``containers.create``,
with the SDK mocked at its edge (``docker.DockerClient``).

The real engine shows most of this from inside a job (tests/integration/test_container_spec.py);
these cover what it cannot show here (GPUs, privileged mode) and pin the exact keywords.
"""

from __future__ import annotations

from typing import Any
from unittest.mock import patch

import docker
import pytest

from container_manager.executors.docker import DockerExecutor
from container_manager.spec import JobSpec, Mount
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory

SOCKET = "unix:///var/run/docker.sock"


def _create_kwargs(**spec_fields: Any) -> dict[str, Any]:
    """The keywords ``containers.create`` receives for a spec with ``spec_fields``."""
    spec = JobSpec(job_id="j1", attempt=1, image="busybox:latest", argv=["true"], **spec_fields)
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.return_value.id = "c1"
        DockerExecutor({"docker_host": SOCKET}).create(spec)
        return dict(mock_client.return_value.containers.create.call_args.kwargs)


def test_gpus_become_one_device_request_for_that_many_gpus():
    (request,) = _create_kwargs(gpus=2)["device_requests"]

    assert isinstance(request, docker.types.DeviceRequest)
    assert request["Count"] == 2
    assert request["Capabilities"] == [["gpu"]]
    assert request["Driver"] == ""


def test_no_gpus_no_device_request():
    assert "device_requests" not in _create_kwargs()


def test_entrypoint_and_user_are_passed_with_the_argv_after_the_entrypoint():
    kwargs = _create_kwargs(entrypoint=["/bin/sh", "-c"], user="1000:2000")

    assert kwargs["entrypoint"] == ["/bin/sh", "-c"]
    assert kwargs["command"] == ["true"]
    assert kwargs["user"] == "1000:2000"


def test_without_entrypoint_or_user_the_images_own_apply():
    kwargs = _create_kwargs()

    assert "entrypoint" not in kwargs
    assert "user" not in kwargs


def test_mounts_become_sdk_mounts_of_each_type():
    volume, bind, scratch, frozen = _create_kwargs(
        mounts=(
            Mount("volume", "/data", "results"),
            Mount.parse("bind:/srv/in:/in"),
            Mount("tmpfs", "/scratch", size_mb=64),
            Mount("tmpfs", "/frozen", read_only=True, size_mb=1),
        )
    )["mounts"]

    assert all(isinstance(m, docker.types.Mount) for m in (volume, bind, scratch, frozen))
    assert (volume["Type"], volume["Source"], volume["Target"], volume["ReadOnly"]) == (
        "volume",
        "results",
        "/data",
        False,
    )
    assert (bind["Type"], bind["Source"], bind["Target"], bind["ReadOnly"]) == (
        "bind",
        "/srv/in",
        "/in",
        True,
    ), "a bind is read-only unless it says rw"
    assert (scratch["Type"], scratch["Target"], scratch["ReadOnly"]) == ("tmpfs", "/scratch", False)
    assert scratch["Source"] is None
    assert scratch["TmpfsOptions"] == {"SizeBytes": 64 * 1024 * 1024}
    assert frozen["ReadOnly"] is True, "a read-only tmpfs stays read-only"


def test_no_mounts_no_mounts_keyword():
    assert "mounts" not in _create_kwargs()


def test_secure_defaults_without_any_hardening_asked(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "DEFAULT_PIDS_LIMIT": 321}
    kwargs = _create_kwargs()

    assert kwargs["init"] is True
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert kwargs["privileged"] is False
    assert kwargs["read_only"] is False
    assert kwargs["pids_limit"] == 321
    assert not {"cap_add", "cap_drop", "shm_size"} & set(kwargs), "Docker's defaults"


def test_no_default_pids_limit_leaves_the_engines(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "DEFAULT_PIDS_LIMIT": None}

    assert "pids_limit" not in _create_kwargs()
    assert _create_kwargs(pids_limit=50)["pids_limit"] == 50


def test_hardening_and_its_exceptions():
    kwargs = _create_kwargs(
        cap_add=("NET_ADMIN", "SYS_PTRACE"),
        cap_drop=("CHOWN",),
        privileged=True,
        read_only_rootfs=True,
        pids_limit=64,
        shm_size_mb=128,
    )

    assert kwargs["cap_add"] == ["NET_ADMIN", "SYS_PTRACE"]
    assert kwargs["cap_drop"] == ["CHOWN"]
    assert kwargs["privileged"] is True
    assert kwargs["read_only"] is True
    assert kwargs["pids_limit"] == 64
    assert kwargs["shm_size"] == "128m"
    assert kwargs["security_opt"] == ["no-new-privileges:true"], "kept even when privileged"


def test_the_network_is_the_network_mode():
    assert _create_kwargs(network_mode="backend")["network_mode"] == "backend"


def test_secrets_are_in_the_environment_only():
    kwargs = _create_kwargs(
        environment={"PLAIN": "1"},
        secret_references={"TOKEN": "env:API_TOKEN"},
        secrets={"TOKEN": "s3cr3t-value"},
    )

    assert kwargs["environment"] == {"PLAIN": "1", "TOKEN": "s3cr3t-value"}
    rest = {k: v for k, v in kwargs.items() if k != "environment"}
    assert "s3cr3t-value" not in repr(rest)


@pytest.mark.django_db
def test_a_jobs_spec_fields_reach_the_engine(monkeypatch):
    monkeypatch.setenv("CM_UNIT_TOKEN", "from-the-worker")
    host = ExecutorHostFactory(allowed_bind_prefixes=["/srv"], allowed_capabilities=["NET_ADMIN"])
    job = ContainerJobFactory(
        docker_host=host,
        entrypoint=["/bin/sh", "-c"],
        command="'echo hi'",
        user="1000",
        mounts=["bind:/srv/in:/in", "tmpfs:/tmp:8"],
        secret_environment={"TOKEN": "env:CM_UNIT_TOKEN"},
        cap_add=["cap_net_admin"],
        gpus=None,
        shm_size_mb=16,
    )
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.return_value.id = "c1"
        DockerExecutor({"docker_host": host}).create_container(job)
        kwargs = mock_client.return_value.containers.create.call_args.kwargs

    assert kwargs["entrypoint"] == ["/bin/sh", "-c"]
    assert kwargs["command"] == ["echo hi"]
    assert kwargs["user"] == "1000"
    assert [(m["Type"], m["Target"], m["ReadOnly"]) for m in kwargs["mounts"]] == [
        ("bind", "/in", True),
        ("tmpfs", "/tmp", False),
    ]
    assert kwargs["environment"]["TOKEN"] == "from-the-worker"
    assert kwargs["cap_add"] == ["NET_ADMIN"]
    assert kwargs["shm_size"] == "16m"


def test_capacity_is_the_engines_cpus_and_memory_in_mb():
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.info.return_value = {"NCPU": 8, "MemTotal": 16 * 1024**3 + 5}

        assert DockerExecutor({"docker_host": SOCKET}).capacity() == (8.0, 16 * 1024)


@pytest.mark.parametrize("info", [{}, {"NCPU": 4}, {"MemTotal": 1024**3}, {"NCPU": 0}])
def test_capacity_unknown_when_the_engine_does_not_say(info):
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.info.return_value = info

        assert DockerExecutor({"docker_host": SOCKET}).capacity() is None
