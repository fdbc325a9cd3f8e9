"""Acceptance: the commands a user types.

In-process through ``call_command`` (on the test database), and, where the shell's view
matters (what lands on stdout, exit codes, no tracebacks), through real ``manage.py``
processes on a throwaway SQLite file. Hosts that need no engine use the fake executor;
``container_host check`` and the end-to-end run also go to the real Docker engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db.models import ProtectedError

from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobStatus,
)
from container_manager.queue import submit

ROOT = Path(__file__).resolve().parents[2]
FAKE_URL = "unix:///fake/engine.sock"
DEAD_URL = "tcp://127.0.0.1:1"
HELLO = 'echo "Hello from container $(hostname)"; uname -a'

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    """``call_command`` with string arguments, as typed; returns (stdout, stderr)."""
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# ---- manage.py in a subprocess --------------------------------------------------------


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Run ``manage.py`` in a child process on its own migrated SQLite file."""
    env = {**os.environ, "SQLITE_PATH": str(tmp_path_factory.mktemp("cli") / "db.sqlite3")}
    env.pop("DATABASE_URL", None)  # never the real PostgreSQL database
    env["DJANGO_SETTINGS_MODULE"] = "demo.settings"

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    migrated = manage("migrate", "--noinput", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    added = manage("container_host", "add", "fake", "--executor", "fake", "--url", FAKE_URL)
    assert added.returncode == 0, added.stderr
    return manage


def test_cli_submit_prints_only_the_job_id(cli: Any) -> None:
    done = cli(
        "container_job", "submit", "--host", "fake", "--image", "busybox:latest",
        "--name", "cli-job", "--env", "GREETING=hi", "--", "sh", "-c", "echo $GREETING",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert done.stdout == f"{job_id}\n"
    uuid.UUID(job_id)

    shown = cli("container_job", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "Status:      queued" in shown.stdout
    assert "sh -c 'echo $GREETING'" in shown.stdout
    assert "GREETING=hi" in shown.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "fake", "--image", "Not/A Valid:image"], "Invalid job: docker_image"),
        (["--host", "nowhere", "--image", "busybox"], "Unknown host 'nowhere'"),
        (["--host", "fake", "--image", "busybox", "--memory", "1"], "Memory limit"),
        (["--host", "fake", "--image", "busybox", "--env", "NOEQUALS"], "expected KEY=VALUE"),
    ],
)
def test_cli_bad_input_exits_nonzero_without_traceback(
    cli: Any, args: list[str], message: str
) -> None:
    done = cli("container_job", "submit", *args, "--", "true")
    assert done.returncode == 1
    assert done.stdout == ""
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_usage_error_exits_2(cli: Any) -> None:
    done = cli("container_job", "submit", "--host", "local")
    assert done.returncode == 2
    assert "--image" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_check_of_a_dead_engine_fails(cli: Any) -> None:
    assert cli("container_host", "add", "dead", "--url", DEAD_URL, "--insecure-tcp").returncode == 0
    done = cli("container_host", "check", "dead")
    assert done.returncode == 1
    assert "FAILED" in done.stdout
    assert "Traceback" not in done.stderr


# ---- container_host -------------------------------------------------------------------


def test_host_start_timeout_is_set_shown_and_checked(fake_host: ExecutorHost) -> None:
    run("container_host", "add", "fake-engine", "--start-timeout", "90", "--update")
    fake_host.refresh_from_db()
    assert fake_host.start_timeout == 90
    out, _ = run("container_host", "show", "fake-engine")
    assert "Start limit:  90s" in out
    with pytest.raises(CommandError, match="start_timeout"):
        run("container_host", "add", "fake-engine", "--start-timeout", "0", "--update")


def test_host_add_registers_and_list_shows_it(fake_host: ExecutorHost) -> None:
    out, _ = run(
        "container_host", "add", "fake2", "--executor", "fake", "--url", "unix:///fake2.sock",
        "--max-concurrent", "3", "--weight", "50", "--no-pull", "--inactive",
    )  # fmt: skip
    host = ExecutorHost.objects.get(name="fake2")
    assert (host.executor_type, host.connection_string) == ("fake", "unix:///fake2.sock")
    assert (host.max_concurrent_jobs, host.weight) == (3, 50)
    assert not host.auto_pull_images
    assert not host.is_active
    assert "Registered host 'fake2'" in out

    submit(host=fake_host, image="busybox", command="true")
    ContainerJob.objects.update(status=JobStatus.RUNNING)
    out, _ = run("container_host", "list")
    lines = {line.split()[0]: line.split() for line in out.splitlines()}
    header = ["NAME", "URL", "EXECUTOR", "STATE", "RUNNING", "WEIGHT", "LABELS", "HEALTH"]
    assert lines["NAME"] == header
    assert lines["fake-engine"][1:8] == [FAKE_URL, "fake", "active", "1/10", "100", "-", "never"]
    assert lines["fake2"][1:8] == [
        "unix:///fake2.sock",
        "fake",
        "drained",
        "0/3",
        "50",
        "-",
        "never",
    ]


def test_host_list_when_empty() -> None:
    out, _ = run("container_host", "list")
    assert "No hosts registered" in out


def test_host_add_existing_needs_update(fake_host: ExecutorHost) -> None:
    with pytest.raises(CommandError, match="already exists; add --update"):
        run("container_host", "add", fake_host.name, "--url", FAKE_URL)

    run("container_host", "add", fake_host.name, "--update", "--max-concurrent", "2", "--no-pull")
    fake_host.refresh_from_db()
    assert fake_host.max_concurrent_jobs == 2
    assert not fake_host.auto_pull_images
    assert fake_host.executor_type == "fake"  # options not given stay as they were

    run("container_host", "add", "brand-new", "--update", "--url", FAKE_URL, "--executor", "fake")
    assert ExecutorHost.objects.filter(name="brand-new").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "http://example.com"], "Not an engine URL"),
        (["--url", "tcp://10.0.0.5:2375"], "enable TLS, or mark the host insecure"),
        (["--url", FAKE_URL, "--executor", "podman"], "Unknown executor 'podman'"),
        (["--url", FAKE_URL, "--tls"], "TLS applies to tcp://"),
        (["--url", FAKE_URL, "--max-concurrent", "0"], "max_concurrent_jobs"),
        ([], "--url is required"),
        (["--url", "tcp://h:2376", "--tls", "--tls-key", "/no/such/key.pem"], "no such file"),
    ],
)
def test_host_add_bad_input(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("container_host", "add", "bad", *args)
    assert not ExecutorHost.objects.filter(name="bad").exists()


def test_host_add_tls_never_prints_the_key(tmp_path: Path) -> None:
    files = {}
    for name in ("ca", "cert", "key"):
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(f"-----BEGIN SECRET {name.upper()} MATERIAL-----\n")
    out, err = run(
        "container_host", "add", "remote", "--url", "tcp://10.0.0.5:2376", "--tls",
        "--tls-ca", str(files["ca"]), "--tls-cert", str(files["cert"]),
        "--tls-key", str(files["key"]), "--no-tls-verify",
    )  # fmt: skip
    host = ExecutorHost.objects.get(name="remote")
    assert host.tls_enabled
    assert not host.tls_verify
    assert host.tls_client_key == str(files["key"])
    listed, _ = run("container_host", "list")
    assert "SECRET" not in out + err + listed

    with pytest.raises(CommandError, match="both the client certificate and its key"):
        run("container_host", "add", "half", "--url", "tcp://10.0.0.5:2376", "--tls",
            "--tls-key", str(files["key"]))  # fmt: skip


def test_host_check_fake_ok_and_down(fake_host: ExecutorHost) -> None:
    out, _ = run("container_host", "check", fake_host.name)
    assert "OK" in out
    assert "fake-1.0" in out
    fake_host.refresh_from_db()
    assert fake_host.last_health_check is not None
    assert fake_host.health_check_failures == 0

    FakeExecutor.engine_for(FAKE_URL).down = True
    out = StringIO()
    with pytest.raises(CommandError, match="1 of 1 host"):
        call_command("container_host", "check", fake_host.name, stdout=out)
    assert "FAILED" in out.getvalue()
    assert "down" in out.getvalue()
    fake_host.refresh_from_db()
    assert fake_host.health_check_failures == 1
    assert "down" in fake_host.last_health_error
    listed, _ = run("container_host", "list")
    assert "healthy, 1 failed check(s)" in listed


def test_host_check_real_engine(engine_host: ExecutorHost, docker_client: Any) -> None:
    out, _ = run("container_host", "check", engine_host.name)
    assert out.startswith("OK")
    assert docker_client.version()["Version"] in out
    engine_host.refresh_from_db()
    assert engine_host.last_health_check is not None
    assert engine_host.health_check_failures == 0
    assert engine_host.last_health_error == ""
    listed, _ = run("container_host", "list")
    assert "healthy (checked " in listed.splitlines()[1]
    assert f"0/{engine_host.max_concurrent_jobs}" in listed.splitlines()[1]


def test_host_check_dead_engine_fails() -> None:
    dead = ExecutorHost.objects.create(name="dead", connection_string=DEAD_URL)
    out = StringIO()
    with pytest.raises(CommandError, match="failed the health check: dead"):
        call_command("container_host", "check", "dead", stdout=out)
    assert "FAILED  dead" in out.getvalue()
    assert "cannot reach the engine" in out.getvalue()
    dead.refresh_from_db()
    assert dead.health_check_failures == 1
    assert dead.last_health_error


def test_host_list_shortens_a_long_health_error(fake_host: ExecutorHost) -> None:
    fake_host.record_health(False, "x" * 500)
    listed, _ = run("container_host", "list")
    assert "1 failed check(s) (last " in listed
    assert ": " + "x" * 77 + "...\n" in listed


def test_host_check_all_reports_every_host(fake_host: ExecutorHost) -> None:
    ExecutorHost.objects.create(name="dead", connection_string=DEAD_URL)
    out = StringIO()
    with pytest.raises(CommandError, match="1 of 2 host"):
        call_command("container_host", "check", "--all", stdout=out)
    assert "OK      fake-engine" in out.getvalue()
    assert "FAILED  dead" in out.getvalue()


def test_host_check_needs_a_known_name() -> None:
    with pytest.raises(CommandError, match="Unknown host 'ghost'"):
        run("container_host", "check", "ghost")
    with pytest.raises(CommandError, match="No hosts registered"):
        run("container_host", "check", "--all")


def test_host_remove(fake_host: ExecutorHost, monkeypatch: pytest.MonkeyPatch) -> None:
    job = submit(host=fake_host, image="busybox", command="true")
    with pytest.raises(CommandError, match=r"cannot be removed: 1 job\(s\) refer to it"):
        run("container_host", "remove", fake_host.name)
    assert ExecutorHost.objects.filter(pk=fake_host.pk).exists()

    job.delete()
    with monkeypatch.context() as patch:  # a job that arrives between the count and the delete
        patch.setattr(
            ExecutorHost, "delete", lambda self: (_ for _ in ()).throw(ProtectedError("jobs", []))
        )
        with pytest.raises(CommandError, match="cannot be removed: jobs refer to it"):
            run("container_host", "remove", fake_host.name)
    out, _ = run("container_host", "remove", fake_host.name)
    assert "Removed host 'fake-engine'" in out
    assert not ExecutorHost.objects.exists()


# ---- container_job --------------------------------------------------------------------


def test_job_submit_prints_the_id_and_queues_the_job(fake_host: ExecutorHost) -> None:
    EnvironmentVariableTemplate.objects.create(
        name="common", environment_variables="STAGE=test\nAPI_TOKEN=from-template"
    )
    out, _ = run(
        "container_job", "submit", "--host", fake_host.name, "--image", "busybox:1.36",
        "--name", "nightly", "--memory", "64", "--cpu", "0.5", "--timeout", "30",
        "--priority", "5", "--max-retries", "2", "--workdir", "/tmp",
        "--env", "STAGE=prod", "--env-template", "common",
        "--", "sh", "-c", "echo $STAGE && ls -l",
    )  # fmt: skip
    job = ContainerJob.objects.get(pk=out.strip())
    assert out == f"{job.pk}\n"
    assert job.status == JobStatus.QUEUED
    assert job.argv == ["sh", "-c", "echo $STAGE && ls -l"]
    assert (job.memory_limit, job.cpu_limit, job.timeout_seconds) == (64, 0.5, 30)
    assert (job.priority, job.max_retries, job.working_directory) == (5, 2, "/tmp")
    assert job.environment == {"STAGE": "prod", "API_TOKEN": "from-template"}


def test_job_submit_bad_input_is_a_command_error(fake_host: ExecutorHost) -> None:
    with pytest.raises(CommandError, match=r"Invalid job: .*working_directory"):
        run("container_job", "submit", "--host", fake_host.name, "--image", "busybox",
            "--workdir", "relative")  # fmt: skip
    with pytest.raises(CommandError, match="Unknown environment template 'nope'"):
        run("container_job", "submit", "--host", fake_host.name, "--image", "busybox",
            "--env-template", "nope")  # fmt: skip
    with pytest.raises(CommandError, match="expected KEY=VALUE"):
        run("container_job", "submit", "--host", fake_host.name, "--image", "busybox",
            "--env", "=value")  # fmt: skip
    with pytest.raises(CommandError, match="--env A: a value cannot contain a line break"):
        run("container_job", "submit", "--host", fake_host.name, "--image", "busybox",
            "--env", "A=1\nINJECTED=2")  # fmt: skip
    assert not ContainerJob.objects.exists()


def test_job_submit_verbose_says_more_on_stderr(fake_host: ExecutorHost) -> None:
    out, err = run("container_job", "-v", "2", "submit", "--host", fake_host.name,
                   "--image", "busybox")  # fmt: skip
    job = ContainerJob.objects.get()
    assert out == f"{job.pk}\n"
    assert job.command == ""  # no command: the image's default
    assert f"Queued job {job.pk} on host 'fake-engine'" in err


def test_job_show_masks_secrets(fake_host: ExecutorHost) -> None:
    job = submit(
        host=fake_host,
        image="busybox",
        command=["env"],
        environment={"DB_PASSWORD": "hunter2", "MODE": "fast"},
        memory_limit=128,
    )
    out, _ = run("container_job", "show", str(job.pk))
    assert f"Job:         {job.pk}" in out
    assert "Status:      queued" in out
    assert "Host:        fake-engine" in out
    assert "memory 128 MB" in out
    assert "DB_PASSWORD=********" in out
    assert "MODE=fast" in out
    assert "hunter2" not in out

    ContainerJob.objects.filter(pk=job.pk).update(override_environment="not an assignment")
    out, _ = run("container_job", "show", str(job.pk))
    assert "Environment: (unreadable: environment line 1" in out


@pytest.mark.parametrize("action", ["show", "logs", "cancel"])
@pytest.mark.parametrize("job_id", ["not-a-uuid", str(uuid.uuid4())])
def test_job_unknown_id(action: str, job_id: str) -> None:
    with pytest.raises(CommandError, match="No job with id"):
        run("container_job", action, job_id)


def test_job_logs(fake_host: ExecutorHost) -> None:
    job = submit(host=fake_host, image="busybox", command="true")
    out, err = run("container_job", "logs", str(job.pk))
    assert "no output recorded yet: the job is queued" in err

    ContainerJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, stdout_log="so far\n")
    out, err = run("container_job", "logs", str(job.pk), "--stdout")
    assert out == "so far\n"
    assert "the job is running: the end of its output as its worker last recorded it" in err

    ContainerJob.objects.filter(pk=job.pk).update(
        status=JobStatus.COMPLETED,
        stdout_log="line 1\nline 2\n",
        stderr_log="warning\n",
        stdout_truncated=True,
    )
    out, err = run("container_job", "logs", str(job.pk))
    assert out == "----- stdout -----\nline 1\nline 2\n----- stderr -----\nwarning\n"
    assert "stdout was truncated" in err
    out, err = run("container_job", "logs", str(job.pk), "--stdout")
    assert out == "line 1\nline 2\n"
    out, err = run("container_job", "logs", str(job.pk), "--stderr")
    assert (out, err) == ("warning\n", "")


def test_job_cancel(fake_host: ExecutorHost) -> None:
    waiting = submit(host=fake_host, image="busybox", command="true")
    out, _ = run("container_job", "cancel", str(waiting.pk))
    assert out == f"Job {waiting.pk}: cancelled\n"
    out, _ = run("container_job", "cancel", str(waiting.pk))  # idempotent
    assert out == f"Job {waiting.pk}: cancelled\n"
    waiting.refresh_from_db()
    assert waiting.status == JobStatus.CANCELLED

    running = submit(host=fake_host, image="busybox", command="true")
    ContainerJob.objects.filter(pk=running.pk).update(status=JobStatus.RUNNING)
    out, _ = run("container_job", "cancel", str(running.pk))
    assert "cancel requested" in out
    running.refresh_from_db()
    assert running.cancel_requested
    assert running.status == JobStatus.RUNNING

    ContainerJob.objects.filter(pk=running.pk).update(status=JobStatus.COMPLETED)
    with pytest.raises(CommandError, match="already ended as completed"):
        run("container_job", "cancel", str(running.pk))


def test_job_list(fake_host: ExecutorHost) -> None:
    out, _ = run("container_job", "list")
    assert out == "No jobs.\n"
    jobs = [submit(host=fake_host, image="busybox", name=f"j{i}", command="true") for i in range(3)]
    jobs[0].cancel()
    out, _ = run("container_job", "list")
    header = ["ID", "STATUS", "HOST", "IMAGE", "NAME", "EXIT", "CREATED"]
    assert out.splitlines()[0].split() == header
    assert len(out.splitlines()) == 4
    out, _ = run("container_job", "list", "--status", "cancelled")
    assert [line.split()[0] for line in out.splitlines()[1:]] == [str(jobs[0].pk)]
    out, _ = run("container_job", "list", "--status", "queued", "--limit", "1")
    assert len(out.splitlines()) == 2
    out, _ = run("container_job", "list", "--host", "elsewhere")
    assert out == "No jobs.\n"
    with pytest.raises(CommandError, match="--limit must be at least 1"):
        run("container_job", "list", "--limit", "0")


# ---- submit -> worker -> show/logs ----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fake_job_runs_to_completion_through_the_commands(fake_host: ExecutorHost) -> None:
    FakeExecutor.engine_for(FAKE_URL).script(
        FakeOutcome(exit_code=3, stdout="partial\n", stderr="boom\n"), argv_prefix=["false"]
    )
    ok_id = run("container_job", "submit", "--host", fake_host.name, "--image", "busybox",
                "--", "echo", "hello", "world")[0].strip()  # fmt: skip
    bad_id = run("container_job", "submit", "--host", fake_host.name, "--image", "busybox",
                 "--", "false")[0].strip()  # fmt: skip

    run("process_container_jobs", "--burst")

    shown, _ = run("container_job", "show", ok_id)
    assert "Status:      completed" in shown
    assert "Exit code:   0" in shown
    assert run("container_job", "logs", ok_id, "--stdout")[0] == "hello world\n"
    shown, _ = run("container_job", "show", bad_id)
    assert "Status:      failed" in shown
    assert "Exit code:   3" in shown
    assert run("container_job", "logs", bad_id, "--stderr")[0] == "boom\n"


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_real_job_runs_to_completion_through_the_commands(
    engine_host: ExecutorHost, test_image: str, docker_client: Any
) -> None:
    out, _ = run("container_job", "submit", "--host", engine_host.name, "--image", test_image,
                 "--name", "hello", "--", "sh", "-c", HELLO)  # fmt: skip
    job_id = out.strip()

    try:
        worker_out, _ = run("process_container_jobs", "--burst", "--concurrency", "2")
    finally:  # leave nothing behind for later tests that count this session's containers
        for container in docker_client.containers.list(
            all=True, filters={"label": f"container_manager.job={job_id}"}
        ):
            container.remove(force=True)
    assert "1 job(s) processed" in worker_out

    shown, _ = run("container_job", "show", job_id)
    assert "Status:      completed" in shown
    assert "Exit code:   0" in shown
    job = ContainerJob.objects.get(pk=job_id)
    logs, _ = run("container_job", "logs", job_id, "--stdout")
    # The container's hostname is the first 12 characters of its id.
    assert f"Hello from container {job.container_id[:12]}\n" in logs
    assert "Linux" in logs


def test_host_labels_drain_and_undrain(fake_host: ExecutorHost) -> None:
    out, _ = run(
        "container_host",
        "add",
        fake_host.name,
        "--update",
        "--label",
        "gpu",
        "--label",
        "region=eu",
    )
    fake_host.refresh_from_db()
    assert fake_host.labels == {"gpu": "true", "region": "eu"}
    listed, _ = run("container_host", "list")
    assert "gpu=true,region=eu" in listed and "active" in listed
    out, _ = run("container_host", "drain", fake_host.name)
    assert "drained: no new jobs; 0 running job(s) will finish" in out
    fake_host.refresh_from_db()
    assert fake_host.is_active is False
    assert "drained" in run("container_host", "list")[0]
    run("container_host", "undrain", fake_host.name)
    fake_host.refresh_from_db()
    assert fake_host.is_active is True


@pytest.mark.django_db(transaction=True)
def test_submit_without_host_is_placed_by_labels(fake_host: ExecutorHost) -> None:
    run("container_host", "add", fake_host.name, "--update", "--label", "gpu")
    job_id, _ = run(
        "container_job", "submit", "--image", "busybox", "--label", "gpu", "--", "echo", "placed"
    )
    shown, _ = run("container_job", "show", job_id.strip())
    assert "not placed yet; labels required: gpu=true" in shown
    call_command("process_container_jobs", "--burst", stdout=StringIO())
    shown, _ = run("container_job", "show", job_id.strip())
    assert "Status:      completed" in shown
    assert f"Placement:   Placed on {fake_host.name}" in shown


def test_submit_run_after_needs_a_time_zone(fake_host: ExecutorHost) -> None:
    with pytest.raises(CommandError, match="with a time zone"):
        run(
            "container_job",
            "submit",
            "--host",
            fake_host.name,
            "--image",
            "busybox",
            "--run-after",
            "2030-01-01T00:00:00",
            "--",
            "true",
        )
    job_id, _ = run(
        "container_job",
        "submit",
        "--host",
        fake_host.name,
        "--image",
        "busybox",
        "--run-after",
        "2030-01-01T00:00:00+00:00",
        "--",
        "true",
    )
    assert ContainerJob.objects.get(pk=job_id.strip()).run_after.year == 2030
