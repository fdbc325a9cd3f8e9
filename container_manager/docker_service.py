"""DockerService: the thin, backward-compatible facade of older code (seed 001).

Every method finds the executor of a host (one per host, built lazily and never touching the
engine at construction), delegates one call to it, and maps the executor's errors onto the two
names older callers catch: :class:`DockerConnectionError` when the engine cannot be reached and
:class:`ContainerExecutionError` for everything else. New code should use the executors and
the queue directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import docker.errors
import requests

from .exceptions import (
    ContainerExecutionError,
    ContainerManagerError,
    ContainerNotFoundError,
    DockerConnectionError,
    ExecutorConnectionError,
    ExecutorError,
)
from .executors import executor_cache_key, executor_class
from .executors.base import BaseExecutor

if TYPE_CHECKING:
    from .models import ContainerJob, ExecutorHost

__all__ = ["ContainerExecutionError", "DockerConnectionError", "DockerService"]

logger = logging.getLogger(__name__)

#: Raw errors (from an executor that let them through) meaning "the engine is unreachable".
#: Checked after ``docker.errors.APIError``, which is also a ``requests`` error.
_UNREACHABLE = (
    requests.exceptions.RequestException,
    ConnectionError,
    docker.errors.DockerException,
)
#: A container that is already gone.
_VANISHED = (ContainerNotFoundError, docker.errors.NotFound)


@contextmanager
def _mapped_errors(action: str) -> Iterator[None]:
    """Map whatever an executor raises while doing ``action`` onto the compat errors.

    ``ExecutorConnectionError`` (and raw connection errors) -> :class:`DockerConnectionError`;
    any other ``ExecutorError``, a docker API error (``NotFound`` included) or a
    ``TimeoutError`` -> :class:`ContainerExecutionError`. Always chained with ``from``.
    """
    try:
        yield
    except (DockerConnectionError, ContainerExecutionError):
        raise
    except ExecutorConnectionError as err:
        raise DockerConnectionError(f"{action}: {err}") from err
    except (ExecutorError, docker.errors.APIError, TimeoutError) as err:
        raise ContainerExecutionError(f"{action}: {err}") from err
    except _UNREACHABLE as err:
        raise DockerConnectionError(f"{action}: {err}") from err


def _method(executor: BaseExecutor, name: str) -> Callable[..., Any]:
    """``executor.<name>``, or ContainerExecutionError when this kind of executor lacks it."""
    method = getattr(executor, name, None)
    if method is None:
        raise ContainerExecutionError(f"{type(executor).__name__} does not support {name}()")
    return method


class DockerService:
    """Container operations on the hosts of the database, in the shape older code expects.

    Thread-safe: executors are cached per host (keyed by the host and its connection
    settings, so a changed host gets a fresh executor) behind a lock.
    """

    def __init__(self) -> None:
        self._executors: dict[tuple[Any, ...], BaseExecutor] = {}
        self._lock = threading.Lock()

    # ---- executors ---------------------------------------------------------------------

    def _get_executor(self, host: ExecutorHost) -> BaseExecutor:
        """The executor of ``host``, built once, without contacting the engine.

        Raises :class:`ExecutorConnectionError` when no executor can be built for the host
        (unknown executor alias, bad configuration).
        """
        key = executor_cache_key(host)
        with self._lock:
            executor = self._executors.get(key)
            if executor is None:
                try:
                    executor = executor_class(host.executor_type)({"docker_host": host})
                except (ContainerManagerError, TypeError, ValueError) as err:
                    raise ExecutorConnectionError(
                        f"No executor for host {host.name!r}: {err}"
                    ) from err
                self._executors[key] = executor
            return executor

    def close(self) -> None:
        """Close every cached executor's engine connections and forget the executors."""
        with self._lock:
            executors, self._executors = list(self._executors.values()), {}
        for executor in executors:
            close = getattr(executor, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _host_of(job: ContainerJob) -> ExecutorHost:
        host = job.docker_host if job.docker_host_id is not None else None
        if host is None:
            raise ContainerExecutionError(
                f"Job {job.pk} has no host (it has not been placed yet): "
                "set job.docker_host to an ExecutorHost first."
            )
        return host

    @staticmethod
    def _container_of(job: ContainerJob) -> str:
        if not job.container_id:
            raise ContainerExecutionError(f"Job {job.pk} has no container (container_id is empty).")
        return job.container_id

    # ---- containers of a job ----------------------------------------------------------

    def create_container(self, job: ContainerJob) -> str:
        """Create (not start) the job's container on its host; the container id."""
        with _mapped_errors(f"Create container for job {job.pk}"):
            executor = self._get_executor(self._host_of(job))
            return str(_method(executor, "create_container")(job))

    def start_container(self, job: ContainerJob) -> bool:
        """Start the job's created container (``job.container_id``); True."""
        with _mapped_errors(f"Start container of job {job.pk}"):
            executor = self._get_executor(self._host_of(job))
            return bool(_method(executor, "_start_container")(job, self._container_of(job)))

    def stop_container(self, job: ContainerJob) -> bool:
        """Stop the job's container; True (also when it had already stopped)."""
        with _mapped_errors(f"Stop container of job {job.pk}"):
            executor = self._get_executor(self._host_of(job))
            return bool(executor.stop_container(self._container_of(job)))

    def remove_container(self, job: ContainerJob) -> bool:
        """Remove the job's container: True, or False (no error) when it is already gone."""
        with _mapped_errors(f"Remove container of job {job.pk}"):
            executor = self._get_executor(self._host_of(job))
            container_id = self._container_of(job)
            try:
                # Executors' cleanup() is idempotent (True for a gone container); ask first so
                # that a vanished container reads False here against a real engine too.
                if executor.check_status(container_id) == "not-found":
                    logger.info("Container %s of job %s is already gone", container_id, job.pk)
                    return False
                return bool(executor.cleanup(container_id))
            except _VANISHED as err:
                logger.info("Container %s of job %s is already gone: %s", container_id, job.pk, err)
                return False

    # ---- hosts ---------------------------------------------------------------------------

    def pull_image(self, host: ExecutorHost, image: str) -> bool:
        """Pull ``image`` onto ``host``; True. A missing image or a timeout raises
        :class:`ContainerExecutionError`."""
        with _mapped_errors(f"Pull image {image!r} on host {host.name!r}"):
            return bool(_method(self._get_executor(host), "pull_image")(image))

    def list_containers(self, host: ExecutorHost) -> list[dict[str, Any]]:
        """The containers this app created on ``host``, as plain dicts."""
        with _mapped_errors(f"List containers on host {host.name!r}"):
            return list(self._get_executor(host).list_containers())

    def cleanup_old_containers(self, host: ExecutorHost, cutoff: datetime) -> int:
        """Remove this app's exited containers on ``host`` that finished before ``cutoff``;
        how many were removed."""
        with _mapped_errors(f"Clean up old containers on host {host.name!r}"):
            return int(self._get_executor(host).cleanup_old_containers(cutoff))

    def get_container_stats(self, host: ExecutorHost, container_id: str) -> dict[str, Any]:
        """Resource figures of a container on ``host`` (``memory_usage``, ``cpu_usage``...)."""
        with _mapped_errors(f"Stats of container {container_id} on host {host.name!r}"):
            executor = self._get_executor(host)
            stats = getattr(executor, "get_container_stats", executor.get_resource_usage)
            return dict(stats(container_id))

    def health_check(self, host: ExecutorHost) -> bool:
        """Whether ``host``'s engine answers; False (logged) when it cannot be reached."""
        try:
            with _mapped_errors(f"Health check of host {host.name!r}"):
                return bool(self._get_executor(host).health_check())
        except DockerConnectionError as err:
            logger.warning("Host %r failed its health check: %s", host.name, err)
            return False

    def get_docker_version(self, host: ExecutorHost) -> str:
        """The engine version string of ``host``."""
        with _mapped_errors(f"Engine version of host {host.name!r}"):
            return str(self._get_executor(host).get_version())
