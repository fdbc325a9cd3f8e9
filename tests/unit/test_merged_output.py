"""A job whose engine merged stdout and stderr (Kubernetes) says so: the attempt's record
(``merged_output``), ``container_job show`` and ``logs``, and the admin's job page."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from container_manager.models import JobAttempt, JobStatus
from container_manager.spec_text import MERGED_NOTE
from container_manager.testing.factories import ContainerJobFactory, ExecutorHostFactory

pytestmark = pytest.mark.django_db


def _job(merged: bool):
    host = ExecutorHostFactory()
    job = ContainerJobFactory(
        docker_host=host, status=JobStatus.COMPLETED, attempt_count=1, stdout_log="out\nerr\n"
    )
    JobAttempt.objects.create(
        job=job,
        number=1,
        host=host,
        container_name="cm-x-1",
        status=JobStatus.COMPLETED,
        spec={"image": "busybox", **({"merged_output": True} if merged else {})},
    )
    return job


@pytest.mark.parametrize("merged", [True, False])
def test_show_logs_and_admin_say_whether_the_output_was_merged(merged, admin_client):
    job = _job(merged)
    assert job.output_merged is merged

    shown, logs, note = StringIO(), StringIO(), StringIO()
    call_command("container_job", "show", str(job.pk), stdout=shown)
    call_command("container_job", "logs", str(job.pk), stdout=logs, stderr=note)
    page = admin_client.get(
        reverse("admin:container_manager_containerjob_change", args=[job.pk])
    ).content.decode()

    assert (MERGED_NOTE in shown.getvalue()) is merged
    assert "out\nerr\n" in logs.getvalue()
    assert (MERGED_NOTE in note.getvalue()) is merged
    assert ('id="cm-output-merged"' in page) is merged


def test_a_job_without_attempts_is_not_merged():
    assert ContainerJobFactory().output_merged is False
