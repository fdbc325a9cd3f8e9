"""The admin's job search (admin_search): the newest matches, in the list's order, whichever
way they are found (among the newest jobs, or read from the name, image and id indexes),
with the list's filters; on PostgreSQL at most SEARCH_LIMIT of them, and the list says so."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from container_manager import admin_search
from container_manager.models import ContainerJob, JobStatus

CHANGELIST = "admin:container_manager_containerjob_changelist"
postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the capped search is PostgreSQL's"
)


@pytest.fixture
def jobs(fake_host):
    """30 jobs a minute apart, newest last: 10 old 'etl-' ones, then 20 'report-' ones, the
    odd ones failed; every third 'report-' job runs the image 'etl-tools'."""
    start = timezone.now() - timedelta(hours=1)
    made = []
    for i in range(30):
        name = f"etl-{i}" if i < 10 else f"report-{i}"
        image = "etl-tools:1" if i >= 10 and i % 3 == 0 else "busybox:latest"
        status = JobStatus.FAILED if i % 2 else JobStatus.COMPLETED
        made.append(ContainerJob.objects.create(
            docker_host=fake_host, name=name, docker_image=image, status=status,
            created_at=start + timedelta(minutes=i),
        ))  # fmt: skip
    return made


def _listed(admin_client, **params):
    page = admin_client.get(reverse(CHANGELIST), params).content.decode()
    return re.findall(r"/containerjob/([0-9a-f-]{36})/change/", page), page


def _newest(jobs, keep, limit=None):
    ids = [str(job.pk) for job in reversed(jobs) if keep(job)]
    return ids if limit is None else ids[:limit]


def test_a_search_lists_every_match_newest_first(admin_client, jobs):
    listed, _ = _listed(admin_client, q="etl-")
    assert listed == _newest(jobs, _etl)
    listed, _ = _listed(admin_client, q="etl-", status__exact="failed")
    assert listed == _newest(jobs, lambda j: j.status == "failed" and _etl(j))
    listed, _ = _listed(admin_client, q=str(jobs[3].pk)[:8])
    assert str(jobs[3].pk) in listed


def _etl(job):
    return job.name.startswith("etl-") or job.docker_image.startswith("etl-")


@postgresql_only
@pytest.mark.parametrize(
    ("walk", "few"),
    [(3, 0), (3, 32), (100, 32)],
    ids=["every match read from the indexes", "value by value", "among the newest"],
)
def test_the_newest_matches_are_the_same_whichever_way_they_are_found(jobs, monkeypatch, walk,
                                                                       few):  # fmt: skip
    monkeypatch.setattr(admin_search, "WALK_ROWS", walk)
    monkeypatch.setattr(admin_search, "FEW_VALUES", few)
    etl = admin_search._Term.parse("etl-")
    found = admin_search.newest_matches(ContainerJob.objects.all(), etl, 5)
    assert [str(pk) for pk in found] == _newest(jobs, _etl, 5)
    failed = ContainerJob.objects.filter(status=JobStatus.FAILED)
    found = admin_search.newest_matches(failed, etl, 4)
    assert [str(pk) for pk in found] == _newest(jobs, lambda j: j.status == "failed" and _etl(j), 4)
    by_id = admin_search._Term.parse(str(jobs[2].pk)[:8])
    found = admin_search.newest_matches(ContainerJob.objects.all(), by_id, 5)
    assert str(jobs[2].pk) in [str(pk) for pk in found]
    nothing = admin_search._Term.parse("zz-no-such-job")
    assert admin_search.newest_matches(ContainerJob.objects.all(), nothing, 5) == []


@postgresql_only
def test_a_prefix_of_few_values_is_read_value_by_value(jobs, monkeypatch):
    everything = ContainerJob.objects.all()
    # 'etl-' starts ten names and one image; 'report-' twenty names, 're' no image at all.
    few = admin_search._few_values(everything, "etl-")
    assert sorted(few["name"]) == sorted(f"etl-{i}" for i in range(10))
    assert few["docker_image"] == ["etl-tools:1"]
    monkeypatch.setattr(admin_search, "FEW_VALUES", 19)
    assert admin_search._few_values(everything, "re") == {"docker_image": []}
    monkeypatch.setattr(admin_search, "FEW_VALUES", 20)
    assert len(admin_search._few_values(everything, "re")["name"]) == 20
    # A LIKE wildcard in the term is a character to match, not a wildcard.
    assert admin_search._few_values(everything, "etl_") == {"name": [], "docker_image": []}


@postgresql_only
def test_matches_older_than_the_newest_jobs_are_read_from_their_indexes(jobs, monkeypatch):
    monkeypatch.setattr(admin_search, "WALK_ROWS", 5)  # the 5 newest: no 'etl-' name
    reads = []
    every_match = admin_search._every_match
    monkeypatch.setattr(admin_search, "_every_match", lambda *a: reads.append(a) or every_match(*a))
    everything = ContainerJob.objects.all()
    found = admin_search.newest_matches(everything, admin_search._Term.parse("etl-1"), 3)
    assert len(reads) == 1, "the walk found too few: the indexes were read"
    assert [str(pk) for pk in found] == [str(jobs[1].pk)]
    found = admin_search.newest_matches(everything, admin_search._Term.parse("report-"), 3)
    assert len(reads) == 1, "three among the five newest: no index read"
    assert [str(pk) for pk in found] == [str(j.pk) for j in reversed(jobs[-3:])]


@postgresql_only
def test_a_search_that_reaches_its_limit_says_so(admin_client, jobs, monkeypatch):
    monkeypatch.setattr(admin_search, "SEARCH_LIMIT", 4)
    listed, page = _listed(admin_client, q="report-")
    assert listed == _newest(jobs, lambda j: j.name.startswith("report-"), 4)
    assert "A search lists its newest 4 matches" in page
    listed, page = _listed(admin_client, q="etl-1")
    assert listed == [str(jobs[1].pk)] and "A search lists its newest" not in page


def test_elsewhere_a_search_is_not_capped(admin_client, jobs, monkeypatch):
    monkeypatch.setattr(admin_search, "SEARCH_LIMIT", 4)
    listed, page = _listed(admin_client, q="report-")
    if connection.vendor == "postgresql":
        assert len(listed) == 4
    else:
        assert len(listed) == 20 and "A search lists its newest" not in page
