"""Who did what, and what reaches the terminal: a job records who submitted it (the admin's
user, the command line's login, an API caller's word), and terminal control characters in
what the commands print (a job's name, an engine's error) are escaped."""

from __future__ import annotations

import getpass
from io import StringIO

import pytest
from django.core.management import call_command
from django.urls import reverse

from container_manager.management.output import printable, table_text
from container_manager.models import ContainerJob, ExecutorHost
from container_manager.queue import submit

pytestmark = pytest.mark.django_db

ESCAPE = "\x1b]0;pwned\x07\x1b[2J"


@pytest.fixture
def host():
    return ExecutorHost.objects.create(
        name="who", connection_string="unix:///fake/engine.sock", executor_type="fake"
    )


def run(*args):
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_the_command_line_records_its_login(host):
    job_id = run("container_job", "submit", "--host", "who", "--image", "busybox").strip()
    assert ContainerJob.objects.get(pk=job_id).submitted_by == f"cli:{getpass.getuser()}"
    assert f"Submitter:   cli:{getpass.getuser()}" in run("container_job", "show", job_id)


def test_an_api_caller_says_who_it_is(host):
    assert submit(host=host, image="busybox", submitted_by="billing-cron").submitted_by == (
        "billing-cron"
    )
    assert submit(host=host, image="busybox").submitted_by == ""


def test_the_admin_records_its_user(host, admin_client, admin_user):
    form = {"docker_host": host.pk, "docker_image": "busybox", "command": "true",
            "priority": 0, "max_retries": 0}  # fmt: skip
    response = admin_client.post(reverse("admin:container_manager_containerjob_add"), form)
    assert response.status_code == 302, response.content[:2000]
    assert ContainerJob.objects.get().submitted_by == f"user:{admin_user.username}"


def test_control_characters_are_escaped_in_show_and_list(host):
    job = submit(host=host, image="busybox", name=f"evil{ESCAPE}name")
    ContainerJob.objects.filter(pk=job.pk).update(last_error=f"engine said {ESCAPE}")
    for output in (run("container_job", "show", str(job.pk)), run("container_job", "list")):
        assert "\x1b" not in output and "\x07" not in output
        assert "evil\\x1b]0;pwned\\x07\\x1b[2Jname" in output
    assert "engine said \\x1b" in run("container_job", "show", str(job.pk))


def test_printable_keeps_text_and_layout():
    assert printable("naïve \u2013 ok\tcol") == "naïve \u2013 ok\tcol"
    assert printable("a\x9bb\x00c\x7f") == "a\\x9bb\\x00c\\x7f"
    assert table_text([("A", "B"), ("x\x1b", "y")]) == ["A      B", "x\\x1b  y"]
