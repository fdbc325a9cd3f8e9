"""Per-task cost of the Tasks backend: a no-op ``@task``, enqueue to SUCCESSFUL, one warm
worker, the real engine; against the same task run by django-tasks-db's ``db_worker`` in the
same run, and where the container's time goes.

    .venv/bin/python bench/tasks.py [--tasks N] [--rounds R]

Both workers run as their own processes (``process_container_jobs`` and ``db_worker
--interval 0.01``), started and warmed before anything is measured; this process enqueues one
task at a time and reads its result every 5 ms until it is SUCCESSFUL. The rounds alternate
the sides. The raw Docker SDK then runs, with the container options the worker uses, the
steps one task's container is made of, each on its own: ``true`` (a container's start, wait,
logs and removal), ``python3 -c pass`` (+ the interpreter's start), ``django.setup()`` (+ the
project's settings and apps), and the task's whole command, ``manage.py run_container_task``.
Their differences split the per-task time; the worker's own share is what is left.

Needs the engine, PostgreSQL at 127.0.0.1:5432 (its own database, ``cm_bench_tasks``, made
afresh), debootstrap for the project image (tests/task_image.py, cached) and
``pip install django-tasks-db``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
DB = "cm_bench_tasks"
RUN_ID = uuid.uuid4().hex[:8]
ENGINE = "unix:///var/run/docker.sock"
os.environ.update(
    DATABASE_URL=f"{PG}/{DB}",
    DJANGO_SETTINGS_MODULE="bench.tasks_settings",
    DJANGO_DEBUG="0",
    BENCH_RUN_ID=RUN_ID,
)


def report(name: str, value: str) -> None:
    print(f"{name:<58} {value}", flush=True)


def setup() -> tuple[str, Path]:
    """A fresh database, the project image, the tasks module importable here and in the
    workers; returns the image and the tasks module's folder."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    import django
    import docker

    django.setup()
    from tests.task_image import TASKS_MODULE, TASKS_SOURCE, build_task_image

    image = build_task_image(docker.DockerClient(base_url=ENGINE))
    where = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    (where / f"{TASKS_MODULE}.py").write_text(TASKS_SOURCE)
    sys.path.insert(0, str(where))
    os.environ["BENCH_TASK_IMAGE"] = image
    os.environ["PYTHONPATH"] = os.pathsep.join([str(where), str(ROOT)])
    from django.conf import settings
    from django.core.management import call_command

    settings.TASKS["default"]["OPTIONS"]["image"] = image
    call_command("migrate", verbosity=0)
    from container_manager.models import ExecutorHost

    ExecutorHost.objects.update_or_create(
        name="bench",
        defaults={"connection_string": ENGINE, "auto_pull_images": False},
    )
    return image, where


def start_workers() -> list[subprocess.Popen[bytes]]:
    manage = [sys.executable, str(ROOT / "manage.py")]
    return [
        subprocess.Popen([*manage, "process_container_jobs", "--concurrency", "1", "-v", "0"]),
        subprocess.Popen(
            [*manage, "db_worker", "--backend", "db", "--interval", "0.01", "--no-startup-delay"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]


def run_task(backend: str) -> float:
    """Seconds from enqueue to SUCCESSFUL of one no-op task on ``backend``."""
    import cm_e2e_tasks  # the generated module (setup() put it on the path)

    from container_manager.tasks import compat

    began = time.perf_counter()
    result = cm_e2e_tasks.noop.using(backend=backend).enqueue()
    while result.status != compat.TaskResultStatus.SUCCESSFUL:
        if result.status == compat.TaskResultStatus.FAILED:
            raise RuntimeError(f"{backend}: the no-op task failed: {result.errors}")
        if time.perf_counter() - began > 60:
            raise RuntimeError(f"{backend}: the no-op task did not end in 60 s")
        time.sleep(0.005)
        result.refresh()
    return time.perf_counter() - began


def raw_container(client, image: str, command: list[str], environment: dict[str, str]) -> float:
    """Seconds for the raw SDK to do one container's work: create, start, wait, read both
    logs, remove; with the worker's container options."""
    began = time.perf_counter()
    container = client.containers.create(
        image,
        command,
        environment=environment,
        labels={"container_manager.bench": RUN_ID},
        network_mode="none",
        init=True,
        security_opt=["no-new-privileges:true"],
        pids_limit=4096,
        log_config={"Type": "json-file", "Config": {"max-size": "33554432", "max-file": "2"}},
    )
    try:
        container.start()
        if container.wait()["StatusCode"] != 0:
            raise RuntimeError(f"{command}: {container.logs().decode()[-2000:]}")
        container.logs(stdout=True, stderr=False)
        container.logs(stdout=False, stderr=True)
    finally:
        container.remove(force=True)
    return time.perf_counter() - began


def raw_steps(image: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    from container_manager.tasks.call import COMMAND_NAME, TaskCall
    from container_manager.tasks.wire import NONCE_ENV, new_nonce

    call = TaskCall("cm_e2e_tasks.noop", str(uuid.uuid4()), "default", "default")
    setup_code = "import django; django.setup()"
    return {
        "true": (["true"], {}),
        "python3 -c pass": (["python3", "-c", "pass"], {}),
        "django.setup()": (["python3", "-c", setup_code], {}),
        "run_container_task": (
            ["python3", "/app/manage.py", COMMAND_NAME, *call.argv()],
            {NONCE_ENV: new_nonce(), "CONTAINER_JOB_ATTEMPT": "1"},
        ),
    }


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def measure(tasks: int, rounds: int, image: str) -> None:
    """``rounds`` rounds, each ``tasks`` of every side and of every raw step, the order
    alternating from round to round: the machine's load drifts, and must not count against
    one of them."""
    import docker

    client = docker.DockerClient(base_url=ENGINE)
    runs: dict[str, Callable[[], float]] = {
        "container backend": lambda: run_task("default"),
        "django-tasks-db": lambda: run_task("db"),
    }
    for name, (command, environment) in raw_steps(image).items():
        runs[name] = lambda c=command, e=environment: raw_container(client, image, c, e)
    for run in runs.values():  # warm: the image's files cached, both workers connected
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for number in range(rounds):
        order = list(runs) if number % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name] += [runs[name]() for _ in range(tasks)]
    summarise(tasks * rounds, {name: median_ms(samples) for name, samples in times.items()})


def summarise(count: int, ms: dict[str, float]) -> None:
    ours, db, raw = ms["container backend"], ms["django-tasks-db"], ms["run_container_task"]
    report(f"no-op task, enqueue to SUCCESSFUL, median of {count}", f"(load {load()})")
    report("  container backend (process_container_jobs)", f"{ours:8.1f} ms")
    report("  django-tasks-db (db_worker --interval 0.01)", f"{db:8.1f} ms")
    report("  ratio container backend / django-tasks-db", f"{ours / db:8.1f}x")
    report("  raw SDK, the task's container (run_container_task)", f"{raw:8.1f} ms")
    report("  ratio container backend / raw SDK", f"{ours / raw:8.2f}x")
    report("where the container backend's time goes (medians, raw SDK)", "")
    steps = [
        ("container: create, start, wait, logs, remove (true)", ms["true"], 0.0),
        ("interpreter start (python3 -c pass - true)", ms["python3 -c pass"], ms["true"]),
        ("django.setup() (- python3 -c pass)", ms["django.setup()"], ms["python3 -c pass"]),
        ("manage.py, task import and call, result line (- setup)", raw, ms["django.setup()"]),
        ("the worker: claim, records, signals, polling (- raw)", ours, raw),
    ]
    for name, total, before in steps:
        report(f"  {name}", f"{total - before:8.1f} ms  ({(total - before) / ours:5.1%})")
    print(json.dumps({"medians_ms": ms, "samples": count}), flush=True)


def load() -> str:
    """The machine's load averages (1, 5, 15 min) and its cores: what else was running."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} {five:.1f} {fifteen:.1f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10, help="tasks per side and round (10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, sides alternating (2)")
    options = parser.parse_args()
    image, _ = setup()
    workers = start_workers()
    try:
        time.sleep(2)  # both workers up and polling
        report("load before", load())
        measure(options.tasks, options.rounds, image)
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=60)


if __name__ == "__main__":
    main()
