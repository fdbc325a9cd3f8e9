"""System checks for ``manage.py check``: settings and registered executors."""

from __future__ import annotations

from typing import Any

from django.core import checks

from .conf import get_settings
from .exceptions import ConfigurationError


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from .executors import executor_class

    try:
        conf = get_settings()
    except (ConfigurationError, TypeError) as err:
        return [checks.Error(str(err), id="container_manager.E001")]
    messages: list[checks.CheckMessage] = []
    for alias in conf.EXECUTORS:
        try:
            executor_class(alias)
        except ConfigurationError as err:
            messages.append(checks.Error(str(err), id="container_manager.E002"))
    if conf.LOG_TAIL_BYTES < 1024:
        messages.append(
            checks.Error("LOG_TAIL_BYTES must be at least 1024.", id="container_manager.E003")
        )
    if conf.LEASE_SECONDS < 3 * conf.POLL_INTERVAL:
        messages.append(
            checks.Warning(
                "LEASE_SECONDS is short next to POLL_INTERVAL; leases may expire under load.",
                id="container_manager.W001",
            )
        )
    return messages
