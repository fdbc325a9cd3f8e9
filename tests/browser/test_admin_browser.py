"""The admin in a real browser, against the live test server and the real Docker engine:
watch a job run to its end without reloading, cancel a running job, output shown as text,
permissions, the hosts page and the queue overview. Screenshots of the main pages go to
artifacts/screenshots/."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from container_manager.models import ContainerJob, JobStatus
from container_manager.queue import submit
from tests.browser.conftest import PASSWORD, screenshot

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

XSS = "<script>window.__pwned=1</script>"


def job_page(live_server, job):
    return f"{live_server.url}/admin/container_manager/containerjob/{job.pk}/change/"


def changelist(live_server):
    return f"{live_server.url}/admin/container_manager/containerjob/"


def fits(page):
    """Whether the change list's table fits its box (no horizontal scrolling)."""
    return page.evaluate(
        "() => { const box = document.querySelector('#changelist .results');"
        " return box.scrollWidth <= box.clientWidth; }"
    )


def wait_for_status(job, status, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh_from_db()
        if job.status == status:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job.pk} is {job.status}, not {status}, after {timeout}s")


def test_watch_a_job_from_queued_to_completed_without_reloading(
    page, login, live_server, worker, engine_host, test_image
):
    job = submit(
        host=engine_host,
        image=test_image,
        name="browser-hello",
        command=["sh", "-c", "sleep 2; echo hello-from-the-job; echo warning-on-stderr >&2"],
        environment={"DB_PASSWORD": "hunter2", "GREETING": "hi"},
    )
    login(page)
    page.goto(job_page(live_server, job))
    assert page.get_attribute("#cm-status .cm-badge", "data-status") == "queued"
    page.evaluate("window.__sameDocument = true")
    worker()
    page.wait_for_selector('#cm-status .cm-badge[data-status="running"]')
    page.wait_for_selector('#cm-status .cm-badge[data-status="completed"]', timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True, "updated in place, not reloaded"
    assert page.inner_text("#cm-stdout").strip() == "hello-from-the-job"
    assert page.inner_text("#cm-stderr").strip() == "warning-on-stderr"
    assert page.inner_text("#cm-exit-code") == "0"
    assert page.inner_text("#cm-attempt-count") == "1"
    assert page.inner_text("#cm-started-at") != "—" and page.inner_text("#cm-completed-at") != "—"
    assert page.inner_text("#cm-live-state") == "This job has ended. Reload for its attempts."
    assert page.inner_text("#content h2") == "browser-hello [completed]"
    assert page.inner_text(".breadcrumbs").endswith("browser-hello [completed]")
    body = page.inner_text("body")
    assert "hunter2" not in body and "DB_PASSWORD=********" in body
    screenshot(page, "job-page")
    page.goto(changelist(live_server))
    page.wait_for_selector("#result_list")
    row = page.locator("#result_list tbody tr", has_text="browser-hello")
    assert row.locator('.cm-badge[data-status="completed"]').count() == 1
    assert row.locator("td.field-host").inner_text() == "local-engine"
    assert row.locator("td.field-exit_code").inner_text() == "0"


def test_cancel_a_running_job_from_the_admin_action(
    page, login, live_server, worker, engine_host, test_image
):
    job = submit(host=engine_host, image=test_image, name="long-sleeper", command="sleep 60")
    worker()
    login(page)
    wait_for_status(job, JobStatus.RUNNING)
    page.goto(changelist(live_server))
    page.check(f'input[name="_selected_action"][value="{job.pk}"]')
    page.select_option('select[name="action"]', "cancel_jobs")
    page.click('button[name="index"]')
    page.wait_for_selector(".messagelist .success")
    assert "1 job(s) cancelled" in page.inner_text(".messagelist")
    page.goto(job_page(live_server, job))
    page.wait_for_selector('#cm-status .cm-badge[data-status="cancelled"]', timeout=30_000)
    assert "Cancelled while running" in page.inner_text("#cm-last-error")
    wait_for_status(job, JobStatus.CANCELLED)


def test_output_with_a_script_tag_is_shown_as_text_live_and_on_reload(
    page, login, live_server, worker, engine_host, test_image
):
    job = submit(
        host=engine_host,
        image=test_image,
        command=[
            "sh",
            "-c",
            f"sleep 1; echo '{XSS}'; echo '<img src=x onerror=window.__pwned=2>' >&2",
        ],
    )
    login(page)
    page.goto(job_page(live_server, job))
    worker()
    page.wait_for_selector('#cm-status .cm-badge[data-status="completed"]', timeout=30_000)
    for _ in ("live update", "server-rendered page"):
        assert page.inner_text("#cm-stdout").strip() == XSS
        assert page.locator("#cm-stderr").inner_text().startswith("<img src=x")
        assert page.evaluate("typeof window.__pwned") == "undefined"
        assert page.locator("#cm-stdout script, #cm-stderr img").count() == 0
        page.reload()


def test_a_user_without_change_permission_sees_no_actions(
    page, login, live_server, django_user_model, engine_host, test_image
):
    job = submit(host=engine_host, image=test_image, command="true")
    viewer = django_user_model.objects.create_user("viewer", password=PASSWORD, is_staff=True)
    viewer.user_permissions.set(
        Permission.objects.filter(codename__in=["view_containerjob", "view_executorhost"])
    )
    login(page, viewer)
    page.goto(changelist(live_server))
    page.wait_for_selector("#result_list")
    for action in ("cancel_jobs", "retry_jobs", "requeue_jobs"):
        assert page.locator(f'option[value="{action}"]').count() == 0
    page.goto(job_page(live_server, job))
    page.wait_for_selector("#cm-status")
    assert page.locator("form.cm-action").count() == 0
    page.goto(f"{live_server.url}/admin/container_manager/executorhost/")
    assert page.locator('option[value="check_now"]').count() == 0


def test_hosts_page_shows_health_and_running_over_capacity(
    page, login, live_server, engine_host, test_image
):
    for status in (JobStatus.RUNNING, JobStatus.LAUNCHING, JobStatus.COMPLETED):
        ContainerJob.objects.create(docker_host=engine_host, docker_image=test_image, status=status)
    login(page)
    page.goto(f"{live_server.url}/admin/container_manager/executorhost/")
    row = page.locator("#result_list tbody tr", has_text="local-engine")
    assert row.locator("td.field-health").inner_text() == "healthy"
    assert fits(page), "every column fits the window"
    assert row.locator("td.field-load").inner_text() == "2 / 20"
    page.check('input[name="_selected_action"]')
    page.select_option('select[name="action"]', "check_now")
    page.click('button[name="index"]')
    page.wait_for_selector(".messagelist .success")
    assert "local-engine: check requested" in page.inner_text(".messagelist").lower()
    assert row.locator("td.field-last_check").inner_text() == "pending"
    screenshot(page, "hosts")


def test_queue_overview_renders_counts_and_its_chart(page, login, live_server, engine_host):
    now = timezone.now()
    ended = {1: "completed", 2: "completed", 7: "failed", 13: "completed", 22: "timeout",
             31: "completed", 33: "cancelled", 48: "completed"}  # fmt: skip
    for minutes, status in ended.items():
        ago = now - timedelta(minutes=minutes)
        job = ContainerJob.objects.create(
            docker_host=engine_host, docker_image="busybox:latest", status=JobStatus.RUNNING,
            started_at=ago - timedelta(minutes=1),
        )  # fmt: skip
        # Ended by a status change, as a worker ends it: what the overview's tally counts.
        ContainerJob.objects.filter(pk=job.pk).update(status=status, completed_at=ago)
    ContainerJob.objects.create(docker_host=engine_host, docker_image="busybox:latest")
    login(page)
    page.goto(changelist(live_server))
    assert page.locator("#result_list tbody tr").count() == 9
    assert fits(page), "every column fits the window"
    screenshot(page, "job-list")
    page.click("#cm-overview-link")
    page.wait_for_selector("#cm-chart")
    assert page.locator("#cm-chart g.cm-bar").count() == 12
    heights = page.eval_on_selector_all(
        "#cm-chart rect", "rects => rects.map(r => Number(r.getAttribute('height')))"
    )
    assert sum(h > 0 for h in heights) >= 5 and max(heights) == 116
    assert page.locator("#cm-chart").bounding_box()["height"] > 100
    cards = page.inner_text("#cm-status-counts")
    assert "Completed\n5" in cards and "Queued\n1" in cards
    assert "8 jobs, 2 failures" in page.inner_text("#content-main")
    screenshot(page, "overview")
