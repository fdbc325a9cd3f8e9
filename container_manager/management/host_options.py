"""The options of ``manage.py container_host add`` and the ExecutorHost fields they set.

Only the options given are returned, so that ``add --update`` changes just those; the
host's ``full_clean`` checks the values and names the field.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from container_manager.executors.kubernetes import cluster_url
from container_manager.models import parse_labels

__all__ = ["CLUSTER_OPTIONS", "TLS_FILES", "add_host_arguments", "host_changes"]

# Command-line option -> ExecutorHost field, for the options that map one to one.
_FIELDS = {
    "url": "connection_string",
    "executor": "executor_type",
    "max_concurrent": "max_concurrent_jobs",
    "weight": "weight",
    "start_timeout": "start_timeout",
    "pull": "auto_pull_images",
    "tls": "tls_enabled",
    "insecure_tcp": "insecure_tcp",
    "tls_verify": "tls_verify",
    "tls_ca": "tls_ca_cert",
    "tls_cert": "tls_client_cert",
    "tls_key": "tls_client_key",
    "active": "is_active",
    "default_network": "default_network",
    "allow_root": "allow_root",
    "allow_privileged": "allow_privileged",
    "gpus": "gpus",
}
# Repeatable options -> list fields; an empty value ('') clears the list.
_LISTS = {
    "allow_bind_prefix": "allowed_bind_prefixes",
    "allow_network": "allowed_networks",
    "allow_capability": "allowed_capabilities",
}
TLS_FILES = ("tls_ca", "tls_cert", "tls_key")
#: The options that describe a cluster host (``connection_string`` of the kubernetes executor).
CLUSTER_OPTIONS = ("kubeconfig", "in_cluster", "namespace", "context")


def add_host_arguments(add: CommandParser) -> None:
    """Every option of ``add``: the engine, TLS, placement, the policy."""
    _add_engine_arguments(add)
    _add_cluster_arguments(add.add_argument_group("a Kubernetes cluster (executor kubernetes)"))
    _add_policy_arguments(add.add_argument_group("policy (what jobs may ask for on this host)"))
    add.add_argument(
        "--update",
        action="store_true",
        help="If the host exists, change the options given instead of failing.",
    )


def _add_engine_arguments(add: CommandParser) -> None:
    arg = add.add_argument
    arg("name", help="Unique name of the host, e.g. 'local'.")
    arg("--url", help="Engine URL: unix:///var/run/docker.sock or tcp://host:2376.")
    arg("--executor", help="Executor alias from CONTAINER_MANAGER (default docker).")
    arg("--max-concurrent", type=int, help="Jobs at once on this host (default 10).")
    arg("--weight", type=int, help="Relative share of work, 1-1000 (default 100).")
    arg(
        "--start-timeout",
        type=int,
        metavar="SECONDS",
        help="Seconds a launch may take to reach running, pulls included (default: the"
        " START_TIMEOUT setting).",
    )
    arg(
        "--pull",
        action=argparse.BooleanOptionalAction,
        help="Pull missing images (default on; --no-pull for local images only).",
    )
    arg("--tls", action=argparse.BooleanOptionalAction, help="Use TLS (tcp:// URLs only).")
    arg(
        "--insecure-tcp",
        action=argparse.BooleanOptionalAction,
        help="Allow a tcp:// URL without TLS (jobs' environment crosses the network in the"
        " clear; default off).",
    )
    arg("--tls-ca", metavar="PATH", help="CA certificate file.")
    arg("--tls-cert", metavar="PATH", help="Client certificate file.")
    arg("--tls-key", metavar="PATH", help="Client key file.")
    arg(
        "--tls-verify",
        action=argparse.BooleanOptionalAction,
        help="Verify the engine's certificate (default on).",
    )
    state = add.add_mutually_exclusive_group()
    state.add_argument(
        "--inactive", dest="active", action="store_const", const=False, help="Take no jobs."
    )
    state.add_argument(
        "--active", dest="active", action="store_const", const=True, help="Take jobs (default)."
    )
    arg(
        "--label",
        action="append",
        dest="labels",
        metavar="NAME[=VALUE]",
        help="Placement label (repeatable), e.g. --label gpu --label region=eu;"
        " with --update the given labels replace the old ones.",
    )


def _add_cluster_arguments(group: Any) -> None:
    arg = group.add_argument
    arg(
        "--kubeconfig",
        metavar="PATH",
        help="The cluster's kubeconfig file on the worker's machine (instead of --url).",
    )
    arg(
        "--in-cluster",
        action="store_true",
        default=None,
        help="The worker runs in a pod of the cluster: use its service account.",
    )
    arg("--namespace", metavar="NS", help="The namespace the jobs run in (required).")
    arg("--context", metavar="NAME", help="A context of the kubeconfig (default: its current).")


def _cluster_changes(options: dict[str, Any]) -> dict[str, Any]:
    """The connection of a cluster host from --kubeconfig / --in-cluster, --namespace and
    --context; {} when none is given."""
    if not any(options.get(option) for option in CLUSTER_OPTIONS):
        return {}
    if options.get("url"):
        raise CommandError(
            "Give either --url (an engine) or --kubeconfig/--in-cluster (a cluster)."
        )
    kubeconfig, in_cluster = options.get("kubeconfig"), options.get("in_cluster")
    if bool(kubeconfig) == bool(in_cluster):
        raise CommandError("A cluster host needs --kubeconfig PATH or --in-cluster (one of them).")
    if not options.get("namespace"):
        raise CommandError("A cluster host needs --namespace NS.")
    if in_cluster and options.get("context"):
        raise CommandError("--context applies to --kubeconfig only.")
    path = str(Path(kubeconfig).resolve()) if kubeconfig else ""
    return {
        "connection_string": cluster_url(path, options["namespace"], options.get("context") or ""),
        "executor_type": options.get("executor") or "kubernetes",
    }


def _add_policy_arguments(group: Any) -> None:
    arg = group.add_argument
    arg(
        "--allow-bind-prefix",
        action="append",
        metavar="PATH",
        help="A host path under which jobs may bind-mount (repeatable; default none: binds"
        " refused). The paths given replace the old ones; '' clears them.",
    )
    arg(
        "--allow-network",
        action="append",
        metavar="NAME",
        help="A network jobs may name (repeatable; 'none' is always allowed)."
        " The names given replace the old ones; '' clears them.",
    )
    arg(
        "--default-network",
        metavar="NAME",
        help="Network of jobs that name none ('': the NETWORK_MODE setting).",
    )
    arg(
        "--allow-root",
        action=argparse.BooleanOptionalAction,
        help="Jobs may run as user 0 (default: no).",
    )
    arg(
        "--allow-privileged",
        action=argparse.BooleanOptionalAction,
        help="Jobs may run privileged (default: no).",
    )
    arg(
        "--allow-capability",
        action="append",
        metavar="CAP",
        help="A capability jobs may add, e.g. NET_ADMIN (repeatable; default none)."
        " The names given replace the old ones; '' clears them.",
    )
    arg("--gpus", type=int, metavar="N", help="GPUs this host offers jobs (default 0).")


def host_changes(options: dict[str, Any]) -> dict[str, Any]:
    """ExecutorHost field -> value, for the options given on the command line."""
    changes = {
        field: options[option]
        for option, field in _FIELDS.items()
        if options.get(option) is not None
    }
    for option, field in _LISTS.items():
        if options.get(option) is not None:
            changes[field] = [value for value in options[option] if value]
    if options.get("labels") is not None:
        changes["labels"] = parse_labels(options["labels"])
    changes.update(_cluster_changes(options))
    return changes
