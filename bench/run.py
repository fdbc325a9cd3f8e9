"""Benchmarks of the worker against the raw Docker SDK doing the same work, side by side.

    .venv/bin/python bench/run.py [throughput latency claim memory queries cpu] [--quick]

``cpu`` (not in the default set) splits the CPU per job by process on both sides.
``scale`` (on its own: ``bench/run.py scale --help``) measures the admin, the overview, the
metrics, the claim, bulk submission and pruning over a million finished jobs (bench/scale.py).

Needs the local engine (``make engine``) and PostgreSQL at 127.0.0.1:5432 (it uses its own
database, ``cm_bench``, created and migrated on the fly). Prints one line per figure.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
os.environ["DATABASE_URL"] = f"{PG}/cm_bench"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
# Measure what production runs: no DEBUG (which wraps every cursor to record its queries).
os.environ.setdefault("DJANGO_DEBUG", "0")

ENGINE = "unix:///var/run/docker.sock"
IMAGE = "container-jobs/busybox:latest"
#: Both sides run their containers with this network mode (the engine has no bridge).
NETWORK_MODE = "none"
RUN_LABEL = "container_manager.bench"
RUN_ID = uuid.uuid4().hex[:8]


def setup_django() -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cm_bench")
        conn.execute("CREATE DATABASE cm_bench")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.CONTAINER_MANAGER = {
        "CONTAINER_LABELS": {RUN_LABEL: RUN_ID},
        "POLL_INTERVAL": 1.0,
        "NETWORK_MODE": NETWORK_MODE,
    }
    call_command("migrate", verbosity=0)


def reset(max_concurrent: int = 8):
    from container_manager.models import ContainerJob, ExecutorHost, JobAttempt

    JobAttempt.objects.all().delete()
    ContainerJob.objects.all().delete()
    host, _ = ExecutorHost.objects.update_or_create(
        name="bench",
        defaults={
            "connection_string": ENGINE,
            "auto_pull_images": False,
            "max_concurrent_jobs": max_concurrent,
        },
    )
    return host


def raw_client():
    import docker

    return docker.DockerClient(base_url=ENGINE, max_pool_size=16)


def raw_job(client, command=("true",)) -> None:
    """What the worker does for a job, done directly: create, start, wait, logs, remove."""
    container = client.containers.create(
        IMAGE,
        list(command),
        labels={RUN_LABEL: RUN_ID},
        network_mode=NETWORK_MODE,
        # The worker's secure defaults, so that both sides start the same container: an init
        # process, no new privileges, a process limit, a capped json-file log.
        init=True,
        security_opt=["no-new-privileges:true"],
        pids_limit=4096,
        log_config={"Type": "json-file", "Config": {"max-size": "33554432", "max-file": "2"}},
    )
    container.start()
    container.wait()
    container.logs(stdout=True, stderr=False)
    container.logs(stdout=False, stderr=True)
    container.remove(force=True)


def report(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("  OK" if ok else "  MISSED")
    print(f"{name:<48} {value:<34} {target}{verdict}", flush=True)


# ---- throughput ---------------------------------------------------------------------------


def _machine_cpu() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _engine_requests() -> Iterator[list[int]]:
    """Count the HTTP requests made to the engine (through the SDK's client) meanwhile."""
    from docker.api.client import APIClient

    count = [0]
    lock = threading.Lock()
    send = APIClient.send

    def counting(self, request, **kwargs):
        with lock:
            count[0] += 1
        return send(self, request, **kwargs)

    APIClient.send = counting  # type: ignore[method-assign]
    try:
        yield count
    finally:
        APIClient.send = send  # type: ignore[method-assign]


def _paired_rounds(
    jobs: int, concurrency: int, rounds: int, probe: Callable[[str, Callable[[], None]], None]
) -> None:
    """``rounds`` rounds, each a raw SDK run and a worker run of ``jobs`` no-op jobs back to
    back, the order alternating: the engine's own speed drifts by 10-20% between consecutive
    identical runs here, which must not count against either side. ``probe(side, run)``
    measures ``run()``; the worker's jobs are submitted before it."""
    from container_manager.queue import submit
    from container_manager.worker import Worker

    client = raw_client()

    def raw_run() -> None:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(lambda _: raw_job(client), range(jobs)))

    def worker_run() -> None:
        Worker(concurrency=concurrency, burst=True).run()

    for number in range(rounds):
        for side in ("raw", "worker") if number % 2 == 0 else ("worker", "raw"):
            if side == "worker":
                host = reset(max_concurrent=concurrency)
                for _ in range(jobs):
                    submit(host=host, image=IMAGE, command="true")
            probe(side, worker_run if side == "worker" else raw_run)


def bench_throughput(jobs: int, concurrency: int, rounds: int) -> None:
    """Throughput of both sides over paired rounds (see _paired_rounds). CPU per job is
    printed for both sides: on this 2-core machine the engine is CPU-bound, so every
    millisecond the worker (or PostgreSQL) burns is taken from the engine."""
    measured: dict[str, list[tuple[float, float, float]]] = {"raw": [], "worker": []}
    requests: dict[str, int] = {"raw": 0, "worker": 0}

    def probe(side: str, run: Callable[[], None]) -> None:
        own, machine, began = time.process_time(), _machine_cpu(), time.perf_counter()
        with _engine_requests() as count:
            run()
        measured[side].append(
            (time.perf_counter() - began, time.process_time() - own, _machine_cpu() - machine)
        )
        requests[side] += count[0]

    _paired_rounds(jobs, concurrency, rounds, probe)
    raw = statistics.median(t for t, _, _ in measured["raw"])
    worker = statistics.median(t for t, _, _ in measured["worker"])
    report(
        f"throughput, {jobs} no-op jobs at concurrency {concurrency}",
        f"raw {jobs / raw:.1f}/s  worker {jobs / worker:.1f}/s",
    )
    for side in ("raw", "worker"):
        rates = ", ".join(f"{jobs / t:.1f}" for t, _, _ in measured[side])
        report(f"  ({side} per round: {rates} /s)", "")
    for side in ("raw", "worker"):
        own = statistics.median(c for _, c, _ in measured[side]) / jobs * 1000
        machine = statistics.median(m for _, _, m in measured[side]) / jobs * 1000
        report(f"  CPU per job, {side}", f"own process {own:.0f} ms  machine {machine:.0f} ms")
    report(
        "  engine requests per job",
        "  ".join(f"{side} {requests[side] / jobs / rounds:.1f}" for side in requests),
    )
    # Each round's two runs are back to back: the ratio within a round cancels the drift
    # between rounds; the median over rounds drops the odd disturbed one.
    pairs = [r[0] / w[0] for r, w in zip(measured["raw"], measured["worker"], strict=True)]
    report("  (worker / raw per round)", ", ".join(f"{p:.2f}" for p in pairs))
    ratio = statistics.median(pairs)
    report("  worker / raw throughput ratio (median)", f"{ratio:.2f}", ">= 0.90", ratio >= 0.9)


def _cpu_by_process() -> collections.Counter[str]:
    """CPU seconds so far of every process on the machine, grouped (children reaped by a
    process count in it): this process, postgres, dockerd, containerd, shims, kernel workers."""
    tick = os.sysconf("SC_CLK_TCK")
    found: collections.Counter[str] = collections.Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(pid) == os.getpid():
            name = "this process"
        else:
            groups = ("kworker", "postgres", "containerd-shim")
            name = next((group for group in groups if name.startswith(group)), name)
        found[name] += sum(int(v) for v in fields[11:15]) / tick
    return found


def bench_cpu(jobs: int, concurrency: int, rounds: int) -> None:
    """Where the CPU goes, per job and per process, for each side (paired rounds)."""
    totals: dict[str, collections.Counter[str]] = {
        "raw": collections.Counter(),
        "worker": collections.Counter(),
    }

    def probe(side: str, run: Callable[[], None]) -> None:
        before, machine = _cpu_by_process(), _machine_cpu()
        run()
        spent = _cpu_by_process()
        spent.subtract(before)
        spent["whole machine"] = _machine_cpu() - machine
        totals[side].update(spent)

    _paired_rounds(jobs, concurrency, rounds, probe)
    per_job = 1000 / jobs / rounds
    biggest = (totals["raw"] + totals["worker"]).most_common(9)
    for name, _ in biggest:
        raw, worker = totals["raw"][name] * per_job, totals["worker"][name] * per_job
        report(
            f"  CPU per job: {name}",
            f"raw {raw:.1f} ms  worker {worker:.1f} ms  ({worker - raw:+.1f})",
        )


# ---- latency ------------------------------------------------------------------------------


def bench_latency(samples: int) -> None:
    from django.utils import timezone

    from container_manager.models import ContainerJob, JobStatus
    from container_manager.queue import submit
    from container_manager.worker import Worker

    client = raw_client()
    host = reset()
    deaths = _die_times(client)
    worker = Worker(concurrency=2, poll_interval=5.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(0.5)
    raw_times, worker_times, exit_to_record = [], [], []
    try:
        for _ in range(samples):
            began = time.perf_counter()
            raw_job(client)
            raw_times.append(time.perf_counter() - began)

            submitted = timezone.now()
            job = submit(host=host, image=IMAGE, command="true")
            query = ContainerJob.objects.filter(pk=job.pk, status=JobStatus.COMPLETED)
            while not query.exists():
                time.sleep(0.05)
            recorded = ContainerJob.objects.get(pk=job.pk).completed_at
            worker_times.append((recorded - submitted).total_seconds())
            died = _wait_for(deaths, str(job.pk))
            exit_to_record.append(recorded.timestamp() - died)
    finally:
        worker.stop()
        thread.join(30)
    raw, work = statistics.median(raw_times), statistics.median(worker_times)
    report(
        "latency, submission -> recorded completion",
        f"raw {raw * 1000:.0f} ms  worker {work * 1000:.0f} ms",
    )
    overhead = (work - raw) * 1000
    report("  median overhead over the raw SDK", f"{overhead:.0f} ms", "<= 50 ms", overhead <= 50)
    lag = statistics.median(exit_to_record) * 1000
    report("  container exit (engine 'die' event) -> recorded", f"median {lag:.0f} ms")


def _die_times(client) -> dict[str, float]:
    """Job id -> time (s since the epoch) the engine reported its container's exit."""
    deaths: dict[str, float] = {}
    stream = client.events(decode=True, filters={"event": "die", "label": f"{RUN_LABEL}={RUN_ID}"})

    def read() -> None:
        for event in stream:
            job = event.get("Actor", {}).get("Attributes", {}).get("container_manager.job")
            if job:
                deaths[job] = event["timeNano"] / 1e9

    threading.Thread(target=read, daemon=True).start()
    return deaths


def _wait_for(deaths: dict[str, float], job_id: str) -> float:
    for _ in range(200):
        if job_id in deaths:
            return deaths[job_id]
        time.sleep(0.01)
    raise SystemExit(f"no 'die' event seen for job {job_id}")


# ---- claim ------------------------------------------------------------------------------


def bench_claim(big: int, samples: int, rounds: int = 3) -> None:
    """Claim time with 100 and with ``big`` waiting jobs, alternated ``rounds`` times so that
    drift in machine load cannot masquerade as a difference. The filler rows stay in the
    table between phases, flipped between 'completed' and 'queued'."""
    from django.db import connection, transaction

    from container_manager.models import ContainerJob, JobStatus
    from container_manager.queue import claim

    host = reset(max_concurrent=1000)
    ContainerJob.objects.bulk_create(
        [ContainerJob(docker_host=host, docker_image=IMAGE, command="true") for _ in range(100)]
    )
    filler = [
        ContainerJob(docker_host=host, docker_image=IMAGE, command="true", priority=-1)
        for _ in range(big - 100)
    ]
    ContainerJob.objects.bulk_create(filler, batch_size=5000)
    filler_ids = ContainerJob.objects.filter(priority=-1)

    def timed(limit: int, clock: Callable[[], float]) -> list[float]:
        """``samples`` claims of ``limit`` jobs, each rolled back, timed with ``clock``."""
        times = []
        for _ in range(samples):
            with transaction.atomic():
                began = clock()
                claimed = claim("bench", limit)
                times.append(clock() - began)
                assert len(claimed) == limit
                transaction.set_rollback(True)
        return times

    def phase(waiting: int) -> list[float]:
        status = JobStatus.QUEUED if waiting == big else JobStatus.COMPLETED
        filler_ids.update(status=status)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE container_manager_containerjob")
        return timed(8, time.perf_counter)

    small_times: list[float] = []
    large_times: list[float] = []
    for _ in range(rounds):
        small_times += phase(100)
        large_times += phase(big)
    # The claiming thread's CPU for a claim of one job: the worker's usual claim (a job
    # ended, its slot is free).
    one = statistics.median(timed(1, time.thread_time))
    reset()
    small, large = statistics.median(small_times), statistics.median(large_times)
    report(
        f"claim 8 jobs, 100 vs {big:,} waiting",
        f"{small * 1000:.2f} ms vs {large * 1000:.2f} ms",
    )
    ratio = large / small
    report("  ratio", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5)
    report(f"  CPU of a claim of 1 job ({big:,} waiting)", f"{one * 1000:.2f} ms")


# ---- memory ------------------------------------------------------------------------------

# Long lines: the engine's log driver costs per line, and this measures our side.
_PRINT = "head -c {n} /dev/zero | tr '\\0' x"


def bench_memory(size: int) -> None:
    from django.db import connection

    from container_manager.models import ContainerJob
    from container_manager.queue import submit

    host = reset()
    job = submit(host=host, image=IMAGE, command=["sh", "-c", _PRINT.format(n=size)])
    env = {**os.environ, "DATABASE_URL": f"{PG}/{connection.settings_dict['NAME']}"}
    began = time.perf_counter()
    worker_peak = _peak_rss(
        [sys.executable, str(ROOT / "manage.py"), "process_container_jobs", "--burst"], env
    )
    elapsed = time.perf_counter() - began
    job = ContainerJob.objects.get(pk=job.pk)
    assert job.status == "completed" and job.stdout_truncated, (job.status, job.last_error)
    raw_peak = _peak_rss([sys.executable, __file__, "_raw_memory", str(size)], env)
    report(
        f"peak RSS while a job prints {size / 2**30:.2f} GiB",
        f"worker {worker_peak / 2**20:.0f} MB  raw logs() {raw_peak / 2**20:.0f} MB",
        "< 150 MB",
        worker_peak < 150 * 2**20,
    )
    report("  worker wall time for that job", f"{elapsed:.1f} s")


def _peak_rss(argv: list[str], env: dict[str, str]) -> int:
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    peak = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak = max(peak, int(status.split("VmHWM:")[1].split()[0]) * 1024)
        except (FileNotFoundError, IndexError, ProcessLookupError):
            pass
        time.sleep(0.05)
    if process.returncode != 0:
        raise SystemExit(f"{argv} failed with {process.returncode}")
    return peak


def _raw_memory(size: int) -> None:
    """The naive raw SDK equivalent: run the job and read its logs in one call."""
    client = raw_client()
    container = client.containers.create(
        IMAGE,
        ["sh", "-c", _PRINT.format(n=size)],
        labels={RUN_LABEL: RUN_ID},
        network_mode=NETWORK_MODE,
    )
    container.start()
    container.wait()
    container.logs(stdout=True, stderr=False)
    container.remove(force=True)


# ---- queries ------------------------------------------------------------------------------


def bench_queries(jobs: int) -> None:
    from django.db.backends.signals import connection_created

    from container_manager.queue import submit
    from container_manager.worker import Worker

    count = [0]
    lock = threading.Lock()

    def counter(execute, sql, params, many, context):
        with lock:
            count[0] += 1
        return execute(sql, params, many, context)

    def install(sender, connection, **kwargs):
        connection.execute_wrappers.append(counter)

    host = reset()
    for _ in range(jobs):
        submit(host=host, image=IMAGE, command="true")
    connection_created.connect(install)
    from django.db import connection

    connection.close()
    try:
        Worker(concurrency=4, burst=True).run()
    finally:
        connection_created.disconnect(install)
    report(f"database queries per job ({jobs} jobs, concurrency 4)", f"{count[0] / jobs:.1f}")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_raw_memory":
        _raw_memory(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "scale":  # its own database and options
        import scale

        scale.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "which", nargs="*", default=["throughput", "latency", "claim", "memory", "queries"]
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    setup_django()
    quick = args.quick
    print(f"{'figure':<48} {'measured':<34} target")
    try:
        if "throughput" in args.which:
            bench_throughput(jobs=100, concurrency=8, rounds=2 if quick else 10)
        if "cpu" in args.which:
            bench_cpu(jobs=100, concurrency=8, rounds=2 if quick else 4)
        if "latency" in args.which:
            bench_latency(samples=10 if quick else 40)
        if "claim" in args.which:
            bench_claim(big=10_000 if quick else 100_000, samples=20 if quick else 50)
        if "memory" in args.which:
            bench_memory(size=(64 if quick else 1024) * 2**20)
        if "queries" in args.which:
            bench_queries(jobs=20 if quick else 50)
    finally:
        _cleanup()


def _cleanup() -> None:
    client = raw_client()
    for container in client.containers.list(all=True, filters={"label": f"{RUN_LABEL}={RUN_ID}"}):
        container.remove(force=True)


if __name__ == "__main__":
    main()
