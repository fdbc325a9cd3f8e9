"""The RBAC manifest of the docs (deploy/kubernetes/rbac.yaml) on the test cluster: applied
to a namespace of its own with a ServiceAccount, whose token makes the kubeconfig of a
cluster host. Jobs run through the worker with only those rights (output, exit code, a
secret, a timeout, live output, removal, the reaper's listings); and each right the manifest
grants is shown to be needed: without it, the executor's call that uses it is refused.
"""

from __future__ import annotations

import base64
import copy
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.utils import timezone

from container_manager.exceptions import ExecutorError
from container_manager.executors import kubernetes_secrets, kubernetes_spec
from container_manager.executors.kubernetes import KubernetesExecutor, cluster_url
from container_manager.models import ExecutorHost, JobStatus
from container_manager.queue import submit
from container_manager.reaper import reap
from container_manager.spec import JobSpec
from container_manager.testing.images import TEST_IMAGE
from container_manager.worker import Worker
from tests import cluster as clusters
from tests.cluster import KUBECONFIG
from tests.conftest import SESSION_ID, SESSION_LABEL

pytestmark = [pytest.mark.docker]

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "rbac.yaml"
ACCOUNT = "container-jobs-worker"
NAMESPACE = f"cm-rbac-{SESSION_ID}"

cluster = clusters.cluster


def manifest() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def _role() -> dict[str, Any]:
    return next(doc for doc in manifest() if doc["kind"] == "Role")


def rights() -> list[tuple[str, str]]:
    """(resource, verb) of every right the manifest's Role grants."""
    return [(res, verb) for rule in _role()["rules"] for res in rule["resources"]
            for verb in rule["verbs"]]  # fmt: skip


def in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    for subject in doc.get("subjects") or []:
        subject["namespace"] = namespace
    return doc


@dataclass
class Account:
    namespace: str
    kubeconfig: str
    api: Any  # the admin's ApiClient

    def executor(self, **config: Any) -> KubernetesExecutor:
        url = cluster_url(self.kubeconfig, self.namespace)
        return KubernetesExecutor({"docker_host": url, "timeout": 10, **config})

    def admin(self) -> KubernetesExecutor:
        url = cluster_url(KUBECONFIG, self.namespace)
        return KubernetesExecutor({"docker_host": url, "timeout": 10, "start_timeout": 30})

    def allowed(self, resource: str, verb: str) -> bool:
        from kubernetes import client

        base, _, sub = resource.partition("/")
        group = "batch" if base == "jobs" else ""
        attributes = {"namespace": self.namespace, "verb": verb, "group": group,
                      "resource": base, "subresource": sub}  # fmt: skip
        user = f"system:serviceaccount:{self.namespace}:{ACCOUNT}"
        review = client.AuthorizationV1Api(self.api).create_subject_access_review(
            {"spec": {"user": user, "resourceAttributes": attributes}}, _request_timeout=10
        )
        return bool(review.status.allowed)

    def set_role(self, role: dict[str, Any]) -> None:
        from kubernetes import client

        client.RbacAuthorizationV1Api(self.api).replace_namespaced_role(
            role["metadata"]["name"], self.namespace, in_namespace(role, self.namespace),
            _request_timeout=10,
        )  # fmt: skip


def _token(core: Any, namespace: str) -> str:
    """The ServiceAccount's token, once the token controller made its Secret."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        account = core.read_namespaced_service_account(ACCOUNT, namespace, _request_timeout=10)
        if account.secrets:
            secret = core.read_namespaced_secret(
                account.secrets[0].name, namespace, _request_timeout=10
            )
            return base64.b64decode(secret.data["token"]).decode()
        time.sleep(0.2)
    raise AssertionError(f"no token for {ACCOUNT} after 60s")


def _kubeconfig(path: Path, token: str) -> str:
    admin = yaml.safe_load(Path(KUBECONFIG).read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": server}],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "worker", "context": {"cluster": "test", "user": ACCOUNT}}],
        "current-context": "worker",
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def account(cluster, tmp_path_factory) -> Iterator[Account]:
    """A namespace with the worker's ServiceAccount and the manifest's Role and RoleBinding."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core, rbac = client.CoreV1Api(cluster), client.RbacAuthorizationV1Api(cluster)
    core.create_namespace({"metadata": {"name": NAMESPACE}}, _request_timeout=10)
    try:
        core.create_namespaced_service_account(
            NAMESPACE, {"metadata": {"name": ACCOUNT}}, _request_timeout=10
        )
        for doc in manifest():
            create = {"Role": rbac.create_namespaced_role,
                      "RoleBinding": rbac.create_namespaced_role_binding}[doc["kind"]]  # fmt: skip
            create(NAMESPACE, in_namespace(doc, NAMESPACE), _request_timeout=10)
        path = tmp_path_factory.mktemp("rbac") / "worker.kubeconfig"
        yield Account(NAMESPACE, _kubeconfig(path, _token(core, NAMESPACE)), cluster)
    finally:
        with suppress(ApiException):
            core.delete_namespace(NAMESPACE, _request_timeout=10)


def _spec(argv: list[str], *, secret: bool = False) -> JobSpec:
    spec = JobSpec(job_id=uuid.uuid4().hex, attempt=1, image=TEST_IMAGE, argv=argv,
                   extra_labels={SESSION_LABEL: SESSION_ID}, auto_pull=False)  # fmt: skip
    if secret:
        spec = replace(spec, secrets={"TOKEN": "t0ken"}, secret_references={"TOKEN": "env:T"})
    return spec


def test_the_docs_show_the_manifest_file():
    page = (MANIFEST.parents[2] / "docs" / "howto" / "kubernetes.md").read_text()
    assert MANIFEST.read_text() in page, "the Kubernetes page quotes rbac.yaml whole"
    assert "*" not in str(manifest()), "no wildcard"


@pytest.mark.django_db(transaction=True)
def test_jobs_run_with_only_the_manifests_rights(account, settings, monkeypatch):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "STOP_GRACE_SECONDS": 1,
        "LIVE_OUTPUT_INTERVAL": 0.2,
        "ENGINE_TIMEOUT": 1.0,
    }
    monkeypatch.setenv("CM_RBAC_TOKEN", "s3cret")
    url = cluster_url(account.kubeconfig, account.namespace)
    host = ExecutorHost(
        name="rbac", connection_string=url, executor_type="kubernetes", auto_pull_images=False
    )
    host.full_clean()
    host.save()
    ok = submit(host=host, image=TEST_IMAGE,
                command=["sh", "-c", 'echo "len=${#TOKEN}"; sleep 2; echo done; exit 3'],
                secret_environment={"TOKEN": "env:CM_RBAC_TOKEN"})  # fmt: skip
    slow = submit(host=host, image=TEST_IMAGE, command="sh -c 'echo slow; sleep 60'",
                  timeout_seconds=3)  # fmt: skip

    Worker(concurrency=2, burst=True, shutdown_timeout=10).run()

    ok.refresh_from_db()
    slow.refresh_from_db()
    assert (ok.status, ok.exit_code, ok.stdout_log) == (JobStatus.FAILED, 3, "len=6\ndone\n")
    assert (slow.status, slow.stdout_log) == (JobStatus.TIMEOUT, "slow\n")
    assert slow.exit_code in (137, None), "SIGKILL's, or none when the kubelet reported none"
    sa = account.executor()
    assert sa.health_check() is True and sa.get_version() == "v1.20.2"
    assert sa.capacity() is None, "nodes are the cluster's business: not granted"
    assert [c for c in sa.list_containers()] == [], "both Jobs removed"
    # The reaper's listings, and a leftover Secret removed with these rights:
    crashed = _spec(["true"], secret=True)
    for secret in kubernetes_spec.secret_manifests(crashed):
        kubernetes_secrets.put(account.admin().cluster, secret)
    time.sleep(5)  # older than a launch's four API deadlines (ENGINE_TIMEOUT 1 s)
    removed = {r.container_id for r in reap(older_than=timedelta(0), hosts=[host])}
    assert removed == {f"{crashed.name}-env"}
    assert sa.leftovers(timezone.now()) == []
    # A launch tried again adopts its Job and replaces its Secret:
    again = _spec(["true"], secret=True)
    assert sa.run(again) == sa.run(again) == again.name
    assert sa.wait(again.name, timeout=30) == 0
    sa.cleanup(again.name)


# ---- each right is needed -------------------------------------------------------------------

SLEEP = ["sh", "-c", "sleep 60"]


def _failed_create(account: Account, sa: KubernetesExecutor) -> None:
    """A launch whose pod a quota refuses: its reason is read from the events."""
    from kubernetes import client

    core = client.CoreV1Api(account.api)
    quota = {"metadata": {"name": "no-pods"}, "spec": {"hard": {"pods": "0"}}}
    core.create_namespaced_resource_quota(account.namespace, quota, _request_timeout=10)
    try:
        time.sleep(2)  # the quota controller computes what is used
        KubernetesExecutor({**sa.config, "start_timeout": 3}).run(_spec(["true"]))
    finally:
        core.delete_namespaced_resource_quota("no-pods", account.namespace, _request_timeout=10)


def _admin_put(admin: KubernetesExecutor) -> str:
    spec = _spec(["true"], secret=True)
    for secret in kubernetes_spec.secret_manifests(spec):
        kubernetes_secrets.put(admin.cluster, secret)
    return f"{spec.name}-env"


def _readopt(admin: KubernetesExecutor, sa: KubernetesExecutor) -> None:
    spec = _spec(["true"], secret=True)
    admin.run(spec)
    sa.run(spec)


#: For each right: what uses it, given the Worker's account (sa) and the admin's executor.
PROBES: dict[tuple[str, str], Callable[[Account, KubernetesExecutor, KubernetesExecutor], Any]] = {
    ("jobs", "create"): lambda acc, sa, admin: sa.run(_spec(["true"])),
    ("jobs", "get"): lambda acc, sa, admin: sa.find_container(admin.run(_spec(["true"]))),
    ("jobs", "list"): lambda acc, sa, admin: sa.list_containers(),
    ("jobs", "patch"): lambda acc, sa, admin: sa.stop_container(admin.run(_spec(SLEEP)), 1),
    ("jobs", "delete"): lambda acc, sa, admin: sa.discard(admin.run(_spec(["true"]))),
    ("pods", "list"): lambda acc, sa, admin: sa.check_status(admin.run(_spec(["true"]))),
    ("pods", "watch"): lambda acc, sa, admin: sa.wait(admin.run(_spec(SLEEP)), timeout=2),
    ("pods", "delete"): lambda acc, sa, admin: sa.stop_container(admin.run(_spec(SLEEP)), 1),
    ("pods", "deletecollection"): lambda acc, sa, admin: sa.cleanup(admin.run(_spec(["true"]))),
    ("pods/log", "get"): lambda acc, sa, admin: sa.get_logs(admin.run(_spec(["true"]))),
    ("secrets", "create"): lambda acc, sa, admin: sa.run(_spec(["true"], secret=True)),
    ("secrets", "update"): lambda acc, sa, admin: _readopt(admin, sa),
    ("secrets", "patch"): lambda acc, sa, admin: sa.run(_spec(["true"], secret=True)),
    ("secrets", "delete"): lambda acc, sa, admin: sa.remove_leftover(_admin_put(admin)),
    ("secrets", "list"): lambda acc, sa, admin: sa.leftovers(timezone.now()),
    ("events", "list"): lambda acc, sa, admin: _failed_create(acc, sa),
}


def _until_allowed(account: Account, resource: str, verb: str, allowed: bool) -> None:
    deadline = time.monotonic() + 10
    while account.allowed(resource, verb) != allowed:
        assert time.monotonic() < deadline, f"{verb} {resource} still {not allowed}"
        time.sleep(0.1)


@pytest.mark.parametrize(("resource", "verb"), rights(), ids=lambda value: str(value))
def test_each_right_of_the_manifest_is_needed(account, settings, resource, verb):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "STOP_GRACE_SECONDS": 1}
    probe = PROBES[(resource, verb)]  # a right the manifest grants must have a use here
    role = _role()
    without = copy.deepcopy(role)
    for rule in without["rules"]:
        if resource in rule["resources"]:
            rule["verbs"].remove(verb)
    without["rules"] = [rule for rule in without["rules"] if rule["verbs"]]
    sa, admin = account.executor(start_timeout=30), account.admin()
    account.set_role(without)
    try:
        _until_allowed(account, resource, verb, False)
        with pytest.raises(ExecutorError) as refused:
            probe(account, sa, admin)
        assert refused.value.status_code == 403, refused.value
        assert f'cannot {verb} resource "{resource}"' in str(refused.value)
    finally:
        account.set_role(role)
        _until_allowed(account, resource, verb, True)
        sa.close()
        admin.close()
