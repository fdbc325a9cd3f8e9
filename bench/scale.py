"""A queue with history: every operator-facing read, the claim, bulk submission and pruning,
measured over a table of N finished and M queued jobs (issue 14).

    .venv/bin/python bench/run.py scale [--rows 1000000] [--queued 1000] [--keep] [--no-prune]
    .venv/bin/python bench/run.py scale --again     # pages and submit_many on the kept rows
    .venv/bin/python bench/run.py scale --again --migration   # ... after timing migration 0010

Fills a PostgreSQL database of its own (``cm_bench_scale``, or ``$BENCH_SCALE_DB``;
dropped at the end unless ``--keep``) in SQL (generate_series), with one attempt row per
finished job and the tally they would have left; then prints the median of 5 of each page
(Django test client, superuser, after one warm-up request) with its number of queries, the
scrape, the claim with 1,000 and with N finished rows, migration 0010 (the search's
indexes keyed by value and creation time) undone and run again while another process
claims, the submit_many rate beside raw psycopg inserting the same rows (COPY, executemany
INSERT) in the same run, and a prune of up to a million rows while another process claims a
job every 10 ms (median, p99 and max of its claims, and what its database session was doing,
sampled from pg_stat_activity).
Needs no engine (the hosts are the fake executor's).
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
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

#: Its database (another name: BENCH_SCALE_DB, e.g. for two runs side by side).
DB = os.environ.get("BENCH_SCALE_DB", "cm_bench_scale")
HOSTS = 4
SAMPLES = 5


def report(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    """One figure, with the machine's load average (1 minute) when it was taken."""
    verdict = "" if ok is None else ("  OK" if ok else "  MISSED")
    load = f"  [load {os.getloadavg()[0]:.1f}]"
    print(f"{name:<52} {value:<30} {target}{verdict}{load}", flush=True)


# ---- the database ---------------------------------------------------------------------------


def create_database(pg: str) -> None:
    import psycopg

    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")
        conn.execute(f"CREATE DATABASE {DB}")
    os.environ["DATABASE_URL"] = f"{pg}/{DB}"


def drop_database(pg: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {DB}")


def _defaults(model: Any, given: set[str]) -> tuple[list[str], list[Any]]:
    """The columns of ``model`` not in ``given``, and each one's default as the database
    stores it (Django's defaults are not the database's)."""
    from django.db import connection

    columns, values = [], []
    for field in model._meta.concrete_fields:
        if field.column in given:
            continue
        columns.append(connection.ops.quote_name(field.column))
        values.append(field.get_db_prep_save(field.get_default(), connection))
    return columns, values


#: The finished jobs' interesting columns, for row ``i`` of ``n`` (over the last 60 days).
_JOB_COLUMNS = {
    "id": "gen_random_uuid()",
    "docker_host_id": f"1 + mod(i, {HOSTS})",
    "name": "(ARRAY['report-', 'etl-', 'backup-', 'test-'])[1 + mod(i, 4)] || i",
    "docker_image": "'registry.example.com/team' || mod(i, 20) || '/app:' || mod(i, 7)",
    "command": "'echo hi'",
    "status": "CASE WHEN mod(i, 100) < 90 THEN 'completed' WHEN mod(i, 100) < 97 THEN 'failed'"
    " WHEN mod(i, 100) < 98 THEN 'timeout' ELSE 'cancelled' END",
    "exit_code": "CASE WHEN mod(i, 100) < 90 THEN 0 ELSE 1 END",
    "stdout_log": "'ok' || chr(10)",
    "attempt_count": "1",
    "created_at": "now() - interval '60 days' * (1 - i::float / {n}) - interval '3 hours'",
    "started_at": "now() - interval '60 days' * (1 - i::float / {n}) - interval '3 hours'"
    " + interval '0.5 seconds'",
    "completed_at": "now() - interval '60 days' * (1 - i::float / {n}) - interval '3 hours'"
    " + interval '0.5 seconds' + interval '0.1 seconds' * mod(i, 600)",
}


def fill_finished(first: int, n: int, total: int) -> float:
    """Insert finished jobs ``first`` .. ``first + n - 1`` (of ``total``) and an attempt row
    each, in statements of a million; returns the seconds it took."""
    from django.db import connection

    from container_manager.models import ContainerJob

    columns, defaults = _defaults(ContainerJob, set(_JOB_COLUMNS))
    names = [connection.ops.quote_name(c) for c in _JOB_COLUMNS] + columns
    expressions = [e.replace("{n}", str(total)) for e in _JOB_COLUMNS.values()]
    expressions += ["%s"] * len(defaults)
    insert = (
        f"WITH j AS (INSERT INTO container_manager_containerjob ({', '.join(names)}) "
        f"SELECT {', '.join(expressions)} FROM generate_series(%s, %s) AS i RETURNING *) "
        "INSERT INTO container_manager_jobattempt (job_id, number, host_id, worker_id,"
        " container_name, container_id, status, exit_code, oom_killed, error, spec,"
        " started_at, finished_at)"
        " SELECT id, 1, docker_host_id, '', 'cm-' || id || '-1', '', status, exit_code,"
        " false, '', '{}', started_at, completed_at FROM j"
    )
    began = time.perf_counter()
    step = 1_000_000
    with connection.cursor() as cursor, _indexes_built_after(cursor, n >= step):
        for start in range(first, first + n, step):
            end = min(start + step, first + n) - 1
            cursor.execute(insert, [*defaults, start, end])
    return time.perf_counter() - began


@contextlib.contextmanager
def _indexes_built_after(cursor: Any, rebuild: bool) -> Iterator[None]:
    """With ``rebuild``, the two tables' indexes other than their keys dropped for the fill
    and made again from their definitions after it (one sort each instead of millions of
    inserts into each); the tables end as the migrations made them."""
    if not rebuild:
        yield
        return
    cursor.execute(
        "SELECT indexname, indexdef FROM pg_indexes i WHERE tablename IN"
        " ('container_manager_containerjob', 'container_manager_jobattempt')"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)"
    )
    indexes = cursor.fetchall()
    for name, _ in indexes:
        cursor.execute(f'DROP INDEX "{name}"')
    yield
    cursor.execute("SET maintenance_work_mem = '256MB'")
    for _, definition in indexes:
        cursor.execute(definition)


def fill_queued(m: int) -> None:
    """``m`` waiting jobs, spread over the hosts."""
    from container_manager.models import ContainerJob

    rows = [
        ContainerJob(docker_host_id=1 + i % HOSTS, docker_image="busybox:latest",
                     command="true", name=f"waiting-{i}")
        for i in range(m)
    ]  # fmt: skip
    ContainerJob.objects.bulk_create(rows, batch_size=1000)


def refill_tally() -> None:
    """The tally the trigger would have written for the finished jobs: the last two hours
    by minute, the rest in the totals."""
    from django.db import connection

    from container_manager import tally

    duration = "EXTRACT(EPOCH FROM completed_at - started_at)"
    latency = "EXTRACT(EPOCH FROM started_at - created_at)"
    minute = (
        "CASE WHEN {t} >= now() - interval '2 hours' THEN date_trunc('minute', {t})"
        " ELSE timestamptz '1970-01-01 00:00:00+00' END"
    )
    kinds = (
        ("status", "completed_at", duration, tally.DURATION_BUCKETS, "status <> 'queued'"),
        ("'running'", "started_at", latency, tally.LATENCY_BUCKETS, "started_at IS NOT NULL"),
    )
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM container_manager_jobtally")
        for status, at, seconds, bounds, where in kinds:
            cursor.execute(
                "INSERT INTO container_manager_jobtally (minute, host_id, status, bucket,"
                f" count, seconds) SELECT {minute.format(t=at)} AS m,"
                f" COALESCE(docker_host_id, 0) AS h, {status} AS s,"
                f" {tally._case(seconds, bounds)} AS b, count(*), COALESCE(sum({seconds}), 0)"
                f" FROM container_manager_containerjob WHERE {where} GROUP BY m, h, s, b"
            )


def vacuum() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        for table in ("containerjob", "jobattempt", "jobtally"):
            cursor.execute(f"VACUUM ANALYZE container_manager_{table}")


def setup_hosts() -> None:
    from container_manager.models import ExecutorHost

    for number in range(1, HOSTS + 1):
        ExecutorHost.objects.update_or_create(
            pk=number,
            defaults={"name": f"host-{number}", "connection_string": f"unix:///h{number}.sock",
                      "executor_type": "fake", "max_concurrent_jobs": 1000},
        )  # fmt: skip


# ---- the pages ------------------------------------------------------------------------------


def _pages() -> list[tuple[str, str, dict[str, str], float]]:
    """(figure, url, query, target ms) of every page and call of the issue's table."""
    from django.utils import timezone

    from container_manager.models import ContainerJob

    job = ContainerJob.objects.filter(status="failed").order_by("created_at").first()
    assert job is not None
    week = timezone.now() - timedelta(days=7)
    jobs = "/admin/container_manager/containerjob/"
    return [
        ("admin job list", jobs, {}, 100),
        ("  filtered by status (failed)", jobs, {"status__exact": "failed"}, 100),
        ("  filtered by host", jobs, {"docker_host__id__exact": "2"}, 100),
        ("  filtered by created (past 7 days)", jobs,
         {"created_at__gte": week.isoformat()}, 100),
        ("  searched by a full job id", jobs, {"q": str(job.pk)}, 100),
        ("  searched by an id's first 8 characters", jobs, {"q": str(job.pk)[:8]}, 100),
        ("  searched by a name", jobs, {"q": job.name}, 300),
        ("  searched by a name prefix (1 in 4 rows)", jobs, {"q": "report-"}, 300),
        # 'etl-2' starts the names of 1 row in 36, nearly all of them in the oldest third.
        ("  searched by a name with many old matches", jobs, {"q": "etl-2"}, 300),
        ("  searched by an image", jobs, {"q": job.docker_image}, 300),
        ("admin job page", f"{jobs}{job.pk}/change/", {}, 100),
        ("admin queue overview", f"{jobs}overview/", {}, 100),
        ("admin hosts page", "/admin/container_manager/executorhost/", {}, 100),
        ("/metrics scrape", "/metrics", {}, 50),
    ]  # fmt: skip


def measure_pages(rows: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user = get_user_model().objects.filter(username="bench").first()
    if user is None:
        user = get_user_model().objects.create_superuser("bench", "b@example.com", "pw")
    client = Client()
    client.force_login(user)
    print(f"-- pages, {rows:,} finished and the queued jobs (median of {SAMPLES}, ms)")
    for name, url, query, target in _pages():
        client.get(url, query)  # warm-up
        times, cpu = [], []
        for _ in range(SAMPLES):
            began, used = time.perf_counter(), time.process_time()
            response = client.get(url, query)
            times.append((time.perf_counter() - began) * 1000)
            cpu.append((time.process_time() - used) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        with CaptureQueriesContext(connection) as queries:
            client.get(url, query)
        median = statistics.median(times)
        # Django's own CPU (this process: the view, the template): what the load delays
        own = f"(CPU {statistics.median(cpu):.0f})"
        report(name, f"{median:7.1f} ms {own:>9} {len(queries)} queries", f"<= {target} ms",
               median <= target)  # fmt: skip


# ---- the claim, bulk submission, pruning ----------------------------------------------------


def _claim_once(limit: int) -> tuple[float, float]:
    """One claim of ``limit`` jobs, rolled back: (wall, this thread's CPU) seconds."""
    from django.db import transaction

    from container_manager.queue import claim

    with transaction.atomic():
        began, cpu = time.perf_counter(), time.thread_time()
        claimed = claim("bench", limit)
        spent = time.perf_counter() - began, time.thread_time() - cpu
        assert len(claimed) == limit, len(claimed)
        transaction.set_rollback(True)
    return spent


def measure_claim(finished: int, samples: int = 100) -> tuple[float, float]:
    """Median wall and CPU ms of a claim of 8 jobs (the CPU is this process's own: what
    the machine's other load does not change)."""
    times = [_claim_once(8) for _ in range(samples)]
    wall = statistics.median(t for t, _ in times) * 1000
    cpu = statistics.median(c for _, c in times) * 1000
    report(f"claim 8 jobs, {finished:,} finished rows", f"{wall:.2f} ms (CPU {cpu:.2f} ms)")
    return wall, cpu


def claim_loop() -> None:
    """``scale _claimer``: claim 1 job (rolled back) every 10 ms until stdin closes,
    printing each claim's milliseconds: a worker's claims, in a process of their own."""
    import django

    django.setup()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SET application_name = 'cm-bench-claimer'")
    stop = threading.Event()
    threading.Thread(target=lambda: (os.read(0, 1), stop.set()), daemon=True).start()
    while not stop.is_set():
        print(f"{_claim_once(1)[0] * 1000:.3f}", flush=True)
        time.sleep(0.01)


def measure_submit(n: int = 10_000) -> None:
    """submit_many of ``n`` jobs (4 hosts, each its own name and command), against raw
    psycopg inserting the very rows it wrote (a COPY, and an executemany INSERT), in the
    same run: median of 3 each."""
    from container_manager.models import ContainerJob
    from container_manager.queue import submit_many

    specs = [
        {"image": "busybox:latest", "host": f"host-{1 + i % HOSTS}", "command": ["echo", str(i)],
         "name": f"bulk-{i}"}
        for i in range(n)
    ]  # fmt: skip
    ours, cpu, copy, insert = [], [], [], []
    for _ in range(3):
        began, used = time.perf_counter(), time.process_time()
        done = submit_many(specs)
        ours.append(time.perf_counter() - began)
        cpu.append(time.process_time() - used)
        pks = [j.pk for j in done.jobs]
        columns, rows = _written_rows(pks)
        ContainerJob.objects.filter(pk__in=pks).delete()
        copy.append(_raw_insert(columns, rows, "copy"))
        insert.append(_raw_insert(columns, rows, "executemany"))
    rate = n / statistics.median(ours)
    report(f"submit_many, {n:,} jobs (median of 3)", f"{rate:,.0f} jobs/s", ">= 5,000 jobs/s",
           rate >= 5000)  # fmt: skip
    per_job = statistics.median(cpu) / n * 1e6
    report("  its own CPU (this process: validating, COPY rows)", f"{per_job:.0f} us a job")
    for name, times in (("COPY", copy), ("executemany INSERT", insert)):
        raw = n / statistics.median(times)
        report(f"  raw psycopg {name} of the same rows", f"{raw:,.0f} rows/s",
               f"submit_many at {rate / raw:.2f}x")  # fmt: skip


def _written_rows(pks: list[Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The columns and rows submit_many wrote for ``pks``, with new ids (raw psycopg's
    rows to insert)."""
    import uuid

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM container_manager_containerjob WHERE id = ANY(%s)", [pks])
        columns = [c.name for c in cursor.description]
        rows = cursor.fetchall()
    at = columns.index("id")
    return columns, [(*r[:at], uuid.uuid4(), *r[at + 1 :]) for r in rows]


def _raw_insert(columns: list[str], rows: list[tuple[Any, ...]], how: str) -> float:
    """Seconds raw psycopg takes to insert ``rows`` in one transaction (then deleted)."""
    import psycopg
    from psycopg.types.json import Jsonb

    rows = [tuple(Jsonb(v) if isinstance(v, dict | list) else v for v in r) for r in rows]
    table, names = "container_manager_containerjob", ", ".join(f'"{c}"' for c in columns)
    with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
        began = time.perf_counter()
        with conn.cursor() as cursor:
            if how == "copy":
                with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join(["%s"] * len(columns))
                cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
            cursor.execute("NOTIFY container_jobs_bench")
        conn.commit()
        spent = time.perf_counter() - began
        at = columns.index("id")
        conn.execute(f"DELETE FROM {table} WHERE id = ANY(%s)", [[r[at] for r in rows]])
        conn.commit()
    return spent


def measure_prune(total: int, prune: int) -> None:
    """Prune the ``prune`` oldest finished jobs while another thread claims in a loop."""
    from django.utils import timezone

    from container_manager.models import ContainerJob
    from container_manager.reaper import prune_jobs

    edge = (
        ContainerJob.objects.exclude(status="queued")
        .order_by("completed_at")
        .values_list("completed_at", flat=True)[prune - 1 : prune]
    )
    cutoff = next(iter(edge)) + timedelta(microseconds=1)
    quiet = _claims_during(lambda: time.sleep(20))
    _report_claims("a worker's claims, 20 s without pruning", quiet, None)
    done: list[float] = []

    def prune() -> None:
        began = time.perf_counter()
        done.append(prune_jobs(timezone.now() - cutoff))
        done.append(time.perf_counter() - began)

    claims = _claims_during(prune)
    pruned, spent = done
    report(f"prune {pruned:,} of {total:,} finished jobs",
           f"{spent:.1f} s, {pruned / spent:,.0f} rows/s")  # fmt: skip
    _report_claims("  a worker's claims meanwhile", claims, 100)


def measure_search_indexes(rows: int) -> None:
    """Migration 0010 (the search's indexes keyed by value and creation time, rebuilt
    ``CONCURRENTLY``) undone, then run again on the filled table while another process
    claims in a loop."""
    from django.core.management import call_command

    call_command("migrate", "container_manager", "0009", verbosity=0)
    took: list[float] = []

    def forward() -> None:
        began = time.perf_counter()
        call_command("migrate", "container_manager", verbosity=0)
        took.append(time.perf_counter() - began)

    claims = _claims_during(forward)
    report(f"migration 0010 on {rows:,} finished jobs (2 indexes)", f"{took[0]:.1f} s")
    _report_claims("  a worker's claims meanwhile", claims, 100)


def _claims_during(action: Callable[[], object]) -> list[float]:
    """The milliseconds of each claim another process made while ``action`` ran; prints
    what its database session was doing meanwhile (pg_stat_activity, every 5 ms)."""
    claimer = subprocess.Popen(
        [sys.executable, sys.argv[0], "scale", "_claimer"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, into = claimer.stdout, claimer.stdin
    assert out is not None and into is not None
    # Read as it comes: a full pipe would stop the claimer (64 KiB: about 8,000 claims).
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(out))
    reader.start()
    time.sleep(3)  # its start-up
    stop = threading.Event()
    seen: collections.Counter[str] = collections.Counter()
    sampler = threading.Thread(target=_sample_claimer, args=(stop, seen))
    sampler.start()
    action()
    stop.set()
    sampler.join()
    into.write("x")
    into.close()
    reader.join()
    claimer.wait()
    waits = ", ".join(f"{what} {n}" for what, n in seen.most_common(6))
    print(f"    the claimer's session, sampled every 5 ms: {waits}", flush=True)
    return [float(line) for line in lines]


def _sample_claimer(stop: threading.Event, seen: collections.Counter[str]) -> None:
    """Count what the claimer's session is doing (idle, running, or the wait it is in:
    a lock, IO, a light-weight lock) until ``stop``."""
    import psycopg

    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        while not stop.is_set():
            for state, kind, event in conn.execute(
                "SELECT state, wait_event_type, wait_event FROM pg_stat_activity"
                " WHERE application_name = 'cm-bench-claimer'"
            ):
                on = "on the CPU" if kind is None else f"waiting {kind}:{event}"
                seen["idle" if state != "active" else on] += 1
            time.sleep(0.005)


def _report_claims(name: str, claims: list[float], target: float | None) -> None:
    slowest = max(claims)
    p99 = statistics.quantiles(claims, n=100, method="inclusive")[98]
    report(f"{name}: {len(claims):,}",
           f"median {statistics.median(claims):.1f} p99 {p99:.1f} max {slowest:.1f} ms",
           "" if target is None else f"max <= {target:.0f} ms",
           None if target is None else slowest <= target)  # fmt: skip


def measure_disk(rows: int) -> None:
    """Bytes per finished job: its row with indexes, its attempt, and (measured apart on 200
    rows) a default-size (1 MiB) output tail of log-like lines, as TOAST stores it."""
    from django.db import connection

    from container_manager.conf import get_settings

    def size(table: str) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_total_relation_size(%s)", [table])
            return int(cursor.fetchone()[0])

    jobs, attempts = size("container_manager_containerjob"), size("container_manager_jobattempt")
    report("disk per finished job: row and its indexes", f"{jobs / rows:,.0f} bytes")
    report("  its attempt row and indexes", f"{attempts / rows:,.0f} bytes")
    tail = get_settings().LOG_TAIL_BYTES
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE cm_tail (log text)")
        cursor.execute(
            "INSERT INTO cm_tail SELECT (SELECT string_agg(to_char(now() + s * interval"
            " '1 ms', 'YYYY-MM-DD HH24:MI:SS.MS') || ' INFO step ' || s || ' took '"
            " || (random() * 1000)::int || ' ms id=' || md5(random()::text), chr(10))"
            " FROM generate_series(1 + g * 0, %s) AS s) FROM generate_series(1, 200) AS g",
            [tail // 90],
        )
        cursor.execute("SELECT avg(octet_length(log)), pg_total_relation_size('cm_tail') / 200"
                       " FROM cm_tail")  # fmt: skip
        length, stored = cursor.fetchone()
        cursor.execute("DROP TABLE cm_tail")
    report(f"  a {length / 2**20:.2f} MiB log-like output tail", f"{stored:,.0f} bytes stored")


# ---- the run --------------------------------------------------------------------------------


def measure_again(pg: str, prune: bool = False, migration: bool = False) -> None:
    """``--again``: the pages and bulk submission once more, on the database a ``--keep``
    run left (nothing is filled; with ``prune``, the oldest million more are pruned). The
    database is first migrated to this checkout's schema; with ``migration``, the search's
    index migration is timed while another process claims, as in a full run."""
    os.environ["DATABASE_URL"] = f"{pg}/{DB}"
    import django

    django.setup()
    from django.core.management import call_command

    from container_manager.models import ContainerJob

    rows = ContainerJob.objects.exclude(status="queued").count()
    print(f"{'figure':<52} {'measured':<30} target")
    if migration:
        measure_search_indexes(rows)  # which ends migrated forward
    else:
        call_command("migrate", verbosity=0)
    measure_pages(rows)
    measure_submit()
    if prune:
        measure_prune(rows, min(1_000_000, rows - 1000))


def run(rows: int, queued: int, keep: bool, pg: str, prune: bool = True) -> None:
    create_database(pg)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "JOB_RETENTION_DAYS": None}
    call_command("migrate", verbosity=0)
    setup_hosts()
    fill_queued(queued)
    small = min(1000, rows)
    fill_finished(0, small, rows)
    refill_tally()
    vacuum()
    print(f"{'figure':<52} {'measured':<30} target")
    base_wall, base_cpu = measure_claim(small)
    seconds = fill_finished(small, rows - small, rows)
    refill_tally()
    began = time.perf_counter()
    vacuum()
    report(f"fill {rows:,} finished jobs and their attempts",
           f"{seconds:.0f} s (+ VACUUM ANALYZE {time.perf_counter() - began:.0f} s)")  # fmt: skip
    big_wall, big_cpu = measure_claim(rows)
    ratio = big_cpu / base_cpu
    report("  claim CPU, ratio", f"{ratio:.2f}x (wall {big_wall / base_wall:.2f}x)", "<= 1.5x",
           ratio <= 1.5)  # fmt: skip
    measure_pages(rows)
    measure_disk(rows)
    measure_search_indexes(rows)
    measure_submit()
    if prune:
        measure_prune(rows, min(1_000_000, rows))
    if not keep:
        drop_database(pg)


def main(argv: list[str]) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    os.environ.setdefault("DJANGO_DEBUG", "0")
    pg = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
    if argv == ["_claimer"]:
        os.environ["DATABASE_URL"] = f"{pg}/{DB}"
        claim_loop()
        return
    parser = argparse.ArgumentParser(prog="bench/run.py scale", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="finished jobs (1,000,000)")
    parser.add_argument("--queued", type=int, default=1_000, help="waiting jobs (1,000)")
    parser.add_argument("--keep", action="store_true", help=f"keep the database {DB}")
    parser.add_argument(
        "--again",
        action="store_true",
        help="measure the pages and submit_many again on a kept database",
    )
    parser.add_argument("--prune", action="store_true",
                        help="with --again: prune the oldest million more")  # fmt: skip
    parser.add_argument("--migration", action="store_true",
                        help="with --again: time the search's index migration first")  # fmt: skip
    parser.add_argument("--no-prune", action="store_true",
                        help="leave the prune out (and the rows in, for --again)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.again:
        measure_again(pg, prune=args.prune, migration=args.migration)
        return
    if args.rows < 1000 or args.queued < 8:
        parser.error("--rows is at least 1,000 and --queued at least 8")
    run(args.rows, args.queued, args.keep, pg, prune=not args.no_prune)
