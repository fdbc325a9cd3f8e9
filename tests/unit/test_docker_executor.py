"""DockerExecutor with the Docker SDK mocked at its edge (``docker.DockerClient``).

The first part writes out the test outlines of seed 000 as they were given; the second part
covers the rest of the executor: the single error translation point, name conflicts,
pulling, waiting, TLS, the lazy client, and the maintenance calls.
"""

from __future__ import annotations

from datetime import UTC, datetime
from unittest.mock import Mock, patch

import docker
import pytest
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from container_manager.exceptions import (
    ConfigurationError,
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageUnavailableError,
)
from container_manager.executors.base import LABEL_MANAGED, ContainerState, JobSpec
from container_manager.executors.docker import DockerExecutor
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory
from tests.logs_answers import answer_logs, frame, logs_answer

pytestmark = pytest.mark.django_db

SOCKET = "unix:///var/run/docker.sock"


def _executor(url: str = SOCKET, **config) -> DockerExecutor:
    return DockerExecutor({"docker_host": url, **config})


def _spec(image: str = "busybox:latest", **kwargs) -> JobSpec:
    return JobSpec(job_id="job-1", attempt=1, image=image, argv=["true"], **kwargs)


def _answer(status: int, message: str, explanation: str) -> APIError:
    """An SDK error as the SDK makes it from an engine answer with ``status``."""
    response = requests.Response()
    response.status_code = status
    return APIError(message, response=response, explanation=explanation)


def _conflict(name: str = "cm-job-1-1") -> APIError:
    return _answer(
        409,
        "409 Client Error for http+docker://localhost/v1.41/containers/create: Conflict",
        f'Conflict. The container name "/{name}" is already in use by container '
        '"abc123". You have to remove (or rename) that container to be able to reuse that name.',
    )


# =========================================================================================
# Seed 000, Test 1: container creation and configuration
# =========================================================================================


def test_docker_create_container_success():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(docker_image="alpine:latest", command='echo "Hello Docker"')

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.id = "test-container-123"
        mock_client.return_value.containers.create.return_value = mock_container

        container_id = executor._create_container(job)
        assert container_id == "test-container-123"
        mock_client.return_value.containers.create.assert_called_once()


def test_docker_create_container_with_environment_variables():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(override_environment="ENV_VAR1=value1\nENV_VAR2=value2")

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.id = "test-container-456"
        mock_client.return_value.containers.create.return_value = mock_container

        container_id = executor._create_container(job)
        assert container_id is not None

        call_args = mock_client.return_value.containers.create.call_args
        assert "environment" in call_args.kwargs
        assert call_args.kwargs["environment"] == {"ENV_VAR1": "value1", "ENV_VAR2": "value2"}


def test_docker_create_container_with_resource_limits():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(memory_limit=512, cpu_limit=1.0)

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.id = "test-container-789"
        mock_client.return_value.containers.create.return_value = mock_container

        container_id = executor._create_container(job)
        assert container_id is not None

        call_args = mock_client.return_value.containers.create.call_args
        assert "mem_limit" in call_args.kwargs
        assert "cpu_quota" in call_args.kwargs
        assert call_args.kwargs["mem_limit"] == "512m"
        assert call_args.kwargs["cpu_quota"] == call_args.kwargs["cpu_period"]


def test_docker_validate_job_success():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(docker_image="nginx:latest", command='nginx -g "daemon off;"')

    # Must not raise.
    assert executor._validate_job(job) is None


def test_docker_validate_job_missing_image():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(docker_image="", command="echo test")

    with pytest.raises(ExecutorError):
        executor._validate_job(job)


# =========================================================================================
# Seed 000, Test 2: container lifecycle operations
# =========================================================================================


def test_docker_start_container_success():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory()
    container_id = "test-container-123"

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_client.return_value.containers.get.return_value = mock_container

        success = executor._start_container(job, container_id)
        assert success is True
        mock_container.start.assert_called_once()
        mock_client.return_value.containers.get.assert_called_once_with(container_id)


def test_docker_start_container_failure():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory()
    container_id = "test-container-123"

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.start.side_effect = Exception("Start failed")
        mock_client.return_value.containers.get.return_value = mock_container

        with pytest.raises(ExecutorError, match="Start failed"):
            executor._start_container(job, container_id)


def test_docker_check_status_running():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(container_id="test-container-123")

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.status = "running"
        mock_client.return_value.containers.get.return_value = mock_container

        status = executor.check_status(job.container_id)
        assert status == "running"


def test_docker_check_status_exited():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(container_id="test-container-123")

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.status = "exited"
        mock_client.return_value.containers.get.return_value = mock_container

        status = executor.check_status(job.container_id)
        assert status == "exited"


def test_docker_check_status_container_not_found():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.side_effect = NotFound("Container not found")

        status = executor.check_status("non-existent-container")
        assert status == "not-found"


# =========================================================================================
# Seed 000, Test 3: log retrieval
# =========================================================================================


def test_docker_get_logs_success():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(container_id="test-container-123")

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.logs.return_value = b"Log line 1\nLog line 2\n"
        mock_client.return_value.containers.get.return_value = mock_container

        logs = executor.get_logs(job.container_id)
        assert "Log line 1" in logs
        assert "Log line 2" in logs


def test_docker_get_logs_empty():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.logs.return_value = b""
        mock_client.return_value.containers.get.return_value = mock_container

        logs = executor.get_logs("test-container-123")
        assert logs == ""


def test_docker_get_logs_container_not_found():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.side_effect = NotFound("Container not found")

        logs = executor.get_logs("non-existent-container")
        assert "Container not found" in logs
        assert "non-existent-container" in logs


def test_docker_get_logs_with_tail_limit():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.logs.return_value = b"Log line 2\nLog line 3\n"
        mock_client.return_value.containers.get.return_value = mock_container

        logs = executor.get_logs("test-container-123", tail=2)

        mock_container.logs.assert_called_with(tail=2, stdout=True, stderr=True)
        assert logs == "Log line 2\nLog line 3\n"


# =========================================================================================
# Seed 000, Test 4: error handling and recovery
# =========================================================================================


def test_docker_connection_error_handling():
    executor = DockerExecutor({"docker_host": "tcp://unreachable:2376"})
    job = ContainerJobFactory()

    with patch("docker.DockerClient") as mock_client:
        mock_client.side_effect = Exception("Connection refused")

        success, error_msg = executor.launch_job(job)
        assert success is False
        assert "Connection refused" in error_msg


def test_docker_api_error_handling():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory()

    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = Exception("API error")

        success, error_msg = executor.launch_job(job)
        assert success is False
        assert "API error" in error_msg


def test_docker_resource_exhaustion_handling():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory(memory_limit=16384)  # 16 GB

    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = Exception("Insufficient memory")

        success, error_msg = executor.launch_job(job)
        assert success is False
        assert "Insufficient memory" in error_msg


def test_docker_cleanup_on_failure():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})
    job = ContainerJobFactory()

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_container.id = "failed-container-123"
        mock_container.start.side_effect = Exception("Start failed")
        mock_client.return_value.containers.create.return_value = mock_container
        mock_client.return_value.containers.get.return_value = mock_container

        success, error_msg = executor.launch_job(job)
        assert success is False
        assert "Start failed" in error_msg

        mock_container.remove.assert_called_once()


# =========================================================================================
# Seed 000, Test 5: resource management and cleanup
# =========================================================================================


def test_docker_cleanup_container_success():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_client.return_value.containers.get.return_value = mock_container

        result = executor.cleanup("test-container-123")
        assert result is True
        mock_container.remove.assert_called_once()


def test_docker_cleanup_container_not_found():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.side_effect = NotFound("Container not found")

        # A container that no longer exists counts as cleaned up.
        result = executor.cleanup("non-existent-container")
        assert result is True


def test_docker_get_resource_usage():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_container = Mock()
        mock_stats = {
            "memory_stats": {"usage": 536870912, "limit": 1073741824},
            "cpu_stats": {"cpu_usage": {"total_usage": 1000000000}},
            "precpu_stats": {"cpu_usage": {"total_usage": 900000000}},
        }
        mock_container.stats.return_value = [mock_stats]
        mock_client.return_value.containers.get.return_value = mock_container

        usage = executor.get_resource_usage("test-container-123")
        assert isinstance(usage, dict)
        assert "memory_usage" in usage
        assert "cpu_usage" in usage
        assert usage["memory_usage"] == 536870912
        assert usage["cpu_usage"] == pytest.approx(1.0)


def test_docker_health_check():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.ping.return_value = True

        is_healthy = executor.health_check()
        assert is_healthy is True


def test_docker_health_check_failure():
    executor = DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})

    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.ping.side_effect = Exception("Connection failed")

        is_healthy = executor.health_check()
        assert is_healthy is False


# =========================================================================================
# Beyond the seed: the lazy client
# =========================================================================================


def test_building_an_executor_does_not_create_a_client():
    with patch("docker.DockerClient") as mock_client:
        executor = _executor(timeout=7, pool_size=3)
        assert executor.check() == []
        mock_client.assert_not_called()


def test_the_first_call_creates_the_client_and_only_once():
    with patch("docker.DockerClient") as mock_client:
        executor = _executor(timeout=7, pool_size=3)
        executor.check_status("a")
        executor.get_logs("a")
        executor.health_check()

        mock_client.assert_called_once_with(
            base_url=SOCKET, timeout=7.0, max_pool_size=3, tls=False
        )


def test_client_timeout_defaults_to_the_engine_timeout_setting(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_TIMEOUT": 12.5}
    with patch("docker.DockerClient") as mock_client:
        _executor().get_version()

        assert mock_client.call_args.kwargs["timeout"] == 12.5
        assert mock_client.call_args.kwargs["max_pool_size"] == 10


def test_close_closes_the_client_and_the_next_call_makes_a_new_one():
    with patch("docker.DockerClient") as mock_client:
        executor = _executor()
        executor.close()  # nothing to close yet
        mock_client.assert_not_called()

        executor.get_version()
        executor.close()
        mock_client.return_value.close.assert_called_once_with()

        executor.get_version()
        assert mock_client.call_count == 2


def test_repr_names_the_engine():
    assert repr(_executor()) == f"<DockerExecutor {SOCKET}>"


def test_an_executor_needs_an_engine():
    with pytest.raises(ConfigurationError, match="docker_host"):
        DockerExecutor({})


# =========================================================================================
# The single translation point
# =========================================================================================


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.ConnectionError("Connection refused"),
        DockerException("Error while fetching server API version: Connection refused"),
        PermissionError(13, "Permission denied"),
    ],
    ids=["requests", "docker", "os"],
)
def test_a_failing_client_construction_is_a_connection_error(error):
    executor = _executor("tcp://127.0.0.1:2375")
    with patch("docker.DockerClient") as mock_client:
        mock_client.side_effect = error

        with pytest.raises(ExecutorConnectionError) as raised:
            executor.get_version()
        assert "tcp://127.0.0.1:2375" in str(raised.value)
        assert raised.value.__cause__ is error
        assert executor.health_check() is False
        # Not cached: a later call tries again.
        assert mock_client.call_count == 2


def test_image_not_found_becomes_image_unavailable():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        error = ImageNotFound("404 Client Error", explanation="No such image: nope:latest")
        mock_client.return_value.containers.create.side_effect = error

        with pytest.raises(ImageUnavailableError) as raised:
            executor.create(_spec("nope:latest", auto_pull=False))
        assert "nope:latest" in str(raised.value)
        mock_client.return_value.images.pull.assert_not_called()


def test_not_found_becomes_container_not_found():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        error = NotFound("404 Client Error", explanation="No such container: abc")
        mock_client.return_value.api.inspect_container.side_effect = error

        with pytest.raises(ContainerNotFoundError, match="No such container: abc") as raised:
            executor.inspect("abc")
        assert raised.value.__cause__ is error


@pytest.mark.parametrize(
    "explanation", ["the engine explains", b"the engine explains"], ids=["str", "bytes"]
)
def test_api_error_becomes_executor_error_with_the_engine_explanation(explanation):
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        error = APIError("500 Server Error", explanation=explanation)
        mock_client.return_value.version.side_effect = error

        with pytest.raises(ExecutorError) as raised:
            executor.get_version()
        assert type(raised.value) is ExecutorError
        assert str(raised.value) == "Engine version: the engine explains"
        assert raised.value.__cause__ is error


def test_any_other_sdk_error_becomes_executor_error_named_by_its_type():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.version.side_effect = KeyError()

        with pytest.raises(ExecutorError, match="Engine version: KeyError"):
            executor.get_version()


# =========================================================================================
# Creating and running
# =========================================================================================


def test_create_passes_the_whole_spec_to_the_engine():
    executor = _executor()
    spec = JobSpec(
        job_id="j1",
        attempt=2,
        image="busybox:latest",
        argv=["sh", "-c", "echo hi"],
        environment={"A": "1"},
        working_directory="/tmp",
        memory_limit_mb=64,
        cpu_limit=0.5,
        extra_labels={"team": "data"},
    )
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.return_value.id = "c1"

        assert executor.create(spec) == "c1"
        mock_client.return_value.containers.create.assert_called_once_with(
            image="busybox:latest",
            command=["sh", "-c", "echo hi"],
            name="cm-j1-2",
            labels={
                "team": "data",
                LABEL_MANAGED: "true",
                "container_manager.job": "j1",
                "container_manager.attempt": "2",
            },
            environment={"A": "1"},
            working_dir="/tmp",
            detach=True,
            init=True,
            security_opt=["no-new-privileges:true"],
            privileged=False,
            read_only=False,
            pids_limit=4096,
            log_config={"Type": "json-file", "Config": {"max-size": "33554432", "max-file": "2"}},
            mem_limit="64m",
            memswap_limit="64m",
            cpu_period=100_000,
            cpu_quota=50_000,
        )


def test_create_without_limits_or_command_leaves_them_to_the_image():
    executor = _executor()
    spec = JobSpec(job_id="j1", attempt=1, image="busybox:latest")
    with patch("docker.DockerClient") as mock_client:
        executor.create(spec)

        kwargs = mock_client.return_value.containers.create.call_args.kwargs
        assert kwargs["command"] is None
        assert kwargs["working_dir"] is None
        assert not {"mem_limit", "memswap_limit", "cpu_quota", "cpu_period"} & set(kwargs)


def test_create_passes_the_network_mode_when_set():
    executor = _executor()
    spec = JobSpec(job_id="j1", attempt=1, image="busybox:latest", network_mode="none")
    with patch("docker.DockerClient") as mock_client:
        executor.create(spec)

        assert mock_client.return_value.containers.create.call_args.kwargs["network_mode"] == "none"


def test_create_without_network_mode_leaves_the_engine_default():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        executor.create(JobSpec(job_id="j1", attempt=1, image="busybox:latest"))

        assert "network_mode" not in mock_client.return_value.containers.create.call_args.kwargs


@pytest.mark.parametrize("mode", ["none", "host", None])
def test_spec_from_job_takes_the_network_mode_setting(settings, mode):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": mode}

    assert JobSpec.from_job(ContainerJobFactory(), attempt=1).network_mode == mode


def test_network_mode_of_the_wrong_type_is_a_configuration_error(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": 1}

    with pytest.raises(ConfigurationError, match="NETWORK_MODE"):
        JobSpec.from_job(ContainerJobFactory(), attempt=1)


def test_create_container_is_the_public_name_of_create():
    executor = _executor()
    job = ContainerJobFactory(command="echo hi")
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.return_value.id = "c9"

        assert executor.create_container(job) == "c9"
        assert mock_client.return_value.containers.create.call_args.kwargs["command"] == [
            "echo",
            "hi",
        ]
        mock_client.return_value.containers.create.return_value.start.assert_not_called()


def test_run_creates_and_starts():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        container = mock_client.return_value.containers.create.return_value
        container.id = "c1"
        container.status = "created"

        assert executor.run(_spec()) == "c1"
        container.start.assert_called_once_with()


def test_a_name_conflict_finds_the_container_of_a_previous_try():
    executor = _executor()
    spec = _spec()
    with patch("docker.DockerClient") as mock_client:
        existing = Mock(id="existing-1", status="exited")
        mock_client.return_value.containers.create.side_effect = _conflict(spec.name)
        mock_client.return_value.containers.get.return_value = existing

        assert executor.run(spec) == "existing-1"
        mock_client.return_value.containers.get.assert_called_once_with(spec.name)
        existing.start.assert_not_called()  # it ran already: never twice


def test_a_name_conflict_with_a_created_container_starts_it():
    executor = _executor()
    spec = _spec()
    with patch("docker.DockerClient") as mock_client:
        existing = Mock(id="existing-2", status="created")
        mock_client.return_value.containers.create.side_effect = _conflict(spec.name)
        mock_client.return_value.containers.get.return_value = existing

        assert executor.run(spec) == "existing-2"
        existing.start.assert_called_once_with()


def test_create_errors_other_than_a_conflict_are_raised():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = APIError(
            "500 Server Error", explanation="no space left on device"
        )

        with pytest.raises(ExecutorError, match="no space left on device"):
            executor.create(_spec())
        mock_client.return_value.containers.get.assert_not_called()


def test_a_missing_image_is_pulled_when_the_host_pulls():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        created = Mock(id="c1", status="created")
        mock_client.return_value.containers.create.side_effect = [
            ImageNotFound("404 Client Error", explanation="No such image: alpine:3.20"),
            created,
        ]

        assert executor.run(_spec("alpine:3.20")) == "c1"
        mock_client.return_value.images.pull.assert_called_once_with("alpine", tag="3.20")
        assert mock_client.return_value.containers.create.call_count == 2
        created.start.assert_called_once_with()


def test_a_missing_image_without_auto_pull_is_a_clear_error():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = ImageNotFound(
            "404 Client Error", explanation="No such image: alpine:3.20"
        )

        with pytest.raises(ImageUnavailableError) as raised:
            executor.run(_spec("alpine:3.20", auto_pull=False))
        assert str(raised.value) == (
            "Image 'alpine:3.20' is not on the host and the host does not pull images"
        )
        mock_client.return_value.images.pull.assert_not_called()


def test_launch_job_on_a_host_that_does_not_pull():
    host = ExecutorHostFactory(auto_pull_images=False)
    job = ContainerJobFactory(docker_host=host, docker_image="alpine:3.20")
    executor = DockerExecutor({"docker_host": host})
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = ImageNotFound(
            "404 Client Error", explanation="No such image: alpine:3.20"
        )

        success, message = executor.launch_job(job)
        assert success is False
        assert "does not pull images" in message
        mock_client.return_value.images.pull.assert_not_called()


def test_a_failing_pull_is_image_unavailable_and_creates_nothing():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = ImageNotFound(
            "404 Client Error", explanation="No such image: private/app:1"
        )
        mock_client.return_value.images.pull.side_effect = APIError(
            "404 Client Error", explanation="pull access denied for private/app"
        )

        with pytest.raises(ImageUnavailableError) as raised:
            executor.run(_spec("private/app:1"))
        assert "could not be pulled" in str(raised.value)
        assert "pull access denied for private/app" in str(raised.value)
        assert mock_client.return_value.containers.create.call_count == 1


def test_pull_image_defaults_to_the_latest_tag():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        assert executor.pull_image("registry.example:5000/team/app") is True
        mock_client.return_value.images.pull.assert_called_once_with(
            "registry.example:5000/team/app", tag="latest"
        )


def test_pull_image_that_the_registry_lacks():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.images.pull.side_effect = ImageNotFound(
            "404 Client Error", explanation="manifest for nope:1 not found"
        )

        with pytest.raises(ImageUnavailableError, match="manifest for nope:1 not found"):
            executor.pull_image("nope:1")


def test_pull_image_when_the_engine_is_unreachable_is_a_connection_error():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.images.pull.side_effect = requests.exceptions.ConnectionError(
            "Connection aborted"
        )

        with pytest.raises(ExecutorConnectionError, match="Connection aborted"):
            executor.pull_image("busybox:latest")


def test_a_failed_start_removes_the_container_and_tells_the_engine_error():
    executor = _executor()
    job = ContainerJobFactory()
    with patch("docker.DockerClient") as mock_client:
        container = Mock(id="c1", status="created")
        container.start.side_effect = APIError(
            "500 Server Error", explanation='exec: "nope": executable file not found in $PATH'
        )
        mock_client.return_value.containers.create.return_value = container
        mock_client.return_value.containers.get.return_value = container

        success, message = executor.launch_job(job)
        assert success is False
        assert 'exec: "nope": executable file not found' in message
        container.remove.assert_called_once_with(force=True, v=True)


def test_a_failed_start_whose_cleanup_fails_too_still_tells_the_start_error():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        container = Mock(id="c1", status="created")
        container.start.side_effect = APIError("500 Server Error", explanation="start broke")
        mock_client.return_value.containers.create.return_value = container
        mock_client.return_value.containers.get.side_effect = requests.exceptions.ConnectionError(
            "engine went away"
        )

        with pytest.raises(ExecutorError, match="start broke"):
            executor.run(_spec())


def test_launch_job_success_returns_the_container_id():
    executor = _executor()
    job = ContainerJobFactory()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.return_value = Mock(id="c1", status="created")

        assert executor.launch_job(job) == (True, "c1")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"docker_image": "Not An Image"}, "not a valid image reference"),
        ({"command": "echo 'unbalanced"}, "cannot be split"),
        ({"override_environment": "NOT A LINE"}, "not KEY=VALUE"),
    ],
    ids=["image", "command", "environment"],
)
def test_an_invalid_job_is_rejected_before_the_engine_is_asked(fields, expected):
    executor = _executor()
    job = ContainerJobFactory(**fields)
    with patch("docker.DockerClient") as mock_client:
        with pytest.raises(ExecutorError, match=expected):
            executor._validate_job(job)

        success, message = executor.launch_job(job)
        assert success is False
        assert message.startswith("Invalid job:")
        mock_client.assert_not_called()


# =========================================================================================
# Watching and harvesting
# =========================================================================================


def test_wait_returns_the_exit_code():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.wait.return_value = {"StatusCode": 3, "Error": None}

        assert executor.wait("c1", timeout=5) == 3
        mock_client.return_value.api.wait.assert_called_once_with("c1", timeout=5)


@pytest.mark.parametrize(
    "error",
    [
        requests.exceptions.ReadTimeout("Read timed out."),
        requests.exceptions.ConnectionError(
            urllib3.exceptions.ReadTimeoutError(None, "/containers/c1/wait", "Read timed out.")
        ),
    ],
    ids=["read-timeout", "read-timeout-inside-connection-error"],
)
def test_wait_timeout_returns_none(error):
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.wait.side_effect = error

        assert executor.wait("c1", timeout=0.5) is None


def test_wait_when_the_engine_goes_away_is_a_connection_error():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.wait.side_effect = requests.exceptions.ConnectionError(
            "Connection refused"
        )

        with pytest.raises(ExecutorConnectionError, match="Wait for container c1"):
            executor.wait("c1", timeout=0.5)


def test_wait_for_a_vanished_container():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.wait.side_effect = NotFound(
            "404", explanation="No such container: c1"
        )

        with pytest.raises(ContainerNotFoundError):
            executor.wait("c1", timeout=None)


def test_inspect_an_exited_container():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.inspect_container.return_value = {
            "State": {
                "Status": "exited",
                "ExitCode": 137,
                "OOMKilled": True,
                "Error": "",
                "StartedAt": "2024-01-01T10:00:00.123456789Z",
                "FinishedAt": "2024-01-01T10:00:05Z",
            }
        }

        state = executor.inspect("c1")
        assert state == ContainerState(
            status="exited",
            exit_code=137,
            oom_killed=True,
            error="",
            started_at=datetime(2024, 1, 1, 10, 0, 0, 123456, tzinfo=UTC),
            finished_at=datetime(2024, 1, 1, 10, 0, 5, tzinfo=UTC),
        )
        assert state.has_exited


def test_inspect_a_running_container():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.inspect_container.return_value = {
            "State": {
                "Status": "running",
                "ExitCode": 0,
                "OOMKilled": False,
                "Error": None,
                "StartedAt": "2024-01-01T10:00:00.5Z",
                "FinishedAt": "0001-01-01T00:00:00Z",
            }
        }

        state = executor.inspect("c1")
        assert state.status == "running"
        assert state.exit_code is None
        assert state.finished_at is None
        assert state.error == ""
        assert not state.has_exited


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_iter_output_reads_one_stream(stream):
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.logs.return_value = iter([b"one\n", b"two\n"])

        assert list(executor.iter_output("c1", stream)) == [b"one\n", b"two\n"]
        mock_client.return_value.api.logs.assert_called_once_with(
            "c1",
            stdout=stream == "stdout",
            stderr=stream == "stderr",
            stream=True,
            follow=False,
        )


def test_iter_output_of_a_vanished_container():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.logs.side_effect = NotFound("404", explanation="No such c1")

        with pytest.raises(ContainerNotFoundError):
            list(executor.iter_output("c1", "stdout"))


def test_iter_outputs_reads_both_streams_in_one_request_without_inspecting():
    executor = _executor()
    body = frame(1, b"out 1\n") + frame(1, b"out 2\n") + frame(2, b"err 1\n")
    body += frame(1, b"out 3\n")
    with patch("docker.DockerClient") as mock_client:
        api = answer_logs(mock_client.return_value.api, logs_answer(body))

        chunks = list(executor.iter_outputs("c1"))

    # Consecutive frames of one stream come joined; the streams' order is kept.
    assert chunks == [
        ("stdout", b"out 1\nout 2\n"),
        ("stderr", b"err 1\n"),
        ("stdout", b"out 3\n"),
    ]
    api._get.assert_called_once()
    url = api._get.call_args.args[0]
    assert url == "http+docker://localhost/v1.41/containers/c1/logs"
    assert api._get.call_args.kwargs["params"]["stdout"] == 1
    assert api._get.call_args.kwargs["params"]["stderr"] == 1
    assert api._get.call_args.kwargs["stream"] is True
    api.inspect_container.assert_not_called()
    api.logs.assert_not_called()


def test_iter_outputs_reads_a_big_frame_in_bounded_pieces():
    executor = _executor()
    payload = b"x" * (200 * 1024 + 5)
    with patch("docker.DockerClient") as mock_client:
        answer_logs(mock_client.return_value.api, logs_answer(frame(1, payload) + frame(2, b"")))

        chunks = list(executor.iter_outputs("c1"))

    assert len(chunks) > 1
    assert max(len(chunk) for _, chunk in chunks) <= 64 * 1024
    assert b"".join(chunk for _, chunk in chunks) == payload
    assert {stream for stream, _ in chunks} == {"stdout"}


def test_iter_outputs_of_an_answer_cut_anywhere_into_pieces():
    executor = _executor()
    lines = [(1 + n % 2, f"line {n}\n".encode()) for n in range(50)]
    body = b"".join(frame(kind, line) for kind, line in lines) + frame(0, b"stdin?")
    with patch("docker.DockerClient") as mock_client:
        answer_logs(mock_client.return_value.api, logs_answer(body, trickle=True))

        chunks = list(executor.iter_outputs("c1"))

    for kind, stream in ((1, "stdout"), (2, "stderr")):
        expected = b"".join(line for k, line in lines if k == kind)
        assert b"".join(chunk for s, chunk in chunks if s == stream) == expected
    assert {stream for stream, _ in chunks} == {"stdout", "stderr"}


@pytest.mark.parametrize(
    "body", [frame(1, b"complete\n") + b"\x01\x00", frame(1, b"complete\n")[:-3]]
)
def test_iter_outputs_of_a_cut_answer_is_a_connection_error(body):
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        answer_logs(mock_client.return_value.api, logs_answer(body))

        with pytest.raises(ExecutorConnectionError, match="cut inside a frame"):
            list(executor.iter_outputs("c1"))


def _stamped(kind, n, line):
    """A followed frame: the engine's timestamp of line ``n``, a space, the line."""
    return frame(kind, f"2026-12-02T02:09:57.{n:09d}Z ".encode() + line)


def test_follow_outputs_follows_with_timestamps_and_no_read_deadline():
    executor = _executor()
    body = _stamped(1, 1, b"out 1\n") + _stamped(2, 2, b"err 1\n") + _stamped(1, 3, b"out 2\n")
    with patch("docker.DockerClient") as mock_client:
        api = answer_logs(mock_client.return_value.api, logs_answer(body, trickle=True))

        chunks = list(executor.follow_outputs("c1"))

    for stream, text in (("stdout", b"out 1\nout 2\n"), ("stderr", b"err 1\n")):
        assert b"".join(chunk for s, chunk in chunks if s == stream) == text
    params = api._get.call_args.kwargs["params"]
    assert (params["follow"], params["timestamps"], params["tail"]) == (1, 1, "all")
    assert api._get.call_args.kwargs["timeout"] == (executor.timeout, None)
    assert executor.follows_output is True


def test_follow_outputs_drops_the_lines_the_engine_sends_again_after_a_rotation():
    """Docker 20.10 sends a few hundred lines again when the json-file log rotates under a
    follower; their timestamps give them away. A line the job printed twice is kept."""
    executor = _executor()
    first = [_stamped(1, n, f"line {n}\n".encode()) for n in range(1, 6)]
    again = first[2:]  # the replay: lines 3 to 5, as sent before
    twice = [_stamped(1, 6, b"same\n"), _stamped(1, 7, b"same\n")]
    err = [_stamped(2, 4, b"oops\n")]  # earlier than stdout's last: another stream
    body = b"".join(first + err + again + twice)
    with patch("docker.DockerClient") as mock_client:
        answer_logs(mock_client.return_value.api, logs_answer(body))

        chunks = list(executor.follow_outputs("c1"))

    out = b"".join(chunk for s, chunk in chunks if s == "stdout")
    assert out == b"line 1\nline 2\nline 3\nline 4\nline 5\nsame\nsame\n"
    assert b"".join(chunk for s, chunk in chunks if s == "stderr") == b"oops\n"


def test_follow_outputs_keeps_the_equal_parts_of_a_long_line():
    """A long line comes in 16 KiB parts with one timestamp; equal parts are the line's."""
    executor = _executor()
    part = b"x" * 16384
    body = _stamped(1, 1, part) + _stamped(1, 1, part) + _stamped(1, 1, b"end\n")
    body += _stamped(1, 1, part)  # sent again after the line ended: a replay
    with patch("docker.DockerClient") as mock_client:
        answer_logs(mock_client.return_value.api, logs_answer(body))

        out = b"".join(chunk for _, chunk in executor.follow_outputs("c1"))

    assert out == part + part + b"end\n"


def test_follow_outputs_forgets_frames_beyond_its_window(monkeypatch):
    from container_manager.executors import docker_logs

    monkeypatch.setattr(docker_logs, "REPLAY_WINDOW", 2)
    executor = _executor()
    lines = [_stamped(1, n, f"{n}\n".encode()) for n in range(1, 5)]
    body = b"".join(lines) + lines[0] + lines[3]  # line 1 is out of the window; 4 is not
    with patch("docker.DockerClient") as mock_client:
        answer_logs(mock_client.return_value.api, logs_answer(body))

        out = b"".join(chunk for _, chunk in executor.follow_outputs("c1"))

    assert out == b"1\n2\n3\n4\n1\n"


def test_follow_outputs_of_a_cut_answer_is_a_connection_error():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        answer_logs(mock_client.return_value.api, logs_answer(_stamped(1, 1, b"a\n")[:-1]))

        with pytest.raises(ExecutorConnectionError, match="cut inside a frame"):
            list(executor.follow_outputs("c1"))


def test_an_engine_that_cannot_be_reached_after_a_kill_restarted():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        api = mock_client.return_value.api
        api._get.side_effect = requests.exceptions.ConnectionError("refused")
        assert executor.engine_restarted("c1", None, 1.0) is True


def test_an_engine_without_the_containers_die_event_restarted():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        api = answer_logs(mock_client.return_value.api, logs_answer(b""))
        api.events.return_value = iter([])
        assert executor.engine_restarted("c1", None, 1.0) is True
        api.events.side_effect = requests.exceptions.ConnectionError("refused")
        assert executor.engine_restarted("c1", None, 1.0) is True
        filters = api.events.call_args.kwargs["filters"]
        assert filters == {"container": ["c1"], "event": ["die"]}


def test_an_engine_that_saw_the_die_and_ends_its_event_stream_is_shutting_down():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        api = answer_logs(mock_client.return_value.api, logs_answer(b""))  # EOF: closed
        api.events.return_value = iter([b'{"status":"die"}'])
        assert executor.engine_restarted("c1", None, 1.0) is True
        assert api._get.call_args.kwargs["timeout"] == (executor.timeout, 1.0)


def test_iter_outputs_of_a_vanished_container():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        answer_logs(
            mock_client.return_value.api, logs_answer(b'{"message":"No such container: c1"}', 404)
        )

        with pytest.raises(ContainerNotFoundError, match="No such container: c1"):
            list(executor.iter_outputs("c1"))


def test_iter_outputs_when_the_engine_does_not_answer():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        api = answer_logs(mock_client.return_value.api, logs_answer(b""))
        api._get.side_effect = requests.exceptions.ConnectionError("connection refused")

        with pytest.raises(ExecutorConnectionError, match="connection refused"):
            list(executor.iter_outputs("c1"))


@pytest.mark.parametrize(
    ("url", "trusts_env"),
    [(SOCKET, False), ("tcp://127.0.0.1:2375", True), ("ssh://user@engine", True)],
)
def test_local_sockets_skip_the_environment_lookup_of_proxies(url, trusts_env):
    executor = _executor(url)
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.trust_env = True

        assert executor.client.api.trust_env is trusts_env


def test_find_container_by_name():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.inspect_container.return_value = {"Id": "abc123"}

        assert executor.find_container("cm-j-1") == "abc123"
        mock_client.return_value.api.inspect_container.assert_called_once_with("cm-j-1")


def test_find_container_that_does_not_exist():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.inspect_container.side_effect = NotFound("404")

        assert executor.find_container("cm-j-1") is None


# =========================================================================================
# Stopping and removing
# =========================================================================================


def test_stop_container_with_a_grace_period():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        assert executor.stop_container("c1", grace=2) is True
        mock_client.return_value.api.stop.assert_called_once_with("c1", timeout=2)


def test_stop_container_grace_defaults_to_the_setting(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "STOP_GRACE_SECONDS": 9}
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        assert executor.stop_container("c1") is True
        mock_client.return_value.api.stop.assert_called_once_with("c1", timeout=9)


def test_stop_a_vanished_container_is_true():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.stop.side_effect = NotFound("404", explanation="No such c1")

        assert executor.stop_container("c1", grace=1) is True


def test_stop_container_engine_error_is_raised():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.api.stop.side_effect = APIError("500", explanation="cannot kill")

        with pytest.raises(ExecutorError, match="cannot kill"):
            executor.stop_container("c1", grace=1)


def test_cleanup_is_idempotent():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        container = Mock()
        mock_client.return_value.containers.get.side_effect = [
            container,
            NotFound("404", explanation="No such container: c1"),
        ]

        assert executor.cleanup("c1") is True
        assert executor.cleanup("c1") is True
        container.remove.assert_called_once_with(force=True, v=True)


def test_cleanup_while_a_removal_is_in_progress_is_true():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.return_value.remove.side_effect = _answer(
            409, "409 Client Error", "removal of container c1 is already in progress"
        )

        assert executor.cleanup("c1") is True


def test_cleanup_engine_error_is_raised():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.return_value.remove.side_effect = APIError(
            "500 Server Error", explanation="driver failed to remove root filesystem"
        )

        with pytest.raises(ExecutorError, match="driver failed to remove root filesystem"):
            executor.cleanup("c1")


def test_check_status_when_the_engine_is_unreachable_raises():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.side_effect = requests.exceptions.ConnectionError(
            "refused"
        )

        with pytest.raises(ExecutorConnectionError):
            executor.check_status("c1")


# =========================================================================================
# Logs and figures
# =========================================================================================


def test_get_logs_without_tail_asks_for_both_streams():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        container = mock_client.return_value.containers.get.return_value
        container.logs.return_value = b"out\nerr\n"

        assert executor.get_logs("c1") == "out\nerr\n"
        container.logs.assert_called_once_with(stdout=True, stderr=True)


def test_get_logs_replaces_undecodable_bytes():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.return_value.logs.return_value = b"ok \xff\n"

        assert executor.get_logs("c1") == "ok \ufffd\n"


def test_get_logs_accepts_text_from_the_sdk():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.return_value.logs.return_value = "already text"

        assert executor.get_logs("c1") == "already text"


def test_get_resource_usage_from_a_full_stats_sample():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        container = mock_client.return_value.containers.get.return_value
        container.stats.return_value = {
            "memory_stats": {"usage": 1000, "max_usage": 4000, "limit": 8000},
            "cpu_stats": {
                "cpu_usage": {"total_usage": 3_000_000_000},
                "system_cpu_usage": 20_000_000_000,
                "online_cpus": 2,
            },
            "precpu_stats": {
                "cpu_usage": {"total_usage": 2_000_000_000},
                "system_cpu_usage": 10_000_000_000,
            },
        }

        usage = executor.get_resource_usage("c1")
        assert usage == {
            "memory_usage": 1000,
            "memory_peak": 4000,
            "memory_limit": 8000,
            "cpu_usage": 3.0,
            "cpu_percent": pytest.approx(20.0),
        }
        container.stats.assert_called_once_with(stream=False)


def test_get_resource_usage_of_an_empty_sample_is_zero():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.return_value.stats.return_value = {}

        assert executor.get_resource_usage("c1") == {
            "memory_usage": 0,
            "memory_peak": 0,
            "memory_limit": 0,
            "cpu_usage": 0.0,
            "cpu_percent": 0.0,
        }


def test_get_container_stats_is_the_resource_usage():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.return_value.stats.return_value = {
            "memory_stats": {"usage": 2048},
            "cpu_stats": {"cpu_usage": {"total_usage": 500_000_000}},
        }

        stats = executor.get_container_stats("c1")
        assert stats["memory_usage"] == 2048
        assert stats["cpu_usage"] == 0.5


def test_get_resource_usage_of_a_vanished_container():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.get.side_effect = NotFound("404")

        with pytest.raises(ContainerNotFoundError):
            executor.get_resource_usage("c1")


# =========================================================================================
# Maintenance
# =========================================================================================


def _listed(
    container_id: str, status: str, finished: str = "0001-01-01T00:00:00Z", **labels
) -> Mock:
    container = Mock(id=container_id, status=status, labels={LABEL_MANAGED: "true", **labels})
    container.name = f"cm-{container_id}-1"
    container.attrs = {
        "Config": {"Image": "busybox:latest"},
        "State": {"Status": status, "FinishedAt": finished},
    }
    return container


def test_list_containers_filters_by_the_app_labels(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "CONTAINER_LABELS": {"deployment": "blue"},
    }
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.list.return_value = [
            _listed("c1", "exited", "2024-01-01T10:00:00.5Z", deployment="blue")
        ]

        assert executor.list_containers() == [
            {
                "id": "c1",
                "name": "cm-c1-1",
                "status": "exited",
                "labels": {LABEL_MANAGED: "true", "deployment": "blue"},
                "image": "busybox:latest",
                "finished_at": datetime(2024, 1, 1, 10, 0, 0, 500000, tzinfo=UTC),
            }
        ]
        mock_client.return_value.containers.list.assert_called_once_with(
            all=True,
            filters={"label": ["deployment=blue", f"{LABEL_MANAGED}=true"]},
            ignore_removed=True,
        )


def test_list_containers_without_extra_labels_filters_on_the_managed_label(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "CONTAINER_LABELS": {}}
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.list.return_value = []

        assert executor.list_containers() == []
        filters = mock_client.return_value.containers.list.call_args.kwargs["filters"]
        assert filters == {"label": [f"{LABEL_MANAGED}=true"]}


def test_cleanup_old_containers_removes_only_old_finished_ones():
    executor = _executor()
    containers = {
        "old": _listed("old", "exited", "2024-01-01T00:00:00Z"),
        "dead": _listed("dead", "dead", "2024-01-02T00:00:00Z"),
        "recent": _listed("recent", "exited", "2024-06-01T00:00:00Z"),
        "running": _listed("running", "running"),
        "created": _listed("created", "created"),
    }
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.list.return_value = list(containers.values())
        mock_client.return_value.containers.get.side_effect = containers.__getitem__

        removed = executor.cleanup_old_containers(datetime(2024, 3, 1, tzinfo=UTC))
        assert removed == 2
        containers["old"].remove.assert_called_once_with(force=True, v=True)
        containers["dead"].remove.assert_called_once_with(force=True, v=True)
        for kept in ("recent", "running", "created"):
            containers[kept].remove.assert_not_called()


def test_cleanup_old_containers_with_nothing_to_do():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.list.return_value = []

        assert executor.cleanup_old_containers(datetime.now(UTC)) == 0


def test_get_version():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.version.return_value = {"Version": "28.2.2", "ApiVersion": "1.50"}

        assert executor.get_version() == "28.2.2"


def test_get_version_when_the_engine_does_not_say():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.version.return_value = {}

        assert executor.get_version() == "unknown"


def test_health_check_when_the_engine_is_unreachable():
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.ping.side_effect = requests.exceptions.ConnectionError("refused")

        assert executor.health_check() is False


@pytest.mark.parametrize("url", [SOCKET, "tcp://127.0.0.1:2376"])
def test_check_accepts_engine_urls(url):
    with patch("docker.DockerClient") as mock_client:
        assert _executor(url).check() == []
        mock_client.assert_not_called()


def test_check_reports_a_bad_engine_url():
    problems = _executor("gopher://engine:70").check()
    assert len(problems) == 1
    assert problems[0].startswith("gopher://engine:70: ")


# =========================================================================================
# TLS from an ExecutorHost
# =========================================================================================


@pytest.fixture
def tls_files(tmp_path):
    paths = {}
    for name in ("ca.pem", "cert.pem", "key.pem"):
        path = tmp_path / name
        path.write_text(f"-----BEGIN {name}-----\n")
        paths[name] = str(path)
    return paths


def _tls_of(host) -> object:
    with patch("docker.DockerClient") as mock_client:
        DockerExecutor({"docker_host": host}).get_version()
        mock_client.assert_called_once()
        assert mock_client.call_args.kwargs["base_url"] == host.connection_string
        return mock_client.call_args.kwargs["tls"]


def test_tls_with_verification_and_a_client_certificate(tls_files):
    host = ExecutorHostFactory(
        connection_string="tcp://127.0.0.1:2376",
        tls_enabled=True,
        tls_verify=True,
        tls_ca_cert=tls_files["ca.pem"],
        tls_client_cert=tls_files["cert.pem"],
        tls_client_key=tls_files["key.pem"],
    )
    tls = _tls_of(host)
    assert isinstance(tls, docker.tls.TLSConfig)
    assert tls.cert == (tls_files["cert.pem"], tls_files["key.pem"])
    assert tls.ca_cert == tls_files["ca.pem"]
    assert tls.verify == tls_files["ca.pem"]


def test_tls_with_verification_against_the_system_cas():
    host = ExecutorHostFactory(
        connection_string="tcp://127.0.0.1:2376", tls_enabled=True, tls_verify=True
    )
    tls = _tls_of(host)
    assert isinstance(tls, docker.tls.TLSConfig)
    assert tls.verify is True
    assert tls.cert is None
    assert tls.ca_cert is None


def test_tls_without_verification(tls_files):
    host = ExecutorHostFactory(
        connection_string="tcp://127.0.0.1:2376",
        tls_enabled=True,
        tls_verify=False,
        tls_client_cert=tls_files["cert.pem"],
        tls_client_key=tls_files["key.pem"],
    )
    tls = _tls_of(host)
    assert isinstance(tls, docker.tls.TLSConfig)
    assert tls.verify is False
    assert tls.cert == (tls_files["cert.pem"], tls_files["key.pem"])


def test_no_tls_for_a_host_without_it():
    host = ExecutorHostFactory(connection_string="tcp://127.0.0.1:2375", tls_enabled=False)
    assert _tls_of(host) is False


def test_a_missing_certificate_file_is_a_configuration_error(tmp_path):
    host = ExecutorHostFactory(
        name="secure-engine",
        connection_string="tcp://127.0.0.1:2376",
        tls_enabled=True,
        tls_verify=True,
        tls_ca_cert=str(tmp_path / "missing-ca.pem"),
    )
    executor = DockerExecutor({"docker_host": host})
    with patch("docker.DockerClient") as mock_client:
        with pytest.raises(ConfigurationError, match="'secure-engine': TLS configuration"):
            executor.get_version()
        mock_client.assert_not_called()


def test_an_engine_400_at_create_is_a_refused_spec_and_not_retried_by_the_runner():
    """A 400 (a bind source that does not exist, an unknown device driver) is the spec's
    fault: SpecRefusedError, a PermanentLaunchError, carrying the status code."""
    from container_manager.exceptions import PermanentLaunchError, SpecRefusedError

    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = _answer(
            400, "400 Client Error", "invalid mount config for type \"bind\": bind source path"
            " does not exist: /srv/missing",
        )  # fmt: skip
        with pytest.raises(SpecRefusedError) as caught:
            executor.run(_spec())
    assert isinstance(caught.value, PermanentLaunchError)
    assert caught.value.status_code == 400
    assert "bind source path does not exist" in str(caught.value)


def test_a_conflict_without_a_409_is_not_taken_for_one():
    """The status code decides, not the words: a 500 that mentions a conflict is an error."""
    executor = _executor()
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = _answer(
            500, "500 Server Error", "Conflict. The container name is already in use"
        )
        with pytest.raises(ExecutorError, match="already in use"):
            executor.create(_spec())
        mock_client.return_value.containers.get.assert_not_called()


def test_the_engine_log_is_capped_by_the_setting_or_left_to_the_engine(settings):
    executor = _executor()
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_LOG_MAX_BYTES": 4096}
    assert executor._create_kwargs(_spec())["log_config"] == {
        "Type": "json-file",
        "Config": {"max-size": "2048", "max-file": "2"},
    }
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_LOG_MAX_BYTES": None}
    assert "log_config" not in executor._create_kwargs(_spec())
