"""The reaper on the real Docker engine: containers made with the raw SDK, labelled as the app
labels its own (and with this test session's label, so that nothing else is ever touched)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from container_manager.executors.base import LABEL_ATTEMPT, LABEL_JOB, LABEL_MANAGED
from container_manager.models import ContainerJob, JobStatus
from container_manager.reaper import reap
from tests.conftest import SESSION_ID, SESSION_LABEL

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

DAY = timedelta(days=1)


@pytest.fixture
def make_container(docker_client, test_image):
    made = []

    def make(job_id=None, attempt=1, *, app_labels=True, running=False):
        labels = {SESSION_LABEL: SESSION_ID}
        if app_labels:
            labels |= {LABEL_MANAGED: "true", LABEL_JOB: str(job_id), LABEL_ATTEMPT: str(attempt)}
        command = ["sleep", "300"] if running else ["true"]
        container = docker_client.containers.run(
            test_image, command, labels=labels, network_mode="none", detach=True
        )
        if not running:
            container.wait(timeout=30)
        made.append(container)
        return container.id

    yield make
    for container in made:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - the reaper may have removed it: that is the point
            continue


def job(host, status, attempt=1, ended_ago=None):
    return ContainerJob.objects.create(
        docker_host=host,
        docker_image="container-jobs/busybox:latest",
        status=status,
        attempt_count=attempt,
        completed_at=timezone.now() - ended_ago if ended_ago is not None else None,
    )


def present(docker_client):
    return {
        c.id
        for c in docker_client.containers.list(
            all=True, filters={"label": f"{SESSION_LABEL}={SESSION_ID}"}
        )
    }


@pytest.fixture
def scene(engine_host, make_container):
    old = job(engine_host, JobStatus.COMPLETED, ended_ago=2 * DAY)
    recent = job(engine_host, JobStatus.FAILED, ended_ago=timedelta(minutes=5))
    active = job(engine_host, JobStatus.RUNNING, attempt=2)
    return {
        "finished": make_container(old.pk),
        "unknown": make_container(uuid.uuid4()),
        "stale": make_container(active.pk, 1),
        "current": make_container(active.pk, 2, running=True),
        "recent": make_container(recent.pk),
        "unlabelled": make_container(app_labels=False),
    }


def test_dry_run_lists_exactly_the_right_containers_and_removes_none(scene, docker_client):
    removals = reap(older_than=DAY, dry_run=True)
    assert {r.container_id: r.reason.split(":")[0] for r in removals} == {
        scene["finished"]: "finished",
        scene["unknown"]: "orphan",
        scene["stale"]: "stale attempt",
    }
    assert set(scene.values()) <= present(docker_client)


def test_reap_removes_exactly_the_right_containers(scene, docker_client):
    removed = {r.container_id for r in reap(older_than=DAY)}
    assert removed == {scene["finished"], scene["unknown"], scene["stale"]}
    left = present(docker_client)
    assert removed.isdisjoint(left)
    assert {scene["current"], scene["recent"], scene["unlabelled"]} <= left
    assert docker_client.containers.get(scene["current"]).status == "running"


def test_the_command_on_the_real_engine(scene, docker_client):
    out = StringIO()
    call_command(
        "cleanup_containers", "--older-than-hours", "0", "--host", "local-engine", stdout=out
    )
    assert out.getvalue().endswith("Removed 4 container(s).\n"), out.getvalue()
    assert scene["recent"] not in present(docker_client), "with no grace, recent ones go too"
    assert {scene["current"], scene["unlabelled"]} <= present(docker_client)
