"""The queue (submit, claim, adopt_expired, backoff_delay, cancel), settings and system checks."""

from __future__ import annotations

import shlex
import threading
from datetime import timedelta

import pytest
from django.core import checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.utils import timezone

from container_manager import queue
from container_manager.conf import DEFAULT_EXECUTORS, DEFAULTS, get_settings
from container_manager.exceptions import ConfigurationError, InvalidJobError
from container_manager.models import ContainerJob, JobAttempt, JobStatus
from container_manager.testing.factories import (
    ContainerJobFactory,
    EnvironmentVariableTemplateFactory,
    ExecutorHostFactory,
)


def cm_settings(settings, **overrides):
    """Merge ``overrides`` into the CONTAINER_MANAGER dict the autouse fixture set."""
    settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, **overrides}


@pytest.fixture
def host(db):
    return ExecutorHostFactory(name="main-engine")


def queued(host, **fields):
    return ContainerJobFactory(docker_host=host, **fields)


def ids(claimed):
    return [c.job.pk for c in claimed]


# ---- submit ----------------------------------------------------------------------------------


class TestSubmit:
    def test_valid_submit_returns_a_saved_queued_job(self, host):
        job = queue.submit(
            host=host,
            image="busybox:1.36",
            command="echo hello",
            name="greeting",
            memory_limit=64,
            cpu_limit=0.5,
            timeout_seconds=60,
            priority=5,
            max_retries=2,
        )
        saved = ContainerJob.objects.get(pk=job.pk)
        assert saved.status == JobStatus.QUEUED
        assert (saved.docker_image, saved.command, saved.name) == (
            "busybox:1.36",
            "echo hello",
            "greeting",
        )
        assert (saved.memory_limit, saved.cpu_limit, saved.timeout_seconds) == (64, 0.5, 60)
        assert (saved.priority, saved.max_retries, saved.attempt_count) == (5, 2, 0)
        assert saved.docker_host == host

    def test_host_by_name_and_by_pk(self, host):
        assert queue.submit(host="main-engine", image="busybox").docker_host == host
        assert queue.submit(host=host.pk, image="busybox").docker_host == host
        assert queue.submit(host=str(host.pk), image="busybox").docker_host == host

    def test_unknown_host_lists_known_hosts(self, host):
        ExecutorHostFactory(name="other-engine")
        with pytest.raises(InvalidJobError) as caught:
            queue.submit(host="nowhere", image="busybox")
        assert str(caught.value) == (
            "Unknown host 'nowhere' (known hosts: main-engine, other-engine)"
        )

    def test_unknown_host_when_none_is_registered(self, db):
        with pytest.raises(InvalidJobError, match=r"known hosts: none registered"):
            queue.submit(host="nowhere", image="busybox")

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"image": ""}, "docker_image: This field cannot be blank."),
            ({"image": "Not/Valid"}, "docker_image: 'Not/Valid' is not a valid image reference"),
            ({"memory_limit": 1}, "memory_limit: Memory limit must be between 6"),
            ({"cpu_limit": -2.0}, "cpu_limit: CPU limit must be between 0.01"),
            ({"timeout_seconds": 0}, "timeout_seconds: Timeout must be between 1"),
            ({"command": "echo 'x"}, "command: The command cannot be split"),
            ({"environment": "NOT VALID"}, "override_environment: environment line 1"),
            ({"environment": {"1BAD": "x"}}, "'1BAD' is not a valid variable name"),
            ({"working_directory": "relative"}, "working_directory: The working directory must"),
            ({"max_retries": 1000}, "max_retries: Ensure this value is less than or equal to 100."),
        ],
        ids=lambda v: str(v)[:40],
    )
    def test_bad_input_names_the_problem(self, host, fields, message):
        values = {"host": host, "image": "busybox", **fields}
        with pytest.raises(InvalidJobError) as caught:
            queue.submit(**values)
        assert str(caught.value).startswith("Invalid job: ")
        assert message in str(caught.value)
        assert not ContainerJob.objects.exists()

    def test_inactive_host_is_refused(self, db):
        ExecutorHostFactory(name="retired", is_active=False)
        with pytest.raises(InvalidJobError, match=r"docker_host: Host 'retired' is not active\."):
            queue.submit(host="retired", image="busybox")

    def test_several_problems_in_one_message(self, host):
        with pytest.raises(InvalidJobError) as caught:
            queue.submit(host=host, image="", memory_limit=1)
        assert "docker_image:" in str(caught.value)
        assert "memory_limit:" in str(caught.value)

    @pytest.mark.parametrize(
        "argv",
        [
            ["echo", "hello world"],
            ["sh", "-c", "echo $HOME && exit 3"],
            ["python", "-c", "print('it''s')"],
            ["printf", "%s\n", "a b", ""],
        ],
    )
    def test_command_list_is_shlex_joined_and_round_trips(self, host, argv):
        job = queue.submit(host=host, image="busybox", command=argv)
        assert job.command == shlex.join(argv)
        assert ContainerJob.objects.get(pk=job.pk).argv == argv

    def test_environment_dict(self, host):
        job = queue.submit(host=host, image="busybox", environment={"A": "1", "URL": "x=y z"})
        assert job.override_environment == "A=1\nURL=x=y z"
        assert ContainerJob.objects.get(pk=job.pk).environment == {"A": "1", "URL": "x=y z"}

    def test_environment_text(self, host):
        job = queue.submit(host=host, image="busybox", environment="# c\nA=1\n")
        assert job.environment == {"A": "1"}

    def test_template_by_name_and_instance(self, host):
        template = EnvironmentVariableTemplateFactory(
            name="shared", environment_variables="APP_ENV=prod\nLEVEL=info"
        )
        by_name = queue.submit(
            host=host, image="busybox", template="shared", environment={"LEVEL": "debug"}
        )
        assert by_name.environment_template == template
        assert ContainerJob.objects.get(pk=by_name.pk).environment == {
            "APP_ENV": "prod",
            "LEVEL": "debug",
        }
        by_instance = queue.submit(host=host, image="busybox", template=template)
        assert by_instance.environment == {"APP_ENV": "prod", "LEVEL": "info"}

    def test_unknown_template(self, host):
        with pytest.raises(InvalidJobError, match="Unknown environment template 'missing'"):
            queue.submit(host=host, image="busybox", template="missing")

    def test_environment_value_with_newline_is_refused(self, host):
        with pytest.raises(InvalidJobError, match="A"):
            queue.submit(host=host, image="busybox", environment={"A": "x\nINJECTED=1"})


# ---- claim -----------------------------------------------------------------------------------


class TestClaim:
    def test_priority_then_age(self, host):
        now = timezone.now()
        old_low = queued(host, priority=0, created_at=now - timedelta(minutes=3))
        new_high = queued(host, priority=10, created_at=now - timedelta(minutes=1))
        old_high = queued(host, priority=10, created_at=now - timedelta(minutes=2))
        new_low = queued(host, priority=0, created_at=now)
        negative = queued(host, priority=-5, created_at=now - timedelta(hours=1))

        assert ids(queue.claim("w", 10)) == [
            old_high.pk,
            new_high.pk,
            old_low.pk,
            new_low.pk,
            negative.pk,
        ]

    def test_limit_takes_the_best_first(self, host):
        now = timezone.now()
        first = queued(host, priority=1, created_at=now)
        second = queued(host, priority=0, created_at=now - timedelta(minutes=1))
        queued(host, priority=0, created_at=now)
        assert ids(queue.claim("w", 2)) == [first.pk, second.pk]

    @pytest.mark.parametrize("limit", [0, -1])
    def test_nothing_asked_nothing_claimed(self, host, limit):
        queued(host)
        assert queue.claim("w", limit) == []
        assert ContainerJob.objects.get().status == JobStatus.QUEUED

    def test_empty_queue(self, host):
        assert queue.claim("w", 5) == []

    def test_run_after(self, host):
        due = queued(host, run_after=timezone.now() - timedelta(seconds=1))
        queued(host, run_after=timezone.now() + timedelta(minutes=5))
        assert ids(queue.claim("w", 10)) == [due.pk]

    def test_only_queued_jobs(self, host):
        for status in set(JobStatus) - {JobStatus.QUEUED}:
            queued(host, status=status, worker_id="someone")
        waiting = queued(host)
        assert ids(queue.claim("w", 10)) == [waiting.pk]

    def test_claimed_job_state(self, host):
        job = queued(host, attempt_count=2)
        before = timezone.now()

        (claimed,) = queue.claim("worker-1", 1)

        assert claimed.adopted is False
        assert claimed.job.pk == job.pk
        job.refresh_from_db()
        assert job.status == JobStatus.LAUNCHING
        assert job.attempt_count == 3
        assert job.worker_id == "worker-1"
        lease = job.lease_expires_at - before
        assert timedelta(seconds=29) < lease < timedelta(seconds=31)
        assert not JobAttempt.objects.filter(job=job).exists(), "the job thread writes it"
        queue.record_attempt(claimed.job)
        queue.record_attempt(claimed.job, adopted=True)  # as an adopter does: still one row
        attempt = JobAttempt.objects.get(job=job)
        assert attempt.number == 3
        assert attempt.container_name == f"cm-{job.pk}-3"
        assert (attempt.host, attempt.worker_id, attempt.status) == (
            host,
            "worker-1",
            JobStatus.LAUNCHING,
        )
        assert claimed.job.docker_host == host
        assert claimed.job.attempt_count == 3

    def test_a_batch_of_fresh_jobs_and_retries_each_take_their_next_attempt(self, host):
        counts = [0, 2, 0, 1, 2]
        jobs = [queued(host, attempt_count=n) for n in counts]

        claimed = queue.claim("w", 10)

        assert {c.job.pk: c.job.attempt_count for c in claimed} == {
            j.pk: n + 1 for j, n in zip(jobs, counts, strict=True)
        }
        stored = dict(ContainerJob.objects.values_list("pk", "attempt_count"))
        assert stored == {j.pk: n + 1 for j, n in zip(jobs, counts, strict=True)}
        assert set(ContainerJob.objects.values_list("status", "worker_id")) == {
            (JobStatus.LAUNCHING, "w")
        }

    def test_lease_length_from_settings(self, host, settings):
        cm_settings(settings, LEASE_SECONDS=120)
        queued(host)
        before = timezone.now()
        (claimed,) = queue.claim("w", 1)
        lease = claimed.job.lease_expires_at - before
        assert timedelta(seconds=119) < lease < timedelta(seconds=121)

    def test_claim_clears_a_stale_cancel_request(self, host):
        job = queued(host, cancel_requested=True)
        queue.claim("w", 1)
        job.refresh_from_db()
        assert job.cancel_requested is False

    def test_claiming_twice_never_returns_the_same_job(self, host):
        for _ in range(5):
            queued(host)
        first = ids(queue.claim("w1", 3))
        second = ids(queue.claim("w2", 3))
        third = ids(queue.claim("w3", 3))
        assert len(first) == 3
        assert len(second) == 2
        assert third == []
        assert not set(first) & set(second)
        assert ContainerJob.objects.filter(status=JobStatus.LAUNCHING).count() == 5

    def test_max_concurrent_jobs_counts_other_workers(self, db):
        host = ExecutorHostFactory(max_concurrent_jobs=3)
        queued(host, status=JobStatus.RUNNING, worker_id="other-1")
        queued(host, status=JobStatus.LAUNCHING, worker_id="other-2")
        queued(host, status=JobStatus.COMPLETED)  # finished jobs do not count
        waiting = [queued(host) for _ in range(3)]

        claimed = queue.claim("w", 10)
        assert len(claimed) == 1
        assert claimed[0].job.pk in {j.pk for j in waiting}
        assert queue.claim("w", 10) == []
        assert ContainerJob.objects.filter(status=JobStatus.QUEUED).count() == 2

    def test_max_concurrent_jobs_per_host(self, db):
        small = ExecutorHostFactory(max_concurrent_jobs=1)
        large = ExecutorHostFactory(max_concurrent_jobs=5)
        for _ in range(3):
            queued(small)
            queued(large)
        claimed = queue.claim("w", 10)
        per_host = [c.job.docker_host_id for c in claimed]
        assert per_host.count(small.pk) == 1
        assert per_host.count(large.pk) == 3

    def test_full_host_yields_nothing(self, db):
        host = ExecutorHostFactory(max_concurrent_jobs=1)
        queued(host, status=JobStatus.RUNNING, worker_id="other")
        queued(host)
        assert queue.claim("w", 5) == []

    def test_inactive_hosts_are_skipped(self, db):
        retired = ExecutorHostFactory(is_active=False)
        live = ExecutorHostFactory()
        queued(retired, priority=100)
        on_live = queued(live)
        assert ids(queue.claim("w", 10)) == [on_live.pk]

    def test_hosts_filter(self, db):
        a = ExecutorHostFactory(name="engine-a")
        b = ExecutorHostFactory(name="engine-b")
        on_a = queued(a)
        on_b = queued(b)
        assert ids(queue.claim("w", 10, hosts=["engine-b"])) == [on_b.pk]
        assert ids(queue.claim("w", 10, hosts=["engine-c"])) == []
        assert ids(queue.claim("w", 10, hosts=["engine-a", "engine-b"])) == [on_a.pk]

    @pytest.mark.django_db(transaction=True)
    def test_concurrent_claimers_share_out_jobs_within_capacity(self):
        host = ExecutorHostFactory(max_concurrent_jobs=10)
        for _ in range(16):
            queued(host)
        workers = 6
        barrier = threading.Barrier(workers)
        results: dict[str, list[object]] = {}
        errors: list[BaseException] = []

        def claimer(worker_id: str) -> None:
            try:
                barrier.wait()
                results[worker_id] = ids(queue.claim(worker_id, 4))
            except BaseException as err:  # noqa: BLE001 - reported by the assertion below
                errors.append(err)
            finally:
                connection.close()

        threads = [threading.Thread(target=claimer, args=(f"w{n}",)) for n in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

        assert errors == []
        claimed = [pk for pks in results.values() for pk in pks]
        assert len(claimed) == len(set(claimed)) == 10
        for worker_id, pks in results.items():
            assert set(
                ContainerJob.objects.filter(pk__in=pks).values_list("worker_id", flat=True)
            ) <= {worker_id}
        assert ContainerJob.objects.filter(status=JobStatus.LAUNCHING).count() == 10
        launching = ContainerJob.objects.filter(status=JobStatus.LAUNCHING)
        assert set(launching.values_list("attempt_count", flat=True)) == {1}

    def test_batch_is_filled_past_jobs_of_a_nearly_full_host(self, db):
        crowded = ExecutorHostFactory(max_concurrent_jobs=1)
        roomy = ExecutorHostFactory(max_concurrent_jobs=10)
        for _ in range(10):
            queued(crowded, priority=10)
        for _ in range(3):
            queued(roomy, priority=0)
        assert len(queue.claim("w", 3)) == 3

    @pytest.mark.parametrize("batch", [1, 5, 20])
    def test_query_count_is_constant_in_the_batch_size(self, db, django_assert_num_queries, batch):
        host = ExecutorHostFactory(max_concurrent_jobs=100)
        other = ExecutorHostFactory(max_concurrent_jobs=100)
        for n in range(batch):
            queued(host if n % 2 else other)
        queued(host, status=JobStatus.RUNNING, worker_id="other")
        # SAVEPOINT, hosts, busy counts, one candidate scan per host with room (2 here), one
        # scan of jobs that name no host, UPDATE, RELEASE SAVEPOINT (the savepoint pair is
        # claim's atomic() inside the test's transaction). The candidates are read whole and
        # the attempt rows are written by the job threads, so nothing is read twice.
        with django_assert_num_queries(8):
            claimed = queue.claim("w", batch)
        assert len(claimed) == batch

    def test_query_count_grows_only_with_hosts_that_have_room(self, db, django_assert_num_queries):
        full = ExecutorHostFactory(max_concurrent_jobs=1)
        queued(full, status=JobStatus.RUNNING, worker_id="other")
        queued(full)
        ExecutorHostFactory(is_active=False)
        for _ in range(3):
            queued(ExecutorHostFactory(max_concurrent_jobs=5))
        # As above, with three candidate scans: the full and the inactive host cost none.
        with django_assert_num_queries(9):
            assert len(queue.claim("w", 10)) == 3

    def test_query_count_when_nothing_is_due(self, db, django_assert_num_queries):
        host = ExecutorHostFactory()
        queued(host, run_after=timezone.now() + timedelta(hours=1))
        # SAVEPOINT, hosts, busy counts, the host's candidates, jobs naming no host, RELEASE.
        with django_assert_num_queries(6):
            assert queue.claim("w", 5) == []


# ---- adopt_expired ----------------------------------------------------------------------------


class TestAdoptExpired:
    def test_only_expired_leases_are_adopted(self, host):
        now = timezone.now()
        expired = queued(
            host,
            status=JobStatus.RUNNING,
            worker_id="dead",
            attempt_count=2,
            container_id="c1",
            lease_expires_at=now - timedelta(seconds=5),
        )
        queued(
            host,
            status=JobStatus.RUNNING,
            worker_id="alive",
            attempt_count=1,
            lease_expires_at=now + timedelta(seconds=30),
        )
        queued(host)  # queued: nothing to adopt
        queued(host, status=JobStatus.COMPLETED, lease_expires_at=now - timedelta(hours=1))

        adopted = queue.adopt_expired("rescuer", 10)

        assert ids(adopted) == [expired.pk]
        assert adopted[0].adopted is True
        expired.refresh_from_db()
        assert expired.worker_id == "rescuer"
        assert expired.attempt_count == 2
        assert expired.status == JobStatus.RUNNING
        assert expired.container_id == "c1"
        assert expired.lease_expires_at > now
        assert not JobAttempt.objects.exists()

    def test_launching_jobs_are_adopted_too(self, host):
        job = queued(
            host,
            status=JobStatus.LAUNCHING,
            worker_id="dead",
            lease_expires_at=timezone.now() - timedelta(seconds=1),
        )
        assert ids(queue.adopt_expired("rescuer", 5)) == [job.pk]

    def test_limit(self, host):
        past = timezone.now() - timedelta(minutes=1)
        for n in range(3):
            queued(
                host,
                status=JobStatus.RUNNING,
                worker_id=f"dead-{n}",
                lease_expires_at=past - timedelta(seconds=n),
            )
        assert len(queue.adopt_expired("rescuer", 2)) == 2
        assert queue.adopt_expired("rescuer", 0) == []
        assert len(queue.adopt_expired("other", 5)) == 1

    def test_old_worker_can_no_longer_write(self, host):
        job = queued(
            host,
            status=JobStatus.RUNNING,
            worker_id="dead",
            lease_expires_at=timezone.now() - timedelta(seconds=1),
        )
        queue.adopt_expired("rescuer", 1)
        assert job.mark_finished("dead", JobStatus.COMPLETED, exit_code=0) is False
        job.refresh_from_db()
        assert (job.status, job.worker_id) == (JobStatus.RUNNING, "rescuer")


# ---- backoff_delay -----------------------------------------------------------------------------


class TestBackoff:
    SAMPLES = 200

    def delays(self, attempt):
        return [queue.backoff_delay(attempt) for _ in range(self.SAMPLES)]

    @pytest.mark.parametrize(("attempt", "ceiling"), [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0)])
    def test_grows_exponentially_with_jitter(self, db, attempt, ceiling):
        delays = self.delays(attempt)
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        # Jittered across the range, not a fixed value (these fail with odds below 1e-19).
        assert min(delays) < ceiling * 0.6
        assert max(delays) > ceiling * 0.9

    def test_capped(self, db):
        delays = self.delays(20)
        assert all(150.0 <= d <= 300.0 for d in delays)

    def test_settings_override(self, settings):
        cm_settings(settings, RETRY_BACKOFF_BASE=10.0, RETRY_BACKOFF_MAX=50.0)
        assert all(5.0 <= d <= 10.0 for d in self.delays(1))
        assert all(10.0 <= d <= 20.0 for d in self.delays(2))
        assert all(20.0 <= d <= 40.0 for d in self.delays(3))
        assert all(25.0 <= d <= 50.0 for d in self.delays(4))  # 80 capped at 50
        assert all(25.0 <= d <= 50.0 for d in self.delays(30))

    @pytest.mark.parametrize("attempt", [0, -3])
    def test_first_attempt_floor(self, db, attempt):
        assert all(1.0 <= d <= 2.0 for d in self.delays(attempt))

    def test_capped_for_any_attempt(self, db):
        assert 150.0 <= queue.backoff_delay(5000) <= 300.0


# ---- cancel -------------------------------------------------------------------------------------


class TestCancel:
    def test_cancel_by_id(self, host):
        job = queued(host)
        assert queue.cancel(str(job.pk)) is True
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED

    def test_cancel_by_uuid_and_instance(self, host):
        by_uuid, by_instance = queued(host), queued(host)
        assert queue.cancel(by_uuid.pk) is True
        assert queue.cancel(by_instance) is True
        assert ContainerJob.objects.filter(status=JobStatus.CANCELLED).count() == 2

    def test_cancel_running_job_by_id(self, host):
        job = queued(host, status=JobStatus.RUNNING, worker_id="w")
        assert queue.cancel(str(job.pk)) is True
        job.refresh_from_db()
        assert (job.status, job.cancel_requested) == (JobStatus.RUNNING, True)

    def test_cancel_finished_job(self, host):
        job = queued(host, status=JobStatus.COMPLETED)
        assert queue.cancel(str(job.pk)) is False

    @pytest.mark.parametrize("job_id", ["not-a-uuid", "00000000-0000-0000-0000-000000000000", ""])
    def test_unknown_id(self, db, job_id):
        with pytest.raises(InvalidJobError, match=f"No job with id {job_id!r}"):
            queue.cancel(job_id)


# ---- settings and system checks ------------------------------------------------------------------


class TestSettings:
    def test_defaults(self, settings):
        del settings.CONTAINER_MANAGER
        assert get_settings() == DEFAULTS
        assert get_settings().EXECUTORS == DEFAULT_EXECUTORS

    def test_override_is_read_at_access_time(self, settings):
        cm_settings(settings, POLL_INTERVAL=0.25)
        assert get_settings().POLL_INTERVAL == 0.25
        cm_settings(settings, POLL_INTERVAL=2.0)
        assert get_settings().POLL_INTERVAL == 2.0

    def test_unknown_key(self, settings):
        cm_settings(settings, POLL_INTERVALL=1.0, BOGUS=1)
        with pytest.raises(ConfigurationError) as caught:
            get_settings()
        message = str(caught.value)
        assert message.startswith("Unknown CONTAINER_MANAGER keys: BOGUS, POLL_INTERVALL;")
        assert "POLL_INTERVAL" in message.split("known keys are", 1)[1]

    def test_executors_override_merges_with_defaults(self, settings):
        custom = "container_manager.executors.fake.FakeExecutor"
        cm_settings(settings, EXECUTORS={"custom": custom})
        assert {**DEFAULT_EXECUTORS, "custom": custom} == get_settings().EXECUTORS

    def test_executors_override_can_replace_a_default(self, settings):
        cm_settings(settings, EXECUTORS={"docker": "myapp.executors.Docker"})
        executors = get_settings().EXECUTORS
        assert executors["docker"] == "myapp.executors.Docker"
        assert executors["swarm"] == DEFAULT_EXECUTORS["swarm"]

    def test_defaults_are_not_shared(self, settings):
        get_settings().EXECUTORS["mutated"] = "x"
        assert "mutated" not in get_settings().EXECUTORS
        assert "mutated" not in DEFAULT_EXECUTORS


def check_ids() -> set[str]:
    return {message.id for message in checks.run_checks() if message.id}


class TestSystemChecks:
    def test_check_command_passes(self, capsys):
        call_command("check")
        assert "System check identified no issues" in capsys.readouterr().out

    def test_unimportable_executor_path(self, settings):
        cm_settings(settings, EXECUTORS={"broken": "no.such.module.Executor"})
        with pytest.raises(SystemCheckError) as caught:
            call_command("check")
        assert "container_manager.E002" in str(caught.value)
        assert "no.such.module.Executor" in str(caught.value)

    def test_executor_path_that_is_not_an_executor(self, settings):
        cm_settings(settings, EXECUTORS={"wrong": "collections.OrderedDict"})
        assert "container_manager.E002" in check_ids()

    def test_unknown_settings_key(self, settings):
        cm_settings(settings, NOPE=1)
        assert "container_manager.E001" in check_ids()

    def test_log_tail_too_small(self, settings):
        cm_settings(settings, LOG_TAIL_BYTES=10)
        assert "container_manager.E003" in check_ids()

    def test_short_lease_warns(self, settings):
        cm_settings(settings, LEASE_SECONDS=2.0, POLL_INTERVAL=1.0)
        assert "container_manager.W001" in check_ids()

    def test_default_settings_raise_nothing(self):
        assert not {i for i in check_ids() if i.startswith("container_manager.")}

    @pytest.mark.parametrize("key", ["LEASE_SECONDS", "LOG_TAIL_BYTES"])
    def test_wrongly_typed_value_is_reported(self, settings, key):
        cm_settings(settings, **{key: "30"})
        assert "container_manager.E001" in check_ids()


@pytest.mark.django_db
class TestHostChecks:
    """``manage.py check --database default`` looks at each active host's configuration,
    without contacting its engine."""

    def test_good_hosts_pass(self, capsys):
        ExecutorHostFactory(name="local", connection_string="unix:///var/run/docker.sock")
        call_command("check", databases=["default"])
        assert "System check identified no issues" in capsys.readouterr().out

    def test_missing_tls_files_are_reported_with_the_host(self, tmp_path):
        ExecutorHostFactory(
            name="secure",
            connection_string="tcp://127.0.0.1:2376",
            tls_enabled=True,
            tls_ca_cert=str(tmp_path / "missing-ca.pem"),
            tls_client_cert=str(tmp_path / "missing-cert.pem"),
            tls_client_key=str(tmp_path / "missing-key.pem"),
        )
        with pytest.raises(SystemCheckError) as caught:
            call_command("check", databases=["default"])
        assert "container_manager.E004" in str(caught.value)
        assert "host 'secure'" in str(caught.value)
        assert "TLS configuration" in str(caught.value)

    def test_inactive_hosts_are_not_checked(self, tmp_path, capsys):
        ExecutorHostFactory(
            name="retired",
            connection_string="tcp://127.0.0.1:2376",
            tls_enabled=True,
            tls_ca_cert=str(tmp_path / "missing-ca.pem"),
            is_active=False,
        )
        call_command("check", databases=["default"])
        assert "no issues" in capsys.readouterr().out

    def test_without_database_flag_no_host_is_read(self, django_assert_num_queries):
        with django_assert_num_queries(0):
            call_command("check")
