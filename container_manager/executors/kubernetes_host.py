"""Where a kubernetes host's jobs run: a cluster and a namespace, written in the host's
``connection_string``, and the client configuration made from it.

- ``kubernetes:///path/to/kubeconfig?namespace=NS[&context=NAME]``: a kubeconfig file (on the
  worker's machine) and one of its contexts (default: its current context);
- ``kubernetes://in-cluster?namespace=NS``: the service account of the pod the worker runs in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

from ..exceptions import ExecutorConnectionError

__all__ = [
    "ClusterTarget",
    "cluster_url",
    "configuration",
    "context_problem",
    "parse_cluster_url",
    "sdk",
]

SCHEME = "kubernetes"
IN_CLUSTER = "in-cluster"
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ClusterTarget:
    """Where a cluster host's jobs run. ``kubeconfig`` is empty for in-cluster configuration."""

    kubeconfig: str
    context: str
    namespace: str

    @property
    def in_cluster(self) -> bool:
        return not self.kubeconfig


def cluster_url(kubeconfig: str, namespace: str, context: str = "") -> str:
    """The ``connection_string`` of a cluster host (``kubeconfig`` empty: in-cluster)."""
    query = {"namespace": namespace, **({"context": context} if context else {})}
    where = f"/{quote(kubeconfig.lstrip('/'))}" if kubeconfig else IN_CLUSTER
    return f"{SCHEME}://{where}?{urlencode(query)}"


def parse_cluster_url(url: str) -> ClusterTarget:
    """The target of a cluster host's URL; ValueError names what is wrong (the executor's
    ``validate_host`` turns it into a field error)."""
    parts = urlsplit(url or "")
    if parts.scheme != SCHEME:
        raise ValueError(
            "Not a cluster URL: use kubernetes:///path/to/kubeconfig?namespace=NS[&context=NAME]"
            " or kubernetes://in-cluster?namespace=NS."
        )
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = set(query) - {"namespace", "context"}
    if unknown:
        raise ValueError(f"Unknown cluster URL options: {', '.join(sorted(unknown))}.")
    if any(len(values) > 1 for values in query.values()):
        raise ValueError("Give each cluster URL option once.")
    namespace = query.get("namespace", [""])[0]
    context = query.get("context", [""])[0]
    if not namespace:
        raise ValueError("Name the namespace the jobs run in: ?namespace=NS.")
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(f"{namespace!r} is not a namespace name (lower-case DNS label).")
    if parts.netloc == IN_CLUSTER:
        if parts.path or context:
            raise ValueError("kubernetes://in-cluster takes no path and no context.")
        return ClusterTarget("", "", namespace)
    if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
        raise ValueError(
            "The kubeconfig is an absolute path: kubernetes:///path/to/kubeconfig?namespace=NS."
        )
    return ClusterTarget(unquote(parts.path), context, namespace)


def sdk() -> Any:
    """The ``kubernetes`` package, imported on first use."""
    try:
        import kubernetes
    except ImportError as err:
        raise ExecutorConnectionError(
            "The kubernetes executor needs the official client: "
            "pip install 'django-container-jobs[kubernetes]'"
        ) from err
    return kubernetes


def context_problem(target: ClusterTarget) -> str:
    """What is wrong with the kubeconfig file and context, read here ('' when nothing is, or
    when the file is not on this machine: it may be on the worker's)."""
    path = Path(target.kubeconfig)
    if not path.exists():
        return ""
    if not path.is_file():
        return f"{target.kubeconfig} is not a file."
    try:
        kubernetes = sdk()
        contexts, _ = kubernetes.config.list_kube_config_contexts(config_file=str(path))
    except ExecutorConnectionError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - the client's loader raises many kinds
        return f"{target.kubeconfig} is not a readable kubeconfig: {err}"
    names = sorted(str(c.get("name")) for c in contexts or [])
    if target.context and target.context not in names:
        return (
            f"The kubeconfig {target.kubeconfig} has no context {target.context!r};"
            f" it has: {', '.join(names) or 'none'}."
        )
    return ""


def configuration(target: ClusterTarget, pool_size: int) -> Any:
    """The client's Configuration for ``target``: ``pool_size`` connections, no retries."""
    kubernetes = sdk()
    config = kubernetes.client.Configuration()
    try:
        if target.in_cluster:
            kubernetes.config.load_incluster_config(client_configuration=config)
        else:
            kubernetes.config.load_kube_config(
                config_file=target.kubeconfig,
                context=target.context or None,
                client_configuration=config,
                persist_config=False,
            )
    except Exception as err:
        where = "in-cluster configuration" if target.in_cluster else target.kubeconfig
        context = f", context {target.context!r}" if target.context else ""
        raise ExecutorConnectionError(
            f"Cannot load the cluster configuration ({where}{context}): {err}"
        ) from err
    config.connection_pool_maxsize = pool_size
    config.retries = False
    return config
