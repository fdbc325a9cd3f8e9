"""The admin as an attacker with an ordinary staff account sees it: only the lookups the
lists' own filters produce are allowed, so nothing about a secret (or a job's output) can be
learnt from result counts, and no user-supplied regex reaches the database; pointing a host
at an engine needs a permission of its own."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from container_manager.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    JobStatus,
)

pytestmark = pytest.mark.django_db

JOBS = reverse("admin:container_manager_containerjob_changelist")
TEMPLATES = reverse("admin:container_manager_environmentvariabletemplate_changelist")
HOSTS = reverse("admin:container_manager_executorhost_changelist")


@pytest.fixture
def staff(client, django_user_model):
    def login(*codenames):
        user = django_user_model.objects.create_user(
            f"u-{'-'.join(codenames) or 'none'}", password="pw", is_staff=True
        )
        user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
        client.force_login(user)
        return client

    return login


@pytest.fixture
def secret_job():
    host = ExecutorHost.objects.create(
        name="h", connection_string="unix:///fake/engine.sock", executor_type="fake"
    )
    EnvironmentVariableTemplate.objects.create(
        name="t", environment_variables="DB_PASSWORD=hunter2"
    )
    return ContainerJob.objects.create(
        docker_host=host, docker_image="busybox", name="secretive",
        # A short output: should the lookup guard regress, the regex probe fails, not hangs.
        override_environment="API_TOKEN=tok-123", stdout_log="x" * 16, status=JobStatus.FAILED,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("url", "query"),
    [
        (JOBS, "override_environment__contains=tok"),
        (JOBS, "override_environment__regex=^API_TOKEN=t"),
        (JOBS, "override_environment__startswith=API"),
        (JOBS, "stdout_log__regex=(x%2Bx%2B)%2By"),
        (JOBS, "stderr_log__icontains=a"),
        (JOBS, "last_error__contains=a"),
        (JOBS, "secret_environment__has_key=TOKEN"),
        (JOBS, "status__regex=fail"),
        (JOBS, "docker_host__connection_string__contains=sock"),
        (TEMPLATES, "environment_variables__contains=hunter"),
        (TEMPLATES, "environment_variables__regex=^DB_PASSWORD=h"),
        (HOSTS, "tls_client_key__contains=a"),
    ],
)
def test_a_view_only_user_cannot_probe_fields_by_lookups(staff, secret_job, url, query):
    client = staff("view_containerjob", "view_environmentvariabletemplate", "view_executorhost")
    assert client.get(f"{url}?{query}").status_code == 400


@pytest.mark.parametrize(
    "query",
    [
        "status__exact=failed",
        "docker_host__id__exact=1",
        "docker_host__isnull=True",
        "created_at__gte=2020-01-01+00%3A00%3A00%2B00%3A00&created_at__lt=2100-01-01+00%3A00%3A00%2B00%3A00",
        "q=secretive",
    ],
)
def test_the_lists_own_filters_still_work(staff, secret_job, query):
    response = staff("view_containerjob").get(f"{JOBS}?{query}")
    assert response.status_code == 200


def test_the_filters_find_what_they_should(admin_client, secret_job):
    assert b"secretive" in admin_client.get(f"{JOBS}?status__exact=failed").content
    assert b"secretive" not in admin_client.get(f"{JOBS}?status__exact=completed").content


def test_changing_a_host_needs_the_trust_engine_permission(staff, secret_job, admin_client):
    change = reverse(
        "admin:container_manager_executorhost_change", args=[secret_job.docker_host_id]
    )
    add = reverse("admin:container_manager_executorhost_add")
    plain = staff("view_executorhost", "change_executorhost", "add_executorhost")
    assert plain.get(add).status_code == 403
    page = plain.get(change)
    assert page.status_code == 200 and b'name="connection_string"' not in page.content
    assert plain.post(change, {"connection_string": "tcp://evil:2375"}).status_code == 403
    trusted = staff("view_executorhost", "change_executorhost", "add_executorhost", "trust_engine")
    assert trusted.get(add).status_code == 200
    assert b'name="connection_string"' in trusted.get(change).content
    assert admin_client.get(add).status_code == 200, "superusers have every permission"


def test_a_projects_get_queryset_restricts_pages_live_view_and_actions(
    client, django_user_model, secret_job, monkeypatch
):
    """The recipe of the security docs (docs/explanation/security.md): the job admin's
    get_queryset decides who sees which job, and the job page, its live view and the actions
    all go through it."""
    from django.contrib import admin

    from container_manager.admin import ContainerJobAdmin

    job_admin = admin.site._registry[ContainerJob]
    assert isinstance(job_admin, ContainerJobAdmin)

    def own_jobs(request):
        jobs = ContainerJobAdmin.get_queryset(job_admin, request)
        return jobs.filter(submitted_by=f"user:{request.user.get_username()}")

    monkeypatch.setattr(job_admin, "get_queryset", own_jobs)
    user = django_user_model.objects.create_user("other", password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(codename__in=["view_containerjob", "change_containerjob"])
    )
    client.force_login(user)
    page = reverse("admin:container_manager_containerjob_change", args=[secret_job.pk])
    live = reverse("admin:container_manager_live", args=[secret_job.pk])
    assert client.get(page).status_code == 302, "not found: back to the list"
    assert client.get(live).status_code == 404
    ContainerJob.objects.filter(pk=secret_job.pk).update(status=JobStatus.QUEUED)
    client.post(JOBS, {"action": "cancel_jobs", "_selected_action": [str(secret_job.pk)]})
    secret_job.refresh_from_db()
    assert secret_job.status == JobStatus.QUEUED, "another's job: the action never saw it"
    ContainerJob.objects.filter(pk=secret_job.pk).update(submitted_by="user:other")
    assert client.get(live).status_code == 200
