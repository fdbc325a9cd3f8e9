"""The job list writes its fifty rows without Django's per-row machinery (a form widget's
template for each checkbox, the generic date formatter, a URL reversed and resolved for each
link), and what it writes is what Django's own code writes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from django.contrib import admin
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.contrib.admin.views.main import ChangeList
from django.utils import timezone, translation
from django.utils.formats import date_format

from container_manager.admin import ContainerJobAdmin
from container_manager.admin_fields import row_checkbox, short_time
from container_manager.models import ContainerJob, JobStatus

JOBS = "/admin/container_manager/containerjob/"


def test_the_checkbox_is_djangos_for_any_name(fake_host):
    job = ContainerJob.objects.create(
        docker_host=fake_host, docker_image="busybox", name="""<b>"a" & 'b'</b>"""
    )
    model_admin = admin.site.get_model_admin(ContainerJob)
    assert row_checkbox(model_admin, job) == admin.ModelAdmin.action_checkbox(model_admin, job)
    with translation.override("de"):
        assert row_checkbox(model_admin, job) == admin.ModelAdmin.action_checkbox(model_admin, job)


@pytest.mark.parametrize("language", ["en", "de", "fr"])
@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_a_time_is_written_as_djangos_date_format_writes_it(language, zone):
    times = [datetime(2026, month, 3 + 2 * month, 23, 59, 7, tzinfo=UTC) for month in range(1, 13)]
    with translation.override(language), timezone.override(zone):
        for at in times:
            assert short_time(at) == date_format(timezone.localtime(at), "M j, H:i:s")
    assert short_time(None) == "—"


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"status__exact": "failed"},
        {"q": "job", "o": "-2"},
        {"status__exact": "failed", "p": "1"},
    ],
)
def test_a_rows_link_keeps_the_lists_filters_as_django_keeps_them(admin_client, fake_host, query):
    jobs = [
        ContainerJob.objects.create(docker_host=fake_host, docker_image="busybox",
                                    name=f"job-{i}", status=JobStatus.FAILED)
        for i in range(3)
    ]  # fmt: skip
    response = admin_client.get(JOBS, query)
    assert response.status_code == 200
    cl = response.context["cl"]
    assert isinstance(cl, ChangeList) and isinstance(cl.model_admin, ContainerJobAdmin)
    filters = cl.model_admin.get_preserved_filters(response.wsgi_request)
    links = re.findall(r'<th class="field-job"><a href="([^"]+)"', response.content.decode())
    assert len(links) == len(jobs)
    for job in jobs:
        djangos = add_preserved_filters(
            {"preserved_filters": filters, "opts": cl.opts},
            ChangeList.url_for_result(cl, job),
        )
        assert cl.url_for_result(job) == djangos
        assert djangos.replace("&", "&amp;") in links
