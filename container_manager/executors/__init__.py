"""Executor registry: alias -> dotted path, from ``CONTAINER_MANAGER['EXECUTORS']``.

``get_executor(host)`` returns this process's long-lived executor for a host (one engine
client per host per process), built lazily and without touching the engine.
"""

from __future__ import annotations

import threading
from typing import Any

from django.utils.module_loading import import_string

from ..conf import get_settings
from ..exceptions import ConfigurationError, UnknownExecutorError
from ..spec import EngineHost
from .base import BaseExecutor, ContainerState, JobSpec, container_name

__all__ = [
    "BaseExecutor",
    "ContainerState",
    "JobSpec",
    "container_name",
    "executor_cache_key",
    "executor_class",
    "get_executor",
    "registered_aliases",
    "reset_executors",
    "set_pool_size",
]

_cache: dict[tuple[Any, ...], BaseExecutor] = {}
_lock = threading.Lock()
_pool_size: int | None = None


def set_pool_size(size: int) -> None:
    """Connections per host client for executors built from now on in this process (a worker
    sets its concurrency, so that its job threads never wait for a connection)."""
    global _pool_size
    _pool_size = size


def registered_aliases() -> set[str]:
    """The executor aliases the settings know."""
    return set(get_settings().EXECUTORS)


def executor_class(alias: str) -> type[BaseExecutor]:
    """Import the executor class registered under ``alias``."""
    executors = get_settings().EXECUTORS
    if alias not in executors:
        raise UnknownExecutorError(
            f"No executor is registered as {alias!r}; known: {', '.join(sorted(executors))}"
        )
    try:
        cls = import_string(executors[alias])
    except ImportError as err:
        raise ConfigurationError(
            f"Executor {alias!r}: cannot import {executors[alias]!r}: {err}"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, BaseExecutor)):
        raise ConfigurationError(f"Executor {alias!r}: {executors[alias]!r} is not a BaseExecutor")
    return cls


def executor_cache_key(host: EngineHost) -> tuple[Any, ...]:
    """The host's identity and every setting its executor is built from: an executor is
    reused while this stays the same."""
    return (
        host.pk,
        host.executor_type,
        host.connection_string,
        host.tls_enabled,
        host.tls_verify,
        host.tls_ca_cert,
        host.tls_client_cert,
        host.tls_client_key,
        host.auto_pull_images,
    )


def get_executor(host: EngineHost, *, pool_size: int | None = None) -> BaseExecutor:
    """This process's executor for ``host``; rebuilt only when the host's connection changes."""
    key = executor_cache_key(host)
    with _lock:
        executor = _cache.get(key)
        if executor is None:
            config: dict[str, Any] = {"docker_host": host}
            if pool_size or _pool_size:
                config["pool_size"] = pool_size or _pool_size
            executor = executor_class(host.executor_type)(config)
            _cache[key] = executor
        return executor


def reset_executors() -> None:
    """Forget every cached executor (tests; after changing settings)."""
    global _pool_size
    with _lock:
        _pool_size = None
        for executor in _cache.values():
            close = getattr(executor, "close", None)
            if close:
                close()
        _cache.clear()
