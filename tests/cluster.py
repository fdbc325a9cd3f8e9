"""The Kubernetes test cluster (scripts/ensure-kubernetes.sh): its kubeconfig, a namespace per
test session, and a raw client. When no cluster answers, a test is skipped locally and FAILS
under CI (``CI`` set). Only what the tests create is removed: their namespace, with all in it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SESSION_ID, _require

__all__ = ["KUBECONFIG", "NAMESPACE", "cluster", "kube_api", "kube_namespace"]

KUBECONFIG = os.environ.get(
    "CONTAINER_JOBS_TEST_KUBECONFIG", "/var/lib/container-jobs-kubernetes/admin.kubeconfig"
)
#: This session's namespace: every Job the tests run is in it, and it is deleted at the end.
NAMESPACE = f"cm-test-{SESSION_ID}"


def kube_api(kubeconfig: str = KUBECONFIG) -> Any:
    """A raw ApiClient of the official client for the test cluster."""
    from kubernetes import config

    return config.new_client_from_config(config_file=kubeconfig, persist_config=False)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    """The test cluster's ApiClient, once it answers /readyz with ok and has a Ready node."""
    if not Path(KUBECONFIG).is_file():
        _require(f"no Kubernetes test cluster: {KUBECONFIG} is missing (make kubernetes)")
    from kubernetes import client

    api = kube_api()
    try:
        request = api.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
        ready = api.call_api(*request, _request_timeout=5)
        ready.read()
        assert ready.data.strip() == b"ok", ready.data
        nodes = client.CoreV1Api(api).list_node(_request_timeout=5).items
    except Exception as err:  # noqa: BLE001 - any failure means: no cluster here
        _require(f"the Kubernetes test cluster does not answer ({KUBECONFIG}): {err}")
    if not any(
        c.type == "Ready" and c.status == "True" for n in nodes for c in n.status.conditions or []
    ):
        _require("the Kubernetes test cluster has no Ready node")
    yield api
    api.close()


@pytest.fixture(scope="session")
def kube_namespace(cluster: Any) -> Iterator[str]:
    """This session's namespace, deleted (with everything in it) at the end."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(cluster)
    core.create_namespace({"metadata": {"name": NAMESPACE}}, _request_timeout=10)
    # The namespace's default service account, which pods need, is made by a controller.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", NAMESPACE, _request_timeout=5)
            break
        except ApiException:
            time.sleep(0.1)
    yield NAMESPACE
    with suppress(ApiException):
        core.delete_namespace(NAMESPACE, _request_timeout=10)
