"""How the swarm executor maps the job spec onto the Engine API's service create request.

The SDK's low-level client is real here (``docker.APIClient``, told its API version so it
never asks the engine); only its HTTP ``post`` is captured, so each test reads the body and
headers of ``POST /services/create`` exactly as the engine would receive them. Also: what the
executor cannot honour is refused at submission (naming the field and the executor) or, for a
value or an engine too old, at launch, before anything is asked of the engine.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import patch

import docker
import pytest
import requests

from container_manager.exceptions import InvalidJobError, PermanentLaunchError
from container_manager.executors.swarm import SwarmExecutor
from container_manager.models import ContainerJob
from container_manager.queue import submit
from container_manager.spec import SPEC_FIELDS, JobSpec, Mount, RegistryAuth
from container_manager.testing.factories import ExecutorHostFactory, RegistryCredentialFactory

pytestmark = pytest.mark.django_db

URL = "unix:///var/run/docker.sock"
SERVICE = "svc0123456789abcdefghijklm"
RUNNING_TASK = {
    "ID": "task-1",
    "CreatedAt": "2026-01-01T10:00:00.1Z",
    "Status": {"State": "running", "ContainerStatus": {"ContainerID": "c" * 64}},
}


@dataclass
class Sent:
    """One request the SDK sent: its path, JSON body and headers, and the auth configs the
    shared client held while it was sent."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    client_auths: dict[str, Any] = field(default_factory=dict)

    @property
    def container(self) -> dict[str, Any]:
        return dict(self.body["TaskTemplate"]["ContainerSpec"])

    @property
    def registry_auth(self) -> dict[str, Any] | None:
        header = self.headers.get("X-Registry-Auth")
        if header is None:
            return None
        raw = header if isinstance(header, bytes) else header.encode()
        return dict(json.loads(base64.urlsafe_b64decode(raw)))


class Engine:
    """A real low-level SDK client whose HTTP posts are captured and answered 201."""

    def __init__(self, api_version: str) -> None:
        self.api = docker.APIClient(base_url=URL, version=api_version)
        self.sent: list[Sent] = []

    def post(self, url: str, data: str | None = None, **kwargs: Any) -> requests.Response:
        self.sent.append(
            Sent(
                path=url.split(f"/v{self.api._version}", 1)[-1],
                body=json.loads(data or "{}"),
                headers=dict(kwargs.get("headers") or {}),
                client_auths=dict(self.api._auth_configs.get("auths") or {}),
            )
        )
        answer = requests.Response()
        answer.status_code = 201
        answer._content = json.dumps({"ID": SERVICE}).encode()
        return answer

    @property
    def created(self) -> Sent:
        (request,) = [s for s in self.sent if s.path == "/services/create"]
        return request


@pytest.fixture
def no_docker_config(tmp_path, monkeypatch):
    """The worker has no Docker config file: no credentials of its own to send."""
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


def _engine(api_version: str = "1.41") -> Iterator[Engine]:
    engine = Engine(api_version)
    with (
        patch("docker.DockerClient") as client_class,
        patch.object(engine.api, "post", side_effect=engine.post),
        patch.object(engine.api, "tasks", return_value=[RUNNING_TASK]),
    ):
        client_class.return_value.api = engine.api
        yield engine
    engine.api.close()


@pytest.fixture
def engine(no_docker_config) -> Iterator[Engine]:
    """An engine speaking API 1.41 (Docker 20.10), as the swarm tests' engine does."""
    yield from _engine("1.41")


@pytest.fixture
def old_engine(no_docker_config) -> Iterator[Engine]:
    """An engine speaking API 1.40 (Docker 19.03): no capabilities or pids limit on services."""
    yield from _engine("1.40")


def _executor() -> SwarmExecutor:
    return SwarmExecutor({"docker_host": URL, "start_timeout": 0.3})


def _spec(**kwargs: Any) -> JobSpec:
    kwargs.setdefault("argv", ["sh", "-c", "echo hi"])
    return JobSpec(job_id="job-1", attempt=1, image="busybox:latest", **kwargs)


def _run(**kwargs: Any) -> None:
    assert _executor().run(_spec(**kwargs)) == SERVICE


# ---- what the executor says it honours -----------------------------------------------------


def test_supported_fields_are_what_the_service_mapping_honours():
    assert SwarmExecutor.supported_fields == set(SPEC_FIELDS) - {"gpus", "privileged"}


# ---- each field in the request ---------------------------------------------------------------


def test_entrypoint_is_the_command_and_argv_its_arguments(engine):
    _run(entrypoint=["/bin/sh", "-c"], argv=["echo $0", "x"])

    request = engine.created
    assert request.container["Command"] == ["/bin/sh", "-c"], "replaces the image's entrypoint"
    assert request.container["Args"] == ["echo $0", "x"]


def test_without_an_entrypoint_the_images_own_is_kept(engine):
    _run()

    assert engine.created.container.get("Command") is None
    assert engine.created.container["Args"] == ["sh", "-c", "echo hi"]


def test_user(engine):
    _run(user="1000:1000")

    assert engine.created.container["User"] == "1000:1000"


def test_no_user_keeps_the_images_user(engine):
    _run()

    assert "User" not in engine.created.container


def test_volume_bind_and_tmpfs_mounts(engine):
    mounts = (
        Mount.parse("volume:data:/data"),
        Mount.parse("bind:/srv/in:/in"),  # read-only unless it says rw
        Mount.parse("bind:/srv/out:/out:rw"),
        Mount.parse("tmpfs:/scratch:16"),
    )
    _run(mounts=mounts)

    assert engine.created.container["Mounts"] == [
        {"Target": "/data", "Source": "data", "Type": "volume", "ReadOnly": False},
        {"Target": "/in", "Source": "/srv/in", "Type": "bind", "ReadOnly": True},
        {"Target": "/out", "Source": "/srv/out", "Type": "bind", "ReadOnly": False},
        {
            "Target": "/scratch",
            "Source": None,
            "Type": "tmpfs",
            "ReadOnly": False,
            "TmpfsOptions": {"SizeBytes": 16 * 1024 * 1024},
        },
    ]


def test_shm_size_is_a_tmpfs_at_dev_shm(engine):
    _run(shm_size_mb=128)

    (shm,) = engine.created.container["Mounts"]
    assert shm["Target"] == "/dev/shm"
    assert shm["Type"] == "tmpfs"
    assert shm["TmpfsOptions"] == {"SizeBytes": 128 * 1024 * 1024}


def test_shm_size_beside_a_mount_at_dev_shm_is_refused_before_asking_the_engine(engine):
    with pytest.raises(PermanentLaunchError, match=r"swarm executor makes shm_size_mb a tmpfs"):
        _run(shm_size_mb=128, mounts=(Mount.parse("tmpfs:/dev/shm:64"),))

    assert engine.sent == []


def test_a_network_the_job_names(engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": "none"}

    _run(network_mode="backend")

    assert engine.created.body["Networks"] == [{"Target": "backend"}]


def test_the_network_mode_setting_is_a_plain_engines_and_not_sent(engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": "none"}

    _run(network_mode="none")  # what ContainerJob.spec() fills in from the setting

    assert "Networks" not in engine.created.body


def test_network_none_is_refused_naming_the_field_and_the_executor(engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": None}

    with pytest.raises(PermanentLaunchError) as raised:
        _run(network_mode="none")

    assert str(raised.value) == (
        "The swarm executor cannot honour network 'none': Swarm has no such network"
        " (its predefined networks are bridge and host)."
    )
    assert engine.sent == [], "nothing asked of the engine"
    assert SwarmExecutor.spec_refusals(_spec(network_mode="none")).keys() == {"network"}


def test_secret_environment_values_are_environment_variables_not_swarm_secrets(engine):
    spec = _spec(
        environment={"GREETING": "hello"},
        secret_references={"TOKEN": "env:API_TOKEN"},
    ).with_secrets({"TOKEN": "s3cret-value"})

    assert _executor().run(spec) == SERVICE

    container = engine.created.container
    assert sorted(container["Env"]) == ["GREETING=hello", "TOKEN=s3cret-value"]
    assert "Secrets" not in container
    assert "s3cret-value" not in repr(spec), "the spec's repr never shows a secret"


def test_read_only_rootfs(engine):
    _run(read_only_rootfs=True)

    assert engine.created.container["ReadOnly"] is True


def test_a_writable_rootfs_sends_nothing(engine):
    _run()

    assert "ReadOnly" not in engine.created.container


def test_capabilities_added_and_dropped(engine):
    _run(cap_add=("NET_ADMIN",), cap_drop=("MKNOD", "NET_RAW"))

    container = engine.created.container
    assert container["CapabilityAdd"] == ["NET_ADMIN"]
    assert container["CapabilityDrop"] == ["MKNOD", "NET_RAW"]


def test_docker_default_capabilities_unless_the_job_changes_them(engine):
    _run()

    assert "CapabilityAdd" not in engine.created.container
    assert "CapabilityDrop" not in engine.created.container


def test_the_jobs_pids_limit(engine):
    _run(pids_limit=64, memory_limit_mb=32)

    assert engine.created.body["TaskTemplate"]["Resources"] == {
        "Limits": {"MemoryBytes": 32 * 1024 * 1024, "Pids": 64}
    }


def test_the_default_pids_limit_applies_to_a_job_that_sets_none(engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "DEFAULT_PIDS_LIMIT": 500}

    _run()

    assert engine.created.body["TaskTemplate"]["Resources"] == {"Limits": {"Pids": 500}}


def test_without_a_default_pids_limit_no_resources_are_sent(engine, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "DEFAULT_PIDS_LIMIT": None}

    _run()

    assert "Resources" not in engine.created.body["TaskTemplate"]


def test_secure_defaults_init_and_no_privileged_field(engine):
    _run()

    container = engine.created.container
    assert container["Init"] is True, "zombies reaped, signals forwarded"
    assert "Privileges" not in container, "API 1.41 has no NoNewPrivileges to set"


# ---- an engine too old for a field -------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "name"),
    [
        ({"cap_add": ("NET_ADMIN",)}, "cap_add"),
        ({"cap_drop": ("MKNOD",)}, "cap_drop"),
        ({"pids_limit": 64}, "pids_limit"),
    ],
)
def test_a_field_the_engines_api_is_too_old_for_is_refused(old_engine, asked, name):
    with pytest.raises(PermanentLaunchError) as raised:
        _run(**asked)

    assert str(raised.value) == (
        f"The swarm executor cannot honour {name} on this engine: it needs Engine API 1.41,"
        " the engine speaks 1.40."
    )
    assert old_engine.sent == [], "an old engine would have ignored it without a word"


def test_on_an_old_engine_the_default_pids_limit_cannot_apply(old_engine):
    _run()

    request = old_engine.created
    assert "Resources" not in request.body["TaskTemplate"]
    assert request.container["Init"] is True, "init exists from API 1.38"


def test_before_api_1_38_there_is_no_init(no_docker_config):
    for engine in _engine("1.37"):
        _run()
        assert "Init" not in engine.created.container


# ---- registry credentials: one call's header ---------------------------------------------------


def test_the_jobs_registry_credentials_go_in_that_calls_header_only(engine):
    image = "registry.example.com:5000/team/app:1"
    auth = RegistryAuth("registry.example.com:5000", "robot", "pa55-word")
    executor = _executor()

    executor.run(JobSpec(job_id="private", attempt=1, image=image, registry_auth=auth))
    executor.run(JobSpec(job_id="public", attempt=1, image=image))

    credentialed, plain = [s for s in engine.sent if s.path == "/services/create"]
    assert credentialed.registry_auth == {
        "username": "robot",
        "password": "pa55-word",
        "serveraddress": "registry.example.com:5000",
    }
    assert credentialed.client_auths == {}, "the shared client never held them"
    assert plain.registry_auth is None, "the next job's call carries no credentials"
    assert dict(engine.api._auth_configs.get("auths") or {}) == {}
    assert "pa55-word" not in json.dumps(credentialed.body), "in the header, not the spec"


def test_credentials_of_the_workers_docker_config_are_not_replaced_for_other_jobs(
    tmp_path, monkeypatch
):
    """The worker's own config (``~/.docker/config.json``) still serves jobs without a
    credential of their own, after a job with one."""
    own = base64.b64encode(b"worker:own-secret").decode()
    config = {"auths": {"registry.example.com:5000": {"auth": own}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    image = "registry.example.com:5000/team/app:1"
    for engine in _engine("1.41"):
        executor = _executor()
        executor.run(
            JobSpec(
                job_id="a",
                attempt=1,
                image=image,
                registry_auth=RegistryAuth("registry.example.com:5000", "robot", "job-secret"),
            )
        )
        executor.run(JobSpec(job_id="b", attempt=1, image=image))

        first, second = [s for s in engine.sent if s.path == "/services/create"]
        assert first.registry_auth is not None
        assert first.registry_auth["password"] == "job-secret"
        assert second.registry_auth is not None
        assert second.registry_auth["password"] == "own-secret"


# ---- refused at submission ---------------------------------------------------------------------


@pytest.fixture
def swarm_host():
    # The host's policy allows what the executor cannot do: the refusal is the executor's.
    return ExecutorHostFactory(name="swarm-1", executor_type="swarm", allow_privileged=True, gpus=2)


@pytest.mark.parametrize(
    ("asked", "name"), [({"privileged": True}, "privileged"), ({"gpus": 1}, "gpus")]
)
def test_what_swarm_cannot_honour_is_refused_at_submission(swarm_host, asked, name):
    with pytest.raises(InvalidJobError) as raised:
        submit(host=swarm_host, image="busybox:latest", command="true", **asked)

    message = str(raised.value)
    assert f"The swarm executor (host swarm-1) cannot honour {name}." in message
    assert ContainerJob.objects.count() == 0


def test_the_same_job_is_accepted_on_a_docker_host(swarm_host):
    docker_host = ExecutorHostFactory(name="docker-1", allow_privileged=True, gpus=2)

    job = submit(host=docker_host, image="busybox:latest", command="true", privileged=True, gpus=1)

    assert job.pk is not None


def test_what_swarm_maps_is_accepted_at_submission(swarm_host):
    swarm_host.allowed_networks = ["backend"]
    swarm_host.allowed_capabilities = ["NET_ADMIN"]
    swarm_host.save()
    credential = RegistryCredentialFactory(registry="registry.example.com")

    job = submit(
        host=swarm_host,
        image="registry.example.com/team/app:1",
        command="true",
        entrypoint=["/bin/sh", "-c"],
        user="1000:1000",
        mounts=["volume:data:/data", "tmpfs:/scratch:16"],
        network="backend",
        secret_environment={"TOKEN": "env:API_TOKEN"},
        registry_credential=credential,
        shm_size_mb=64,
        pids_limit=100,
        read_only_rootfs=True,
        cap_add=["NET_ADMIN"],
        cap_drop=["MKNOD"],
    )

    assert job.spec().requested() == SwarmExecutor.supported_fields


def test_network_none_is_refused_at_submission_unless_it_is_the_operators_default(settings):
    from container_manager.models import ExecutorHost

    host = ExecutorHost.objects.create(
        name="swarm-none", connection_string="unix:///var/run/docker.sock", executor_type="swarm"
    )
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": "none"}
    assert submit(host=host, image="busybox").pk, "NETWORK_MODE's none: the engine's default"
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": None}
    with pytest.raises(InvalidJobError, match="network: The swarm executor cannot honour network"):
        submit(host=host, image="busybox", network="none")


def test_the_attempt_records_that_swarm_sets_no_no_new_privileges():
    spec = JobSpec("j", 1, "busybox")
    assert spec.describe()["no_new_privileges"] is True
    executor = SwarmExecutor({"docker_host": "unix:///var/run/docker.sock"})
    assert executor.effective(spec).describe()["no_new_privileges"] is False
