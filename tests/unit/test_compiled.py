"""compiled.fetch: querysets compiled once, run again with a fresh ``now``; the rows match
what the ORM itself returns. compiled.update: plain UPDATEs that write what the ORM's
``update()`` writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Count, F, QuerySet
from django.utils import timezone

from container_manager import compiled
from container_manager.models import ContainerJob, ExecutorHost, JobStatus
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory

pytestmark = pytest.mark.django_db


def due(host_pk: int, now) -> QuerySet[ContainerJob]:
    return (
        ContainerJob.objects.filter(docker_host=host_pk, status=JobStatus.QUEUED)
        .filter(run_after__lte=now)
        .order_by("created_at")
        .defer("stdout_log")
    )


def counts(host_pk: int) -> QuerySet[ContainerJob, tuple[str, int]]:
    return (
        ContainerJob.objects.filter(docker_host=host_pk)
        .values_list("status")
        .annotate(n=Count("pk"))
        .order_by("status")
    )


def with_double_priority(host_pk: int) -> QuerySet[ContainerJob]:
    return ContainerJob.objects.filter(docker_host=host_pk).annotate(double=F("priority") * 2)


@pytest.fixture
def host():
    return ExecutorHostFactory()


def test_model_rows_are_what_the_orm_returns(host):
    job = ContainerJobFactory(
        docker_host=host,
        required_labels={"zone": "a"},
        stdout_log="old output",
        run_after=timezone.now() - timedelta(minutes=1),
    )
    now = timezone.now()
    [fetched] = compiled.fetch(due, host.pk, now=now)
    [orm] = list(due(host.pk, now))
    assert fetched.pk == orm.pk == job.pk
    for field in ContainerJob._meta.concrete_fields:
        if field.name != "stdout_log":
            assert getattr(fetched, field.attname) == getattr(orm, field.attname), field.name
    assert fetched.required_labels == {"zone": "a"}  # the JSON column's converter ran
    assert fetched.run_after == job.run_after and fetched.run_after.tzinfo is not None
    assert fetched.get_deferred_fields() == orm.get_deferred_fields() == {"stdout_log"}
    assert fetched.stdout_log == "old output"  # loaded on access, as the ORM's instance is
    assert not fetched._state.adding and fetched._state.db == "default"


def test_now_is_replaced_on_every_run(host):
    soon = ContainerJobFactory(docker_host=host, run_after=timezone.now() + timedelta(hours=1))
    assert compiled.fetch(due, host.pk, now=timezone.now()) == []
    later = timezone.now() + timedelta(hours=2)
    assert [j.pk for j in compiled.fetch(due, host.pk, now=later)] == [soon.pk]


def test_other_arguments_get_a_statement_of_their_own(host):
    other = ExecutorHostFactory()
    mine = ContainerJobFactory(docker_host=host, run_after=timezone.now())
    theirs = ContainerJobFactory(docker_host=other, run_after=timezone.now())
    now = timezone.now() + timedelta(seconds=1)
    assert [j.pk for j in compiled.fetch(due, host.pk, now=now)] == [mine.pk]
    assert [j.pk for j in compiled.fetch(due, other.pk, now=now)] == [theirs.pk]


def test_a_queryset_is_built_once_and_each_run_is_one_query(host, django_assert_num_queries):
    built = []

    def counting(host_pk: int):
        built.append(host_pk)
        return ContainerJob.objects.filter(docker_host=host_pk)

    ContainerJobFactory(docker_host=host)
    with django_assert_num_queries(3):
        for _ in range(3):
            assert len(compiled.fetch(counting, host.pk)) == 1
    assert built == [host.pk]


def test_values_list_rows_are_tuples_as_the_orm_returns_them(host):
    ContainerJobFactory(docker_host=host)
    ContainerJobFactory(docker_host=host)
    ContainerJobFactory(docker_host=host, status=JobStatus.RUNNING, worker_id="w")
    assert (
        compiled.fetch(counts, host.pk)
        == list(counts(host.pk))
        == [
            ("queued", 2),
            ("running", 1),
        ]
    )


def test_annotations_are_set_on_the_instances(host):
    ContainerJobFactory(docker_host=host, priority=7)
    [job] = compiled.fetch(with_double_priority, host.pk)
    assert job.double == 14 and job.priority == 7


def test_a_queryset_that_matches_nothing_runs_no_query(django_assert_num_queries):
    with django_assert_num_queries(0):
        assert compiled.fetch(lambda pks: ContainerJob.objects.filter(pk__in=pks), ()) == []


def test_select_for_update_runs_inside_the_callers_transaction(host):
    ContainerJobFactory(docker_host=host)

    def locked(host_pk: int):
        return ContainerJob.objects.filter(docker_host=host_pk).select_for_update()

    with transaction.atomic():
        assert len(compiled.fetch(locked, host.pk)) == 1


def test_a_builder_that_ignores_now_is_refused(host):
    with pytest.raises(ValueError, match="without the `now`"):
        compiled.fetch(lambda pk, now: ContainerJob.objects.filter(pk=pk), 1, now=timezone.now())


@pytest.mark.parametrize(
    "build",
    [
        lambda: ContainerJob.objects.values("pk"),
        lambda: ContainerJob.objects.values_list("pk", flat=True),
        lambda: ContainerJob.objects.select_related("docker_host"),
    ],
    ids=["values", "flat", "select_related"],
)
def test_querysets_it_cannot_rebuild_rows_for_are_refused(build):
    with pytest.raises(TypeError):
        compiled.fetch(build)


def test_hosts_of_the_claim_come_back_whole(host):
    [fetched] = compiled.fetch(lambda: ExecutorHost.objects.filter(pk=host.pk))
    assert fetched == host and fetched.labels == host.labels and fetched.name == host.name


def test_columns_added_for_a_distinct_ordering_are_dropped(host):
    def statuses(host_pk: int):
        return (
            ContainerJob.objects.filter(docker_host=host_pk)
            .values_list("status")
            .distinct()
            .order_by("priority")
        )

    ContainerJobFactory(docker_host=host, priority=2)
    ContainerJobFactory(docker_host=host, priority=1, status=JobStatus.RUNNING, worker_id="w")
    assert compiled.fetch(statuses, host.pk) == list(statuses(host.pk))
    assert compiled.fetch(statuses, host.pk) == [("running",), ("queued",)]


def test_a_connection_keeps_a_bounded_number_of_statements(host, monkeypatch):
    built = []

    def counting(pk: int):
        built.append(pk)
        return ContainerJob.objects.filter(pk=pk)

    monkeypatch.setattr(compiled, "MAX_STATEMENTS", 2)
    for pk in (1, 2, 1, 3, 1):
        compiled.fetch(counting, pk)
    # 1 and 2 are kept; 3 finds the cache full and starts it afresh, so 1 is built again.
    assert built == [1, 2, 3, 1]


# ---- update ---------------------------------------------------------------------------------


def test_an_update_writes_what_the_orm_update_writes(host):
    other = ExecutorHostFactory()
    mine, twin = ContainerJobFactory(docker_host=host), ContainerJobFactory(docker_host=host)
    when = timezone.now() - timedelta(minutes=3)
    changes = {
        "status": JobStatus.RUNNING,
        "started_at": when,
        "docker_host": other,
        "required_labels": {"zone": "b", "n": 2},
        "exit_code": None,
        "oom_killed": True,
        "priority": 7,
        "last_error": 'it\'s "quoted"',
    }
    assert compiled.update(ContainerJob, {"pk": mine.pk}, **changes) == 1
    ContainerJob.objects.filter(pk=twin.pk).update(**changes)
    mine.refresh_from_db()
    twin.refresh_from_db()
    for field in ContainerJob._meta.concrete_fields:
        if field.name not in ("id", "created_at", "name"):
            assert getattr(mine, field.attname) == getattr(twin, field.attname), field.name
    assert mine.docker_host_id == other.pk and mine.required_labels == {"zone": "b", "n": 2}
    # Stored as the ORM stores it: its own lookups find the values again.
    assert set(ContainerJob.objects.filter(started_at=when, priority=7)) == {mine, twin}


def test_only_rows_meeting_every_condition_change(host):
    queued = ContainerJobFactory(docker_host=host, status=JobStatus.QUEUED, worker_id="w1")
    running = ContainerJobFactory(docker_host=host, status=JobStatus.RUNNING, worker_id="w1")
    elsewhere = ContainerJobFactory(status=JobStatus.RUNNING, worker_id="w1")
    active = frozenset({JobStatus.LAUNCHING, JobStatus.RUNNING})
    where = {"docker_host": host, "status": active, "worker_id": "w1"}
    assert compiled.update(ContainerJob, where, last_error="x") == 1
    assert compiled.update(ContainerJob, {**where, "worker_id": "w2"}, last_error="y") == 0
    errors = dict(ContainerJob.objects.values_list("pk", "last_error"))
    assert errors == {queued.pk: "", running.pk: "x", elsewhere.pk: ""}


def test_none_in_a_condition_means_is_null(host):
    placed = ContainerJobFactory(docker_host=host)
    open_job = ContainerJobFactory(docker_host=None)
    assert compiled.update(ContainerJob, {"docker_host": None}, priority=3) == 1
    assert ContainerJob.objects.get(pk=open_job.pk).priority == 3
    assert ContainerJob.objects.get(pk=placed.pk).priority != 3


def test_an_update_is_one_query_and_an_empty_membership_none(host, django_assert_num_queries):
    job = ContainerJobFactory(docker_host=host)
    with django_assert_num_queries(1):
        assert compiled.update(ContainerJob, {"pk": job.pk}, priority=4) == 1
    with django_assert_num_queries(0):
        assert compiled.update(ContainerJob, {"pk": job.pk, "status": ()}, priority=5) == 0
    assert ContainerJob.objects.get(pk=job.pk).priority == 4


def test_expressions_and_empty_changes_are_refused(host):
    job = ContainerJobFactory(docker_host=host)
    with pytest.raises(TypeError, match="plain values"):
        compiled.update(ContainerJob, {"pk": job.pk}, priority=F("priority") + 1)
    with pytest.raises(ValueError, match="at least one change"):
        compiled.update(ContainerJob, {"pk": job.pk})
    with pytest.raises(TypeError, match="not a column"):
        compiled.update(ContainerJob, {"attempts": 1}, priority=1)


def test_a_failed_update_marks_the_transaction_for_rollback(host):
    job = ContainerJobFactory(docker_host=host)
    with transaction.atomic():
        with pytest.raises(IntegrityError):
            compiled.update(ContainerJob, {"pk": job.pk}, status=None)
        assert transaction.get_connection().needs_rollback
