"""The one error tree of container_manager.

Every error the app raises derives from :class:`ContainerManagerError`. Errors of the
Docker SDK (or any other engine client) are translated into this tree once, at the
executor boundary, with ``raise ... from err``.
"""

from __future__ import annotations

__all__ = [
    "BulkSubmitError",
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
    "PermanentLaunchError",
    "SecretUnavailableError",
    "SpecRefusedError",
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


class BulkSubmitError(InvalidJobError):
    """Some jobs of a bulk submission are invalid, so none was queued. ``rejected`` lists
    each as (line number, what is wrong)."""

    SHOWN = 20  # bad lines the message itself names

    def __init__(self, rejected: list[tuple[int, str]], total: int) -> None:
        self.rejected = rejected
        lines = "; ".join(f"line {n}: {why}" for n, why in rejected[: self.SHOWN])
        more = f"; and {len(rejected) - self.SHOWN} more" if len(rejected) > self.SHOWN else ""
        super().__init__(f"{len(rejected)} of {total} jobs are invalid, none was queued: "
                         f"{lines}{more}")  # fmt: skip


class SecretUnavailableError(InvalidJobError):
    """A secret reference (``env:NAME``, ``file:/path``) cannot be resolved by the worker.
    The message names the reference, never a value; retrying does not help."""


class JobStateError(ContainerManagerError):
    """A status transition that the job's current status does not allow."""


class ExecutorError(ContainerManagerError):
    """An executor could not do what was asked of the engine. ``status_code`` is the
    engine's HTTP status where it answered with one (set at the executor's one
    translation point), so that callers branch on it, never on the message."""

    def __init__(self, message: str = "", *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class PermanentLaunchError(ExecutorError):
    """Launching failed in a way that a retry would only repeat: the attempt fails at once."""


class SpecRefusedError(PermanentLaunchError):
    """The engine refused the job's container as specified (an HTTP 400: a bind source that
    does not exist, a device nobody has, an invalid option)."""


class ExecutorConnectionError(ExecutorError):
    """The engine could not be reached (refused, timed out, TLS failure, ...)."""


class ContainerNotFoundError(ExecutorError):
    """The engine does not know the container."""


class ImageUnavailableError(ExecutorError):
    """The image is not on the host and could not be pulled."""


class ImageAccessDeniedError(PermanentLaunchError):
    """The registry refused the credentials (or asked for some): retrying does not help."""


# Names of the DockerService compatibility layer (seed 001).
class ContainerExecutionError(ContainerManagerError):
    """DockerService: an operation on a container or image failed."""


class DockerConnectionError(ContainerManagerError):
    """DockerService: the Docker engine could not be reached."""
