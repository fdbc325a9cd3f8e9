"""The kubernetes executor with the client mocked at the SDK edge: ``BatchV1Api``,
``CoreV1Api`` and ``VersionApi`` are replaced by a scripted cluster that answers as the API
server does (raw JSON answers, ``ApiException`` for error statuses), for what one real node
cannot show: a pod that cannot be scheduled, a quota that refuses the pod (FailedCreate), a
registry that refuses the pull, an unreachable or misconfigured cluster. Also the host URL and
its validation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from container_manager.exceptions import (
    ContainerNotFoundError,
    ExecutorConnectionError,
    ExecutorError,
    ImageAccessDeniedError,
    ImageUnavailableError,
    PermanentLaunchError,
    SpecRefusedError,
)
from container_manager.executors import get_executor, kubernetes_pods
from container_manager.executors.kubernetes import (
    KubernetesExecutor,
    cluster_url,
    parse_cluster_url,
)
from container_manager.models import ExecutorHost
from container_manager.spec import JobSpec, RegistryAuth

NS = "jobs"
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user: {token: "t"}
contexts:
- name: main
  context: {cluster: c, user: u, namespace: default}
- name: other
  context: {cluster: c, user: u}
current-context: main
"""


class Answer:
    """A raw answer (``_preload_content=False``) as urllib3 gives it."""

    def __init__(self, data: bytes = b"", chunks: list[bytes] | None = None) -> None:
        self.data = data
        self.chunks = chunks if chunks is not None else [data]
        self.released = False
        self.closed = False

    def stream(self, amt: int, decode_content: bool = True) -> Iterator[bytes]:
        for chunk in self.chunks:
            if isinstance(chunk, Exception):
                raise chunk
            yield chunk

    def read1(self, amt: int) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if isinstance(chunk, Exception):
            raise chunk
        return chunk

    def release_conn(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


def _json(obj: Any) -> Answer:
    return Answer(json.dumps(obj).encode())


def _error(status: int, message: str = "") -> ApiException:
    err = ApiException(status=status, reason="Error")
    err.body = json.dumps({"kind": "Status", "message": message or f"status {status}"})
    return err


def _pod(name: str, *, phase: str = "Pending", state: dict | None = None, **status: Any) -> dict:
    pod_status: dict[str, Any] = {"phase": phase, **status}
    if state is not None:
        pod_status["containerStatuses"] = [{"name": "job", "state": state}]
    return {
        "metadata": {
            "name": f"{name}-abcde",
            "creationTimestamp": "2026-01-01T10:00:00Z",
            "labels": {"job-name": name},
        },
        "spec": {"nodeName": status.pop("node", "n1"), "terminationGracePeriodSeconds": 1},
        "status": pod_status,
    }


@dataclass
class Cluster:
    """What the mocked API server holds, and every call it got."""

    jobs: dict[str, dict] = field(default_factory=dict)
    pods: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)
    events: list[dict] = field(default_factory=list)
    #: What a created Job's pod is (a function of the Job's name), or None for no pod.
    pod_for: Any = None
    minor: str = "20"
    calls: list[tuple[str, dict]] = field(default_factory=list)
    fail: dict[str, Exception] = field(default_factory=dict)
    logs: bytes = b"out\nerr\n"
    #: What a watch request gets next (taken by it), as the API server sends them.
    watch_events: list[dict] = field(default_factory=list)
    #: The exit code the kubelet reports for a deleted pod's container (None: none).
    killed_exit: int | None = 143

    def record(self, name: str, kwargs: dict) -> None:
        assert "_request_timeout" in kwargs, f"{name} without a deadline"
        timeout = kwargs["_request_timeout"]  # the client takes numbers > 0, or two of them
        for part in timeout if isinstance(timeout, tuple) else (timeout,):
            assert isinstance(part, int | float) and part > 0, f"{name}: timeout {timeout}"
        self.calls.append((name, kwargs))
        if name in self.fail:
            raise self.fail[name]

    # batch/v1
    def create_namespaced_job(self, namespace: str, body: dict, **kw: Any) -> Answer:
        self.record("create_namespaced_job", kw)
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise _error(409, f'jobs.batch "{name}" already exists')
        job = {**body, "metadata": {**body["metadata"], "uid": f"uid-{name}"}, "status": {}}
        self.jobs[name] = job
        if self.pod_for is not None and (pod := self.pod_for(name)) is not None:
            self.pods[name] = pod
        return _json(job)

    def read_namespaced_job(self, name: str, namespace: str, **kw: Any) -> Answer:
        self.record("read_namespaced_job", kw)
        if name not in self.jobs:
            raise _error(404, f'jobs.batch "{name}" not found')
        return _json(self.jobs[name])

    def delete_namespaced_job(self, name: str, namespace: str, **kw: Any) -> Answer:
        self.record("delete_namespaced_job", kw)
        if self.jobs.pop(name, None) is None:
            raise _error(404)
        self.pods.pop(name, None)
        return _json({})

    def list_namespaced_job(self, namespace: str, **kw: Any) -> Answer:
        self.record("list_namespaced_job", kw)
        return _json({"items": list(self.jobs.values())})

    # core/v1
    def list_namespaced_pod(self, namespace: str, **kw: Any) -> Answer:
        self.record("list_namespaced_pod", kw)
        if kw.get("watch"):  # the events queued, else no change within the watch
            events, self.watch_events[:] = list(self.watch_events), []
            return Answer(chunks=[json.dumps(e).encode() + b"\n" for e in events])
        selector = kw.get("label_selector", "")
        pods = [
            p
            for name, p in self.pods.items()
            if selector.startswith("container_manager") or selector == f"job-name={name}"
        ]
        return _json({"metadata": {"resourceVersion": "7"}, "items": pods})

    def delete_collection_namespaced_pod(self, namespace: str, **kw: Any) -> Answer:
        self.record("delete_collection_namespaced_pod", kw)
        name = kw["label_selector"].removeprefix("job-name=")
        self.pods.pop(name, None)
        return _json({})

    def list_namespaced_event(self, namespace: str, **kw: Any) -> Answer:
        self.record("list_namespaced_event", kw)
        return _json({"items": self.events})

    def read_namespaced_pod_log(self, name: str, namespace: str, **kw: Any) -> Answer:
        self.record("read_namespaced_pod_log", kw)
        if kw.get("timestamps"):  # as the kubelet sends it, and then its words, should the
            stamp = b"2026-01-01T10:00:02.000000001Z "  # container go while followed
            logs = b"".join(stamp + line for line in self.logs.splitlines(keepends=True))
            return Answer(chunks=[logs, b"rpc error: code = Unknown desc = No such container"])
        return Answer(self.logs, chunks=[self.logs])

    def patch_namespaced_job(self, name: str, namespace: str, body: dict, **kw: Any) -> Answer:
        self.record("patch_namespaced_job", kw)
        if name not in self.jobs:
            raise _error(404)
        self.jobs[name].setdefault("spec", {}).update(body["spec"])
        return _json(self.jobs[name])

    def delete_namespaced_pod(self, name: str, namespace: str, **kw: Any) -> Answer:
        """As the kubelet does: the container ends (``killed_exit``: its reported exit code,
        None for none reported), then the pod goes; both seen by a watch."""
        self.record("delete_namespaced_pod", kw)
        job = next((j for j, p in self.pods.items() if p["metadata"]["name"] == name), None)
        if job is None:
            raise _error(404)
        pod = self.pods.pop(job)
        pod["metadata"]["deletionTimestamp"] = "2026-01-01T10:00:05Z"
        if self.killed_exit is not None:
            ended = {"exitCode": self.killed_exit, "reason": "Error"}
            pod["status"]["containerStatuses"] = [{"name": "job", "state": {"terminated": ended}}]
            self.watch_events.append({"type": "MODIFIED", "object": pod})
        self.watch_events.append({"type": "DELETED", "object": pod})
        return _json(pod)

    def list_namespaced_secret(self, namespace: str, **kw: Any) -> Answer:
        self.record("list_namespaced_secret", kw)
        return _json({"items": list(self.secrets.values())})

    def create_namespaced_secret(self, namespace: str, body: dict, **kw: Any) -> Answer:
        self.record("create_namespaced_secret", kw)
        if body["metadata"]["name"] in self.secrets:
            raise _error(409)
        self.secrets[body["metadata"]["name"]] = body
        return _json(body)

    def replace_namespaced_secret(self, name: str, namespace: str, body: dict, **kw) -> Answer:
        self.record("replace_namespaced_secret", kw)
        self.secrets[name] = body
        return _json(body)

    def patch_namespaced_secret(self, name: str, namespace: str, body: dict, **kw) -> Answer:
        self.record("patch_namespaced_secret", kw)
        self.secrets[name]["metadata"].update(body["metadata"])
        return _json(self.secrets[name])

    def delete_namespaced_secret(self, name: str, namespace: str, **kw: Any) -> Answer:
        self.record("delete_namespaced_secret", kw)
        if self.secrets.pop(name, None) is None:
            raise _error(404)
        return _json({})

    def list_node(self, **kw: Any) -> Answer:
        self.record("list_node", kw)
        return _json({"items": [{"status": {"allocatable": {"cpu": "2", "memory": "4Gi"}}}]})

    # version, readyz
    def get_code(self, **kw: Any) -> Answer:
        self.record("get_code", kw)
        return _json({"gitVersion": f"v1.{self.minor}.2", "minor": f"{self.minor}+"})

    def param_serialize(self, method: str, path: str, **kw: Any) -> tuple:
        assert kw["auth_settings"] == ["BearerToken"]
        return (method, f"https://cluster{path}", {}, None, None)

    def call_api(self, method: str, url: str, *args: Any, **kw: Any) -> Answer:
        self.record("call_api", kw)
        answer = Answer(b"ok")
        answer.status = 200
        answer.read = lambda: None
        return answer

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture
def cluster(monkeypatch) -> Cluster:
    fake = Cluster()
    for api in ("BatchV1Api", "CoreV1Api", "VersionApi"):
        monkeypatch.setattr(f"kubernetes.client.{api}", lambda _client, fake=fake: fake)
    return fake


@pytest.fixture
def executor(cluster) -> KubernetesExecutor:
    executor = KubernetesExecutor(
        {"docker_host": cluster_url("/nowhere/config", NS), "start_timeout": 0.2}
    )
    executor.cluster._api = cluster  # the ApiClient: only call_api is used of it
    return executor


def _spec(**fields: Any) -> JobSpec:
    return JobSpec(job_id="j1", attempt=1, image="busybox:1", **fields)


RUNNING = {"running": {"startedAt": "2026-01-01T10:00:01Z"}}


# ---- launching -----------------------------------------------------------------------------


def test_run_creates_the_job_and_returns_once_its_pod_runs(executor, cluster):
    cluster.pod_for = lambda name: _pod(name, phase="Running", state=RUNNING)

    assert executor.run(_spec(argv=["true"])) == "cm-j1-1"
    assert cluster.jobs["cm-j1-1"]["spec"]["backoffLimit"] == 0
    assert "ttlSecondsAfterFinished" not in cluster.jobs["cm-j1-1"]["spec"], "1.20 drops it"
    assert executor.check_status("cm-j1-1") == "running"


def test_the_ttl_is_set_on_clusters_that_honour_it(executor, cluster):
    cluster.minor = "23"
    cluster.pod_for = lambda name: _pod(name, phase="Running", state=RUNNING)
    executor.run(_spec())
    assert cluster.jobs["cm-j1-1"]["spec"]["ttlSecondsAfterFinished"] == 86400


def test_a_409_adopts_the_job_a_previous_try_created(executor, cluster):
    cluster.pod_for = lambda name: _pod(name, phase="Running", state=RUNNING)
    executor.run(_spec())
    calls = len(cluster.calls)

    assert executor.run(_spec()) == "cm-j1-1"
    assert "list_namespaced_pod" not in cluster.names()[calls:], "adopted, not awaited"


def test_an_unschedulable_pod_fails_within_the_start_timeout_with_the_schedulers_words(
    executor, cluster
):
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient memory.",
    }
    cluster.pod_for = lambda name: _pod(name, conditions=[unschedulable], node="")

    with pytest.raises(ExecutorError) as raised:
        executor.run(_spec(memory_limit_mb=10**6))

    assert not isinstance(raised.value, PermanentLaunchError), "a node may free up: retried"
    assert "did not start within 0.2s: Unschedulable: 0/3 nodes are available" in str(raised.value)
    assert cluster.jobs == {}, "its Job was deleted"


def test_a_quota_that_refuses_the_pod_fails_with_the_failed_create_event(executor, cluster):
    cluster.events = [
        {"reason": "SuccessfulCreate", "message": "x", "lastTimestamp": "2026-01-01T10:00:00Z"},
        {
            "reason": "FailedCreate",
            "message": 'pods "cm-j1-1-x" is forbidden: exceeded quota: q, requested: pods=1',
            "lastTimestamp": "2026-01-01T10:00:02Z",
        },
    ]

    with pytest.raises(ExecutorError, match=r"FailedCreate: .*exceeded quota: q") as raised:
        executor.run(_spec())

    assert not isinstance(raised.value, PermanentLaunchError)
    (_, event_call) = next(c for c in cluster.calls if c[0] == "list_namespaced_event")
    assert event_call["field_selector"] == "involvedObject.kind=Job,involvedObject.name=cm-j1-1"
    assert cluster.jobs == {}


def test_a_pod_waiting_with_no_reason_times_out_saying_so(executor, cluster):
    with pytest.raises(ExecutorError, match="no reason given"):
        executor.run(_spec())


@pytest.mark.parametrize(
    ("reason", "message", "error"),
    [
        ("InvalidImageName", 'couldn\'t parse image reference "x"', PermanentLaunchError),
        (
            "ErrImagePull",
            "pull access denied for r/x, repository does not exist or may require"
            " 'docker login': denied: requested access to the resource is denied",
            ImageAccessDeniedError,
        ),
        ("ErrImagePull", "unauthorized: authentication required", ImageAccessDeniedError),
        ("ErrImagePull", "manifest for r/x:1 not found: manifest unknown", ImageUnavailableError),
        ("ImagePullBackOff", 'Back-off pulling image "r/x:1"', ImageUnavailableError),
        ("ErrImageNeverPull", "not present with pull policy of Never", ImageUnavailableError),
        ("RunContainerError", "OCI runtime create failed", ExecutorError),
    ],
)
def test_image_and_start_failures_fail_at_once(executor, cluster, reason, message, error):
    waiting = {"waiting": {"reason": reason, "message": message}}
    cluster.pod_for = lambda name: _pod(name, state=waiting)

    with pytest.raises(error) as raised:
        executor.run(_spec())

    assert reason in str(raised.value) and message in str(raised.value)
    assert "busybox:1" in str(raised.value) or reason == "RunContainerError"
    assert cluster.jobs == {}


def test_with_a_credential_the_first_refused_pull_is_not_the_verdict(
    executor, cluster, monkeypatch
):
    # The kubelet's first pull may miss the pod's pull secret (the node authorizer links them
    # a moment later); it pulls again after a back-off.
    denied = {"waiting": {"reason": "ErrImagePull", "message": "no basic auth credentials"}}
    backoff = {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}}
    cluster.pod_for = lambda name: _pod(name, state=denied)
    spec = _spec(registry_credential="r.io").with_secrets({}, RegistryAuth("r.io", "u", "p"))

    with pytest.raises(ExecutorError, match="did not start within") as once:
        executor.run(spec)
    assert not isinstance(once.value, ImageAccessDeniedError), "one refusal: waited"

    events = [
        json.dumps({"type": "MODIFIED", "object": _pod("cm-j1-1", state=s)}).encode() + b"\n"
        for s in (backoff, denied)
    ]
    plain = cluster.list_namespaced_pod
    monkeypatch.setattr(
        cluster,
        "list_namespaced_pod",
        lambda ns, **kw: Answer(chunks=events) if kw.get("watch") else plain(ns, **kw),
    )
    with pytest.raises(ImageAccessDeniedError, match="no basic auth credentials"):
        executor.run(spec)


def test_a_container_config_error_is_given_the_start_timeout(executor, cluster):
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "s" missing'}}
    cluster.pod_for = lambda name: _pod(name, state=waiting)

    with pytest.raises(ExecutorError, match='CreateContainerConfigError: secret "s" missing'):
        executor.run(_spec())


def test_a_container_the_runtime_could_not_run_fails_the_launch(executor, cluster):
    state = {"terminated": {"exitCode": 128, "reason": "ContainerCannotRun", "message": "chdir"}}
    cluster.pod_for = lambda name: _pod(name, phase="Failed", state=state)

    with pytest.raises(ExecutorError, match="ContainerCannotRun: chdir"):
        executor.run(_spec())


def test_a_pod_that_failed_without_running_fails_the_launch(executor, cluster):
    cluster.pod_for = lambda name: _pod(name, phase="Failed", reason="Evicted", message="disk")

    with pytest.raises(ExecutorError, match="The pod failed: Evicted: disk"):
        executor.run(_spec())


def test_secrets_are_created_then_owned_by_the_job(executor, cluster):
    cluster.pod_for = lambda name: _pod(name, phase="Running", state=RUNNING)
    spec = _spec().with_secrets({"TOKEN": "v"})

    executor.run(spec)
    executor.run(spec)  # a second try: the Secret exists (replaced), the Job is adopted

    secret = cluster.secrets["cm-j1-1-env"]
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "cm-j1-1", "uid": "uid-cm-j1-1"}
    ]
    assert "replace_namespaced_secret" in cluster.names()
    executor.cleanup("cm-j1-1")
    assert cluster.secrets == {} and cluster.jobs == {}


def test_a_job_that_cannot_own_its_secrets_is_removed_with_them(executor, cluster):
    cluster.pod_for = lambda name: _pod(name, phase="Running", state=RUNNING)
    cluster.fail["patch_namespaced_secret"] = _error(403, 'cannot patch resource "secrets"')

    with pytest.raises(PermanentLaunchError, match='cannot patch resource "secrets"'):
        executor.run(_spec().with_secrets({"TOKEN": "v"}))
    assert cluster.jobs == {} and cluster.secrets == {}, "nothing of the attempt is left to run"


def test_discard_is_one_request(executor, cluster):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    before = len(cluster.calls)
    executor.discard("cm-j1-1")
    executor.discard("cm-j1-1")  # gone already: fine
    assert cluster.names()[before:] == ["delete_namespaced_job"] * 2
    assert cluster.jobs == {}


def test_a_failed_job_create_removes_the_attempts_secrets(executor, cluster):
    cluster.fail["create_namespaced_job"] = _error(422, "Job.batch is invalid: label value")

    with pytest.raises(SpecRefusedError, match="label value"):
        executor.run(_spec().with_secrets({"TOKEN": "v"}))
    assert cluster.secrets == {}


def test_a_missing_namespace_is_a_permanent_launch_failure_naming_it(executor, cluster):
    cluster.fail["create_namespaced_job"] = _error(404, 'namespaces "jobs" not found')

    with pytest.raises(
        PermanentLaunchError, match='namespaces "jobs" not found \\(namespace jobs of kubernetes:'
    ):
        executor.run(_spec())


def test_rbac_forbidden_is_permanent(executor, cluster):
    cluster.fail["create_namespaced_job"] = _error(403, "jobs.batch is forbidden: User x")
    with pytest.raises(PermanentLaunchError, match="forbidden"):
        executor.run(_spec())


def test_an_unreachable_cluster_is_a_connection_error(executor, cluster):
    cluster.fail["get_code"] = urllib3.exceptions.MaxRetryError(None, "/version", "refused")
    with pytest.raises(ExecutorConnectionError, match="cannot reach the cluster"):
        executor.run(_spec())
    assert executor.health_check() is True  # /readyz still answers in this script
    cluster.fail["call_api"] = urllib3.exceptions.ProtocolError("reset")
    assert executor.health_check() is False


# ---- watching, harvesting, stopping -----------------------------------------------------


def _finished(cluster: Cluster, name: str, code: int, reason: str = "Completed") -> None:
    cluster.jobs[name] = {"metadata": {"name": name, "labels": {}}, "status": {}}
    state = {
        "terminated": {
            "exitCode": code,
            "reason": reason,
            "startedAt": "2026-01-01T10:00:01Z",
            "finishedAt": "2026-01-01T10:00:03Z",
        }
    }
    cluster.pods[name] = _pod(name, phase="Failed" if code else "Succeeded", state=state)


def test_wait_inspect_and_output_of_an_ended_pod(executor, cluster):
    _finished(cluster, "cm-j1-1", 137, "OOMKilled")

    assert executor.wait("cm-j1-1", timeout=1) == 137
    state = executor.inspect("cm-j1-1")
    assert (state.status, state.exit_code, state.oom_killed) == ("exited", 137, True)
    assert state.finished_at is not None and state.started_at is not None
    assert list(executor.iter_outputs("cm-j1-1")) == [("stdout", b"out\nerr\n")]
    assert list(executor.iter_output("cm-j1-1", "stderr")) == []
    assert executor.get_logs("cm-j1-1") == "out\nerr\n"
    assert executor.tail_output("cm-j1-1", "stdout", 1) == b"out\nerr\n"
    (_, tail_call) = [c for c in cluster.calls if c[0] == "read_namespaced_pod_log"][-1]
    assert tail_call["tail_lines"] == 1 and tail_call["container"] == "job"
    assert executor.tail_output("cm-j1-1", "stderr", 1) == b""


def test_wait_times_out_on_a_running_pod(executor, cluster):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    cluster.pods["cm-j1-1"] = _pod("cm-j1-1", phase="Running", state=RUNNING)
    assert executor.wait("cm-j1-1", timeout=0.1) is None
    (_, watch) = next(c for c in cluster.calls if c[1].get("watch"))
    assert watch["resource_version"] == "7", "watched from the listing"
    assert watch["_request_timeout"][1] <= 0.1


def test_watch_events_end_the_wait(executor, cluster, monkeypatch):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    cluster.pods["cm-j1-1"] = _pod("cm-j1-1", phase="Running", state=RUNNING)
    ended = _pod("cm-j1-1", phase="Failed", state={"terminated": {"exitCode": 3}})
    lines = [
        json.dumps({"type": "MODIFIED", "object": cluster.pods["cm-j1-1"]}).encode()[:40],
        json.dumps({"type": "MODIFIED", "object": cluster.pods["cm-j1-1"]}).encode()[40:] + b"\n",
        json.dumps({"type": "MODIFIED", "object": ended}).encode() + b"\n",
    ]
    plain = cluster.list_namespaced_pod

    def watched(namespace: str, **kw: Any) -> Answer:
        return Answer(chunks=lines) if kw.get("watch") else plain(namespace, **kw)

    monkeypatch.setattr(cluster, "list_namespaced_pod", watched)
    assert executor.wait("cm-j1-1", timeout=5) == 3


def test_an_expired_watch_lists_again(executor, cluster, monkeypatch):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    cluster.pods["cm-j1-1"] = _pod("cm-j1-1", phase="Running", state=RUNNING)
    plain = cluster.list_namespaced_pod
    lists = []

    def watched(namespace: str, **kw: Any) -> Answer:
        if kw.get("watch"):
            _finished(cluster, "cm-j1-1", 0)
            return Answer(chunks=[b'{"type": "ERROR", "object": {"code": 410}}\n'])
        lists.append(1)
        return plain(namespace, **kw)

    monkeypatch.setattr(cluster, "list_namespaced_pod", watched)
    assert executor.wait("cm-j1-1", timeout=5) == 0
    assert len(lists) == 2


def test_a_read_timeout_ends_a_watch_slice_and_other_errors_do_not(executor, cluster, monkeypatch):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    cluster.pods["cm-j1-1"] = _pod("cm-j1-1", phase="Running", state=RUNNING)
    plain = cluster.list_namespaced_pod
    error: list[Exception] = [urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out.")]

    def watched(namespace: str, **kw: Any) -> Answer:
        return Answer(chunks=[error[0]]) if kw.get("watch") else plain(namespace, **kw)

    monkeypatch.setattr(cluster, "list_namespaced_pod", watched)
    assert executor.wait("cm-j1-1", timeout=0.2) is None
    error[0] = urllib3.exceptions.ProtocolError("connection reset")
    with pytest.raises(ExecutorConnectionError):
        executor.wait("cm-j1-1", timeout=0.2)


def _running(cluster: Cluster, name: str = "cm-j1-1") -> None:
    cluster.jobs[name] = {"metadata": {"name": name}, "spec": {"parallelism": 1}}
    cluster.pods[name] = _pod(name, phase="Running", state=RUNNING)


def test_stop_deletes_the_pod_with_the_grace_and_keeps_its_end_and_output(executor, cluster):
    _running(cluster)

    assert executor.stop_container("cm-j1-1", grace=3) is True

    names = cluster.names()
    log, patch, delete = (names.index(n) for n in (
        "read_namespaced_pod_log", "patch_namespaced_job", "delete_namespaced_pod"))  # fmt: skip
    assert log < patch < delete, "the log is followed before the pod goes; no replacement pod"
    assert cluster.jobs["cm-j1-1"]["spec"]["parallelism"] == 0
    (_, deleted) = next(c for c in cluster.calls if c[0] == "delete_namespaced_pod")
    assert deleted["grace_period_seconds"] == 3
    (_, followed) = next(c for c in cluster.calls if c[0] == "read_namespaced_pod_log")
    assert followed["follow"] is True
    assert cluster.pods == {}, "the pod is gone"
    state = executor.inspect("cm-j1-1")
    assert (state.status, state.exit_code, state.has_exited) == ("exited", 143, True)
    assert executor.wait("cm-j1-1", timeout=1) == 143
    assert executor.check_status("cm-j1-1") == "exited"
    assert list(executor.iter_outputs("cm-j1-1")) == [("stdout", b"out\nerr\n")]
    assert executor.tail_output("cm-j1-1", "stdout", 1) == b"err\n"
    assert executor.get_logs("cm-j1-1") == "out\nerr\n"

    executor.discard("cm-j1-1")
    assert executor.check_status("cm-j1-1") == "not-found", "forgotten once removed"


def test_stop_without_a_reported_end_records_no_exit_code(executor, cluster):
    _running(cluster)
    cluster.killed_exit = None  # the pod goes, its container still said running

    started = time.monotonic()
    assert executor.stop_container("cm-j1-1") is True

    assert time.monotonic() - started < 5, "the pod's removal ends the wait"
    (_, deleted) = next(c for c in cluster.calls if c[0] == "delete_namespaced_pod")
    assert deleted["grace_period_seconds"] == 5, "STOP_GRACE_SECONDS by default"
    state = executor.inspect("cm-j1-1")
    assert (state.status, state.exit_code, state.has_exited) == ("dead", None, True)
    assert executor.wait("cm-j1-1", timeout=1) == kubernetes_pods.NO_CONTAINER_EXIT


def test_a_stop_tried_again_resumes_on_the_pod_being_deleted(executor, cluster, monkeypatch):
    _running(cluster)
    delete = cluster.delete_namespaced_pod
    tries: list[int] = []

    def flaky(name: str, namespace: str, **kw: Any) -> Answer:
        tries.append(1)
        if len(tries) == 1:  # deleted, but the answer is lost
            delete(name, namespace, **kw)
            cluster.pods["cm-j1-1"] = cluster.watch_events[0]["object"]
            cluster.watch_events.clear()
            raise urllib3.exceptions.ProtocolError("connection reset")
        return delete(name, namespace, **kw)

    monkeypatch.setattr(cluster, "delete_namespaced_pod", flaky)
    with pytest.raises(ExecutorConnectionError):
        executor.stop_container("cm-j1-1", grace=1)
    assert executor.stop_container("cm-j1-1", grace=1) is True
    assert executor.inspect("cm-j1-1").exit_code == 143
    assert "cm-j1-1" in cluster.jobs, "not removed: its result is harvested first"


def test_an_ended_pod_needs_no_stop(executor, cluster):
    _finished(cluster, "cm-j1-1", 0)
    assert executor.stop_container("cm-j1-1") is True
    assert "delete_namespaced_pod" not in cluster.names()


def test_follow_outputs_reads_the_log_as_written_until_the_pod_ended(executor, cluster):
    _running(cluster)
    cluster.logs = b"one\n"
    ended = _pod("cm-j1-1", phase="Succeeded", state={"terminated": {"exitCode": 0}})
    cluster.watch_events.append({"type": "MODIFIED", "object": ended})

    assert executor.follows_output is True
    assert list(executor.follow_outputs("cm-j1-1")) == [("stdout", b"one\n")]
    (_, followed) = next(c for c in cluster.calls if c[0] == "read_namespaced_pod_log")
    assert followed["follow"] is True and followed["timestamps"] is True
    assert followed["_request_timeout"] == (executor.timeout, 24 * 3600), "a silent job's day"


def test_a_followed_log_that_ends_while_the_container_runs_is_an_error(
    executor, cluster, monkeypatch
):
    monkeypatch.setattr("container_manager.executors.kubernetes_stop.SETTLE_SECONDS", 0.2)
    _running(cluster)
    with pytest.raises(ExecutorError, match="ended while its container ran"):
        list(executor.follow_outputs("cm-j1-1"))
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    cluster.pods.clear()
    with pytest.raises(ExecutorError, match="no pod to follow"):
        list(executor.follow_outputs("cm-j1-1"))


def _secret(name: str, made: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": made, "labels": labels}}


def test_leftovers_are_the_apps_secrets_whose_job_is_gone(executor, cluster, settings):
    ours = {"container_manager.managed": "true"}
    cluster.jobs["cm-alive-1"] = {"metadata": {"name": "cm-alive-1"}}
    for name, made in [
        ("cm-alive-1-env", "2026-01-01T10:00:00Z"),  # its Job exists
        ("cm-gone-1-env", "2026-01-01T10:00:00Z"),  # an orphan
        ("cm-gone-2-pull", "2026-01-01T10:00:00Z"),  # an orphan
        ("cm-young-1-env", "2026-01-01T11:59:59Z"),  # too young to tell
        ("cm-other-1-cfg", "2026-01-01T10:00:00Z"),  # not an attempt's Secret
    ]:
        cluster.secrets[name] = _secret(name, made, **ours)
    from datetime import UTC, datetime

    found = executor.leftovers(datetime(2026, 1, 1, 11, 59, 0, tzinfo=UTC))

    assert sorted(f.id for f in found) == ["cm-gone-1-env", "cm-gone-2-pull"]
    assert "cm-gone-1 does not exist" in found[0].reason
    (_, listed) = next(c for c in cluster.calls if c[0] == "list_namespaced_secret")
    assert listed["label_selector"].endswith("container_manager.managed=true"), "the app's only"
    assert cluster.names().index("list_namespaced_secret") < cluster.names().index(
        "list_namespaced_job"
    ), "Secrets listed before Jobs"
    assert executor.remove_leftover("cm-gone-1-env") is True
    assert "cm-gone-1-env" not in cluster.secrets
    assert executor.remove_leftover("cm-gone-1-env") is True, "gone already is fine"


def test_stop_removes_a_job_whose_pod_has_no_node(executor, cluster):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    cluster.pods["cm-j1-1"] = _pod("cm-j1-1", node="")
    assert executor.stop_container("cm-j1-1") is True
    assert cluster.jobs == {}


def test_a_job_without_a_pod(executor, cluster):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    assert executor.check_status("cm-j1-1") == "created"
    assert executor.get_logs("cm-j1-1") == ""
    assert executor.tail_output("cm-j1-1", "stdout", 5) == b""
    assert executor.inspect("cm-j1-1").exit_code is None
    assert executor.get_resource_usage("cm-j1-1")["memory_usage"] == 0


def test_gone_jobs(executor, cluster):
    assert executor.check_status("cm-x-1") == "not-found"
    assert executor.find_container("cm-x-1") is None
    assert "not found" in executor.get_logs("cm-x-1", tail=3).lower()
    assert executor.stop_container("cm-x-1") is True
    assert executor.cleanup("cm-x-1") is True
    with pytest.raises(ContainerNotFoundError):
        executor.wait("cm-x-1", timeout=1)
    with pytest.raises(ContainerNotFoundError):
        list(executor.iter_output("cm-x-1", "stderr"))


# ---- listing, health, capacity --------------------------------------------------------


def test_list_containers_by_label_with_each_pods_state(executor, cluster, settings):
    labels = {"container_manager.managed": "true", "container_manager.job": "j"}
    _finished(cluster, "cm-a-1", 0)
    cluster.jobs["cm-a-1"]["spec"] = {
        "template": {"spec": {"containers": [{"image": "busybox:1"}]}}
    }
    cluster.jobs["cm-a-1"]["metadata"]["labels"] = labels
    cluster.jobs["cm-b-1"] = {
        "metadata": {"name": "cm-b-1", "labels": labels},
        "status": {
            "failed": 1,
            "conditions": [
                {"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T11:00:00Z"}
            ],
        },
    }
    cluster.jobs["cm-c-1"] = {"metadata": {"name": "cm-c-1"}, "status": {"active": 1}}

    listed = {c["id"]: c for c in executor.list_containers()}

    assert listed["cm-a-1"]["status"] == "exited"
    assert listed["cm-a-1"]["image"] == "busybox:1"
    assert listed["cm-a-1"]["finished_at"].isoformat() == "2026-01-01T10:00:03+00:00"
    assert listed["cm-b-1"]["status"] == "dead"
    assert listed["cm-b-1"]["finished_at"].hour == 11
    assert listed["cm-c-1"]["status"] == "created"
    (_, call) = next(c for c in cluster.calls if c[0] == "list_namespaced_job")
    assert call["label_selector"].endswith("container_manager.managed=true")
    assert "container_manager.test-session=" in call["label_selector"]


def test_health_version_and_capacity(executor, cluster):
    assert executor.health_check() is True
    assert executor.get_version() == "v1.20.2"
    assert executor.capacity() == (2.0, 4096)
    cluster.fail["list_node"] = _error(403, "nodes is forbidden")
    assert executor.capacity() is None
    cluster.fail["list_node"] = _error(500, "boom")
    with pytest.raises(ExecutorError, match="boom"):
        executor.capacity()
    assert executor.get_resource_usage  # zeros, no metrics API
    assert KubernetesExecutor.supports_stats is False


@pytest.mark.django_db
def test_the_start_limit_follows_the_hosts_start_timeout(settings):
    host = ExecutorHost(
        name="k", executor_type="kubernetes", connection_string=cluster_url("/x", "ns")
    )
    assert KubernetesExecutor({"docker_host": host}).start_timeout == 540.0  # START_TIMEOUT 600
    host.start_timeout = 100
    assert KubernetesExecutor({"docker_host": host}).start_timeout == 90.0
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "START_TIMEOUT": None}
    host.start_timeout = None
    assert KubernetesExecutor({"docker_host": host, "timeout": 7}).start_timeout == 7.0


def test_quantities():
    assert kubernetes_pods.cpu("1500m") == 1.5 and kubernetes_pods.cpu("4") == 4.0
    assert kubernetes_pods.memory_mb("4Gi") == 4096 and kubernetes_pods.memory_mb("1048576") == 1
    assert kubernetes_pods.memory_mb("2000M") == 1907


# ---- the host: URL, validation, client configuration ------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("unix:///var/run/docker.sock", "Not a cluster URL"),
        ("kubernetes:///etc/k", "Name the namespace"),
        ("kubernetes:///etc/k?namespace=Bad_NS", "not a namespace name"),
        ("kubernetes:///etc/k?namespace=a&x=1", "Unknown cluster URL options: x"),
        ("kubernetes:///etc/k?namespace=a&namespace=b", "once"),
        ("kubernetes://in-cluster/x?namespace=a", "no path"),
        ("kubernetes://in-cluster?namespace=a&context=c", "no path and no context"),
        ("kubernetes://host/etc/k?namespace=a", "absolute path"),
        ("kubernetes:///?namespace=a", "absolute path"),
    ],
)
def test_bad_cluster_urls_say_what_is_wrong(url, problem):
    with pytest.raises(ValueError, match=problem):
        parse_cluster_url(url)


def test_cluster_urls_round_trip():
    target = parse_cluster_url(cluster_url("/etc/kube/my config", "ns-1", "ctx"))
    assert (target.kubeconfig, target.namespace, target.context) == (
        "/etc/kube/my config",
        "ns-1",
        "ctx",
    )
    inside = parse_cluster_url(cluster_url("", "ns-1"))
    assert inside.in_cluster and inside.namespace == "ns-1"


@pytest.mark.django_db
def test_validate_host_reads_the_kubeconfig_when_it_is_here(tmp_path):
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)

    def errors(url: str, **fields: Any) -> dict[str, str]:
        host = ExecutorHost(name="k", executor_type="kubernetes", connection_string=url, **fields)
        return KubernetesExecutor.validate_host(host)

    assert errors(cluster_url(str(path), "ns", "other")) == {}
    assert errors(cluster_url("/not/on/this/machine", "ns")) == {}, "maybe on the worker's"
    assert errors(cluster_url("", "ns")) == {}
    unknown = errors(cluster_url(str(path), "ns", "nope"))["connection_string"]
    assert unknown == f"The kubeconfig {path} has no context 'nope'; it has: main, other."
    assert "is not a file" in errors(cluster_url(str(tmp_path), "ns"))["connection_string"]
    (tmp_path / "junk").write_text("{not yaml: [")
    junk = errors(cluster_url(str(tmp_path / "junk"), "ns"))["connection_string"]
    assert "is not a readable kubeconfig" in junk
    assert "tls_enabled" in errors(cluster_url(str(path), "ns"), tls_enabled=True)
    assert "Name the namespace" in errors("kubernetes:///etc/k")["connection_string"]


@pytest.mark.django_db
def test_the_model_accepts_a_cluster_host_and_rejects_a_bad_one(tmp_path):
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    host = ExecutorHost(
        name="k", executor_type="kubernetes", connection_string=cluster_url(str(path), "ns")
    )
    host.full_clean()
    host.connection_string = "kubernetes:///x"
    with pytest.raises(Exception, match="namespace"):
        host.full_clean()


def test_a_bad_kubeconfig_or_context_is_a_clear_connection_error(tmp_path):
    missing = KubernetesExecutor({"docker_host": cluster_url(str(tmp_path / "none"), "ns")})
    with pytest.raises(ExecutorConnectionError, match="Cannot load the cluster configuration"):
        missing.get_version()
    assert missing.health_check() is False
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    wrong = KubernetesExecutor({"docker_host": cluster_url(str(path), "ns", "nope")})
    with pytest.raises(ExecutorConnectionError, match="context 'nope'"):
        wrong.list_containers()
    assert wrong.check() == [f"The kubeconfig {path} has no context 'nope'; it has: main, other."]
    inside = KubernetesExecutor({"docker_host": cluster_url("", "ns")})
    with pytest.raises(ExecutorConnectionError, match="in-cluster configuration"):
        inside.get_version()
    assert inside.check() == []
    with pytest.raises(ExecutorConnectionError, match="Name the namespace"):
        KubernetesExecutor({"docker_host": "kubernetes:///x"})


def test_a_good_kubeconfig_makes_a_client_that_gives_up_fast(tmp_path):
    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    executor = KubernetesExecutor({"docker_host": cluster_url(str(path), "ns"), "timeout": 2})
    with pytest.raises(ExecutorConnectionError, match=r"port=1.*Connection refused"):
        executor.get_version()
    assert executor.api.configuration.host == "https://127.0.0.1:1"
    executor.close()
    assert executor.cluster._api is None


@pytest.mark.django_db
def test_registered_by_alias(tmp_path):
    host = ExecutorHost.objects.create(
        name="k", executor_type="kubernetes", connection_string=cluster_url("/x/config", "ns")
    )
    assert isinstance(get_executor(host), KubernetesExecutor)
    assert repr(get_executor(host)).startswith("<KubernetesExecutor kubernetes:///x/config")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kubeconfig", "{cfg}", "--url", "unix:///x.sock"], "Give either --url"),
        (["--namespace", "ns"], "needs --kubeconfig PATH or --in-cluster"),
        (["--kubeconfig", "{cfg}", "--in-cluster", "--namespace", "ns"], "one of them"),
        (["--kubeconfig", "{cfg}"], "needs --namespace NS"),
        (["--in-cluster", "--namespace", "ns", "--context", "c"], "--context applies"),
        (["--kubeconfig", "/no/such/file", "--namespace", "ns"], "no such file"),
        (["--kubeconfig", "{cfg}", "--namespace", "ns", "--context", "nope"], "no context 'nope'"),
    ],
)
def test_container_host_add_refuses_bad_cluster_options(tmp_path, args, message):
    from django.core.management import CommandError, call_command

    path = tmp_path / "config"
    path.write_text(KUBECONFIG)
    with pytest.raises(CommandError, match=message):
        call_command("container_host", "add", "k", *[a.format(cfg=path) for a in args])
    assert not ExecutorHost.objects.exists()


@pytest.mark.django_db
def test_container_host_add_in_cluster():
    from django.core.management import call_command

    call_command("container_host", "add", "k", "--in-cluster", "--namespace", "ns")
    host = ExecutorHost.objects.get(name="k")
    assert (host.executor_type, host.connection_string) == (
        "kubernetes",
        "kubernetes://in-cluster?namespace=ns",
    )


def test_a_pod_failed_with_its_container_running():
    stopped = _pod("cm-j1-1", phase="Failed", state=RUNNING, reason="DeadlineExceeded")
    assert kubernetes_pods.pod_ended(stopped) is True, "the kubelet never reports the kill"
    assert kubernetes_pods.word(stopped) == "dead"
    other = _pod("cm-j1-1", phase="Failed", state=RUNNING, reason="Evicted")
    assert kubernetes_pods.pod_ended(other) is False, "until its container is reported"
    assert kubernetes_pods.word(other) == "running"
    killed = _pod("cm-j1-1", phase="Failed", state={"terminated": {"exitCode": 137}})
    assert kubernetes_pods.pod_ended(killed) is True
    assert kubernetes_pods.word(_pod("cm-j1-1", phase="Failed")) == "dead"


def test_a_pod_being_deleted_is_not_the_jobs(executor, cluster):
    cluster.jobs["cm-j1-1"] = {"metadata": {"name": "cm-j1-1"}}
    cluster.pods["cm-j1-1"] = _pod("cm-j1-1", phase="Running", state=RUNNING)
    cluster.pods["cm-j1-1"]["metadata"]["deletionTimestamp"] = "2026-01-01T10:00:09Z"
    assert executor.check_status("cm-j1-1") == "created"
    del cluster.jobs["cm-j1-1"]
    assert executor.check_status("cm-j1-1") == "not-found"
