"""Private images for real: the offline test image pushed to a local registry with htpasswd
auth (tests/registry.py), and jobs pulling it through the queue and the real Worker.

Each test starts with the image off the engine, so the engine must pull it from the registry.
The password (right or wrong) must show up nowhere: job row, attempt rows (their spec too),
the worker's log, the admin job page, ``container_job show``.
"""

from __future__ import annotations

import logging
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from container_manager.models import JobAttempt, JobStatus, RegistryCredential
from container_manager.queue import submit
from container_manager.worker import Worker
from tests import registry
from tests.conftest import SESSION_ID, job_containers
from tests.registry import PrivateImage, is_local

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

# The registry fixtures, taken into this module.
private_registry = registry.private_registry
private_image = registry.private_image
pull_needed = registry.pull_needed

PASSWORD_VAR = "CM_TEST_REGISTRY_PASSWORD"


@pytest.fixture(autouse=True)
def fast(settings, engine_host, monkeypatch, tmp_path):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
    }
    engine_host.auto_pull_images = True
    engine_host.save()
    # No credential from a Docker config file of this machine: only what the job carries.
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))


def debug_logs(caplog) -> None:
    """Every log line, the SDK's and urllib3's too, and the app's (WARNING by default)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="container_manager")


def burst():
    Worker(concurrency=2, burst=True, shutdown_timeout=10).run()


def credential(password_var: str = PASSWORD_VAR) -> RegistryCredential:
    return RegistryCredential.objects.create(
        name="test-registry",
        registry=registry.REGISTRY,
        username=registry.USERNAME,
        password_reference=f"env:{password_var}",
    )


def _text_of(row) -> str:
    return "\n".join(str(getattr(row, f.attname)) for f in row._meta.concrete_fields)


def everything_shown(job, admin_client, caplog) -> dict[str, str]:
    """What the job's row, its attempts, the worker's log, the admin and the CLI show."""
    job.refresh_from_db()
    show = StringIO()
    call_command("container_job", "show", str(job.pk), stdout=show)
    page = admin_client.get(reverse("admin:container_manager_containerjob_change", args=[job.pk]))
    assert page.status_code == 200
    return {
        "job row": _text_of(job),
        "attempt rows": "\n".join(_text_of(a) for a in JobAttempt.objects.filter(job=job)),
        "worker log": caplog.text,
        "admin job page": page.content.decode(),
        "container_job show": show.getvalue(),
    }


def assert_no_secret(shown: dict[str, str], *secrets: str) -> None:
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"a password in the {where}"


def test_a_job_pulls_its_image_with_the_credential_from_the_worker_environment(
    pull_needed: PrivateImage, engine_host, docker_client, monkeypatch, caplog, admin_client
):
    monkeypatch.setenv(PASSWORD_VAR, pull_needed.password)
    debug_logs(caplog)
    cred = credential()
    job = submit(host=engine_host, image=pull_needed.reference, command="echo pulled")
    assert job.registry_credential == cred, "picked by the image's registry"
    burst()
    job.refresh_from_db()
    assert (job.status, job.exit_code, job.stdout_log) == (JobStatus.COMPLETED, 0, "pulled\n")
    assert is_local(docker_client, pull_needed.reference), "the engine pulled the image"
    attempt = JobAttempt.objects.get(job=job)
    assert attempt.spec["registry"] == pull_needed.registry
    shown = everything_shown(job, admin_client, caplog)
    assert f"job={job.pk} status=completed" in shown["worker log"]
    assert pull_needed.reference in shown["admin job page"]
    assert_no_secret(shown, pull_needed.password)


def test_a_wrong_password_fails_at_once_with_the_registry_answer(
    pull_needed: PrivateImage, engine_host, docker_client, monkeypatch, caplog, admin_client
):
    wrong = f"wrong-{SESSION_ID}-password"
    monkeypatch.setenv(PASSWORD_VAR, wrong)
    debug_logs(caplog)
    credential()
    job = submit(host=engine_host, image=pull_needed.reference, command="true", max_retries=2)
    burst()
    job.refresh_from_db()
    assert (job.status, job.attempt_count, job.exit_code) == (JobStatus.FAILED, 1, None)
    assert job.last_error == (
        f"Launch failed: Image {pull_needed.reference!r} could not be pulled: the registry"
        f" {pull_needed.registry} refused the credentials of user 'cmtest':"
        " unauthorized: authentication required"
    )
    attempts = list(JobAttempt.objects.filter(job=job))
    assert [(a.number, a.status, a.error) for a in attempts] == [
        (1, JobStatus.FAILED, job.last_error)
    ]
    assert not is_local(docker_client, pull_needed.reference)
    assert job_containers(docker_client, job) == [], "no container was made"
    shown = everything_shown(job, admin_client, caplog)
    assert "unauthorized: authentication required" in shown["worker log"]
    assert "unauthorized: authentication required" in shown["container_job show"]
    assert_no_secret(shown, wrong, pull_needed.password)


def test_without_a_credential_the_job_says_none_is_registered(
    pull_needed: PrivateImage, engine_host, docker_client, caplog, admin_client
):
    debug_logs(caplog)
    job = submit(host=engine_host, image=pull_needed.reference, command="true", max_retries=2)
    assert job.registry_credential is None
    burst()
    job.refresh_from_db()
    assert (job.status, job.attempt_count) == (JobStatus.FAILED, 1)
    assert (
        f"could not be pulled: no registry credential is registered for {pull_needed.registry}"
        in job.last_error
    )
    assert "no basic auth credentials" in job.last_error, "the engine's own words"
    assert JobAttempt.objects.filter(job=job).count() == 1
    assert not is_local(docker_client, pull_needed.reference)
    assert_no_secret(everything_shown(job, admin_client, caplog), pull_needed.password)


def test_an_image_the_registry_lacks_is_unavailable_and_retried(
    private_image: PrivateImage, engine_host, monkeypatch
):
    """Not a refusal: a missing tag (404) stays a retryable launch failure."""
    monkeypatch.setenv(PASSWORD_VAR, private_image.password)
    credential()
    job = submit(
        host=engine_host,
        image=f"{private_image.repository}:missing-{SESSION_ID}",
        command="true",
        max_retries=1,
    )
    burst()
    job.refresh_from_db()
    assert (job.status, job.attempt_count) == (JobStatus.FAILED, 2)
    assert "is not on the host and could not be pulled" in job.last_error
    assert "manifest unknown" in job.last_error
