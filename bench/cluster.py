"""Jobs on a Kubernetes cluster: the worker (kubernetes executor) against the raw official
client doing the same work, side by side in one run, at the same concurrency.

    .venv/bin/python bench/cluster.py [--jobs 16] [--concurrency 4] [--rounds 2]

The raw side, per job: create a ``batch/v1`` Job (the same manifest the executor sends),
watch its pod until the container terminated, read its log, delete the Job. The app side:
submit the same jobs to a cluster host and run a burst worker with that concurrency; each
job's latency is its attempt's (claim, launch, watch, harvest, record). Rounds alternate
raw/app; the figures are each side's median round. Prints wall time, jobs/s, the per-job
latency (p50/p90) and the ratio app/raw.

Needs the test cluster (``make kubernetes``; its kubeconfig in
CONTAINER_JOBS_TEST_KUBECONFIG) and PostgreSQL at 127.0.0.1:5432 (its own database,
``cm_k8s_bench``, created on the fly). Runs in its own namespace, deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB = "cm_k8s_bench"
os.environ["DATABASE_URL"] = f"{PG}/{DB}"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
os.environ.setdefault("DJANGO_DEBUG", "0")

KUBECONFIG = os.environ.get(
    "CONTAINER_JOBS_TEST_KUBECONFIG", "/var/lib/container-jobs-kubernetes/admin.kubeconfig"
)
IMAGE = "container-jobs/busybox:latest"
RUN_ID = uuid.uuid4().hex[:8]
NAMESPACE = f"cm-bench-{RUN_ID}"
LABEL = "container_manager.bench"
COMMAND = ["sh", "-c", "echo hello from the bench"]


def setup_django() -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.CONTAINER_MANAGER = {
        "CONTAINER_LABELS": {LABEL: RUN_ID},
        "POLL_INTERVAL": 0.2,
        "NETWORK_MODE": "none",
    }
    call_command("migrate", verbosity=0)


def namespace(api: Any, create: bool) -> None:
    from kubernetes import client

    core = client.CoreV1Api(api)
    if not create:
        core.delete_namespace(NAMESPACE, _request_timeout=30)
        return
    core.create_namespace({"metadata": {"name": NAMESPACE}}, _request_timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the default service account, made by a controller
        try:
            core.read_namespaced_service_account("default", NAMESPACE, _request_timeout=5)
            return
        except client.exceptions.ApiException:
            time.sleep(0.1)


# ---- the raw client ---------------------------------------------------------------------


def raw_job(api: Any, index: int) -> float:
    """One job with the raw client: create, watch to the end, read the log, delete."""
    from kubernetes import client, watch

    from container_manager.executors import kubernetes_spec
    from container_manager.spec import JobSpec

    began = time.monotonic()
    spec = JobSpec(
        job_id=f"raw{RUN_ID}{index}",
        attempt=1,
        image=IMAGE,
        argv=COMMAND,
        auto_pull=False,
        extra_labels={LABEL: RUN_ID},
    )
    batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
    batch.create_namespaced_job(
        NAMESPACE, kubernetes_spec.job_manifest(spec, ttl=False), _request_timeout=30
    )
    pod_name = ""
    for event in watch.Watch().stream(
        core.list_namespaced_pod,
        NAMESPACE,
        label_selector=f"job-name={spec.name}",
        timeout_seconds=120,
        _request_timeout=130,
    ):
        pod = event["object"]
        statuses = pod.status.container_statuses or []
        if statuses and statuses[0].state.terminated is not None:
            pod_name = pod.metadata.name
            break
    log = core.read_namespaced_pod_log(pod_name, NAMESPACE, _request_timeout=30)
    assert "hello from the bench" in log, log
    batch.delete_namespaced_job(
        spec.name, NAMESPACE, propagation_policy="Background", _request_timeout=30
    )
    return time.monotonic() - began


def raw_round(api: Any, jobs: int, concurrency: int) -> tuple[float, list[float]]:
    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda i: raw_job(api, i), range(jobs)))
    return time.monotonic() - began, latencies


# ---- the app ---------------------------------------------------------------------------------


def app_round(jobs: int, concurrency: int) -> tuple[float, list[float]]:
    from container_manager.executors import reset_executors
    from container_manager.executors.kubernetes import cluster_url
    from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
    from container_manager.queue import submit
    from container_manager.worker import Worker

    JobAttempt.objects.all().delete()
    ContainerJob.objects.all().delete()
    reset_executors()
    host, _ = ExecutorHost.objects.update_or_create(
        name="bench-cluster",
        defaults={
            "connection_string": cluster_url(KUBECONFIG, NAMESPACE),
            "executor_type": "kubernetes",
            "auto_pull_images": False,
            "max_concurrent_jobs": concurrency,
        },
    )
    submitted = [submit(host=host, image=IMAGE, command=COMMAND) for _ in range(jobs)]
    began = time.monotonic()
    Worker(concurrency=concurrency, burst=True, shutdown_timeout=30).run()
    wall = time.monotonic() - began
    done = ContainerJob.objects.filter(pk__in=[j.pk for j in submitted])
    statuses = set(done.values_list("status", flat=True))
    assert statuses == {JobStatus.COMPLETED}, statuses
    latencies = [
        (a.finished_at - a.started_at).total_seconds()
        for a in JobAttempt.objects.filter(job__in=submitted)
    ]
    return wall, latencies


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(name: str, rounds: list[tuple[float, list[float]]], jobs: int) -> dict[str, float]:
    wall = statistics.median(r[0] for r in rounds)
    latencies = [latency for r in rounds for latency in r[1]]
    figures = {
        "wall_s": wall,
        "jobs_per_s": jobs / wall,
        "p50_s": _quantile(latencies, 0.5),
        "p90_s": _quantile(latencies, 0.9),
    }
    print(
        f"  {name:<11} {wall:6.2f} s wall  {figures['jobs_per_s']:5.2f} jobs/s"
        f"  per job p50 {figures['p50_s']:.2f} s  p90 {figures['p90_s']:.2f} s"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from kubernetes import config

    setup_django()
    api = config.new_client_from_config(config_file=KUBECONFIG, persist_config=False)
    namespace(api, create=True)
    raw: list[tuple[float, list[float]]] = []
    app: list[tuple[float, list[float]]] = []
    try:
        raw_job(api, -1)  # warm: the image's first container on the node
        for _ in range(args.rounds):
            raw.append(raw_round(api, args.jobs, args.concurrency))
            app.append(app_round(args.jobs, args.concurrency))
    finally:
        namespace(api, create=False)
    print(
        f"kubernetes: {args.jobs} jobs of `{' '.join(COMMAND)}`, concurrency"
        f" {args.concurrency}, {args.rounds} rounds (median round)"
    )
    raw_figures = summary("raw client", raw, args.jobs)
    app_figures = summary("app", app, args.jobs)
    ratio = app_figures["wall_s"] / raw_figures["wall_s"]
    latency = app_figures["p50_s"] / raw_figures["p50_s"]
    print(f"  ratio app/raw: wall {ratio:.2f}, per-job p50 {latency:.2f}")
    print(json.dumps({"raw": raw_figures, "app": app_figures, "ratio_wall": ratio}))


if __name__ == "__main__":
    main()
