"""The reaper against the in-package FakeExecutor (and, for what only a real SDK can do
wrong, a mocked Docker SDK): which containers go, which stay, dry runs, engine errors,
pruning of old job rows, and the cleanup_containers command."""

from __future__ import annotations

import uuid
from datetime import timedelta
from io import StringIO
from types import SimpleNamespace
from unittest import mock

import docker
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from container_manager.conf import get_settings
from container_manager.executors import get_executor
from container_manager.executors.base import JobSpec
from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.reaper import Removal, prune_jobs, reap

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


@pytest.fixture
def engine(fake_host):
    return FakeExecutor.engine_for(fake_host.connection_string)


def make_job(host, status, *, attempt=1, ended_ago=None):
    now = timezone.now()
    return ContainerJob.objects.create(
        docker_host=host,
        docker_image="busybox:latest",
        command="sleep 60",
        status=status,
        attempt_count=attempt,
        completed_at=now - ended_ago if ended_ago is not None else None,
    )


def container(host, job_id, attempt=1, *, running=False, labels=None):
    """A container on the fake engine, labelled as the app labels its containers."""
    spec = JobSpec(
        job_id=str(job_id),
        attempt=attempt,
        image="busybox:latest",
        extra_labels=get_settings().CONTAINER_LABELS if labels is None else labels,
    )
    engine = FakeExecutor.engine_for(host.connection_string)
    engine.script(FakeOutcome(duration=3600 if running else 0), when=lambda s: s.name == spec.name)
    container_id = get_executor(host).run(spec)
    if not running:
        get_executor(host).wait(container_id, timeout=1)
    return container_id


def reasons(removals):
    return {r.container_id: r.reason.split(":")[0] for r in removals}


def test_finished_jobs_containers_go_after_the_cut_off_only(fake_host, engine):
    old = make_job(fake_host, JobStatus.COMPLETED, ended_ago=2 * DAY)
    recent = make_job(fake_host, JobStatus.FAILED, ended_ago=timedelta(hours=1))
    gone, kept = container(fake_host, old.pk), container(fake_host, recent.pk)
    removals = reap(older_than=DAY)
    assert removals == [
        Removal("fake-engine", gone, f"cm-{old.pk}-1", "finished: job completed before the cut-off")
    ]
    assert set(engine.containers) == {kept}


def test_orphans_of_unknown_jobs_go_at_once(fake_host, engine):
    unknown = container(fake_host, uuid.uuid4())
    not_a_uuid = container(fake_host, "not-a-job-id")
    assert reasons(reap(older_than=DAY)) == {unknown: "orphan", not_a_uuid: "orphan"}
    assert engine.containers == {}


def test_a_still_running_container_of_an_ended_job_goes_at_once(fake_host, engine):
    job = make_job(fake_host, JobStatus.CANCELLED, ended_ago=timedelta(minutes=1))
    runaway = container(fake_host, job.pk, running=True)
    removals = reap(older_than=DAY)
    assert removals[0].reason == "orphan: job cancelled but its container still runs"
    assert runaway not in engine.containers


def test_an_active_jobs_current_attempt_is_never_touched_but_stale_attempts_go(fake_host, engine):
    job = make_job(fake_host, JobStatus.RUNNING, attempt=3)
    current = container(fake_host, job.pk, 3, running=True)
    stale = container(fake_host, job.pk, 2)
    launching = make_job(fake_host, JobStatus.LAUNCHING, attempt=1)
    being_created = container(fake_host, launching.pk, 1)
    removals = reap(older_than=timedelta(0))
    assert reasons(removals) == {stale: "stale attempt"}
    assert removals[0].reason == "stale attempt: attempt 2, the job is in attempt 3"
    assert set(engine.containers) == {current, being_created}


def test_an_ended_jobs_earlier_attempts_go_at_once_its_last_is_kept(fake_host, engine):
    # e.g. attempt 1 was declared lost on a host that came back; attempt 2 completed elsewhere
    job = make_job(fake_host, JobStatus.COMPLETED, attempt=2, ended_ago=timedelta(minutes=1))
    lost = container(fake_host, job.pk, 1, running=True)
    last = container(fake_host, job.pk, 2)
    removals = reap(older_than=DAY)
    assert [r.reason for r in removals] == ["stale attempt: attempt 1, the job ended in attempt 2"]
    assert set(engine.containers) == {last}
    assert lost not in engine.containers


def test_a_waiting_jobs_earlier_attempts_go(fake_host, engine):
    job = make_job(fake_host, JobStatus.QUEUED, attempt=1)
    earlier = container(fake_host, job.pk, 1)
    assert reasons(reap(older_than=DAY)) == {earlier: "stale attempt"}


def test_an_active_job_with_an_unreadable_attempt_label_is_kept(fake_host, engine):
    job = make_job(fake_host, JobStatus.RUNNING, attempt=1)
    container_id = container(fake_host, job.pk, 1, running=True)
    engine.containers[container_id].spec = JobSpec(
        job_id=str(job.pk), attempt=1, image="busybox:latest",
        extra_labels={**get_settings().CONTAINER_LABELS, "container_manager.attempt": "x"},
    )  # fmt: skip
    assert reap(older_than=timedelta(0)) == []


def test_dry_run_lists_and_removes_nothing(fake_host, engine):
    old = make_job(fake_host, JobStatus.COMPLETED, ended_ago=2 * DAY)
    ids = {container(fake_host, old.pk), container(fake_host, uuid.uuid4())}
    removals = reap(older_than=DAY, dry_run=True)
    assert {r.container_id for r in removals} == ids
    assert set(engine.containers) == ids
    assert "cleanup" not in engine.calls


def test_containers_of_another_deployment_are_never_listed_nor_removed(fake_host, engine):
    theirs = container(fake_host, uuid.uuid4(), labels={"deployment": "someone-else"})
    assert reap(older_than=timedelta(0)) == []
    assert theirs in engine.containers


def test_an_unreachable_engine_is_logged_and_the_other_hosts_still_reaped(fake_host, caplog):
    down = ExecutorHost.objects.create(
        name="down", connection_string="unix:///fake/down.sock", executor_type="fake"
    )
    container(down, uuid.uuid4())
    FakeExecutor.engine_for(down.connection_string).down = True
    orphan = container(fake_host, uuid.uuid4())
    removals = reap(older_than=DAY)
    assert [(r.host, r.container_id) for r in removals] == [("fake-engine", orphan)]
    assert "reaper host=down cannot list containers" in caplog.text


def test_only_the_given_hosts_and_by_default_only_active_ones(fake_host, engine):
    idle = ExecutorHost.objects.create(
        name="idle", connection_string="unix:///fake/idle.sock", executor_type="fake",
        is_active=False,
    )  # fmt: skip
    on_idle = container(idle, uuid.uuid4())
    on_fake = container(fake_host, uuid.uuid4())
    assert {r.container_id for r in reap(older_than=DAY)} == {on_fake}
    assert {r.container_id for r in reap(older_than=DAY, hosts=[idle])} == {on_idle}


# ---- the Docker SDK edge ------------------------------------------------------------------


def sdk_container(container_id, labels, status="exited"):
    return SimpleNamespace(
        id=container_id, name=f"n-{container_id}", status=status, labels=labels,
        attrs={"Config": {"Image": "busybox"}, "State": {"FinishedAt": "2024-01-01T00:00:00Z"}},
    )  # fmt: skip


@pytest.fixture
def docker_host(db):
    return ExecutorHost.objects.create(name="docker", connection_string="unix:///sdk.sock")


def test_a_container_without_the_apps_labels_is_never_removed_even_if_listed(docker_host):
    """Defence in depth: if the engine's label filter ever let one through, it stays."""
    with mock.patch("docker.DockerClient") as client_class:
        client = client_class.return_value
        client.containers.list.return_value = [
            sdk_container("foreign", {}),
            sdk_container("orphan", {"container_manager.managed": "true",
                                     "container_manager.job": str(uuid.uuid4())}),
        ]  # fmt: skip
        removals = reap(older_than=DAY)
    assert [r.container_id for r in removals] == ["orphan"]
    client.containers.get.assert_called_once_with("orphan")
    labels = client.containers.list.call_args.kwargs["filters"]["label"]
    assert "container_manager.managed=true" in labels


def test_a_removal_that_fails_is_logged_and_the_rest_still_removed(docker_host, caplog):
    orphans = [
        sdk_container(name, {"container_manager.managed": "true",
                             "container_manager.job": str(uuid.uuid4())})
        for name in ("first", "second")
    ]  # fmt: skip
    with mock.patch("docker.DockerClient") as client_class:
        client = client_class.return_value
        client.containers.list.return_value = orphans
        failing = mock.Mock()
        failing.remove.side_effect = docker.errors.APIError("500 Server Error: device busy")
        client.containers.get.side_effect = [failing, mock.Mock()]
        removals = reap(older_than=DAY)
    assert [r.container_id for r in removals] == ["second"]
    assert "container=first not removed" in caplog.text and "device busy" in caplog.text


def test_an_engine_error_while_listing_is_logged(docker_host, caplog):
    with mock.patch("docker.DockerClient") as client_class:
        client_class.return_value.containers.list.side_effect = docker.errors.APIError("boom")
        assert reap(older_than=DAY) == []
    assert "reaper host=docker cannot list containers" in caplog.text


# ---- pruning job rows ----------------------------------------------------------------------


def test_prune_jobs_deletes_old_ended_jobs_and_their_attempts_only(fake_host):
    old = make_job(fake_host, JobStatus.FAILED, ended_ago=40 * DAY)
    JobAttempt.objects.create(job=old, number=1, host=fake_host, container_name="cm-x-1")
    recent = make_job(fake_host, JobStatus.COMPLETED, ended_ago=DAY)
    running = make_job(fake_host, JobStatus.RUNNING)
    assert prune_jobs(timedelta(days=30), dry_run=True) == 1
    assert ContainerJob.objects.count() == 3
    assert prune_jobs(timedelta(days=30)) == 1
    assert set(ContainerJob.objects.values_list("pk", flat=True)) == {recent.pk, running.pk}
    assert not JobAttempt.objects.filter(job_id=old.pk).exists()


def test_prune_jobs_works_in_batches(fake_host, monkeypatch):
    for name in ("_PRUNE_BATCH", "_PRUNE_MIN_BATCH", "_PRUNE_MAX_BATCH"):
        monkeypatch.setattr(f"container_manager.retention.{name}", 2)
    for _ in range(5):
        make_job(fake_host, JobStatus.COMPLETED, ended_ago=10 * DAY)
    assert prune_jobs(DAY) == 5
    assert not ContainerJob.objects.exists()


# ---- the command --------------------------------------------------------------------------


def run_command(*args):
    out = StringIO()
    call_command("cleanup_containers", *args, stdout=out)
    return out.getvalue()


def test_command_lists_what_it_removes_and_counts(fake_host, engine):
    orphan = container(fake_host, uuid.uuid4())
    out = run_command("--dry-run")
    assert f"fake-engine\t{orphan[:12]}\t" in out and "orphan: its job is unknown" in out
    assert out.endswith("Would remove 1 container(s).\n")
    assert orphan in engine.containers
    assert run_command().endswith("Removed 1 container(s).\n")
    assert engine.containers == {}


def test_command_uses_the_cut_off_and_the_hosts_given(fake_host, engine):
    job = make_job(fake_host, JobStatus.COMPLETED, ended_ago=timedelta(hours=5))
    kept = container(fake_host, job.pk)
    assert "Removed 0 container(s)." in run_command(
        "--older-than-hours", "6", "--host", "fake-engine"
    )
    assert kept in engine.containers
    assert "Removed 1 container(s)." in run_command("--older-than-hours", "4")
    with pytest.raises(CommandError, match="Unknown host\\(s\\): nowhere"):
        run_command("--host", "nowhere")
    with pytest.raises(CommandError, match="must not be negative"):
        run_command("--older-than-hours", "-1")


def test_command_prune_jobs_without_a_retention_keeps_every_row(fake_host, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "JOB_RETENTION_DAYS": None}
    make_job(fake_host, JobStatus.COMPLETED, ended_ago=400 * DAY)
    assert "JOB_RETENTION_DAYS is not set: job rows are kept." in run_command("--prune-jobs")
    assert ContainerJob.objects.count() == 1


def test_command_prune_jobs_with_a_retention(fake_host, settings):
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "JOB_RETENTION_DAYS": 30}
    make_job(fake_host, JobStatus.COMPLETED, ended_ago=40 * DAY)
    make_job(fake_host, JobStatus.COMPLETED, ended_ago=DAY)
    assert "Would prune 1 job(s)" in run_command("--prune-jobs", "--dry-run")
    assert "Pruned 1 job(s) that ended more than 30 day(s) ago." in run_command("--prune-jobs")
    assert ContainerJob.objects.count() == 1


def _vacuums() -> int:
    """How many times the jobs' table was vacuumed by hand (PostgreSQL's statistics)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = %s",
            [ContainerJob._meta.db_table],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_command_vacuums_the_tables_after_a_prune_on_postgresql(fake_host, settings):
    from django.db import connection

    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "JOB_RETENTION_DAYS": 30}
    if connection.vendor != "postgresql":
        make_job(fake_host, JobStatus.COMPLETED, ended_ago=40 * DAY)
        assert "Vacuumed" not in run_command("--prune-jobs")  # SQLite: not done
        assert ContainerJob.objects.count() == 0
        return
    before = _vacuums()
    assert "Pruned 0 job(s)" in (out := run_command("--prune-jobs"))
    assert "Vacuumed" not in out, "nothing deleted: nothing to vacuum"
    make_job(fake_host, JobStatus.COMPLETED, ended_ago=40 * DAY)
    assert "Vacuumed" not in run_command("--prune-jobs", "--no-vacuum")
    assert _vacuums() == before
    make_job(fake_host, JobStatus.COMPLETED, ended_ago=40 * DAY)
    out = run_command("--prune-jobs")
    assert "Pruned 1 job(s)" in out
    assert "Vacuumed the jobs' and attempts' tables" in out
    assert _vacuums() == before + 1


def test_vacuum_is_not_tried_inside_a_transaction(fake_host):
    from container_manager.retention import vacuum_jobs

    assert vacuum_jobs() is False  # this test runs in a transaction: PostgreSQL refuses VACUUM
