"""Acceptance: the container spec, host policy and registry credentials from the commands a
user types (``container_job submit/show``, ``container_host add/show``,
``container_registry``). In-process through ``call_command``; the shell's view (exit code,
no traceback, nothing secret printed) through a real ``manage.py`` on a throwaway SQLite
file. Hosts use the fake executor: no engine is needed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from container_manager.models import ContainerJob, ExecutorHost, RegistryCredential

ROOT = Path(__file__).resolve().parents[2]
FAKE_URL = "unix:///fake/engine.sock"
REGISTRY = "registry.local:5000"
PRIVATE_IMAGE = f"{REGISTRY}/team/app:1.0"
SECRET = "s3cret-value-never-shown"
PASSWORD = "registry-password-never-shown"

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    """``call_command`` with string arguments, as typed; returns (stdout, stderr)."""
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def policy_host(fake_host: ExecutorHost) -> ExecutorHost:
    """The fake host with a policy set through ``container_host add --update``."""
    run(
        "container_host", "add", fake_host.name, "--update",
        "--allow-bind-prefix", "/srv/data", "--allow-bind-prefix", "/mnt/shared",
        "--allow-network", "backend", "--allow-network", "metrics",
        "--default-network", "backend", "--allow-capability", "NET_ADMIN", "--gpus", "2",
    )  # fmt: skip
    fake_host.refresh_from_db()
    return fake_host


@pytest.fixture
def credential(monkeypatch: pytest.MonkeyPatch) -> RegistryCredential:
    monkeypatch.setenv("CM_TEST_REGISTRY_PASSWORD", PASSWORD)
    run(
        "container_registry", "add", "team", "--registry", REGISTRY, "--username", "robot",
        "--password-ref", "env:CM_TEST_REGISTRY_PASSWORD",
    )  # fmt: skip
    return RegistryCredential.objects.get(name="team")


def submit(host: ExecutorHost, *flags: str, image: str = "busybox:latest") -> ContainerJob:
    out, _ = run("container_job", "submit", "--host", host.name, "--image", image, *flags)
    return ContainerJob.objects.get(pk=out.strip())


# ---- container_job submit ---------------------------------------------------------------


def test_submit_sets_every_spec_field(
    policy_host: ExecutorHost, credential: RegistryCredential
) -> None:
    job = submit(
        policy_host,
        "--entrypoint", '["/bin/sh", "-c"]', "--user", "1000:1000",
        "--mount", "volume:data:/data", "--mount", "bind:/srv/data/in:/in",
        "--mount", "bind:/mnt/shared/out:/out:rw", "--mount", "tmpfs:/scratch:64",
        "--network", "metrics", "--secret-env", "TOKEN=env:API_TOKEN",
        "--secret-env", "CERT=file:/run/secrets/cert", "--registry-credential", "team",
        "--gpus", "2", "--shm-size-mb", "128", "--pids-limit", "100", "--read-only-rootfs",
        "--cap-add", "NET_ADMIN", "--cap-drop", "ALL", "--cap-drop", "MKNOD",
        "--", "echo $HOME",
        image=PRIVATE_IMAGE,
    )  # fmt: skip
    assert job.entrypoint == ["/bin/sh", "-c"] and job.argv == ["echo $HOME"]
    assert job.user == "1000:1000"
    assert job.mounts == [
        {"type": "volume", "source": "data", "target": "/data", "read_only": False},
        {"type": "bind", "source": "/srv/data/in", "target": "/in", "read_only": True},
        {"type": "bind", "source": "/mnt/shared/out", "target": "/out", "read_only": False},
        {"type": "tmpfs", "target": "/scratch", "read_only": False, "size_mb": 64},
    ]
    assert job.network == "metrics"
    assert job.secret_environment == {"TOKEN": "env:API_TOKEN", "CERT": "file:/run/secrets/cert"}
    assert job.registry_credential == credential
    assert (job.gpus, job.shm_size_mb, job.pids_limit) == (2, 128, 100)
    assert job.read_only_rootfs is True and job.privileged is False
    assert (job.cap_add, job.cap_drop) == (["NET_ADMIN"], ["ALL", "MKNOD"])


def test_submit_defaults_leave_the_spec_empty_and_pick_the_registrys_credential(
    fake_host: ExecutorHost, credential: RegistryCredential
) -> None:
    plain = submit(fake_host)
    assert (plain.entrypoint, plain.user, plain.mounts, plain.network) == ([], "", [], "")
    assert (plain.secret_environment, plain.registry_credential) == ({}, None)
    assert (plain.gpus, plain.shm_size_mb, plain.pids_limit) == (None, None, None)
    assert (plain.read_only_rootfs, plain.privileged, plain.cap_add, plain.cap_drop) == (
        False, False, [], [],
    )  # fmt: skip
    assert submit(fake_host, image=PRIVATE_IMAGE).registry_credential == credential


def test_submit_privileged_and_root_where_the_host_allows_them(fake_host: ExecutorHost) -> None:
    run("container_host", "add", fake_host.name, "--update", "--allow-root", "--allow-privileged")
    job = submit(fake_host, "--user", "0", "--privileged")
    assert (job.user, job.privileged) == ("0", True)


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--entrypoint", "/bin/sh"], "entrypoint"),
        (["--entrypoint", '{"a": 1}'], "entrypoint"),
        (["--entrypoint", '["sh", ""]'], "entrypoint"),
        (["--user", "nobody"], "user"),
        (["--user", "0"], "user"),
        (["--mount", "bind:/etc:/in"], "mounts"),
        (["--mount", "tmpfs:/scratch"], "mounts"),
        (["--mount", "volume:data:relative"], "mounts"),
        (["--mount", "volume:a:/x", "--mount", "volume:b:/x"], "mounts"),
        (["--network", "frontend"], "network"),
        (["--secret-env", "TOKEN"], "secret_environment"),
        (["--secret-env", "1BAD=env:X"], "secret_environment"),
        (["--registry-credential", "nope"], "registry_credential"),
        (["--gpus", "3"], "gpus"),
        (["--shm-size-mb", "0"], "shm_size_mb"),
        (["--pids-limit", "0"], "pids_limit"),
        (["--cap-add", "SYS_ADMIN"], "cap_add"),
        (["--cap-drop", "not a cap"], "cap_drop"),
        (["--privileged"], "privileged"),
    ],
)
def test_submit_refusals_name_the_field(
    policy_host: ExecutorHost, flags: list[str], field: str
) -> None:
    with pytest.raises(CommandError, match=rf"^Invalid job: (.*; )?{field}: "):
        submit(policy_host, *flags)
    assert not ContainerJob.objects.exists()


def test_submit_refuses_a_plain_secret_without_repeating_it(policy_host: ExecutorHost) -> None:
    for flags in (["--secret-env", f"TOKEN={SECRET}"], ["--secret-env", SECRET]):
        with pytest.raises(CommandError) as refused:
            submit(policy_host, *flags)
        assert "secret_environment" in str(refused.value)
        assert SECRET not in str(refused.value)
    assert not ContainerJob.objects.exists()


def test_submit_a_credential_for_another_registry_is_refused(
    fake_host: ExecutorHost, credential: RegistryCredential
) -> None:
    with pytest.raises(CommandError, match="registry_credential: The credential is for"):
        submit(fake_host, "--registry-credential", "team", image="busybox:latest")


# ---- container_job show ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_show_prints_the_spec_and_each_attempts_record_without_secrets(
    policy_host: ExecutorHost, credential: RegistryCredential, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CM_TEST_TOKEN", SECRET)
    job = submit(
        policy_host,
        "--user", "1000", "--mount", "volume:data:/data", "--mount", "bind:/srv/data/in:/in",
        "--secret-env", "TOKEN=env:CM_TEST_TOKEN", "--pids-limit", "50", "--cap-drop", "ALL",
        "--read-only-rootfs", "--", "true",
        image=PRIVATE_IMAGE,
    )  # fmt: skip
    shown, _ = run("container_job", "show", str(job.pk))
    assert "User:        1000\n" in shown
    assert "Mounts:      volume:data:/data:rw; bind:/srv/data/in:/in:ro\n" in shown
    assert "Secrets:     TOKEN -> env:CM_TEST_TOKEN\n" in shown
    assert f"Registry:    team (robot@{REGISTRY})\n" in shown
    assert "Pids limit:  50\n" in shown and "Cap drop:    ALL\n" in shown
    assert "Root fs:     read-only\n" in shown
    for unset in ("Entrypoint:", "Network:", "GPUs:", "/dev/shm:", "Cap add:", "Privileged:"):
        assert unset not in shown

    call_command("process_container_jobs", "--burst", stdout=StringIO())
    shown, _ = run("container_job", "show", str(job.pk))
    assert "Status:      completed" in shown
    ran = [line for line in shown.splitlines() if line.startswith("    ran with: ")]
    assert len(ran) == 1
    assert f"image={PRIVATE_IMAGE}" in ran[0] and "user=1000" in ran[0]
    assert "secret_environment=TOKEN;" in ran[0] and "pids_limit=50" in ran[0]
    assert "mounts=volume:data:/data:rw, bind:/srv/data/in:/in:ro" in ran[0]
    assert f"registry={REGISTRY}" in ran[0] and "registry_username=robot" in ran[0]
    assert "network=backend" in ran[0], "the host's default network"
    assert "read_only_rootfs" in ran[0] and "no_new_privileges" in ran[0]
    assert SECRET not in shown and PASSWORD not in shown


# ---- container_host policy ----------------------------------------------------------------


def test_host_policy_flags_round_trip(policy_host: ExecutorHost) -> None:
    assert policy_host.allowed_bind_prefixes == ["/srv/data", "/mnt/shared"]
    assert policy_host.allowed_networks == ["backend", "metrics"]
    assert policy_host.default_network == "backend"
    assert policy_host.allowed_capabilities == ["NET_ADMIN"]
    assert (policy_host.gpus, policy_host.allow_root, policy_host.allow_privileged) == (
        2, False, False,
    )  # fmt: skip

    out, _ = run(
        "container_host", "add", policy_host.name, "--update", "--allow-root",
        "--allow-privileged", "--allow-network", "", "--default-network", "",
    )  # fmt: skip
    assert "policy: bind prefixes /srv/data, /mnt/shared; networks none;" in out
    policy_host.refresh_from_db()
    assert (policy_host.allow_root, policy_host.allow_privileged) == (True, True)
    assert (policy_host.allowed_networks, policy_host.default_network) == ([], "")
    assert policy_host.allowed_bind_prefixes == ["/srv/data", "/mnt/shared"], "not given: kept"

    run("container_host", "add", policy_host.name, "--update", "--no-allow-root",
        "--no-allow-privileged", "--allow-bind-prefix", "", "--gpus", "0")  # fmt: skip
    policy_host.refresh_from_db()
    assert (policy_host.allow_root, policy_host.allow_privileged, policy_host.gpus) == (
        False, False, 0,
    )  # fmt: skip
    assert policy_host.allowed_bind_prefixes == []


def test_host_add_with_a_policy_registers_it() -> None:
    out, _ = run(
        "container_host", "add", "gpu-box", "--executor", "fake", "--url", FAKE_URL,
        "--gpus", "4", "--allow-capability", "SYS_PTRACE", "--allow-root",
    )  # fmt: skip
    host = ExecutorHost.objects.get(name="gpu-box")
    assert (host.gpus, host.allowed_capabilities, host.allow_root) == (4, ["SYS_PTRACE"], True)
    assert "Registered host 'gpu-box'" in out and "gpus 4" in out


def test_host_add_plain_tcp_needs_insecure_tcp() -> None:
    with pytest.raises(CommandError, match="without TLS receives every job's environment"):
        run("container_host", "add", "remote", "--url", "tcp://127.0.0.1:2375")
    run("container_host", "add", "remote", "--url", "tcp://127.0.0.1:2375", "--insecure-tcp")
    assert ExecutorHost.objects.get(name="remote").insecure_tcp is True
    shown, _ = run("container_host", "show", "remote")
    assert "TLS:          off (plain TCP allowed)\n" in shown
    with pytest.raises(CommandError, match="insecure_tcp"):
        run("container_host", "add", "remote", "--update", "--no-insecure-tcp")


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--allow-bind-prefix", "relative/path"], "allowed_bind_prefixes"),
        (["--allow-bind-prefix", "/srv/../etc"], "allowed_bind_prefixes"),
        (["--allow-network", "bad name"], "allowed_networks"),
        (["--default-network", "bad name"], "default_network"),
        (["--allow-capability", "net admin"], "allowed_capabilities"),
        (["--gpus", "-1"], "gpus"),
    ],
)
def test_host_policy_refusals_name_the_field(
    fake_host: ExecutorHost, flags: list[str], field: str
) -> None:
    with pytest.raises(CommandError, match=rf"^Invalid host: (.*; )?{field}: "):
        run("container_host", "add", fake_host.name, "--update", *flags)
    fake_host.refresh_from_db()
    assert (fake_host.allowed_bind_prefixes, fake_host.allowed_networks) == ([], [])
    assert (fake_host.default_network, fake_host.allowed_capabilities, fake_host.gpus) == (
        "", [], 0,
    )  # fmt: skip


def test_host_show_prints_policy_and_capacity(policy_host: ExecutorHost) -> None:
    shown, _ = run("container_host", "show", policy_host.name)
    assert f"Host:         {policy_host.name}\n" in shown
    assert "Capacity:     unknown (not read yet: run a health check)\n" in shown
    assert "Bind prefixes:/srv/data, /mnt/shared\n" in shown
    assert "Networks:     none, backend, metrics\n" in shown
    assert "Default net:  backend\n" in shown
    assert "Root user:    refused\n" in shown and "Privileged:   refused\n" in shown
    assert "Capabilities: NET_ADMIN\n" in shown and "GPUs:         2\n" in shown

    policy_host.record_health(True, capacity=(4.0, 7982))
    shown, _ = run("container_host", "show", policy_host.name)
    assert "Capacity:     4 CPUs, 7982 MB memory\n" in shown
    with pytest.raises(CommandError, match="Unknown host 'ghost'"):
        run("container_host", "show", "ghost")


# ---- container_registry -------------------------------------------------------------------


def test_registry_add_list_update_remove(
    credential: RegistryCredential, fake_host: ExecutorHost
) -> None:
    assert (credential.registry, credential.username) == (REGISTRY, "robot")
    assert credential.password_reference == "env:CM_TEST_REGISTRY_PASSWORD"

    run("container_registry", "add", "ghcr", "--registry", "ghcr.io", "--username", "bot",
        "--password-ref", "file:/run/secrets/ghcr")  # fmt: skip
    job = submit(fake_host, image=PRIVATE_IMAGE)
    listed, _ = run("container_registry", "list")
    rows = [line.split() for line in listed.splitlines()]
    assert rows == [
        ["NAME", "REGISTRY", "USERNAME", "PASSWORD", "FROM", "JOBS"],
        ["ghcr", "ghcr.io", "bot", "file:/run/secrets/ghcr", "0"],
        ["team", REGISTRY, "robot", "env:CM_TEST_REGISTRY_PASSWORD", "1"],
    ]
    assert PASSWORD not in listed

    with pytest.raises(CommandError, match="already exists; add --update"):
        run("container_registry", "add", "team", "--username", "other")
    out, _ = run("container_registry", "add", "team", "--update", "--username", "deployer")
    assert f"Updated credential 'team': deployer@{REGISTRY}" in out
    credential.refresh_from_db()
    assert credential.username == "deployer"
    assert credential.password_reference == "env:CM_TEST_REGISTRY_PASSWORD", "not given: kept"

    with pytest.raises(CommandError, match=r"'team' cannot be removed: 1 job\(s\) use it"):
        run("container_registry", "remove", "team")
    job.delete()
    out, _ = run("container_registry", "remove", "team")
    assert "Removed credential 'team'." in out
    assert list(RegistryCredential.objects.values_list("name", flat=True)) == ["ghcr"]
    with pytest.raises(CommandError, match="Unknown credential 'team'"):
        run("container_registry", "remove", "team")


@pytest.mark.parametrize("given", [PASSWORD, "env:", "file:relative", "vault:secret/x"])
def test_registry_add_refuses_a_plain_password(given: str) -> None:
    with pytest.raises(CommandError, match="never the password itself") as refused:
        run("container_registry", "add", "team", "--registry", REGISTRY, "--username", "robot",
            "--password-ref", given)  # fmt: skip
    assert PASSWORD not in str(refused.value)
    assert not RegistryCredential.objects.exists()


def test_registry_add_needs_every_option_and_a_valid_registry() -> None:
    with pytest.raises(CommandError, match="needs --registry, --password-ref"):
        run("container_registry", "add", "team", "--username", "robot")
    with pytest.raises(CommandError, match="Invalid credential: registry: "):
        run("container_registry", "add", "team", "--registry", "not a host", "--username",
            "robot", "--password-ref", "env:X")  # fmt: skip
    assert not RegistryCredential.objects.exists()
    listed, _ = run("container_registry", "list")
    assert "No registry credentials" in listed


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
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    migrated = manage("migrate", "--noinput", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    added = manage("container_host", "add", "fake", "--executor", "fake", "--url", FAKE_URL,
                   "--allow-bind-prefix", "/srv/data")  # fmt: skip
    assert added.returncode == 0, added.stderr
    return manage


def test_cli_refusals_exit_1_with_the_field_and_no_traceback(cli: Any) -> None:
    cases = [
        (["container_job", "submit", "--host", "fake", "--image", "busybox",
          "--mount", "bind:/etc:/in"], "mounts: Host fake allows bind mounts only under"),
        (["container_job", "submit", "--host", "fake", "--image", "busybox",
          "--secret-env", f"TOKEN={SECRET}"], "secret_environment"),
        (["container_registry", "add", "team", "--registry", REGISTRY, "--username", "u",
          "--password-ref", PASSWORD], "never the password itself"),
    ]  # fmt: skip
    for args, message in cases:
        done = cli(*args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert SECRET not in done.stderr + done.stdout
        assert PASSWORD not in done.stderr + done.stdout


def test_cli_submit_with_spec_flags_prints_only_the_id(cli: Any) -> None:
    done = cli(
        "container_job", "submit", "--host", "fake", "--image", "busybox",
        "--mount", "bind:/srv/data/in:/in", "--user", "1000", "--", "cat", "/in/x",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert len(job_id) == 36 and done.stdout == f"{job_id}\n"
    shown = cli("container_job", "show", job_id)
    assert "Mounts:      bind:/srv/data/in:/in:ro" in shown.stdout


def test_cli_submit_help_documents_the_spec_options(cli: Any) -> None:
    done = cli("container_job", "submit", "--help")
    assert done.returncode == 0, done.stderr
    documented = [
        "--entrypoint JSON-LIST",
        "--mount MOUNT",
        "--secret-env NAME=REFERENCE",
        "--registry-credential NAME",
        "--cap-add CAP",
        "--read-only-rootfs",
        "tmpfs:/target:SIZE_MB",
        """--entrypoint '["/bin/sh", "-c"]' -- 'echo $HOME'""",
    ]
    for option in documented:
        assert option in done.stdout, option
