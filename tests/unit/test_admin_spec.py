"""The admin and the container spec: the job add form (spec fields one per line, validated
by the model against the host's policy, submitted through the queue), the read-only job
page's "Container spec" and each attempt's recorded spec, the host's policy and capacity,
the registry credential admin. No secret value is ever rendered: a secret environment
variable and a registry password are set in this process's environment while the pages
render, and never appear in them."""

from __future__ import annotations

import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.admin.models import ADDITION, LogEntry
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from container_manager import queue
from container_manager.models import ContainerJob, ExecutorHost, JobStatus, RegistryCredential

pytestmark = pytest.mark.django_db

ADD = "admin:container_manager_containerjob_add"
REGISTRY = "registry.local:5000"
IMAGE = f"{REGISTRY}/team/app:1.0"
SECRET = "s3cret-value-never-rendered"
PASSWORD = "registry-password-never-rendered"


def job_url(job: ContainerJob) -> str:
    return reverse("admin:container_manager_containerjob_change", args=[job.pk])


def host_url(host: ExecutorHost) -> str:
    return reverse("admin:container_manager_executorhost_change", args=[host.pk])


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values the worker could resolve, present in this process while pages render."""
    monkeypatch.setenv("CM_TEST_TOKEN", SECRET)
    monkeypatch.setenv("CM_TEST_REGISTRY_PASSWORD", PASSWORD)


@pytest.fixture
def host(fake_host: ExecutorHost) -> ExecutorHost:
    fake_host.allowed_bind_prefixes = ["/srv/data"]
    fake_host.allowed_networks = ["backend"]
    fake_host.allowed_capabilities = ["NET_ADMIN"]
    fake_host.gpus = 1
    fake_host.save()
    return fake_host


@pytest.fixture
def credential(secrets: None) -> RegistryCredential:
    return RegistryCredential.objects.create(
        name="team", registry=REGISTRY, username="robot",
        password_reference="env:CM_TEST_REGISTRY_PASSWORD",
    )  # fmt: skip


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    def make(*codenames: str) -> Client:
        user = django_user_model.objects.create_user(
            f"staff-{'-'.join(codenames) or 'none'}", password="pw", is_staff=True
        )
        user.user_permissions.set(
            Permission.objects.filter(
                content_type__app_label="container_manager", codename__in=codenames
            )
        )
        client = Client()
        client.force_login(user)
        return client

    return make


def add_form(host: ExecutorHost, **fields: str) -> dict[str, str]:
    """The add form as a browser posts it: every field, the given ones filled in."""
    data = {
        "name": "", "docker_host": str(host.pk), "required_labels": "{}",
        "docker_image": "busybox:latest", "command": "", "working_directory": "",
        "environment_template": "", "override_environment": "", "entrypoint": "", "user": "",
        "mounts": "", "network": "", "secret_environment": "", "registry_credential": "",
        "gpus": "", "shm_size_mb": "", "pids_limit": "", "cap_add": "", "cap_drop": "",
        "memory_limit": "", "cpu_limit": "", "timeout_seconds": "", "priority": "0",
        "max_retries": "0", "run_after_0": "", "run_after_1": "", "_save": "Save",
    }  # fmt: skip
    data.update(fields)
    return data


def form_errors(response: Any) -> dict[str, list[str]]:
    return {k: list(v) for k, v in response.context["adminform"].form.errors.items()}


# ---- adding a job -----------------------------------------------------------------------


def test_add_form_submits_a_job_with_the_spec_fields(
    admin_client: Client, host: ExecutorHost, credential: RegistryCredential
) -> None:
    response = admin_client.post(reverse(ADD), add_form(
        host, name="from-admin", docker_image=IMAGE, command="echo $HOME",
        entrypoint="/bin/sh\n-c", user="1000:1000",
        mounts="volume:data:/data\nbind:/srv/data/in:/in\n\ntmpfs:/scratch:64",
        network="backend", secret_environment="TOKEN=env:CM_TEST_TOKEN\nCERT = file:/run/c",
        registry_credential=str(credential.pk), gpus="1", shm_size_mb="64", pids_limit="100",
        read_only_rootfs="on", cap_add="net_admin", cap_drop="ALL\nMKNOD", memory_limit="64",
    ))  # fmt: skip
    assert response.status_code == 302, form_errors(response)
    job = ContainerJob.objects.get()
    assert (job.name, job.docker_host, job.status) == ("from-admin", host, JobStatus.QUEUED)
    assert job.entrypoint == ["/bin/sh", "-c"] and job.argv == ["echo", "$HOME"]
    assert job.user == "1000:1000" and job.network == "backend"
    assert job.mounts == [
        {"type": "volume", "source": "data", "target": "/data", "read_only": False},
        {"type": "bind", "source": "/srv/data/in", "target": "/in", "read_only": True},
        {"type": "tmpfs", "target": "/scratch", "read_only": False, "size_mb": 64},
    ]
    assert job.secret_environment == {"TOKEN": "env:CM_TEST_TOKEN", "CERT": "file:/run/c"}
    assert job.registry_credential == credential
    assert (job.gpus, job.shm_size_mb, job.pids_limit, job.memory_limit) == (1, 64, 100, 64)
    assert job.read_only_rootfs and not job.privileged
    assert job.spec().cap_add == ("NET_ADMIN",) and job.cap_drop == ["ALL", "MKNOD"]
    entry = LogEntry.objects.get()
    assert (entry.action_flag, entry.object_id) == (ADDITION, str(job.pk))
    assert SECRET not in str(job.__dict__) and PASSWORD not in str(job.__dict__)


def test_add_form_goes_through_the_queue(
    admin_client: Client, host: ExecutorHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[dict[str, Any]] = []
    real = queue.submit

    def spy(**keywords: Any) -> ContainerJob:
        submitted.append(keywords)
        return real(**keywords)

    monkeypatch.setattr(queue, "submit", spy)
    response = admin_client.post(reverse(ADD), add_form(host, mounts="volume:data:/data"))
    assert response.status_code == 302, form_errors(response)
    assert len(submitted) == 1 and submitted[0]["host"] == host
    assert submitted[0]["mounts"] == ["volume:data:/data"]
    assert ContainerJob.objects.get().mounts == [
        {"type": "volume", "source": "data", "target": "/data", "read_only": False}
    ]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"mounts": "bind:/etc:/in"}, "mounts", "allows bind mounts only under: /srv/data"),
        ({"mounts": "tmpfs:/scratch"}, "mounts", "tmpfs mount is written tmpfs:/target:SIZE_MB"),
        ({"user": "0"}, "user", "does not allow jobs to run as root"),
        ({"user": "nobody"}, "user", "A user is numeric"),
        ({"network": "frontend"}, "network", "does not allow that network"),
        ({"cap_add": "SYS_ADMIN"}, "cap_add", "does not allow adding SYS_ADMIN"),
        ({"privileged": "on"}, "privileged", "does not allow privileged jobs"),
        ({"gpus": "2"}, "gpus", "declares 1 GPUs"),
        ({"pids_limit": "0"}, "pids_limit", "Must be between 1 and"),
        ({"secret_environment": "TOKEN=env:"}, "secret_environment", "never the secret itself"),
        ({"secret_environment": "TOKEN"}, "secret_environment", "Line 1: expected NAME=env:"),
    ],
)
def test_add_form_shows_the_models_error_on_the_field(
    admin_client: Client, host: ExecutorHost, fields: dict[str, str], field: str, message: str
) -> None:
    response = admin_client.post(reverse(ADD), add_form(host, **fields))
    assert response.status_code == 200
    errors = form_errors(response)
    assert message in " ".join(errors.get(field, [])), errors
    page = response.content.decode()
    # The field's row up to the next one; Django 5.2 marks the row "errors", Django 6 the
    # field's box inside it: both put the error list in the row.
    row = re.search(
        rf'<div class="form-row[^"]*\bfield-{field}\b[^"]*">'
        r'(.*?)(?=<div class="form-row|</fieldset>)',
        page,
        re.S,
    )
    assert row is not None and 'class="errorlist' in row.group(1), (
        f"the error is shown on the {field} row"
    )
    assert not ContainerJob.objects.exists()


def test_add_form_never_repeats_a_plain_secret_in_its_error(
    admin_client: Client, host: ExecutorHost
) -> None:
    for text in (f"TOKEN={SECRET}", SECRET):
        response = admin_client.post(reverse(ADD), add_form(host, secret_environment=text))
        errors = " ".join(form_errors(response)["secret_environment"])
        assert errors and SECRET not in errors
    assert not ContainerJob.objects.exists()


def test_adding_needs_the_add_permission(staff: Any, host: ExecutorHost) -> None:
    viewer = staff("view_containerjob")
    assert viewer.get(reverse(ADD)).status_code == 403
    assert viewer.post(reverse(ADD), add_form(host)).status_code == 403
    changelist = viewer.get(reverse("admin:container_manager_containerjob_changelist"))
    assert reverse(ADD) not in changelist.content.decode()
    adder = staff("add_containerjob", "view_containerjob")
    assert adder.post(reverse(ADD), add_form(host)).status_code == 302
    assert ContainerJob.objects.count() == 1


# ---- the job page -------------------------------------------------------------------------


def test_job_page_shows_the_container_spec_read_only_and_no_secret(
    admin_client: Client, host: ExecutorHost, credential: RegistryCredential
) -> None:
    job = queue.submit(
        host=host, image=IMAGE, user="1000", mounts=["volume:data:/data", "bind:/srv/data/in:/in"],
        network="backend", secret_environment={"TOKEN": "env:CM_TEST_TOKEN"},
        pids_limit=50, cap_drop=["ALL"], read_only_rootfs=True,
    )  # fmt: skip
    page = admin_client.get(job_url(job)).content.decode()
    assert "Container spec" in page
    mounts = re.search(r'<pre id="cm-mounts" class="cm-env">(.*?)</pre>', page, re.S)
    assert mounts and mounts.group(1) == "volume:data:/data:rw\nbind:/srv/data/in:/in:ro"
    secrets = re.search(r'<pre id="cm-secrets" class="cm-env">(.*?)</pre>', page, re.S)
    assert secrets and secrets.group(1) == "TOKEN -&gt; env:CM_TEST_TOKEN"
    assert f"team (robot@{REGISTRY})" in page
    assert re.search(r'field-pids_limit">.*?50', page, re.S)
    for name in ("mounts", "secret_environment", "user", "cap_add", "registry_credential"):
        assert f'name="{name}"' not in page, f"{name} is not editable on a submitted job"
    assert SECRET not in page and PASSWORD not in page


def test_changing_a_submitted_job_is_not_possible(admin_client: Client, host: ExecutorHost) -> None:
    job = queue.submit(host=host, image="busybox", user="1000")
    response = admin_client.post(job_url(job), add_form(host, user="2000", mounts="bind:/x:/y"))
    job.refresh_from_db()
    assert response.status_code in (200, 302)
    assert (job.user, job.mounts) == ("1000", [])


@pytest.mark.django_db(transaction=True)
def test_job_page_shows_each_attempts_recorded_spec(
    admin_client: Client, host: ExecutorHost, credential: RegistryCredential
) -> None:
    job = queue.submit(
        host=host, image=IMAGE, command="true", user="1000", mounts=["tmpfs:/scratch:16"],
        secret_environment={"TOKEN": "env:CM_TEST_TOKEN"}, cap_drop=["ALL"],
    )  # fmt: skip
    call_command("process_container_jobs", "--burst", stdout=StringIO())
    job.refresh_from_db()
    assert job.status == JobStatus.COMPLETED
    attempt = job.attempts.get()
    assert attempt.spec["secret_environment"] == ["TOKEN"]
    page = admin_client.get(job_url(job)).content.decode()
    cell = re.search(r'<code class="cm-spec">(.*?)</code>', page, re.S)
    assert cell is not None
    assert f"image={IMAGE}" in cell.group(1) and "user=1000" in cell.group(1)
    assert "mounts=tmpfs:/scratch:16" in cell.group(1)
    assert "secret_environment=TOKEN;" in cell.group(1)
    assert f"registry={REGISTRY}; registry_username=robot" in cell.group(1)
    assert "cap_drop=ALL" in cell.group(1) and "no_new_privileges" in cell.group(1)
    assert SECRET not in page and PASSWORD not in page


# ---- hosts: policy and capacity ----------------------------------------------------------


def host_form(host: ExecutorHost, **fields: str) -> dict[str, str]:
    data = {
        "name": host.name, "connection_string": host.connection_string,
        "executor_type": host.executor_type, "is_active": "on", "labels": "{}",
        "auto_pull_images": "on", "tls_verify": "on", "tls_ca_cert": "", "tls_client_cert": "",
        "tls_client_key": "", "allowed_bind_prefixes": "", "allowed_networks": "",
        "default_network": "", "allowed_capabilities": "", "gpus": "0",
        "max_concurrent_jobs": "10", "weight": "100", "_save": "Save",
    }  # fmt: skip
    data.update(fields)
    return data


def test_host_policy_is_editable_and_capacity_read_only(
    admin_client: Client, fake_host: ExecutorHost
) -> None:
    fake_host.record_health(True, capacity=(4.0, 7982))
    page = admin_client.get(host_url(fake_host)).content.decode()
    assert "Policy" in page and "4 CPUs, 7982 MB memory" in page
    for name in ("allowed_bind_prefixes", "allowed_networks", "default_network", "allow_root",
                 "allow_privileged", "allowed_capabilities", "gpus"):  # fmt: skip
        assert f'name="{name}"' in page, name
    assert 'name="cpu_capacity"' not in page and 'name="memory_capacity_mb"' not in page

    response = admin_client.post(host_url(fake_host), host_form(
        fake_host, allowed_bind_prefixes="/srv/data\n/mnt/shared\n",
        allowed_networks="backend", default_network="backend", allow_root="on",
        allowed_capabilities="NET_ADMIN\nSYS_PTRACE", gpus="2",
        cpu_capacity="64", memory_capacity_mb="1",
    ))  # fmt: skip
    assert response.status_code == 302
    fake_host.refresh_from_db()
    assert fake_host.allowed_bind_prefixes == ["/srv/data", "/mnt/shared"]
    assert (fake_host.allowed_networks, fake_host.default_network) == (["backend"], "backend")
    assert (fake_host.allow_root, fake_host.allow_privileged, fake_host.gpus) == (True, False, 2)
    assert fake_host.allowed_capabilities == ["NET_ADMIN", "SYS_PTRACE"]
    assert (fake_host.cpu_capacity, fake_host.memory_capacity_mb) == (4.0, 7982), "read-only"

    page = admin_client.get(host_url(fake_host)).content.decode()
    prefixes = re.search(
        r'<textarea name="allowed_bind_prefixes"[^>]*>(.*?)</textarea>', page, re.S
    )
    assert prefixes and prefixes.group(1).strip() == "/srv/data\n/mnt/shared"


def test_host_policy_errors_are_shown_on_their_fields(
    admin_client: Client, fake_host: ExecutorHost
) -> None:
    response = admin_client.post(host_url(fake_host), host_form(
        fake_host, allowed_bind_prefixes="relative/path", allowed_capabilities="net admin",
    ))  # fmt: skip
    assert response.status_code == 200
    errors = form_errors(response)
    assert "absolute host paths" in " ".join(errors["allowed_bind_prefixes"])
    assert "capability" in " ".join(errors["allowed_capabilities"])
    fake_host.refresh_from_db()
    assert (fake_host.allowed_bind_prefixes, fake_host.allowed_capabilities) == ([], [])


def test_a_host_without_a_health_check_shows_unknown_capacity(
    admin_client: Client, fake_host: ExecutorHost
) -> None:
    page = admin_client.get(host_url(fake_host)).content.decode()
    assert "unknown (not read yet: run a health check)" in page


# ---- registry credentials -----------------------------------------------------------------


def test_credential_admin_has_a_reference_and_no_password_field(
    admin_client: Client, secrets: None
) -> None:
    add = reverse("admin:container_manager_registrycredential_add")
    page = admin_client.get(add).content.decode()
    assert 'name="password_reference"' in page
    assert 'type="password"' not in page and 'name="password"' not in page

    fields = {"name": "team", "registry": REGISTRY, "username": "robot"}
    refused = admin_client.post(add, {**fields, "password_reference": PASSWORD})
    assert refused.status_code == 200
    errors = " ".join(form_errors(refused)["password_reference"])
    assert "never the secret itself" in errors and PASSWORD not in errors
    assert not RegistryCredential.objects.exists()

    saved = admin_client.post(
        add, {**fields, "password_reference": "env:CM_TEST_REGISTRY_PASSWORD"}
    )
    assert saved.status_code == 302
    credential = RegistryCredential.objects.get()
    assert credential.password_reference == "env:CM_TEST_REGISTRY_PASSWORD"
    change = reverse("admin:container_manager_registrycredential_change", args=[credential.pk])
    listing = reverse("admin:container_manager_registrycredential_changelist")
    for url in (change, listing):
        page = admin_client.get(url).content.decode()
        assert "env:CM_TEST_REGISTRY_PASSWORD" in page and PASSWORD not in page


def test_credential_list_counts_the_jobs_using_it(
    admin_client: Client, host: ExecutorHost, credential: RegistryCredential
) -> None:
    queue.submit(host=host, image=IMAGE)
    queue.submit(host=host, image=IMAGE)
    page = admin_client.get(reverse("admin:container_manager_registrycredential_changelist"))
    assert re.search(r'<td class="field-jobs_using">2</td>', page.content.decode())
