"""Job queues: ``submit(queue=...)``, claims limited to some queues, the worker's and the
commands' ``--queue``, the admin's queue column and filter."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from container_manager import queue
from container_manager.executors.fake import FakeExecutor
from container_manager.models import DEFAULT_QUEUE, ContainerJob, JobStatus
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory
from container_manager.worker import Worker

IMAGE = "busybox:latest"
CHANGELIST = "admin:container_manager_containerjob_changelist"


def ids(claimed):
    return [c.job.pk for c in claimed]


@pytest.fixture
def host(db):
    return ExecutorHostFactory(name="main-engine", max_concurrent_jobs=50)


class TestSubmit:
    def test_a_job_is_in_the_default_queue_unless_told(self, host):
        assert queue.submit(host=host, image=IMAGE).queue == DEFAULT_QUEUE == "default"
        assert queue.submit(host=host, image=IMAGE, queue="reports").queue == "reports"

    def test_submit_many_and_requeue_copy_keep_the_queue(self, host):
        made = queue.submit_many([{"host": host.name, "image": IMAGE, "queue": "bulk"}])
        assert [job.queue for job in made.jobs] == ["bulk"]
        assert ContainerJob.objects.get(pk=made.jobs[0].pk).queue == "bulk"
        assert queue.requeue_copy(made.jobs[0]).queue == "bulk"

    def test_an_empty_or_long_queue_name_is_refused(self, host):
        with pytest.raises(queue.InvalidJobError, match="queue"):
            queue.submit(host=host, image=IMAGE, queue="")
        with pytest.raises(queue.InvalidJobError, match="queue"):
            queue.submit(host=host, image=IMAGE, queue="q" * 101)


class TestClaim:
    def test_a_claim_limited_to_queues_takes_only_theirs(self, host):
        default = queue.submit(host=host, image=IMAGE)
        reports = queue.submit(host=host, image=IMAGE, queue="reports")
        mail = queue.submit(host=host, image=IMAGE, queue="mail", priority=5)
        assert ids(queue.claim("w", 10, queues=["reports"])) == [reports.pk]
        assert ids(queue.claim("w", 10, queues=["nothing-here"])) == []
        assert ids(queue.claim("w", 10, queues=["default", "mail"])) == [mail.pk, default.pk]
        assert ContainerJob.objects.filter(status=JobStatus.QUEUED).count() == 0

    def test_open_jobs_are_placed_only_from_the_claims_queues(self, host):
        placed = queue.submit(image=IMAGE, queue="reports")
        other = queue.submit(image=IMAGE)
        [claimed] = queue.claim("w", 10, queues=["reports"])
        assert claimed.job.pk == placed.pk and claimed.job.docker_host == host
        other.refresh_from_db()
        assert other.status == JobStatus.QUEUED and other.docker_host is None

    def test_the_best_first_across_queues_within_the_limit(self, host):
        now = timezone.now()
        old = ContainerJobFactory(docker_host=host, queue="a", created_at=now - timedelta(1))
        high = ContainerJobFactory(docker_host=host, queue="b", priority=9)
        ContainerJobFactory(docker_host=host, queue="a")
        ContainerJobFactory(docker_host=host, queue="c", priority=50)
        assert ids(queue.claim("w", 2, queues=["a", "b"])) == [high.pk, old.pk]

    def test_an_unfiltered_claim_runs_the_queries_it_ran_before_queues(
        self, host, django_assert_num_queries
    ):
        # The savepoint, the hosts, busy counts, the host's due jobs, the open jobs, the
        # claiming UPDATE, the release: 7, as before jobs had queues (main at 1548824).
        queue.submit(host=host, image=IMAGE, queue="reports")
        queue.submit(host=host, image=IMAGE)
        with django_assert_num_queries(7) as captured:
            assert len(queue.claim("w", 10)) == 2
        where = [q["sql"].split("WHERE", 1)[-1] for q in captured.captured_queries]
        assert not any('."queue"' in text for text in where)

    def test_a_claim_of_two_queues_reads_each_queue_once(self, host, django_assert_num_queries):
        queue.submit(host=host, image=IMAGE, queue="reports")
        queue.submit(host=host, image=IMAGE, queue="mail")
        # Two more than unfiltered: the host's due jobs and the open jobs, once per queue.
        with django_assert_num_queries(9):
            assert len(queue.claim("w", 10, queues=["reports", "mail", "reports"])) == 2


class TestAdoption:
    def _expired(self, host, queue_name):
        return ContainerJobFactory(
            docker_host=host, queue=queue_name, status=JobStatus.RUNNING, worker_id="dead",
            container_id=f"c-{queue_name}", lease_expires_at=timezone.now() - timedelta(seconds=5),
        )  # fmt: skip

    def test_a_worker_of_some_queues_adopts_only_their_jobs(self, host):
        reports, mail = self._expired(host, "reports"), self._expired(host, "mail")
        assert queue.adopt_expired("w", 10, queues=["nothing-here"]) == []
        assert ids(queue.adopt_expired("w", 10, queues=["reports"])) == [reports.pk]
        assert ids(queue.adopt_expired("w", 10)) == [mail.pk]  # no queues: every queue

    def test_a_worker_of_some_hosts_adopts_only_their_jobs(self, host):
        other = ExecutorHostFactory(name="other-engine")
        here, there = self._expired(host, "default"), self._expired(other, "default")
        assert ids(queue.adopt_expired("w", 10, hosts=["other-engine"])) == [there.pk]
        assert ids(queue.adopt_expired("w", 10, hosts=["main-engine"], queues=["x"])) == []
        assert ids(queue.adopt_expired("w", 10, hosts=["main-engine"])) == [here.pk]


@pytest.mark.django_db(transaction=True)
class TestCommands:
    @pytest.fixture
    def engine(self):
        return FakeExecutor.engine_for("unix:///fake/engine.sock")

    def test_container_job_submit_queue_and_show(self, fake_host):
        out = StringIO()
        call_command(
            "container_job", "submit", "--host", fake_host.name, "--image", IMAGE,
            "--queue", "reports", "--", "true", stdout=out,
        )  # fmt: skip
        job = ContainerJob.objects.get(pk=out.getvalue().strip())
        assert job.queue == "reports"
        shown = StringIO()
        call_command("container_job", "show", str(job.pk), stdout=shown)
        assert re.search(r"^Queue:\s+reports$", shown.getvalue(), re.M)

    def test_process_container_jobs_queue_runs_only_those_queues(self, fake_host, engine):
        jobs = {
            name: queue.submit(host=fake_host, image=IMAGE, command="true", queue=name)
            for name in ("reports", "mail", "default")
        }
        call_command(
            "process_container_jobs", "--burst", "--queue", "reports", "--queue", "mail",
            stdout=StringIO(),
        )  # fmt: skip
        status = {name: ContainerJob.objects.get(pk=job.pk).status for name, job in jobs.items()}
        assert status == {
            "reports": JobStatus.COMPLETED,
            "mail": JobStatus.COMPLETED,
            "default": JobStatus.QUEUED,
        }
        call_command("process_container_jobs", "--burst", stdout=StringIO())
        assert ContainerJob.objects.get(pk=jobs["default"].pk).status == JobStatus.COMPLETED

    def test_a_burst_worker_does_not_wait_for_another_queues_expired_job(self, fake_host, engine):
        held = ContainerJobFactory(
            docker_host=fake_host, queue="mail", status=JobStatus.RUNNING, worker_id="dead",
            container_id="gone", lease_expires_at=timezone.now() - timedelta(seconds=5),
        )  # fmt: skip
        mine = queue.submit(host=fake_host, image=IMAGE, command="true", queue="reports")
        assert Worker(burst=True, concurrency=2, queues=["reports"]).run() == 1
        assert ContainerJob.objects.get(pk=mine.pk).status == JobStatus.COMPLETED
        held.refresh_from_db()
        assert (held.status, held.worker_id) == (JobStatus.RUNNING, "dead")

    def test_a_worker_without_queues_takes_every_queue(self, fake_host, engine):
        for name in ("reports", "default"):
            queue.submit(host=fake_host, image=IMAGE, command="true", queue=name)
        assert Worker(burst=True, concurrency=2).run() == 2
        assert Worker(burst=True, queues=["reports"]).queues == ["reports"]


class TestAdmin:
    def test_the_list_shows_the_queue_and_filters_by_it(self, admin_client, host, settings):
        settings.TASKS = {"default": {"BACKEND": "x", "QUEUES": ["default", "reports"]}}
        reports = queue.submit(host=host, image=IMAGE, queue="reports")
        queue.submit(host=host, image=IMAGE)
        page = admin_client.get(reverse(CHANGELIST)).content.decode()
        assert "column-queue" in page and ">reports</td>" in page
        assert "?queue=reports" in page and "?queue=default" in page  # the filter's choices
        filtered = admin_client.get(reverse(CHANGELIST), {"queue": "reports"}).content.decode()
        assert str(reports.pk)[:8] in filtered
        assert filtered.count("<code>") == 1
        named = admin_client.get(reverse(CHANGELIST), {"queue": "adhoc"}).content.decode()
        assert "?queue=adhoc" in named and "<code>" not in named

    def test_the_filter_costs_no_query(self, admin_client, host, django_assert_num_queries):
        queue.submit(host=host, image=IMAGE, queue="reports")
        url = reverse(CHANGELIST)
        # session, user, bounded count, page of jobs (hosts joined), hosts for the filter
        with django_assert_num_queries(5):
            assert admin_client.get(url, {"queue": "reports"}).status_code == 200


def test_the_admins_add_form_takes_a_queue_or_leaves_the_default(admin_client, host):
    url = reverse("admin:container_manager_containerjob_add")
    form = {"docker_host": host.pk, "docker_image": IMAGE, "command": "true",
            "priority": 0, "max_retries": 0}  # fmt: skip
    assert admin_client.post(url, form).status_code == 302
    assert admin_client.post(url, {**form, "queue": "reports"}).status_code == 302
    assert sorted(ContainerJob.objects.values_list("queue", flat=True)) == ["default", "reports"]
