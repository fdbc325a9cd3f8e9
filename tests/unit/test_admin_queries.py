"""Every operator-facing page runs the same number of queries with 3 jobs as with 60: what
the bench measures at millions of rows (bench/run.py scale) holds because of it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from container_manager.admin_fields import EstimatingPaginator
from container_manager.models import ContainerJob, JobStatus

JOBS = "/admin/container_manager/containerjob/"
#: (page, query string, queries it runs): the session and user first, then the page's own.
PAGES = [
    ("list", JOBS, {}, 5),
    ("status filter", JOBS, {"status__exact": "failed"}, 5),
    ("host filter", JOBS, {"docker_host__id__exact": "HOST"}, 5),
    ("created filter", JOBS, {"created_at__gte": "WEEK"}, 5),
    ("full id search", JOBS, {"q": "ID"}, 5),
    ("id prefix search", JOBS, {"q": "ID8"}, 5),
    ("name search", JOBS, {"q": "job-1"}, 5),
    ("image search", JOBS, {"q": "busybox"}, 5),
    ("job page", "JOBPAGE", {}, 9),
    ("overview", f"{JOBS}overview/", {}, 8),
    ("hosts page", "/admin/container_manager/executorhost/", {}, 6),
]


def _filled(host, n):
    statuses = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.QUEUED, JobStatus.RUNNING]
    for i in range(n):
        ContainerJob.objects.create(docker_host=host, docker_image="busybox:latest",
                                    name=f"job-{i}", status=statuses[i % 4])  # fmt: skip


def _get(admin_client, host, url, query):
    job = ContainerJob.objects.filter(status=JobStatus.FAILED).order_by("created_at").first()
    words = {"HOST": str(host.pk), "WEEK": (timezone.now() - timedelta(days=7)).isoformat(),
             "ID": str(job.pk), "ID8": str(job.pk)[:8]}  # fmt: skip
    if url == "JOBPAGE":
        url = reverse("admin:container_manager_containerjob_change", args=[job.pk])
    query = {k: words.get(v, v) for k, v in query.items()}
    admin_client.get(url, query)  # the first request fills caches (content types)
    with CaptureQueriesContext(connection) as queries:
        assert admin_client.get(url, query).status_code == 200
    return len(queries)


@pytest.mark.parametrize(("page", "url", "query", "expected"), PAGES, ids=[p[0] for p in PAGES])
def test_a_page_runs_a_fixed_number_of_queries(admin_client, fake_host, page, url, query,
                                               expected):  # fmt: skip
    _filled(fake_host, 3)
    few = _get(admin_client, fake_host, url, query)
    _filled(fake_host, 57)
    many = _get(admin_client, fake_host, url, query)
    expected += _search_queries(query)
    assert (few, many) == (expected, expected), page


def _search_queries(query):
    """A search on PostgreSQL first looks among the newest jobs, then (here, where fewer
    match than it lists) finds whether the prefix starts few names and images, and reads
    the matches from their indexes: three queries (admin_search)."""
    return 3 if "q" in query and connection.vendor == "postgresql" else 0


@pytest.mark.parametrize(
    ("page", "url", "query", "expected"), PAGES[:4], ids=[p[0] for p in PAGES[:4]]
)
def test_past_the_counted_rows_a_list_runs_a_fixed_number_of_queries(
    admin_client, fake_host, monkeypatch, page, url, query, expected
):
    monkeypatch.setattr(EstimatingPaginator, "exact_up_to", 5)
    _filled(fake_host, 40)
    few = _get(admin_client, fake_host, url, query)
    _filled(fake_host, 80)
    many = _get(admin_client, fake_host, url, query)
    estimate = 1 if connection.vendor == "postgresql" else 0  # the planner's, by EXPLAIN
    assert (few, many) == (expected + estimate, expected + estimate), page
