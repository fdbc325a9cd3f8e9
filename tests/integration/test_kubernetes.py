"""The ``kubernetes`` executor on a real one-node cluster (scripts/ensure-kubernetes.sh: a real
apiserver, scheduler, controller manager and kubelet, pods on the test engine).

The executor contract (test_executor_contract.py) runs here, except the test that stdout and
stderr are kept apart: Kubernetes merges them (a test below says how that is recorded). Then
jobs through the real Worker: output, a failure, a timeout, a cancellation, an OOM kill, a
missing image, secrets, a private image, a worker SIGKILLed mid-run and adopted, and the
reaper leaving a Job it did not create alone. Everything runs in this session's namespace,
deleted at the end.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db.models import Count
from django.utils import timezone

from container_manager.exceptions import ImageAccessDeniedError, ImageUnavailableError
from container_manager.executors import kubernetes_secrets, kubernetes_spec
from container_manager.executors.base import BaseExecutor, JobSpec
from container_manager.executors.kubernetes import KubernetesExecutor, cluster_url
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.reaper import reap
from container_manager.spec import RegistryAuth
from container_manager.testing.images import TEST_IMAGE
from container_manager.worker import Worker
from tests import cluster as clusters
from tests import registry
from tests.cluster import KUBECONFIG
from tests.conftest import OOM_COMMAND, SESSION_ID, SESSION_LABEL, output_seen_running, until
from tests.integration.test_executor_contract import Engine, _output, contract
from tests.processes import worker_killed_mid_run, worker_process
from tests.registry import PrivateImage

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

# The executor contract, but where Kubernetes differs (below).
globals().update(contract(but=("test_stdout_and_stderr_are_kept_apart",)))

# The session fixtures of the cluster and the private registry, taken in by name.
cluster = clusters.cluster
kube_namespace = clusters.kube_namespace
private_registry = registry.private_registry
private_image = registry.private_image
pull_needed = registry.pull_needed


@pytest.fixture(autouse=True)
def fast(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "STOP_GRACE_SECONDS": 1,
    }


@pytest.fixture
def k8s_host(db, kube_namespace) -> ExecutorHost:
    host = ExecutorHost(
        name="cluster",
        connection_string=cluster_url(KUBECONFIG, kube_namespace),
        executor_type="kubernetes",
        auto_pull_images=False,
        max_concurrent_jobs=10,
    )
    host.full_clean()
    host.save()
    return host


@pytest.fixture
def batch(cluster) -> Any:
    from kubernetes import client

    return client.BatchV1Api(cluster)


@pytest.fixture
def core(cluster) -> Any:
    from kubernetes import client

    return client.CoreV1Api(cluster)


def _dead_kubeconfig(path: Path) -> str:
    text = Path(KUBECONFIG).read_text()
    server = next(line for line in text.splitlines() if "server:" in line).split("server:")[1]
    path.write_text(text.replace(server.strip(), "https://127.0.0.1:1"))
    return str(path)


class ClusterEngine(Engine):
    """The contract's engine, for the kubernetes executor."""

    tmp: Path = Path("/tmp")

    def dead(self) -> BaseExecutor:
        kubeconfig = _dead_kubeconfig(self.tmp / f"dead-{uuid.uuid4().hex}.kubeconfig")
        return KubernetesExecutor({"docker_host": cluster_url(kubeconfig, "default"), "timeout": 3})


@pytest.fixture
def engine(k8s_host, batch, tmp_path) -> Iterator[Engine]:
    """What the contract tests run against: the kubernetes executor on the test cluster."""
    executor = KubernetesExecutor({"docker_host": k8s_host, "start_timeout": 30})
    under_test = ClusterEngine("kubernetes", executor, k8s_host)
    under_test.tmp = tmp_path
    yield under_test
    for name in under_test.created:
        executor.cleanup(name)
    executor.close()


def burst(concurrency: int = 4) -> None:
    Worker(concurrency=concurrency, burst=True, shutdown_timeout=10).run()


def fresh(job: ContainerJob) -> ContainerJob:
    job.refresh_from_db()
    return job


def batch_api(core: Any) -> Any:
    from kubernetes import client

    return client.BatchV1Api(core.api_client)


def jobs_named(batch: Any, namespace: str, name: str) -> list[Any]:
    return [
        j
        for j in batch.list_namespaced_job(namespace, _request_timeout=10).items
        if j.metadata.name == name
    ]


# ---- the contract, where Kubernetes differs ------------------------------------------------


def test_stdout_and_stderr_arrive_merged_as_stdout(engine):
    spec = engine.spec(["sh", "-c", "echo out; echo err >&2"], None)  # type: ignore[arg-type]
    container_id = engine.run(spec)
    assert engine.executor.wait(container_id, timeout=30) == 0

    assert sorted(_output(engine.executor, container_id, "stdout").splitlines()) == [
        b"err",
        b"out",
    ]
    assert _output(engine.executor, container_id, "stderr") == b""
    assert engine.executor.effective(spec).describe()["merged_output"] is True


def test_a_stop_deletes_the_pod_and_keeps_its_output_and_exit_code(engine, core, kube_namespace):
    # The job handles SIGTERM: what it prints then, and its exit code, are kept.
    spec = engine.spec(
        ["sh", "-c", "trap 'echo terminated; exit 143' TERM; echo started;"
         " while true; do sleep 0.1; done"], None,  # type: ignore[arg-type]
    )  # fmt: skip
    container_id = engine.run(spec)
    until(lambda: engine.executor.get_logs(container_id) == "started\n", timeout=15)

    started = time.monotonic()
    assert engine.executor.stop_container(container_id, grace=10) is True
    took = time.monotonic() - started

    assert took < 10, f"ended by SIGTERM, not the grace period ({took:.1f}s)"
    pods = core.list_namespaced_pod(
        kube_namespace, label_selector=f"job-name={container_id}", _request_timeout=10
    ).items
    assert len(pods) <= 1 and all(p.metadata.deletion_timestamp for p in pods), (
        "the pod is deleted (or going), and no other made in its place"
    )
    state = engine.executor.inspect(container_id)
    assert (state.status, state.exit_code) == ("exited", 143)
    assert _output(engine.executor, container_id, "stdout") == b"started\nterminated\n"


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(engine):
    spec = engine.spec(["sh", "-c", "trap '' TERM; echo started; sleep 60"], None)
    container_id = engine.run(spec)
    assert engine.executor.wait(container_id, timeout=0.3) is None

    started = time.monotonic()
    assert engine.executor.stop_container(container_id, grace=2) is True
    took = time.monotonic() - started

    assert 2 <= took < 40, f"SIGKILL after the grace period ({took:.1f}s)"
    state = engine.executor.inspect(container_id)
    assert (state.status, state.exit_code) == ("exited", 137), f"stop took {took:.1f}s"
    assert engine.executor.wait(container_id, timeout=5) == 137


def test_a_followed_log_keeps_long_lines_whole(engine):
    # The engine logs a line longer than 16 KiB in pieces, each with its own time.
    spec = engine.spec(["sh", "-c", "head -c 40000 /dev/zero | tr '\\0' x; echo; sleep 2;"
                        " echo end"], None)  # type: ignore[arg-type]  # fmt: skip
    container_id = engine.run(spec)
    followed = b"".join(chunk for _, chunk in engine.executor.follow_outputs(container_id))
    assert followed == b"x" * 40000 + b"\nend\n"
    assert _output(engine.executor, container_id, "stdout") == followed


def test_a_job_that_runs_a_while_is_not_killed(engine):
    # Unpatched, the kubelet killed a pod without an IP at its next sync (the rig has no
    # pod network): this job outlives a few syncs.
    spec = engine.spec(["sh", "-c", "sleep 8; echo done"], None)
    container_id = engine.run(spec)
    assert engine.executor.wait(container_id, timeout=30) == 0
    assert _output(engine.executor, container_id, "stdout") == b"done\n"


def test_version_and_readyz_are_the_clusters(engine):
    assert engine.executor.get_version() == "v1.20.2"
    assert engine.executor.health_check() is True
    cpus, memory = engine.executor.capacity()
    assert cpus >= 1 and memory > 100


def test_the_job_object_is_as_mapped(engine, batch, core, kube_namespace):
    spec = JobSpec(
        job_id=uuid.uuid4().hex,
        attempt=2,
        image=TEST_IMAGE,
        argv=["sh", "-c", 'echo "$GREETING $TOKEN"; id -u; pwd'],
        environment={"GREETING": "hello"},
        secrets={"TOKEN": "s3cret-token"},
        secret_references={"TOKEN": "env:T"},
        working_directory="/tmp",
        user="1234:1234",
        memory_limit_mb=64,
        cpu_limit=0.5,
        extra_labels={SESSION_LABEL: SESSION_ID},
        auto_pull=False,
    )
    name = engine.run(spec)
    assert name == f"cm-{spec.job_id}-2"
    assert engine.executor.wait(name, timeout=30) == 0
    assert _output(engine.executor, name, "stdout") == b"hello s3cret-token\n1234\n/tmp\n"

    job = batch.read_namespaced_job(name, kube_namespace, _request_timeout=10)
    assert job.spec.backoff_limit == 0
    pod_spec = job.spec.template.spec
    assert pod_spec.restart_policy == "Never"
    container = pod_spec.containers[0]
    assert container.resources.limits == {"memory": "64Mi", "cpu": "500m"}
    assert container.security_context.run_as_user == 1234
    assert container.security_context.allow_privilege_escalation is False
    assert "s3cret-token" not in str(job.to_dict()), "the secret is not in the Job's spec"
    secret = core.read_namespaced_secret(f"{name}-env", kube_namespace, _request_timeout=10)
    assert [o.name for o in secret.metadata.owner_references] == [name], "owned by the Job"
    assert job.metadata.labels["container_manager.job"] == spec.job_id

    engine.executor.cleanup(name)
    until(lambda: not core.list_namespaced_secret(
        kube_namespace, field_selector=f"metadata.name={name}-env", _request_timeout=10
    ).items, timeout=30)  # fmt: skip


def test_a_missing_image_fails_fast_with_the_clusters_reason(engine):
    spec = JobSpec(
        job_id=uuid.uuid4().hex,
        attempt=1,
        image="container-jobs/not-here:never",
        extra_labels={SESSION_LABEL: SESSION_ID},
        auto_pull=False,
    )
    started = time.monotonic()
    with pytest.raises(ImageUnavailableError, match="ErrImageNeverPull"):
        engine.executor.run(spec)
    assert time.monotonic() - started < 15
    assert engine.executor.find_container(spec.name) is None


def test_a_private_image_is_pulled_with_the_jobs_credential(engine, pull_needed: PrivateImage):
    spec = JobSpec(
        job_id=uuid.uuid4().hex,
        attempt=1,
        image=pull_needed.reference,
        argv=["echo", "pulled"],
        extra_labels={SESSION_LABEL: SESSION_ID},
        registry_credential=pull_needed.registry,
        registry_auth=RegistryAuth(
            pull_needed.registry, pull_needed.username, pull_needed.password
        ),
    )
    name = engine.run(spec)
    assert engine.executor.wait(name, timeout=60) == 0
    assert _output(engine.executor, name, "stdout") == b"pulled\n"


def test_a_private_image_without_the_credential_is_refused_at_once(
    engine, pull_needed: PrivateImage
):
    spec = JobSpec(
        job_id=uuid.uuid4().hex,
        attempt=1,
        image=pull_needed.reference,
        extra_labels={SESSION_LABEL: SESSION_ID},
    )
    started = time.monotonic()
    with pytest.raises(ImageAccessDeniedError, match="ErrImagePull"):
        engine.executor.run(spec)
    assert time.monotonic() - started < 20
    assert engine.executor.find_container(spec.name) is None


# ---- jobs through the worker ---------------------------------------------------------------


def test_jobs_complete_and_fail_with_their_output_exit_codes_and_oom(
    k8s_host, batch, kube_namespace
):
    ok = submit(host=k8s_host, image=TEST_IMAGE, command=["sh", "-c", "echo hi; echo e >&2"])
    bad = submit(host=k8s_host, image=TEST_IMAGE, command=["sh", "-c", "echo partial; exit 7"])
    oom = submit(
        host=k8s_host,
        image=TEST_IMAGE,
        command=OOM_COMMAND,
        memory_limit=8,
    )

    burst()

    ok, bad, oom = map(fresh, (ok, bad, oom))
    assert (ok.status, ok.exit_code) == (JobStatus.COMPLETED, 0)
    assert sorted(ok.stdout_log.splitlines()) == ["e", "hi"] and ok.stderr_log == ""
    assert JobAttempt.objects.get(job=ok).spec["merged_output"] is True
    assert (bad.status, bad.exit_code, bad.stdout_log) == (JobStatus.FAILED, 7, "partial\n")
    assert (oom.status, oom.oom_killed, oom.exit_code) == (JobStatus.FAILED, True, 137)
    assert oom.last_error == "Killed: out of memory (limit 8 MB)."
    for job in (ok, bad, oom):
        assert jobs_named(batch, kube_namespace, job.container_id) == []


def test_a_timeout_and_a_cancellation_stop_the_pod(k8s_host, core, kube_namespace):
    # PID 1 of each ignores SIGTERM (no handler): SIGKILL after STOP_GRACE_SECONDS (1 s).
    slow = submit(host=k8s_host, image=TEST_IMAGE, command="sh -c 'echo slow; sleep 60'",
                  timeout_seconds=3)  # fmt: skip
    doomed = submit(host=k8s_host, image=TEST_IMAGE, command="sh -c 'echo doomed; sleep 60'")
    worker = Worker(concurrency=2, burst=True, shutdown_timeout=10)
    thread = threading.Thread(target=worker.run)
    started = time.monotonic()
    thread.start()
    try:
        until(lambda: fresh(doomed).status == JobStatus.RUNNING, timeout=30)
        assert doomed.cancel() is True
        thread.join(60)
        assert not thread.is_alive()
    finally:
        worker.stop()
        thread.join(30)
    slow, doomed = fresh(slow), fresh(doomed)
    # The exit code is the kubelet's report: SIGKILL's 137, or none when the kubelet of a busy
    # node let the pod go without one (its 1.20 does so at times); never another.
    assert (slow.status, slow.stdout_log) == (JobStatus.TIMEOUT, "slow\n"), slow.last_error
    assert slow.exit_code in KILLED_OR_UNREPORTED
    assert slow.last_error == "Timed out after 3s; stopped."
    assert (doomed.status, doomed.stdout_log) == (JobStatus.CANCELLED, "doomed\n")
    assert doomed.exit_code in KILLED_OR_UNREPORTED
    assert JobAttempt.objects.get(job=slow).exit_code == slow.exit_code
    assert time.monotonic() - started < 40, "stopped, not waited out"
    for job in (slow, doomed):
        assert jobs_named(batch_api(core), kube_namespace, job.container_id) == []


#: A stopped pod's exit code as recorded: SIGKILL's, or none when the kubelet reported none.
KILLED_OR_UNREPORTED = (137, None)


def test_a_running_jobs_output_is_recorded_while_it_runs(k8s_host, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LIVE_OUTPUT_INTERVAL": 0.2}
    script = "echo first; echo oops >&2; sleep 6; echo second"
    job = submit(host=k8s_host, image=TEST_IMAGE, command=["sh", "-c", script])
    seen = output_seen_running(job, timeout=30, stderr=False)  # merged
    # Merged by the kubelet as they arrive: the two lines in either order.
    assert [(sorted(out.splitlines()), err) for out, err in seen] == [(["first", "oops"], "")]
    job = fresh(job)
    assert (job.status, job.stdout_log.endswith("second\n"), job.stderr_log) == (
        JobStatus.COMPLETED, True, ""
    )  # fmt: skip
    assert sorted(job.stdout_log.splitlines()) == ["first", "oops", "second"]


def test_a_worker_killed_mid_run_leaves_jobs_another_adopts(k8s_host, settings):
    jobs = [
        submit(host=k8s_host, image=TEST_IMAGE, command=f"sh -c 'sleep 3; echo done-{i}'")
        for i in range(3)
    ]
    conf = {
        "POLL_INTERVAL": 0.1,
        "LEASE_SECONDS": 60.0,
        "CONTAINER_LABELS": settings.CONTAINER_MANAGER["CONTAINER_LABELS"],
    }
    worker_killed_mid_run(3, conf)
    second = worker_process("--burst", "--concurrency", "3", settings=conf)
    out, _ = second.communicate(timeout=90)
    assert second.returncode == 0, out.decode()[-3000:]
    statuses = dict(ContainerJob.objects.values_list("status").annotate(n=Count("pk")))
    assert statuses == {JobStatus.COMPLETED: 3}
    assert set(ContainerJob.objects.values_list("stdout_log", flat=True)) == {
        f"done-{i}\n" for i in range(3)
    }
    assert set(
        JobAttempt.objects.values_list("job_id").annotate(n=Count("pk")).values_list("n", flat=True)
    ) == {1}, "a kill is not an attempt"
    assert {j.pk for j in jobs} == set(ContainerJob.objects.values_list("pk", flat=True))


def test_the_reaper_removes_its_own_finished_jobs_and_leaves_a_foreign_one(
    engine, batch, kube_namespace
):
    foreign = f"foreign-{uuid.uuid4().hex[:8]}"
    batch.create_namespaced_job(
        kube_namespace,
        {
            "metadata": {"name": foreign, "labels": {"app": "not-ours"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "c",
                                "image": TEST_IMAGE,
                                "imagePullPolicy": "Never",
                                "args": ["true"],
                            }
                        ],
                    }
                },
            },
        },
        _request_timeout=10,
    )
    orphan = engine.run(engine.spec(["true"], None))  # type: ignore[arg-type]
    assert engine.executor.wait(orphan, timeout=30) == 0

    removed = reap(older_than=timedelta(0))

    assert orphan in {r.container_id for r in removed}, "its job is unknown: an orphan"
    assert engine.executor.find_container(orphan) is None
    assert jobs_named(batch, kube_namespace, foreign), "a Job the app did not create stays"
    with suppress(Exception):
        batch.delete_namespaced_job(
            foreign, kube_namespace, propagation_policy="Background", _request_timeout=10
        )


def _secret_names(core: Any, namespace: str) -> set[str]:
    return {s.metadata.name for s in core.list_namespaced_secret(
        namespace, _request_timeout=10).items}  # fmt: skip


def test_the_reaper_removes_the_apps_secrets_whose_job_is_gone_and_no_other(
    engine, core, batch, kube_namespace, settings
):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "ENGINE_TIMEOUT": 1.0}
    executor = engine.executor

    def with_secret(argv: list[str]) -> JobSpec:
        spec = engine.spec(argv, None)  # type: ignore[arg-type]
        return replace(spec, secrets={"TOKEN": "t0ken"}, secret_references={"TOKEN": "env:T"})

    # A worker that died between making the attempt's Secret and its Job:
    crashed = with_secret(["true"])
    for secret in kubernetes_spec.secret_manifests(crashed):
        kubernetes_secrets.put(executor.cluster, secret)
    # A Job deleted without its dependents (orphan propagation: the owner reference goes):
    orphaned = with_secret(["true"])
    assert executor.wait(engine.run(orphaned), timeout=30) == 0
    batch.delete_namespaced_job(
        orphaned.name, kube_namespace, propagation_policy="Orphan", _request_timeout=10
    )
    # A Job that still exists, and a Secret of the same shape the app did not make:
    alive = with_secret(["true"])
    assert executor.wait(engine.run(alive), timeout=30) == 0
    foreign = f"cm-{uuid.uuid4().hex}-1-env"
    core.create_namespaced_secret(kube_namespace, {"metadata": {"name": foreign},
                                  "stringData": {"k": "v"}}, _request_timeout=10)  # fmt: skip
    time.sleep(5)  # older than a launch's four API deadlines (ENGINE_TIMEOUT 1 s)
    young = with_secret(["true"])  # a launch between its Secret and its Job, just now
    for secret in kubernetes_spec.secret_manifests(young):
        kubernetes_secrets.put(executor.cluster, secret)

    lister = KubernetesExecutor({"docker_host": engine.host, "timeout": 1})
    listed = {leftover.id for leftover in lister.leftovers(timezone.now())}
    assert listed == {f"{crashed.name}-env", f"{orphaned.name}-env"}, listed

    removed = {r.container_id: r.reason for r in reap(older_than=timedelta(0))}

    envs = {spec.name: f"{spec.name}-env" for spec in (crashed, orphaned, alive, young)}
    assert envs[crashed.name] in removed and envs[orphaned.name] in removed, removed
    assert removed[envs[crashed.name]] == f"orphan secret: its job {crashed.name} does not exist"
    left = _secret_names(core, kube_namespace)
    assert envs[crashed.name] not in left and envs[orphaned.name] not in left
    assert {envs[young.name], foreign} <= left, "too young to tell, and not the app's"
    assert envs[alive.name] not in removed, "its Job exists (the reaper removed the Job)"
    kubernetes_secrets.delete_of(executor.cluster, young.name)
    core.delete_namespaced_secret(foreign, kube_namespace, _request_timeout=10)


def test_container_host_add_registers_a_cluster(db, kube_namespace, capsys):
    call_command(
        "container_host", "add", "k8s", "--kubeconfig", KUBECONFIG, "--namespace", kube_namespace
    )
    host = ExecutorHost.objects.get(name="k8s")
    assert host.executor_type == "kubernetes"
    assert host.connection_string == cluster_url(KUBECONFIG, kube_namespace)
    call_command("container_host", "check", "k8s")
    assert "v1.20.2" in capsys.readouterr().out
