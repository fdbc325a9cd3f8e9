"""A queue with history: the tally the trigger keeps (and what reads it), pruning in
batches, and bulk submission. Timings are the benchmark's (bench/run.py scale); these pin
the behaviour: what is counted, which queries run, what is inserted."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from io import StringIO
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.models.signals import post_delete
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from container_manager import bulk, compiled, overview, queue, reaper, retention, tally
from container_manager.exceptions import BulkSubmitError, InvalidJobError
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus, JobTally
from tests.lived import lived_job

pytestmark = pytest.mark.django_db


def ended(host, status=JobStatus.COMPLETED, *, ran=2.0, ago=timedelta(0), **fields):
    end = timezone.now() - ago
    return lived_job(host, status, started_at=end - timedelta(seconds=ran), completed_at=end,
                     **{"docker_image": "busybox:latest", **fields})  # fmt: skip


def counted(status, host_id=None):
    return sum(
        t.count for t in tally.totals() if t.status == status and host_id in (None, t.host_id)
    )


# ---- the tally ------------------------------------------------------------------------------


def test_the_worker_transitions_are_counted_in_their_own_update(
    fake_host, django_assert_num_queries
):
    job = ContainerJob.objects.create(docker_host=fake_host, docker_image="busybox:latest",
                                      status=JobStatus.LAUNCHING, worker_id="w")  # fmt: skip
    with django_assert_num_queries(1):
        assert job.mark_running("w", "c-1")
    with django_assert_num_queries(1):
        assert job.mark_finished("w", JobStatus.FAILED, exit_code=3)
    assert (counted(tally.STARTED), counted(JobStatus.FAILED, fake_host.pk)) == (1, 1)


def test_only_a_change_into_an_ended_status_counts_and_a_retry_counts_again(fake_host):
    job = ended(fake_host, JobStatus.TIMEOUT)
    ContainerJob.objects.filter(pk=job.pk).update(status=JobStatus.FAILED)  # ended to ended
    ContainerJob.objects.create(docker_image="busybox:latest", status=JobStatus.COMPLETED)
    assert (counted(JobStatus.TIMEOUT), counted(JobStatus.FAILED)) == (1, 0)
    assert counted(JobStatus.COMPLETED) == 0, "an insert is not a status change"
    queue.retry(job)
    compiled.update(ContainerJob, {"pk": job.pk}, status=JobStatus.TIMEOUT,
                    completed_at=timezone.now())  # fmt: skip
    assert counted(JobStatus.TIMEOUT) == 2


@pytest.mark.parametrize("seconds", [0.5, 1.0, 4.0, 5.0, 299.0, 86_400.0, 90_000.0])
def test_the_trigger_buckets_durations_as_the_histograms_bound_them(fake_host, seconds):
    ended(fake_host, ran=seconds)
    (row,) = [t for t in tally.totals() if t.status == JobStatus.COMPLETED]
    assert row.bucket == tally.bucket_of(seconds, tally.DURATION_BUCKETS)
    assert row.seconds == pytest.approx(seconds, abs=0.01)


def test_a_job_cancelled_before_it_started_has_no_duration(fake_host):
    job = queue.submit(host=fake_host, image="busybox:latest")
    queue.cancel(job)
    (row,) = [t for t in tally.totals() if t.status == JobStatus.CANCELLED]
    assert (row.bucket, row.count, row.host_id) == (-1, 1, fake_host.pk)


def test_compact_folds_old_minutes_into_the_totals_and_keeps_them(fake_host):
    for ago in (timedelta(hours=5), timedelta(hours=3), timedelta(minutes=5)):
        ended(fake_host, ago=ago)
    before = counted(JobStatus.COMPLETED)
    assert tally.compact() == 4, "two old minutes, each a row of ends and one of starts"
    assert JobTally.objects.filter(minute=tally.EPOCH, status=JobStatus.COMPLETED).get().count == 2
    assert tally.compact() == 0
    ended(fake_host, ago=timedelta(hours=4))
    assert tally.compact() == 2
    assert counted(JobStatus.COMPLETED) == before + 1
    assert JobTally.objects.filter(minute=tally.EPOCH).count() == 2  # completed, started


def test_the_migration_counts_the_history_once(fake_host):
    now = timezone.now()
    times = {"created_at": now - timedelta(seconds=10), "started_at": now - timedelta(seconds=6),
             "completed_at": now - timedelta(seconds=2)}  # fmt: skip
    for _ in range(2):
        ContainerJob.objects.create(docker_host=fake_host, docker_image="busybox:latest",
                                    status=JobStatus.FAILED, **times)  # fmt: skip
    ContainerJob.objects.create(docker_image="busybox:latest", status=JobStatus.CANCELLED,
                                completed_at=now)  # fmt: skip
    assert tally.backfill(ContainerJob.objects.all(), JobTally) == 3  # failed, cancelled, started
    rows = {(t.status, t.host_id, t.bucket): (t.count, round(t.seconds, 3)) for t in tally.totals()}
    assert rows == {
        ("failed", fake_host.pk, tally.bucket_of(4, tally.DURATION_BUCKETS)): (2, 8.0),
        ("cancelled", 0, -1): (1, 0.0),
        ("running", fake_host.pk, tally.bucket_of(4, tally.LATENCY_BUCKETS)): (2, 8.0),
    }


# ---- what reads it -----------------------------------------------------------------------


def test_overview_counts_live_jobs_exactly_and_ended_ones_from_the_tally(fake_host):
    other = ExecutorHost.objects.create(name="other", connection_string="unix:///o.sock")
    lived_job(fake_host, docker_image="busybox:latest")
    lived_job(other, JobStatus.RUNNING, docker_image="busybox:latest")
    ended(fake_host, JobStatus.FAILED)
    pruned = ended(other, ago=timedelta(days=40))
    ContainerJob.objects.filter(pk=pruned.pk).delete()
    counts = overview.counts_by_status()
    assert {s: n for s, n in counts.items() if n} == {"queued": 1, "running": 1, "failed": 1,
                                                      "completed": 1}  # fmt: skip
    by_host = overview.counts_by_host()
    assert (by_host["other"]["running"], by_host["other"]["completed"]) == (1, 1)
    assert by_host[fake_host.name]["failed"] == 1
    assert overview.hosts_with_load().get(name="other").running == 1


def test_overview_reads_no_job_that_ended(fake_host):
    ended(fake_host)
    with CaptureQueriesContext(connection) as queries:
        overview.counts_by_status()
        overview.counts_by_host()
        overview.throughput()
    jobs = [q["sql"] for q in queries if "container_manager_containerjob" in q["sql"]]
    assert len(jobs) == 2
    assert all("'queued'" in sql and "'completed'" not in sql for sql in jobs), jobs


# ---- pruning -------------------------------------------------------------------------------


@pytest.fixture
def log_storage(settings, tmp_path):
    settings.STORAGES = {
        **settings.STORAGES,
        "cm-logs": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                    "OPTIONS": {"location": str(tmp_path)}},
    }  # fmt: skip
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "LOG_STORAGE": "cm-logs"}
    storages._storages.pop("cm-logs", None)
    storages._backends = None  # read STORAGES again
    yield storages["cm-logs"]
    storages._storages.pop("cm-logs", None)
    storages._backends = None


@pytest.mark.django_db(transaction=True)
def test_prune_goes_in_short_batches_with_attempts_and_output_files(fake_host, log_storage,
                                                                    monkeypatch):  # fmt: skip
    batches_of(monkeypatch, 2)
    old = []
    for n in range(5):
        name = log_storage.save(f"out-{n}.log", ContentFile(b"x"))
        job = ended(fake_host, ago=timedelta(days=40), stdout_file=name)
        JobAttempt.objects.create(job=job, number=1, host=fake_host, container_name=f"c-{n}")
        old.append(job)
    kept = ended(
        fake_host, ago=timedelta(days=1), stdout_file=log_storage.save("new.log", ContentFile(b"y"))
    )
    totals = counted(JobStatus.COMPLETED)
    with CaptureQueriesContext(connection) as queries:
        assert reaper.prune_jobs(timedelta(days=30)) == 5
    sql = [q["sql"] for q in queries]
    if connection.vendor == "postgresql":  # a batch is one statement, a status's last one empty
        deletes = [q for q in sql if q.startswith("\nWITH doomed") and "'completed'" in q]
    else:  # the collector's DELETE of the jobs
        deletes = [q for q in sql if q.startswith('DELETE FROM "container_manager_containerjob"')]
    assert len(deletes) == 3, "5 rows in batches of 2"
    assert list(ContainerJob.objects.values_list("pk", flat=True)) == [kept.pk]
    assert not JobAttempt.objects.filter(job__in=[j.pk for j in old]).exists()
    assert [log_storage.exists(j.stdout_file) for j in old] == [False] * 5
    assert log_storage.exists(kept.stdout_file)
    assert counted(JobStatus.COMPLETED) == totals, "pruning leaves the counters alone"


def batches_of(monkeypatch, size):
    """Prune in batches of ``size`` rows, whatever each takes."""
    for name in ("_PRUNE_BATCH", "_PRUNE_MIN_BATCH", "_PRUNE_MAX_BATCH"):
        monkeypatch.setattr(retention, name, size)


def test_a_batch_keeps_a_job_retried_since_it_was_chosen(fake_host):
    job = ended(fake_host, ago=timedelta(days=40))
    queue.retry(job)
    assert retention._delete_batch([job.pk], timezone.now() - timedelta(days=30)) == 0
    assert ContainerJob.objects.filter(pk=job.pk, status=JobStatus.QUEUED).exists()


def test_a_batch_grows_while_quick_and_shrinks_when_slow():
    quick, slow = retention.BATCH_SECONDS / 4, retention.BATCH_SECONDS * 3
    assert retention._next_size(500, quick) == 1000
    assert retention._next_size(2000, quick) == 2000, "at most _PRUNE_MAX_BATCH"
    assert retention._next_size(500, slow) == 250
    assert retention._next_size(50, slow) == 50, "at least _PRUNE_MIN_BATCH"
    assert retention._next_size(500, retention.BATCH_SECONDS) == 500


def test_batches_delete_in_sql_alone_unless_something_hangs_on_the_rows(fake_host):
    assert retention._plain_rows() is (connection.vendor == "postgresql")

    def listener(**kwargs):
        pass

    post_delete.connect(listener, sender=JobAttempt)
    try:
        assert retention._plain_rows() is False, "a delete signal needs the collector"
    finally:
        post_delete.disconnect(listener, sender=JobAttempt)


@pytest.mark.django_db(transaction=True)
def test_a_batch_skips_a_row_another_transaction_holds_without_waiting(fake_host):
    if connection.vendor != "postgresql":
        pytest.skip("SKIP LOCKED: PostgreSQL")
    held, free = (ended(fake_host, ago=timedelta(days=40 + n)) for n in range(2))
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            ContainerJob.objects.select_for_update().filter(pk=held.pk).exists()
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(10)
        began = time.monotonic()
        assert retention.prune_jobs(timedelta(days=30)) == 1
        assert time.monotonic() - began < 5, "it did not wait for the lock"
    finally:
        release.set()
        holder.join()
    assert list(ContainerJob.objects.values_list("pk", flat=True)) == [held.pk], free.pk


# ---- bulk submission -----------------------------------------------------------------------


def specs(n, **extra):
    return [{"image": "busybox:latest", "host": "fake-engine", "command": ["echo", str(i)],
             "name": f"bulk-{i}", **extra} for i in range(n)]  # fmt: skip


def test_submit_many_queues_every_job_with_one_wake_up(fake_host):
    with mock.patch.object(bulk, "notify_new_job") as notify:
        done = queue.submit_many(specs(25), submitted_by="api:test")
    assert notify.call_count == 1
    assert len(done.jobs) == 25 and done.rejected == []
    jobs = ContainerJob.objects.filter(status=JobStatus.QUEUED, docker_host=fake_host)
    assert jobs.count() == 25
    assert set(jobs.values_list("submitted_by", flat=True)) == {"api:test"}
    assert jobs.get(name="bulk-7").command == "echo 7"


def test_submit_many_stores_every_field_as_submit_does(fake_host):
    spec = {
        "image": "busybox:latest",
        "labels": {"gpu": "true"},
        "entrypoint": ["/bin/sh", "-c"],
        "environment": {"A": "1"},
        "priority": 5,
        "cap_drop": ["ALL"],
        "job_id": "b" * 32,
    }
    (bulk,) = queue.submit_many([spec]).jobs
    one = queue.submit(**{**spec, "job_id": "c" * 32})
    stored = ContainerJob.objects.in_bulk([bulk.pk, one.pk])
    skip = {"id", "created_at"}
    fields = [f.attname for f in ContainerJob._meta.concrete_fields if f.attname not in skip]
    assert [getattr(stored[bulk.pk], f) for f in fields] == [
        getattr(stored[one.pk], f) for f in fields
    ]
    assert stored[bulk.pk].entrypoint == ["/bin/sh", "-c"] and stored[bulk.pk].required_labels == {
        "gpu": "true"
    }


def test_jobs_of_one_shape_are_stored_as_submit_stores_each(fake_host):
    shape = {
        "image": "busybox:latest",
        "host": "fake-engine",
        "labels": {"gpu": "true"},
        "mounts": ["tmpfs:/scratch:64"],
        "cap_drop": ["ALL"],
        "memory_limit": 64,
    }
    own = [
        {"name": "a", "command": "echo 'a b'", "environment": {"A": "1"}, "priority": 3},
        {
            "name": "b",
            "command": ["sh", "-c", "exit 2"],
            "max_retries": 2,
            "retry_on_failure": True,
            "run_after": timezone.now() + timedelta(hours=1),
        },
    ]
    jobs = queue.submit_many([{**shape, **o} for o in own]).jobs
    alone = [queue.submit(**shape, **o) for o in own]  # fmt: skip
    skip = {"id", "created_at"}
    fields = [f.attname for f in ContainerJob._meta.concrete_fields if f.attname not in skip]
    stored = ContainerJob.objects.in_bulk([j.pk for j in jobs + alone])
    for ours, theirs in zip(jobs, alone, strict=True):
        assert [getattr(stored[ours.pk], f) for f in fields] == [
            getattr(stored[theirs.pk], f) for f in fields
        ]
        assert [getattr(ours, f) for f in fields] == [getattr(theirs, f) for f in fields]
    jobs[0].mounts[0]["target"] = "/elsewhere"
    jobs[0].required_labels["gpu"] = "false"
    assert jobs[1].mounts[0]["target"] == "/scratch", "each job has its own lists"
    assert jobs[1].required_labels == {"gpu": "true"}
    assert jobs[0].created_at <= jobs[1].created_at, "in the order given"


def test_a_shape_is_validated_whole_once(fake_host):
    ExecutorHost.objects.create(name="second", connection_string="unix:///second.sock",
                                executor_type="fake")  # fmt: skip
    given = specs(300) + specs(200, host="second")
    with mock.patch.object(ContainerJob, "full_clean", autospec=True,
                           side_effect=ContainerJob.full_clean) as full_clean:  # fmt: skip
        done = queue.submit_many(given)
    assert len(done.jobs) == 500
    assert full_clean.call_count == 2, "one job of each host validated whole"


def test_a_job_of_a_known_shape_with_a_bad_field_of_its_own_says_what_submit_says(fake_host):
    bad = {3: {"name": "n" * 201}, 4: {"command": "echo 'unclosed"}, 5: {"priority": 500},
           6: {"environment": "NOT A LINE"}, 7: {"name": "nul\0"}, 8: {"max_retries": -1},
           9: {"command": ["echo", "x" * 40_000]}, 10: {"job_id": "not-a-uuid"},
           11: {"run_after": "soon"}}  # fmt: skip
    given = [{**spec, **bad.get(n, {})} for n, spec in enumerate(specs(12), start=1)]
    with pytest.raises(BulkSubmitError) as raised:
        queue.submit_many(given)
    assert [n for n, _ in raised.value.rejected] == sorted(bad)
    for number, why in raised.value.rejected:
        with pytest.raises(InvalidJobError) as alone:
            queue.submit(**given[number - 1])
        assert why == str(alone.value), number
    assert not ContainerJob.objects.exists()


def test_values_alike_but_of_other_types_are_other_shapes(fake_host):
    kept: list[object] = []
    keys = {bulk._frozen(v, kept) for v in (1, 1.0, True, "1", [1], (1,), {"a": 1})}
    assert len(keys) == 7
    done = queue.submit_many(
        specs(2, memory_limit=64) + specs(1, memory_limit=5), skip_invalid=True
    )
    assert len(done.jobs) == 2 and [n for n, _ in done.rejected] == [3]
    assert "Memory limit must be between 6" in done.rejected[0][1]


def test_submit_many_reads_the_named_rows_once_whatever_the_number(fake_host):
    def queries(n):
        with CaptureQueriesContext(connection) as captured:
            queue.submit_many(specs(n))
        return [q["sql"] for q in captured if not q["sql"].startswith("INSERT")]

    assert len(queries(5)) == len(queries(60)), "the same lookups; then INSERTs in batches"


def test_submit_many_is_all_or_nothing_and_names_each_bad_line(fake_host):
    given = [*specs(2), {"image": ""}, "not an object", {"image": "busybox", "colour": "red"},
             InvalidJobError("Not JSON: Expecting value"), {"image": "busybox", "priority": "high"},
             {"command": ["true"]}]  # fmt: skip
    with pytest.raises(BulkSubmitError) as raised:
        queue.submit_many(given, line_numbers=[1, 2, 4, 5, 6, 7, 9, 10])
    assert [n for n, _ in raised.value.rejected] == [4, 5, 6, 7, 9, 10]
    reasons = dict(raised.value.rejected)
    assert "docker_image" in reasons[4] and "not a string" in reasons[5]
    assert "'colour'" in reasons[6] and "Not JSON" in reasons[7]
    assert "priority" in reasons[9] and "'image' is required" in reasons[10]
    assert "6 of 8 jobs are invalid, none was queued: line 4:" in str(raised.value)
    assert not ContainerJob.objects.exists()


def test_submit_many_can_queue_the_good_ones_and_list_the_rest(fake_host):
    done = queue.submit_many([*specs(3), {"image": "busybox", "host": "nowhere"}],
                             skip_invalid=True)  # fmt: skip
    assert len(done.jobs) == 3 and ContainerJob.objects.count() == 3
    ((number, why),) = done.rejected
    assert number == 4 and "Unknown host 'nowhere'" in why


def test_submit_many_refuses_an_id_given_twice_or_taken(fake_host):
    taken = queue.submit(host=fake_host, image="busybox:latest")
    with pytest.raises(InvalidJobError, match="already taken"):
        queue.submit_many([{"image": "busybox:latest", "job_id": taken.pk}])
    with pytest.raises(InvalidJobError, match="twice"):
        queue.submit_many([{"image": "busybox:latest", "job_id": j} for j in ("a" * 32,) * 2])


def run_submit(*args):
    out, err = StringIO(), StringIO()
    call_command("container_job", "submit", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_command_submits_a_jsonl_file(fake_host, tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in specs(3)) + "\n\n")
    out, err = run_submit("--from-file", str(path))
    assert set(out.split()) == {str(pk) for pk in ContainerJob.objects.values_list("pk", flat=True)}
    assert "Queued 3 job(s)." in err
    assert set(ContainerJob.objects.values_list("submitted_by", flat=True)) == {
        f"cli:{__import__('getpass').getuser()}"
    }


def test_command_reports_bad_lines_by_number_and_queues_nothing(fake_host, tmp_path):
    path = tmp_path / "jobs.jsonl"
    path.write_text(json.dumps(specs(1)[0]) + "\n\n{broken\n" + json.dumps({"image": "x y"}))
    err = StringIO()
    with pytest.raises(CommandError, match="2 of 3 line\\(s\\) are invalid"):
        call_command("container_job", "submit", "--from-file", str(path), stderr=err)
    assert "line 3: Not JSON" in err.getvalue() and "line 4: Invalid job" in err.getvalue()
    assert not ContainerJob.objects.exists()
    out, errors = run_submit("--from-file", str(path), "--skip-invalid")
    assert len(out.split()) == 1 and "2 line(s) skipped" in errors


def test_command_file_errors_are_clear(fake_host, tmp_path):
    with pytest.raises(CommandError, match="No such file"):
        run_submit("--from-file", str(tmp_path / "missing.jsonl"))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe")
    with pytest.raises(CommandError, match="not UTF-8"):
        run_submit("--from-file", str(tmp_path / "bin.jsonl"))
    with pytest.raises(CommandError, match="--image: not allowed with argument --from-file"):
        run_submit("--from-file", str(tmp_path / "bin.jsonl"), "--image", "busybox")
    with pytest.raises(CommandError, match="no command after --"):
        run_submit("--from-file", str(tmp_path / "bin.jsonl"), "--", "echo")
    with pytest.raises(CommandError, match="one of the arguments --image --from-file is required"):
        run_submit()


def test_a_prune_with_a_budget_stops_between_batches(fake_host, monkeypatch):
    batches_of(monkeypatch, 1)
    for _ in range(3):
        ended(fake_host, ago=timedelta(days=40))
    assert reaper.prune_jobs(timedelta(days=30), budget=0) == 0
    assert reaper.prune_jobs(timedelta(days=30)) == 3
