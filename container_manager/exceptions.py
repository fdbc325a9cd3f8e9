"""The one error tree of container_manager.

Every error the app raises derives from :class:`ContainerManagerError`. Errors of the
Docker SDK (or any other engine client) are translated into this tree once, at the
executor boundary, with ``raise ... from err``.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "ContainerExecutionError",
    "ContainerManagerError",
    "ContainerNotFoundError",
    "DockerConnectionError",
    "ExecutorConnectionError",
    "ExecutorError",
    "ImageAccessDeniedError",
    "ImageUnavailableError",
    "InvalidJobError",
    "JobStateError",
    "SecretUnavailableError",
    "UnknownExecutorError",
]


class ContainerManagerError(Exception):
    """Root of every error raised by container_manager."""


class ConfigurationError(ContainerManagerError):
    """The CONTAINER_MANAGER settings or a host's configuration is wrong."""


class UnknownExecutorError(ConfigurationError):
    """No executor is registered under the requested alias."""


class InvalidJobError(ContainerManagerError):
    """A job cannot be run as given (bad image reference, bad environment, ...)."""


class SecretUnavailableError(InvalidJobError):
    """A secret reference (``env:NAME``, ``file:/path``) cannot be resolved by the worker.
    The message names the reference, never a value; retrying does not help."""


class JobStateError(ContainerManagerError):
    """A status transition that the job's current status does not allow."""


class ExecutorError(ContainerManagerError):
    """An executor could not do what was asked of the engine."""


class ExecutorConnectionError(ExecutorError):
    """The engine could not be reached (refused, timed out, TLS failure, ...)."""


class ContainerNotFoundError(ExecutorError):
    """The engine does not know the container."""


class ImageUnavailableError(ExecutorError):
    """The image is not on the host and could not be pulled."""


class ImageAccessDeniedError(ExecutorError):
    """The registry refused the credentials (or asked for some): retrying does not help."""


# Names of the DockerService compatibility layer (seed 001).
class ContainerExecutionError(ContainerManagerError):
    """DockerService: an operation on a container or image failed."""


class DockerConnectionError(ContainerManagerError):
    """DockerService: the Docker engine could not be reached."""
