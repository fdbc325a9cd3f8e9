"""Models: full_clean() validation, one test per rule; JobStatus; argv; environment; transitions."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.utils import timezone

from container_manager.exceptions import InvalidJobError, JobStateError
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.testing.factories import (
    ContainerJobFactory,
    EnvironmentVariableTemplateFactory,
    ExecutorHostFactory,
)

pytestmark = pytest.mark.django_db

DIGEST = "sha256:" + "0123456789abcdef" * 4


def job_errors(**fields) -> dict[str, list[str]]:
    """The full_clean() errors of an unsaved job on an active host, by field ({} if valid)."""
    values = {"docker_host": ExecutorHostFactory(), "docker_image": "busybox:latest", **fields}
    try:
        ContainerJob(**values).full_clean()
    except ValidationError as err:
        return err.message_dict
    return {}


def host_errors(**fields) -> dict[str, list[str]]:
    """The full_clean() errors of an unsaved host ({} if valid)."""
    values = {"name": "engine-under-test", "connection_string": "unix:///run/docker.sock", **fields}
    try:
        ExecutorHost(**values).full_clean()
    except ValidationError as err:
        return err.message_dict
    return {}


# ---- ContainerJob: image -------------------------------------------------------------------


class TestImageReference:
    def test_empty_image(self):
        assert job_errors(docker_image="") == {"docker_image": ["This field cannot be blank."]}

    def test_whitespace_image(self):
        assert job_errors(docker_image="   ") == {
            "docker_image": ["An image is required (for example 'busybox:latest')."]
        }

    @pytest.mark.parametrize(
        "image",
        [
            "Busybox",
            "busybox:Latest Tag",
            "busy box",
            "busybox@sha256:abc",
            "busybox@md5:" + "0" * 32,
            "busybox@sha256:" + "A" * 64,
            "-busybox",
            "busybox:",
            "registry.example.com:port/app",
        ],
    )
    def test_malformed_reference(self, image):
        assert job_errors(docker_image=image) == {
            "docker_image": [
                f"{image!r} is not a valid image reference: expected "
                "[registry/]name[:tag][@sha256:digest] with a lower-case name."
            ]
        }

    def test_overlong_reference(self):
        image = "a" * 501
        errors = job_errors(docker_image=image)
        assert "not a valid image reference" in " ".join(errors["docker_image"])

    @pytest.mark.parametrize(
        "image",
        [
            "busybox",
            "busybox:1.36",
            "busybox:latest",
            "library/busybox",
            "registry.example.com:5000/team/app:v1",
            "localhost:5000/app",
            "ghcr.io/org/some_app-name:1.2.3-rc.1",
            f"busybox@{DIGEST}",
            f"registry.example.com:5000/team/app:v1@{DIGEST}",
        ],
    )
    def test_valid_reference(self, image):
        assert job_errors(docker_image=image) == {}


# ---- ContainerJob: limits ------------------------------------------------------------------


class TestLimits:
    def test_negative_memory_limit(self):
        errors = job_errors(memory_limit=-5)["memory_limit"]
        assert "Memory limit must be between 6 and 1048576 MB, not -5." in errors

    @pytest.mark.parametrize("mb", [0, 5, 1024 * 1024 + 1, 10**9])
    def test_absurd_memory_limit(self, mb):
        assert job_errors(memory_limit=mb) == {
            "memory_limit": [f"Memory limit must be between 6 and 1048576 MB, not {mb}."]
        }

    @pytest.mark.parametrize("mb", [6, 512, 1024 * 1024])
    def test_valid_memory_limit(self, mb):
        assert job_errors(memory_limit=mb) == {}

    def test_memory_bound_follows_settings(self, settings):
        settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "MAX_MEMORY_MB": 1024}
        assert job_errors(memory_limit=2048) == {
            "memory_limit": ["Memory limit must be between 6 and 1024 MB, not 2048."]
        }

    @pytest.mark.parametrize("cores", [-1.0, 0.0, 0.009, 1024.5, 1e9, float("nan"), float("inf")])
    def test_negative_or_absurd_cpu_limit(self, cores):
        assert job_errors(cpu_limit=cores) == {
            "cpu_limit": [f"CPU limit must be between 0.01 and 1024.0 cores, not {cores}."]
        }

    @pytest.mark.parametrize("cores", [0.01, 0.5, 2, 1024.0])
    def test_valid_cpu_limit(self, cores):
        assert job_errors(cpu_limit=cores) == {}

    def test_negative_timeout(self):
        errors = job_errors(timeout_seconds=-3)["timeout_seconds"]
        assert "Timeout must be between 1 and 2592000 seconds." in errors

    @pytest.mark.parametrize("seconds", [0, 30 * 24 * 3600 + 1, 10**9])
    def test_absurd_timeout(self, seconds):
        assert job_errors(timeout_seconds=seconds) == {
            "timeout_seconds": ["Timeout must be between 1 and 2592000 seconds."]
        }

    @pytest.mark.parametrize("seconds", [1, 3600, 30 * 24 * 3600])
    def test_valid_timeout(self, seconds):
        assert job_errors(timeout_seconds=seconds) == {}

    def test_too_many_retries(self):
        assert job_errors(max_retries=101) == {
            "max_retries": ["Ensure this value is less than or equal to 100."]
        }


# ---- ContainerJob: command, environment, directory, host ------------------------------------


class TestJobFields:
    def test_malformed_environment_line(self):
        assert job_errors(override_environment="GOOD=1\nNOT A VARIABLE") == {
            "override_environment": ["environment line 2 is not KEY=VALUE"]
        }

    def test_invalid_environment_name(self):
        errors = job_errors(override_environment="1BAD=x")["override_environment"]
        assert errors == [
            "environment line 1: '1BAD' is not a valid variable name "
            "(letters, digits and _, not starting with a digit)"
        ]

    def test_valid_environment_with_comments(self):
        assert job_errors(override_environment="# c\n\nA=1\nURL=http://h/?a=b") == {}

    def test_malformed_template_environment(self):
        template = EnvironmentVariableTemplateFactory.build(environment_variables="oops")
        with pytest.raises(ValidationError) as caught:
            template.full_clean()
        assert caught.value.message_dict == {
            "environment_variables": ["environment line 1 is not KEY=VALUE"]
        }

    @pytest.mark.parametrize("command", ["echo 'unbalanced", 'sh -c "echo hi'])
    def test_unbalanced_quotes_in_command(self, command):
        assert job_errors(command=command) == {
            "command": ["The command cannot be split into arguments: No closing quotation."]
        }

    def test_empty_command_is_the_image_default(self):
        assert job_errors(command="") == {}

    def test_relative_working_directory(self):
        assert job_errors(working_directory="tmp/work") == {
            "working_directory": ["The working directory must be an absolute path without '..'."]
        }

    def test_absolute_working_directory(self):
        assert job_errors(working_directory="/tmp/work") == {}

    def test_inactive_host(self):
        host = ExecutorHostFactory(name="retired", is_active=False)
        assert job_errors(docker_host=host) == {"docker_host": ["Host 'retired' is not active."]}

    def test_job_without_host_is_valid_and_left_to_placement(self):
        job = ContainerJob(docker_image="busybox")
        job.full_clean()
        assert job.docker_host_id is None

    def test_several_problems_reported_together(self):
        errors = job_errors(memory_limit=1, working_directory="rel", command="'")
        assert set(errors) == {"memory_limit", "working_directory", "command"}


# ---- ExecutorHost ----------------------------------------------------------------------------


class TestExecutorHost:
    @pytest.mark.parametrize(
        "url",
        [
            "unix:///var/run/docker.sock",
            "unix:///path",
            "tcp://host:2376",
            "tcp://10.0.0.5:2375",
            "tcp://[::1]:2376",
        ],
    )
    def test_valid_engine_url(self, url):
        assert host_errors(connection_string=url, insecure_tcp=url.startswith("tcp://")) == {}

    @pytest.mark.parametrize(
        "url",
        [
            "http://x",
            "https://host:2376",
            "tcp://host",
            "unix://relative/path",
            "unix:///",
            "/var/run/docker.sock",
            "tcp://host:2376/path",
            "ssh://user@host",
        ],
    )
    def test_rejected_engine_url(self, url):
        assert host_errors(connection_string=url) == {
            "connection_string": [
                "Not an engine URL: use unix:///path/to/docker.sock or tcp://host:port."
            ]
        }

    def test_empty_engine_url(self):
        assert host_errors(connection_string="") == {
            "connection_string": ["An engine URL is required."]
        }

    def test_unknown_executor_type(self):
        assert host_errors(executor_type="nomad") == {
            "executor_type": [
                "Unknown executor 'nomad'; registered: docker, fake, kubernetes, swarm."
            ]
        }

    def test_executor_type_registered_in_settings(self, settings):
        settings.CONTAINER_MANAGER = {
            **settings.CONTAINER_MANAGER,
            "EXECUTORS": {"other": "container_manager.executors.fake.FakeExecutor"},
        }
        assert host_errors(executor_type="other") == {}

    def test_tls_on_unix_url(self):
        assert host_errors(tls_enabled=True) == {
            "tls_enabled": ["TLS applies to tcp:// engine URLs only."]
        }

    def test_tls_on_tcp_url(self):
        assert host_errors(connection_string="tcp://host:2376", tls_enabled=True) == {}

    @pytest.mark.parametrize(
        "fields", [{"tls_client_cert": "/certs/cert.pem"}, {"tls_client_key": "/certs/key.pem"}]
    )
    def test_client_cert_without_key(self, fields):
        assert host_errors(connection_string="tcp://host:2376", tls_enabled=True, **fields) == {
            "tls_client_key": ["Give both the client certificate and its key, or neither."]
        }

    def test_client_cert_with_key(self):
        errors = host_errors(
            connection_string="tcp://host:2376",
            tls_enabled=True,
            tls_client_cert="/certs/cert.pem",
            tls_client_key="/certs/key.pem",
        )
        assert errors == {}

    @pytest.mark.parametrize("field", ["max_concurrent_jobs", "weight"])
    def test_at_least_one(self, field):
        assert host_errors(**{field: 0}) == {
            field: ["Ensure this value is greater than or equal to 1."]
        }

    def test_duplicate_name(self):
        ExecutorHostFactory(name="engine-under-test")
        assert host_errors() == {"name": ["Executor host with this Name already exists."]}

    def test_record_health(self):
        host = ExecutorHostFactory()
        host.record_health(False, "refused")
        host.record_health(False, "refused again")
        host.refresh_from_db()
        assert host.health_check_failures == 2
        assert host.last_health_error == "refused again"
        assert host.last_health_check is not None
        host.record_health(True)
        host.refresh_from_db()
        assert (host.health_check_failures, host.last_health_error) == (0, "")


# ---- JobStatus ------------------------------------------------------------------------------


class TestJobStatus:
    def test_terminal_set(self):
        assert {s.value for s in JobStatus.terminal()} == {
            "completed",
            "failed",
            "timeout",
            "cancelled",
        }

    def test_active_set(self):
        assert {s.value for s in JobStatus.active()} == {"launching", "running"}

    @pytest.mark.parametrize("status", list(JobStatus))
    def test_is_terminal(self, status):
        assert status.is_terminal == (
            status.value in {"completed", "failed", "timeout", "cancelled"}
        )

    def test_every_status_is_queued_active_or_terminal(self):
        assert set(JobStatus) == {JobStatus.QUEUED} | JobStatus.active() | JobStatus.terminal()

    def test_job_created_without_status_is_queued(self):
        job = ContainerJob.objects.create(docker_host=ExecutorHostFactory(), docker_image="busybox")
        job.refresh_from_db()
        assert job.status == JobStatus.QUEUED
        assert job.attempt_count == 0
        assert job.completed_at is None


# ---- what to run ------------------------------------------------------------------------------


class TestArgvAndEnvironment:
    @pytest.mark.parametrize(
        ("command", "argv"),
        [
            ("", []),
            ("echo hello", ["echo", "hello"]),
            ("echo 'hello world'", ["echo", "hello world"]),
            ('sh -c "echo $HOME; ls"', ["sh", "-c", "echo $HOME; ls"]),
            ("echo hi && rm -rf /", ["echo", "hi", "&&", "rm", "-rf", "/"]),
            ("echo $HOME | cat > out", ["echo", "$HOME", "|", "cat", ">", "out"]),
        ],
    )
    def test_argv_is_shlex_split_without_a_shell(self, command, argv):
        assert ContainerJobFactory.build(command=command).argv == argv

    def test_argv_of_unbalanced_quotes(self):
        with pytest.raises(InvalidJobError, match="cannot be split"):
            _ = ContainerJobFactory.build(command="echo 'x").argv

    def test_environment_of_job_alone(self):
        job = ContainerJobFactory(override_environment="A=1\nB=x=y")
        assert job.environment == {"A": "1", "B": "x=y"}

    def test_environment_merges_template_and_job_wins(self):
        template = EnvironmentVariableTemplateFactory(
            environment_variables="APP_ENV=prod\nLOG_LEVEL=info\nSHARED=template"
        )
        job = ContainerJobFactory(
            environment_template=template, override_environment="LOG_LEVEL=debug\nOWN=1"
        )
        assert job.environment == {
            "APP_ENV": "prod",
            "LOG_LEVEL": "debug",
            "SHARED": "template",
            "OWN": "1",
        }

    def test_environment_variables_factory_synonym(self):
        job = ContainerJobFactory(environment_variables="KEY1=value1\nKEY2=value2")
        assert job.override_environment == "KEY1=value1\nKEY2=value2"
        assert job.environment == {"KEY1": "value1", "KEY2": "value2"}

    def test_duration(self):
        job = ContainerJobFactory.build()
        assert job.duration is None
        start = timezone.now() - timedelta(seconds=90)
        job.started_at, job.completed_at = start, start + timedelta(seconds=30)
        assert job.duration == 30.0


# ---- transitions -------------------------------------------------------------------------------


def claimed_job(status: JobStatus = JobStatus.RUNNING, worker_id: str = "worker-a") -> ContainerJob:
    return ContainerJobFactory(
        status=status,
        worker_id=worker_id,
        container_id="c0ffee",
        lease_expires_at=timezone.now() + timedelta(seconds=30),
    )


class TestTransitions:
    def test_cancel_queued_job(self):
        job = ContainerJobFactory()
        assert job.cancel() is True
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED
        assert job.completed_at is not None
        assert job.last_error == "Cancelled before launch."

    def test_cancel_is_idempotent(self):
        job = ContainerJobFactory()
        job.cancel()
        job.refresh_from_db()
        first_completed = job.completed_at

        assert job.cancel() is True
        assert ContainerJob.objects.get(pk=job.pk).cancel() is True
        job.refresh_from_db()
        assert job.status == JobStatus.CANCELLED
        assert job.completed_at == first_completed

    @pytest.mark.parametrize("status", [JobStatus.LAUNCHING, JobStatus.RUNNING])
    def test_cancel_active_job_asks_its_worker(self, status):
        job = claimed_job(status)
        assert job.cancel() is True
        job.refresh_from_db()
        assert job.cancel_requested is True
        assert job.status == status
        assert job.completed_at is None

    @pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT])
    def test_cancel_finished_job_is_refused(self, status):
        job = ContainerJobFactory(status=status)
        assert job.cancel() is False
        job.refresh_from_db()
        assert job.status == status

    def test_cancel_uses_the_database_state_not_the_instance(self):
        job = ContainerJobFactory()
        stale = ContainerJob.objects.get(pk=job.pk)
        ContainerJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, worker_id="w")
        assert stale.cancel() is True
        job.refresh_from_db()
        assert (job.status, job.cancel_requested) == (JobStatus.RUNNING, True)

    @pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.LAUNCHING, JobStatus.RUNNING])
    def test_mark_finished_with_non_terminal_status(self, status):
        job = claimed_job()
        with pytest.raises(JobStateError, match=f"{status} is not a terminal status"):
            job.mark_finished("worker-a", status)
        job.refresh_from_db()
        assert job.status == JobStatus.RUNNING

    def test_mark_finished_by_the_holding_worker(self):
        job = claimed_job()
        assert job.mark_finished("worker-a", JobStatus.COMPLETED, exit_code=0, stdout_log="hi\n")
        job.refresh_from_db()
        assert job.status == JobStatus.COMPLETED
        assert (job.exit_code, job.stdout_log) == (0, "hi\n")
        assert (job.worker_id, job.lease_expires_at) == ("", None)
        assert job.completed_at is not None

    def test_transition_guarded_by_worker_id_does_not_take_for_another_worker(self):
        job = claimed_job(worker_id="worker-a")
        assert job.mark_finished("worker-b", JobStatus.FAILED, exit_code=1) is False
        assert job.status == JobStatus.RUNNING  # the instance is not changed either
        job.refresh_from_db()
        assert (job.status, job.worker_id, job.exit_code) == (JobStatus.RUNNING, "worker-a", None)

    def test_mark_finished_twice_does_not_overwrite(self):
        job = claimed_job()
        assert job.mark_finished("worker-a", JobStatus.COMPLETED, exit_code=0)
        assert job.mark_finished(None, JobStatus.FAILED, exit_code=1) is False
        job.refresh_from_db()
        assert (job.status, job.exit_code) == (JobStatus.COMPLETED, 0)

    def test_mark_running(self):
        job = claimed_job(JobStatus.LAUNCHING)
        assert job.mark_running("worker-a", "abc123") is True
        job.refresh_from_db()
        assert (job.status, job.container_id) == (JobStatus.RUNNING, "abc123")
        assert job.started_at is not None
        assert job.mark_running("worker-b", "other") is False

    def test_requeue(self):
        job = claimed_job()
        later = timezone.now() + timedelta(minutes=1)
        assert job.requeue("worker-a", later, "engine went away") is True
        job.refresh_from_db()
        assert job.status == JobStatus.QUEUED
        assert (job.run_after, job.last_error, job.container_id) == (later, "engine went away", "")
        assert (job.worker_id, job.lease_expires_at) == ("", None)
        assert job.requeue("worker-a", None, "again") is False


def test_string_forms():
    host = ExecutorHostFactory(name="engine-1", connection_string="tcp://h:2376")
    template = EnvironmentVariableTemplateFactory(name="shared")
    job = ContainerJobFactory(docker_host=host, name="", docker_image="busybox:1.36")
    attempt = JobAttempt.objects.create(job=job, number=2, host=host, container_name="cm-x-2")
    assert str(host) == "engine-1 (tcp://h:2376)"
    assert str(template) == "shared"
    assert str(job) == "busybox:1.36 [queued]"
    assert str(attempt) == f"{job.pk} attempt 2 [launching]"


def test_the_models_and_the_shipped_migrations_agree():
    out = StringIO()
    call_command("makemigrations", "container_manager", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


class TestHostsAreATrustBoundary:
    """A host receives every placed job's environment: plain tcp:// needs saying so, a unix
    path must be a socket, the fake engine exists only where settings register it."""

    def test_plain_tcp_must_be_marked_insecure(self):
        assert host_errors(connection_string="tcp://10.0.0.5:2375") == {
            "tls_enabled": [
                "A tcp:// engine without TLS receives every job's environment in the clear:"
                " enable TLS, or mark the host insecure (insecure_tcp)."
            ]
        }
        assert host_errors(connection_string="tcp://10.0.0.5:2375", insecure_tcp=True) == {}

    def test_a_unix_path_that_exists_must_be_a_socket(self, tmp_path):
        regular = tmp_path / "docker.sock"
        regular.write_text("not a socket")
        assert host_errors(connection_string=f"unix://{regular}") == {
            "connection_string": ["That path is not a socket."]
        }
        # A path missing here may be a socket on the worker's machine.
        assert host_errors(connection_string=f"unix://{tmp_path}/elsewhere.sock") == {}

    def test_the_fake_executor_is_not_registered_by_default(self, settings):
        settings.CONTAINER_MANAGER = {}
        errors = host_errors(executor_type="fake")
        assert list(errors) == ["executor_type"]
        assert "fake" not in errors["executor_type"][0].split("registered: ")[1]

    def test_check_warns_about_every_insecure_host(self):
        from django.core.management import call_command
        from django.core.management.base import SystemCheckError

        ExecutorHost.objects.create(
            name="plain", connection_string="tcp://127.0.0.1:2375", insecure_tcp=True
        )
        from container_manager.checks import check_hosts

        warnings = check_hosts(databases=["default"])
        assert [(w.id, w.obj) for w in warnings] == [("container_manager.W003", "host 'plain'")]
        with pytest.raises(SystemCheckError):
            call_command("check", "--database", "default", "--fail-level", "WARNING")


def test_a_failed_health_check_records_the_status_not_the_answer(monkeypatch):
    """An endpoint's answer body is never copied into the host's record."""
    from container_manager.exceptions import ExecutorError
    from container_manager.executors.fake import FakeExecutor
    from container_manager.health import check_host

    host = ExecutorHost.objects.create(
        name="rogue", connection_string="unix:///fake/rogue.sock", executor_type="fake"
    )

    def answer(self):
        raise ExecutorError("Engine version: <html>internal secrets here</html>", status_code=502)

    monkeypatch.setattr(FakeExecutor, "get_version", answer)
    assert check_host(host) == (False, "The engine answered HTTP 502.")
    host.refresh_from_db()
    assert host.last_health_error == "The engine answered HTTP 502."


def test_check_warns_when_the_engine_keeps_less_output_than_the_tail(settings):
    from container_manager.checks import check_settings

    settings.CONTAINER_MANAGER = {"ENGINE_LOG_MAX_BYTES": 4096, "LOG_TAIL_BYTES": 8192}
    [warning] = [m for m in check_settings() if m.id == "container_manager.W005"]
    assert "read after the exit (Swarm services" in warning.msg
    settings.CONTAINER_MANAGER = {"ENGINE_LOG_MAX_BYTES": 8192, "LOG_TAIL_BYTES": 8192}
    assert not [m for m in check_settings() if m.id == "container_manager.W005"]


def test_the_host_check_is_silent_before_the_tables_exist(monkeypatch):
    """``migrate`` runs the database checks first: a fresh database has no tables yet."""
    from container_manager import checks

    assert checks._hosts_table_exists() is True
    ExecutorHost.objects.create(name="plain", connection_string="tcp://10.0.0.9:2375",
                                insecure_tcp=True)  # fmt: skip
    assert [m.id for m in checks.check_hosts(databases=["default"])] == ["container_manager.W003"]
    monkeypatch.setattr(checks, "_hosts_table_exists", lambda: False)
    assert checks.check_hosts(databases=["default"]) == []


def test_migrate_on_a_fresh_database_prints_no_warning(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["SQLITE_PATH"] = str(tmp_path / "fresh.sqlite3")
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Applying container_manager.0001_initial... OK" in done.stdout
    assert "W002" not in done.stdout + done.stderr
    assert "WARNINGS" not in done.stdout + done.stderr
