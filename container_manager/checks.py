"""System checks for ``manage.py check``: settings and registered executors; with
``--database``, the configuration of every active host (no engine is contacted)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.db import DatabaseError

from .conf import get_settings
from .exceptions import ConfigurationError


def _metrics_routed() -> bool:
    """Whether the project's URLconf routes to the metrics view."""
    from django.urls import NoReverseMatch, reverse

    try:
        reverse("container_manager:metrics")
    except NoReverseMatch:
        return False
    return True


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
    if conf.ENGINE_LOG_MAX_BYTES is not None and conf.ENGINE_LOG_MAX_BYTES < conf.LOG_TAIL_BYTES:
        messages.append(
            checks.Warning(
                "ENGINE_LOG_MAX_BYTES is smaller than LOG_TAIL_BYTES: where output is read after"
                " the exit (Swarm services, a follow that ended early) the engine keeps less of"
                " a job's output than the app means to record.",
                id="container_manager.W005",
            )
        )
    if conf.LEASE_SECONDS < 3 * conf.POLL_INTERVAL:
        messages.append(
            checks.Warning(
                "LEASE_SECONDS is short next to POLL_INTERVAL; leases may expire under load.",
                id="container_manager.W001",
            )
        )
    return messages


@checks.register(checks.Tags.security, deploy=True)
def check_metrics_token(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check --deploy``: an open /metrics endpoint outside DEBUG."""
    try:
        token = get_settings().METRICS_TOKEN
    except ConfigurationError:
        return []  # check_settings says why
    if token is not None or settings.DEBUG or not _metrics_routed():
        return []
    return [
        checks.Warning(
            "The /metrics endpoint answers anyone: set CONTAINER_MANAGER['METRICS_TOKEN'],"
            " or restrict it at your proxy.",
            id="container_manager.W004",
        )
    ]


@checks.register(checks.Tags.database)
def check_hosts(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """``manage.py check --database default``: each active host's executor alias, engine
    URL and TLS files, as its executor sees them."""
    if not databases:
        return []
    from .executors import get_executor
    from .models import ExecutorHost

    try:
        if not _hosts_table_exists():  # before the first migrate (which runs this check)
            return []
        hosts = list(ExecutorHost.objects.filter(is_active=True).order_by("name"))
    except DatabaseError as err:
        return [checks.Warning(f"Hosts not checked: {err}", id="container_manager.W002")]
    messages: list[checks.CheckMessage] = []
    for host in hosts:
        try:
            problems = get_executor(host).check()
        except ConfigurationError as err:
            problems = [str(err)]
        messages += [
            checks.Error(problem, obj=f"host {host.name!r}", id="container_manager.E004")
            for problem in problems
        ]
        if host.insecure_tcp and not host.tls_enabled:
            messages.append(
                checks.Warning(
                    "Plain tcp:// without TLS: every job's environment crosses the network in"
                    " the clear, and anyone who can reach the port controls the engine.",
                    obj=f"host {host.name!r}",
                    id="container_manager.W003",
                )
            )
    return messages


def _hosts_table_exists() -> bool:
    from django.db import connections, router

    from .models import ExecutorHost

    connection = connections[router.db_for_read(ExecutorHost)]
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
    return ExecutorHost._meta.db_table in tables
