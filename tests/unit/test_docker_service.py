"""DockerService, the backward-compatible facade of seed 001.

``TestDockerServiceSeed`` is every outline of the seed written out, with the seed's names and
its mocking (``patch.object(service, '_get_executor')``). The tests after it run the service
over real executors: the in-package FakeExecutor, or the DockerExecutor with only the Docker
SDK (``docker.DockerClient``) mocked.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from unittest.mock import MagicMock, patch

import docker.errors
import pytest
import requests
from django.test import TestCase
from django.utils import timezone as django_timezone
from docker.errors import NotFound

from container_manager.docker_service import (
    ContainerExecutionError,
    DockerConnectionError,
    DockerService,
)
from container_manager.exceptions import (
    ConfigurationError,
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageUnavailableError,
)
from container_manager.executors.docker import DockerExecutor
from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory


class TestDockerServiceSeed(TestCase):
    """The outlines of seed 001, one test each, same names and same mocking."""

    # ---- Test 1: container creation and configuration --------------------------------

    def test_create_container_success(self):
        service = DockerService()
        host = ExecutorHostFactory(executor_type="docker")
        job = ContainerJobFactory(docker_host=host)

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.create_container.return_value = "container_id"
            result = service.create_container(job)
            self.assertEqual(result, "container_id")
            mock_executor.assert_called_once_with(host)
            mock_executor.return_value.create_container.assert_called_once_with(job)

    def test_create_container_with_environment_variables(self):
        service = DockerService()
        job = ContainerJobFactory(environment_variables="KEY1=value1\nKEY2=value2")

        with patch.object(service, "_get_executor") as mock_executor:
            service.create_container(job)
            mock_executor.return_value.create_container.assert_called_once()
            (passed_job,) = mock_executor.return_value.create_container.call_args.args
            self.assertEqual(passed_job.environment, {"KEY1": "value1", "KEY2": "value2"})

    def test_create_container_executor_error(self):
        service = DockerService()
        job = ContainerJobFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            error = ExecutorError("Creation failed")
            mock_executor.return_value.create_container.side_effect = error
            with self.assertRaises(ContainerExecutionError) as caught:
                service.create_container(job)
            self.assertIs(caught.exception.__cause__, error)
            self.assertIn("Creation failed", str(caught.exception))

    # ---- Test 2: image management ------------------------------------------------------

    def test_pull_image_success(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.pull_image.return_value = True
            result = service.pull_image(host, "ubuntu:latest")
            self.assertTrue(result)
            mock_executor.return_value.pull_image.assert_called_once_with("ubuntu:latest")

    def test_pull_image_timeout(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.pull_image.side_effect = TimeoutError("Pull timeout")
            with self.assertRaises(ContainerExecutionError) as caught:
                service.pull_image(host, "ubuntu:latest")
            self.assertIsInstance(caught.exception.__cause__, TimeoutError)

    def test_pull_image_not_found(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.pull_image.side_effect = NotFound("Image not found")
            with self.assertRaises(ContainerExecutionError) as caught:
                service.pull_image(host, "nonexistent:image")
            self.assertIsInstance(caught.exception.__cause__, NotFound)

    # ---- Test 3: container lifecycle -----------------------------------------------------

    def test_start_container_success(self):
        service = DockerService()
        job = ContainerJobFactory(container_id="test_container")

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value._start_container.return_value = True
            result = service.start_container(job)
            self.assertTrue(result)
            mock_executor.return_value._start_container.assert_called_once_with(
                job, "test_container"
            )

    def test_stop_container_success(self):
        service = DockerService()
        job = ContainerJobFactory(container_id="test_container")

        with patch.object(service, "_get_executor") as mock_executor:
            service.stop_container(job)
            mock_executor.return_value.stop_container.assert_called_once_with("test_container")

    def test_remove_container_success(self):
        service = DockerService()
        job = ContainerJobFactory(container_id="test_container")

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.cleanup.return_value = True
            result = service.remove_container(job)
            self.assertTrue(result)
            mock_executor.return_value.cleanup.assert_called_once_with("test_container")

    def test_cleanup_container_not_found(self):
        service = DockerService()
        job = ContainerJobFactory(container_id="missing_container")

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.cleanup.side_effect = NotFound("Container not found")
            # Should not raise exception, just log and continue
            with self.assertLogs("container_manager.docker_service", "INFO") as logs:
                result = service.remove_container(job)
            self.assertFalse(result)
            self.assertIn("missing_container", logs.output[0])

    # ---- Test 4: bulk operations and discovery ------------------------------------------

    def test_list_containers_success(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.list_containers.return_value = [
                {"id": "container1", "status": "running"},
                {"id": "container2", "status": "stopped"},
            ]
            containers = service.list_containers(host)
            self.assertEqual(len(containers), 2)
            self.assertEqual([c["id"] for c in containers], ["container1", "container2"])

    def test_cleanup_old_containers_success(self):
        service = DockerService()
        host = ExecutorHostFactory()
        cutoff_time = django_timezone.now() - timedelta(hours=24)

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.cleanup_old_containers.return_value = 3
            count = service.cleanup_old_containers(host, cutoff_time)
            self.assertEqual(count, 3)
            mock_executor.return_value.cleanup_old_containers.assert_called_once_with(cutoff_time)

    def test_get_container_stats(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_stats = {"cpu_percent": 50.0, "memory_usage": 256}
            mock_executor.return_value.get_container_stats.return_value = mock_stats
            stats = service.get_container_stats(host, "container_id")
            self.assertEqual(stats["cpu_percent"], 50.0)
            mock_executor.return_value.get_container_stats.assert_called_once_with("container_id")

    # ---- Test 5: health checking and monitoring -----------------------------------------

    def test_health_check_healthy_host(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.health_check.return_value = True
            is_healthy = service.health_check(host)
            self.assertTrue(is_healthy)

    def test_health_check_unhealthy_host(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.health_check.side_effect = DockerConnectionError(
                "Connection failed"
            )
            is_healthy = service.health_check(host)
            self.assertFalse(is_healthy)

    def test_get_docker_version(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            mock_executor.return_value.get_version.return_value = "20.10.7"
            version = service.get_docker_version(host)
            self.assertEqual(version, "20.10.7")

    # ---- Test 6: error handling and edge cases -------------------------------------------

    def test_executor_not_found_error(self):
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_get_executor:
            error = ExecutorConnectionError("No executor available")
            mock_get_executor.side_effect = error
            with self.assertRaises(DockerConnectionError) as caught:
                service.create_container(ContainerJobFactory(docker_host=host))
            self.assertIs(caught.exception.__cause__, error)

    def test_connection_retry_logic(self):
        # The service does not retry inside a call, and a failure does not stick: a failed
        # health check returns False, and the next one goes to the executor again.
        service = DockerService()
        host = ExecutorHostFactory()

        with patch.object(service, "_get_executor") as mock_executor:
            # First call fails, second succeeds
            mock_executor.return_value.health_check.side_effect = [
                DockerConnectionError("Temporary failure"),
                True,
            ]
            self.assertFalse(service.health_check(host))
            self.assertEqual(mock_executor.return_value.health_check.call_count, 1)
            self.assertTrue(service.health_check(host))
            self.assertEqual(mock_executor.return_value.health_check.call_count, 2)
            self.assertEqual(mock_executor.call_count, 2)

    def test_concurrent_operations(self):
        service = DockerService()
        host1 = ExecutorHostFactory()
        host2 = ExecutorHostFactory()

        with patch("docker.DockerClient") as engine_client:
            # Test that multiple hosts can be managed concurrently
            executor1 = service._get_executor(host1)
            executor2 = service._get_executor(host2)
            self.assertIsNotNone(executor1)
            self.assertIsNotNone(executor2)
            self.assertIsNot(executor1, executor2)
            self.assertIs(service._get_executor(host1), executor1)
            self.assertIs(service._get_executor(host2), executor2)
            self.assertIsInstance(executor1, DockerExecutor)
            self.assertEqual(executor1.host, host1)
            engine_client.assert_not_called()


# ---- _get_executor: one executor per host, built without the engine --------------------


class SlowExecutor(FakeExecutor):
    """A FakeExecutor that takes its time to build, to widen any race in the cache."""

    built: ClassVar[int] = 0
    built_lock = threading.Lock()

    def __init__(self, config: Any) -> None:
        time.sleep(0.02)
        with SlowExecutor.built_lock:
            SlowExecutor.built += 1
        super().__init__(config)


@pytest.fixture
def slow_executors(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "EXECUTORS": {"slow": f"{__name__}.SlowExecutor"},
    }
    SlowExecutor.built = 0
    return SlowExecutor


@pytest.mark.django_db
def test_many_threads_get_one_executor_per_host(slow_executors):
    service = DockerService()
    host = ExecutorHostFactory(executor_type="slow")
    threads_count = 16
    barrier = threading.Barrier(threads_count)
    seen: list[Any] = []
    seen_lock = threading.Lock()

    def ask() -> None:
        barrier.wait()
        executor = service._get_executor(host)
        with seen_lock:
            seen.append(executor)

    threads = [threading.Thread(target=ask) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert len(seen) == threads_count
    assert len({id(executor) for executor in seen}) == 1
    assert slow_executors.built == 1


@pytest.mark.django_db
def test_changed_connection_settings_build_a_new_executor():
    service = DockerService()
    host = ExecutorHostFactory(executor_type="fake")
    first = service._get_executor(host)

    host.connection_string = "unix:///other/engine.sock"
    second = service._get_executor(host)

    assert second is not first
    assert second.base_url == "unix:///other/engine.sock"
    assert service._get_executor(host) is second


@pytest.mark.django_db
def test_services_do_not_share_executors():
    host = ExecutorHostFactory(executor_type="fake")
    assert DockerService()._get_executor(host) is not DockerService()._get_executor(host)


@pytest.mark.django_db
def test_unknown_executor_alias_is_a_connection_error():
    service = DockerService()
    host = ExecutorHostFactory(executor_type="nonexistent")

    with pytest.raises(ExecutorConnectionError, match=r"host-.*nonexistent") as caught:
        service._get_executor(host)
    with pytest.raises(DockerConnectionError, match="nonexistent"):
        service.list_containers(host)
    assert service.health_check(host) is False
    assert caught.value.__cause__ is not None


@pytest.mark.django_db
def test_unimportable_executor_is_a_connection_error(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "EXECUTORS": {"broken": "no.such.module.Executor"},
    }
    host = ExecutorHostFactory(executor_type="broken")

    with pytest.raises(ExecutorConnectionError, match="cannot import"):
        DockerService()._get_executor(host)


@pytest.mark.django_db
def test_bad_executor_config_is_a_connection_error(settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_TIMEOUT": "soon"}
    host = ExecutorHostFactory(executor_type="docker")

    with pytest.raises(
        ExecutorConnectionError, match=r"ENGINE_TIMEOUT.*must be int or float"
    ) as caught:
        DockerService()._get_executor(host)
    assert isinstance(caught.value.__cause__, ConfigurationError)


@pytest.mark.django_db
def test_close_closes_and_forgets_executors():
    service = DockerService()
    host = ExecutorHostFactory()
    with patch("docker.DockerClient") as engine_client:
        executor = service._get_executor(host)
        assert service.get_docker_version(host)  # builds the SDK client
        service.close()

        engine_client.return_value.close.assert_called_once_with()
        assert service._get_executor(host) is not executor


@pytest.mark.django_db
def test_close_skips_executors_without_close():
    service = DockerService()
    host = ExecutorHostFactory(executor_type="fake")
    executor = service._get_executor(host)
    service.close()
    assert service._get_executor(host) is not executor


# ---- error mapping: one helper, every method --------------------------------------------

CONNECTION_ERRORS = [
    ExecutorConnectionError("refused"),
    requests.exceptions.ConnectionError("refused"),
    requests.exceptions.ReadTimeout("slow engine"),
    ConnectionRefusedError("refused"),
    docker.errors.DockerException("Error while fetching server API version"),
]
EXECUTION_ERRORS = [
    ExecutorError("boom"),
    ContainerNotFoundError("no such container"),
    ImageUnavailableError("no such image"),
    docker.errors.APIError("500 Server Error"),
    NotFound("gone"),
    TimeoutError("too slow"),
]


@pytest.mark.django_db
@pytest.mark.parametrize("error", CONNECTION_ERRORS, ids=lambda e: type(e).__name__)
def test_connection_errors_map_to_docker_connection_error(error):
    service = DockerService()
    host = ExecutorHostFactory()
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.get_version.side_effect = error
        with pytest.raises(DockerConnectionError) as caught:
            service.get_docker_version(host)
    assert caught.value.__cause__ is error
    assert host.name in str(caught.value)


@pytest.mark.django_db
@pytest.mark.parametrize("error", EXECUTION_ERRORS, ids=lambda e: type(e).__name__)
def test_operation_errors_map_to_container_execution_error(error):
    service = DockerService()
    host = ExecutorHostFactory()
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.list_containers.side_effect = error
        with pytest.raises(ContainerExecutionError) as caught:
            service.list_containers(host)
    assert caught.value.__cause__ is error


@pytest.mark.django_db
def test_compat_errors_from_the_executor_pass_through_unchanged():
    service = DockerService()
    host = ExecutorHostFactory()
    error = ContainerExecutionError("already ours")
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.get_version.side_effect = error
        with pytest.raises(ContainerExecutionError) as caught:
            service.get_docker_version(host)
    assert caught.value is error


@pytest.mark.django_db
def test_programming_errors_are_not_disguised():
    service = DockerService()
    host = ExecutorHostFactory()
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.list_containers.side_effect = KeyError("bug")
        with pytest.raises(KeyError):
            service.list_containers(host)


JOB_METHODS = ["create_container", "start_container", "stop_container", "remove_container"]


@pytest.mark.django_db
@pytest.mark.parametrize("method", JOB_METHODS)
def test_executor_connection_error_from_get_executor_maps_for_every_job_method(method):
    service = DockerService()
    job = ContainerJobFactory(container_id="abc")
    with (
        patch.object(service, "_get_executor", side_effect=ExecutorConnectionError("down")),
        pytest.raises(DockerConnectionError, match="down"),
    ):
        getattr(service, method)(job)


@pytest.mark.django_db
@pytest.mark.parametrize("method", JOB_METHODS)
def test_job_without_host_is_a_clear_execution_error(method):
    service = DockerService()
    job = ContainerJob(docker_image="busybox:latest", container_id="abc")
    with (
        patch.object(service, "_get_executor") as mock_executor,
        pytest.raises(ContainerExecutionError, match="has no host"),
    ):
        getattr(service, method)(job)
    mock_executor.assert_not_called()


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["start_container", "stop_container", "remove_container"])
def test_job_without_container_is_a_clear_execution_error(method):
    service = DockerService()
    job = ContainerJobFactory(container_id="")
    with (
        patch.object(service, "_get_executor") as mock_executor,
        pytest.raises(ContainerExecutionError, match="has no container"),
    ):
        getattr(service, method)(job)
    assert mock_executor.return_value.method_calls == []


@pytest.mark.django_db
def test_remove_container_of_container_not_found_error_is_false():
    service = DockerService()
    job = ContainerJobFactory(container_id="gone")
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.cleanup.side_effect = ContainerNotFoundError("gone")
        assert service.remove_container(job) is False


@pytest.mark.django_db
def test_remove_container_other_errors_still_raise():
    service = DockerService()
    job = ContainerJobFactory(container_id="busy")
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.cleanup.side_effect = ExecutorError("removal in progress")
        with pytest.raises(ContainerExecutionError, match="removal in progress"):
            service.remove_container(job)


@pytest.mark.django_db
def test_health_check_does_not_swallow_non_connection_errors():
    service = DockerService()
    host = ExecutorHostFactory()
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.health_check.side_effect = ExecutorError("odd answer")
        with pytest.raises(ContainerExecutionError, match="odd answer"):
            service.health_check(host)


@pytest.mark.django_db
def test_failed_health_check_is_logged(caplog):
    service = DockerService()
    host = ExecutorHostFactory()
    with patch.object(service, "_get_executor") as mock_executor:
        mock_executor.return_value.health_check.side_effect = ExecutorConnectionError("refused")
        with caplog.at_level("WARNING", logger="container_manager.docker_service"):
            assert service.health_check(host) is False
    assert host.name in caplog.text
    assert "refused" in caplog.text


# ---- over the in-package FakeExecutor (no mocks) ---------------------------------------


@pytest.fixture
def fake_service_host(db):
    return ExecutorHostFactory(
        executor_type="fake", connection_string="unix:///fake/service-engine.sock"
    )


def test_fake_host_list_stats_version_and_cleanup(fake_service_host):
    service = DockerService()
    engine = FakeExecutor.engine_for(fake_service_host.connection_string)
    engine.script(FakeOutcome(exit_code=0))
    job = ContainerJobFactory(docker_host=fake_service_host, command="true")
    executor = service._get_executor(fake_service_host)
    container_id = executor.run(_spec(job))

    listed = service.list_containers(fake_service_host)
    assert [c["id"] for c in listed] == [container_id]
    # The fake executor has no get_container_stats(): the service falls back to the
    # base interface's get_resource_usage().
    stats = service.get_container_stats(fake_service_host, container_id)
    assert set(stats) >= {"memory_usage", "cpu_usage"}
    assert service.get_docker_version(fake_service_host) == "fake-1.0"
    assert service.health_check(fake_service_host) is True

    executor.wait(container_id, timeout=5)
    future = datetime.now(UTC) + timedelta(hours=1)
    assert service.cleanup_old_containers(fake_service_host, future) == 1
    assert service.list_containers(fake_service_host) == []


def _spec(job: ContainerJob) -> Any:
    from container_manager.executors.base import JobSpec

    return JobSpec.from_job(job, attempt=1)


def test_fake_host_stop_and_remove(fake_service_host):
    service = DockerService()
    engine = FakeExecutor.engine_for(fake_service_host.connection_string)
    engine.script(FakeOutcome(duration=60))
    job = ContainerJobFactory(docker_host=fake_service_host, command="sleep 60")
    job.container_id = service._get_executor(fake_service_host).run(_spec(job))

    assert service.stop_container(job) is True
    assert engine.containers[job.container_id].status == "exited"
    assert service.remove_container(job) is True
    assert job.container_id not in engine.containers
    # Gone now: a second removal reports False, without an error.
    assert service.remove_container(job) is False


def test_fake_host_down(fake_service_host):
    service = DockerService()
    FakeExecutor.engine_for(fake_service_host.connection_string).down = True

    assert service.health_check(fake_service_host) is False
    with pytest.raises(DockerConnectionError, match="down"):
        service.list_containers(fake_service_host)


class _MinimalExecutor(FakeExecutor):
    """A third-party executor that offers only the BaseExecutor interface."""

    create_container = None
    _start_container = None
    pull_image = None


@pytest.mark.parametrize(
    ("call", "missing"),
    [
        (lambda s, job: s.create_container(job), "create_container"),
        (lambda s, job: s.start_container(job), "_start_container"),
        (lambda s, job: s.pull_image(job.docker_host, "busybox:latest"), "pull_image"),
    ],
    ids=["create_container", "start_container", "pull_image"],
)
def test_executor_without_docker_only_methods(fake_service_host, settings, call, missing):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "EXECUTORS": {"fake": f"{__name__}._MinimalExecutor"},
    }
    service = DockerService()
    job = ContainerJobFactory(docker_host=fake_service_host, container_id="abc")
    with pytest.raises(
        ContainerExecutionError, match=f"_MinimalExecutor does not support {missing}"
    ):
        call(service, job)


# ---- over the DockerExecutor with the Docker SDK mocked ---------------------------------


@pytest.fixture
def sdk():
    """The Docker SDK client class, mocked: what the executor asks of the engine."""
    with patch("docker.DockerClient") as client_class:
        yield client_class.return_value


@pytest.mark.django_db
def test_docker_create_container_passes_environment_and_limits(sdk):
    service = DockerService()
    host = ExecutorHostFactory()
    job = ContainerJobFactory(
        docker_host=host,
        docker_image="busybox:1.36",
        command="echo 'hello world'",
        environment_variables="KEY1=value1\nKEY2=value2",
        memory_limit=128,
        cpu_limit=0.5,
    )
    sdk.containers.create.return_value.id = "c0ffee"

    assert service.create_container(job) == "c0ffee"

    kwargs = sdk.containers.create.call_args.kwargs
    assert kwargs["image"] == "busybox:1.36"
    assert kwargs["command"] == ["echo", "hello world"]
    assert kwargs["environment"] == {"KEY1": "value1", "KEY2": "value2"}
    assert kwargs["mem_limit"] == "128m"
    assert kwargs["cpu_quota"] == 50_000
    sdk.containers.get.return_value.start.assert_not_called()


@pytest.mark.django_db
def test_docker_start_and_stop(sdk):
    service = DockerService()
    job = ContainerJobFactory(container_id="c0ffee")

    assert service.start_container(job) is True
    sdk.containers.get.assert_called_with("c0ffee")
    sdk.containers.get.return_value.start.assert_called_once_with()

    assert service.stop_container(job) is True
    sdk.api.stop.assert_called_once()
    assert sdk.api.stop.call_args.args == ("c0ffee",)


@pytest.mark.django_db
def test_docker_start_failure_carries_the_engine_message(sdk):
    service = DockerService()
    job = ContainerJobFactory(container_id="c0ffee")
    response = MagicMock(status_code=500, reason="Server Error")
    sdk.containers.get.return_value.start.side_effect = docker.errors.APIError(
        "500", response=response, explanation="OCI runtime create failed"
    )
    with pytest.raises(ContainerExecutionError, match="OCI runtime create failed"):
        service.start_container(job)


@pytest.mark.django_db
def test_docker_pull_image_not_found(sdk):
    service = DockerService()
    host = ExecutorHostFactory()
    sdk.images.pull.side_effect = docker.errors.ImageNotFound("manifest unknown")

    with pytest.raises(ContainerExecutionError, match="could not be pulled") as caught:
        service.pull_image(host, "nonexistent:image")
    assert isinstance(caught.value.__cause__, ImageUnavailableError)
    sdk.images.pull.assert_called_once_with("nonexistent", tag="image")


@pytest.mark.django_db
def test_docker_pull_image_success(sdk):
    service = DockerService()
    host = ExecutorHostFactory()
    assert service.pull_image(host, "ubuntu") is True
    sdk.images.pull.assert_called_once_with("ubuntu", tag="latest")


@pytest.mark.django_db
def test_docker_remove_vanished_container_is_false(sdk):
    service = DockerService()
    job = ContainerJobFactory(container_id="gone")
    sdk.containers.get.side_effect = docker.errors.NotFound("No such container: gone")

    assert service.remove_container(job) is False
    sdk.containers.get.return_value.remove.assert_not_called()


@pytest.mark.django_db
def test_docker_remove_existing_container(sdk):
    service = DockerService()
    job = ContainerJobFactory(container_id="c0ffee")
    sdk.containers.get.return_value.status = "exited"

    assert service.remove_container(job) is True
    sdk.containers.get.return_value.remove.assert_called_once_with(force=True, v=True)


@pytest.mark.django_db
def test_docker_unreachable_engine(sdk):
    service = DockerService()
    host = ExecutorHostFactory(connection_string="tcp://10.255.255.1:2376")
    sdk.ping.side_effect = requests.exceptions.ConnectionError("refused")
    sdk.version.side_effect = requests.exceptions.ConnectionError("refused")

    assert service.health_check(host) is False
    with pytest.raises(DockerConnectionError, match="cannot reach the engine"):
        service.get_docker_version(host)
    # Not poisoned: once the engine answers again, so does the service.
    sdk.ping.side_effect = None
    sdk.ping.return_value = True
    assert service.health_check(host) is True


@pytest.mark.django_db
def test_docker_container_stats(sdk):
    service = DockerService()
    host = ExecutorHostFactory()
    sdk.containers.get.return_value.stats.return_value = {
        "memory_stats": {"usage": 256 * 1024 * 1024, "limit": 1024 * 1024 * 1024},
        "cpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000}},
        "precpu_stats": {},
    }
    stats = service.get_container_stats(host, "c0ffee")
    assert stats["memory_usage"] == 256 * 1024 * 1024
    assert stats["cpu_usage"] == 2.0
