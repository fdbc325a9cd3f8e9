"""The host policy and the executor's capabilities, at submission and in placement: what a
job may ask for on a host is refused with a message naming the field and the host; what
ran is recorded on the attempt; secrets are resolved by the worker, never stored."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.testing.factories import RegistryCredentialFactory
from container_manager.worker import Worker

pytestmark = pytest.mark.django_db(transaction=True)

FAKE_URL = "unix:///fake/engine.sock"


class PlainFakeExecutor(FakeExecutor):
    """A fake executor that honours none of the optional spec fields."""

    supported_fields = frozenset()


@pytest.fixture(autouse=True)
def fast(settings):
    settings.CONTAINER_MANAGER = {
        **settings.CONTAINER_MANAGER,
        "POLL_INTERVAL": 0.05,
        "RETRY_BACKOFF_BASE": 0.01,
        "RETRY_BACKOFF_MAX": 0.05,
        "EXECUTORS": {
            **settings.CONTAINER_MANAGER["EXECUTORS"],
            "plain": f"{__name__}.PlainFakeExecutor",
        },
    }


def host(name="policy-host", **fields):
    return ExecutorHost.objects.create(
        name=name, connection_string=FAKE_URL, executor_type="fake", **fields
    )


def refused(host_row, **fields):
    """The message of the InvalidJobError ``submit`` raises for ``fields`` on ``host_row``."""
    from container_manager.exceptions import InvalidJobError

    with pytest.raises(InvalidJobError) as caught:
        submit(host=host_row, image="busybox:latest", **fields)
    return str(caught.value)


def burst():
    return Worker(concurrency=2, burst=True, shutdown_timeout=5).run()


class TestHostFields:
    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"allowed_bind_prefixes": ["relative"]}, "allowed_bind_prefixes"),
            ({"allowed_bind_prefixes": ["/srv/../etc"]}, "allowed_bind_prefixes"),
            ({"allowed_bind_prefixes": "/srv"}, "allowed_bind_prefixes"),
            ({"allowed_networks": ["has space"]}, "allowed_networks"),
            ({"default_network": "bad/name"}, "default_network"),
            ({"allowed_capabilities": ["not a cap"]}, "allowed_capabilities"),
        ],
    )
    def test_bad_policy_is_refused_naming_the_field(self, fields, field):
        with pytest.raises(ValidationError) as caught:
            ExecutorHost(
                name="h", connection_string=FAKE_URL, executor_type="fake", **fields
            ).full_clean()
        assert set(caught.value.message_dict) == {field}

    def test_health_records_capacity(self):
        row = host()
        row.record_health(True, capacity=(2.0, 4096))
        row.refresh_from_db()
        assert (row.cpu_capacity, row.memory_capacity_mb) == (2.0, 4096)
        row.record_health(False, "down")
        row.refresh_from_db()
        assert (row.cpu_capacity, row.memory_capacity_mb) == (2.0, 4096), "kept while down"


class TestSubmissionAgainstThePolicy:
    def test_binds_only_under_allowed_prefixes(self):
        closed = host("closed")
        assert "mounts: Host closed allows no bind mounts." in refused(
            closed, mounts=["bind:/srv/in:/in"]
        )
        open_ = host("open", allowed_bind_prefixes=["/srv/data"])
        message = refused(open_, mounts=["bind:/srv/database:/in"])
        assert "mounts: Host open allows bind mounts only under: /srv/data." in message
        job = submit(host=open_, image="busybox", mounts=["bind:/srv/data/in:/in"])
        assert job.mounts == [{"type": "bind", "target": "/in", "source": "/srv/data/in",
                               "read_only": True}]  # fmt: skip

    def test_root_privileged_capabilities_gpus_need_the_host(self):
        plain = host("plain")
        assert "user: Host plain does not allow jobs to run as root" in refused(plain, user="0")
        assert "privileged: Host plain does not allow privileged jobs." in refused(
            plain, privileged=True
        )
        assert "cap_add: Host plain does not allow adding NET_ADMIN (allowed: none)." in refused(
            plain, cap_add=["NET_ADMIN"]
        )
        assert "gpus: Host plain declares no GPUs." in refused(plain, gpus=1)
        assert submit(host=plain, image="busybox", user="1000:1000", cap_drop=["ALL"]).pk
        generous = host(
            "generous", allow_root=True, allow_privileged=True,
            allowed_capabilities=["NET_ADMIN"], gpus=2,
        )  # fmt: skip
        job = submit(
            host=generous, image="busybox", user="0", privileged=True, cap_add=["cap_net_admin"],
            gpus=2,
        )  # fmt: skip
        assert job.cap_add == ["cap_net_admin"] and job.spec().cap_add == ("NET_ADMIN",)
        assert "gpus: Host generous declares 2 GPUs." in refused(generous, gpus=3)

    def test_networks(self, settings):
        row = host("net", allowed_networks=["backend"], default_network="jobs")
        assert "network: Host net does not allow that network (allowed: none, backend)." in (
            refused(row, network="frontend")
        )
        for allowed in ("backend", "none", "jobs"):
            assert submit(host=row, image="busybox", network=allowed).spec().network_mode == allowed
        assert submit(host=row, image="busybox").spec().network_mode == "jobs", "host default"
        other = host("other")
        settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "NETWORK_MODE": "none"}
        assert submit(host=other, image="busybox").spec().network_mode == "none"

    def test_capacity(self):
        row = host("small")
        row.record_health(True, capacity=(2.0, 1024))
        assert "cpu_limit: Host small has 2 CPUs." in refused(row, cpu_limit=3)
        assert "memory_limit: Host small has 1024 MB of memory." in refused(row, memory_limit=2048)
        assert submit(host=row, image="busybox", cpu_limit=2, memory_limit=1024).pk

    def test_an_executor_refuses_what_it_cannot_honour(self):
        row = ExecutorHost.objects.create(
            name="plain-exec", connection_string=FAKE_URL, executor_type="plain", allow_root=True
        )
        message = refused(row, user="0", read_only_rootfs=True)
        assert "user: The plain executor (host plain-exec) cannot honour user." in message
        assert "read_only_rootfs: The plain executor (host plain-exec) cannot honour" in message

    def test_spec_field_errors_name_the_field(self):
        row = host()
        cases = {
            "entrypoint": {"entrypoint": ["sh", ""]},
            "user": {"user": "nobody"},
            "mounts": {"mounts": ["volume:x:relative"]},
            "secret_environment": {"secret_environment": {"TOKEN": "the-secret-itself"}},
            "cap_drop": {"cap_drop": ["bad cap"]},
            "shm_size_mb": {"shm_size_mb": 0},
            "pids_limit": {"pids_limit": 10_000_000},
            "network": {"network": "a b"},
        }
        for field, fields in cases.items():
            message = refused(row, **fields)
            assert message.startswith(f"Invalid job: {field}: "), message
        assert "the-secret-itself" not in refused(
            row, secret_environment={"TOKEN": "the-secret-itself"}
        )


class TestRegistryCredential:
    def test_chosen_by_the_image_registry_and_must_match_it(self):
        row = host()
        credential = RegistryCredentialFactory(registry="registry.example.com")
        job = submit(host=row, image="registry.example.com/team/app:1")
        assert job.registry_credential == credential
        assert submit(host=row, image="busybox").registry_credential is None
        assert job.spec().registry_credential == "registry.example.com"

    def test_a_named_credential_of_another_registry_is_refused(self):
        row = host()
        credential = RegistryCredentialFactory(registry="registry.example.com")
        from container_manager.exceptions import InvalidJobError

        with pytest.raises(InvalidJobError) as caught:
            submit(host=row, image="ghcr.io/x/y", registry_credential=credential.name)
        assert "registry_credential: The credential is for registry.example.com" in str(
            caught.value
        )
        with pytest.raises(InvalidJobError, match="no credential 'missing'"):
            submit(host=row, image="ghcr.io/x/y", registry_credential="missing")

    def test_password_must_be_a_reference(self):
        with pytest.raises(ValidationError) as caught:
            RegistryCredentialFactory.build(password_reference="hunter2").full_clean()
        assert set(caught.value.message_dict) == {"password_reference"}
        assert "hunter2" not in str(caught.value)


class TestAtLaunch:
    def test_secrets_reach_the_container_and_only_their_names_are_recorded(self, monkeypatch):
        engine = FakeExecutor.engine_for(FAKE_URL)
        monkeypatch.setenv("CM_POLICY_TEST_TOKEN", "tok-123-secret")
        row = host()
        job = submit(
            host=row, image="busybox", command="echo hi", environment={"A": "1"},
            secret_environment={"TOKEN": "env:CM_POLICY_TEST_TOKEN"}, user="1000",
            mounts=["tmpfs:/scratch:8"],
        )  # fmt: skip
        assert burst() == 1
        (spec,) = engine.specs
        assert spec.full_environment == {"A": "1", "TOKEN": "tok-123-secret"}
        job.refresh_from_db()
        attempt = JobAttempt.objects.get(job=job)
        assert job.status == JobStatus.COMPLETED
        assert attempt.spec["secret_environment"] == ["TOKEN"]
        assert attempt.spec["user"] == "1000"
        assert attempt.spec["mounts"] == [{"type": "tmpfs", "target": "/scratch",
                                           "read_only": False, "size_mb": 8}]  # fmt: skip
        for row_values in (
            ContainerJob.objects.filter(pk=job.pk).values().get(),
            JobAttempt.objects.filter(pk=attempt.pk).values().get(),
        ):
            assert "tok-123-secret" not in repr(row_values)

    def test_an_unresolvable_reference_fails_without_retries(self):
        engine = FakeExecutor.engine_for(FAKE_URL)
        job = submit(
            host=host(), image="busybox", max_retries=3,
            secret_environment={"TOKEN": "env:CM_POLICY_TEST_UNSET"},
        )  # fmt: skip
        burst()
        job.refresh_from_db()
        assert (job.status, job.attempt_count) == (JobStatus.FAILED, 1)
        assert job.last_error == (
            "Invalid job: secret reference env:CM_POLICY_TEST_UNSET:"
            " the worker has no environment variable CM_POLICY_TEST_UNSET"
        )
        assert engine.specs == [], "nothing was launched"
        attempt = JobAttempt.objects.get(job=job)
        assert attempt.spec["secret_environment"] == ["TOKEN"], "what it would have run with"


class TestPlacementHonoursThePolicy:
    def test_an_open_job_goes_to_the_host_that_allows_it(self):
        engine = FakeExecutor.engine_for(FAKE_URL)
        engine.script(FakeOutcome())
        host("closed", weight=1000)
        allowing = host("allowing", allowed_bind_prefixes=["/srv"], weight=1)
        job = submit(image="busybox", mounts=["bind:/srv/in:/in"])
        burst()
        job.refresh_from_db()
        assert job.docker_host == allowing and job.status == JobStatus.COMPLETED

    def test_a_job_no_host_allows_waits_with_the_reason_and_blocks_nobody(self):
        FakeExecutor.engine_for(FAKE_URL).script(FakeOutcome())
        host("only")
        stuck = submit(image="busybox", privileged=True, priority=10)
        others = [submit(image="busybox") for _ in range(3)]
        burst()
        stuck.refresh_from_db()
        assert stuck.status == JobStatus.QUEUED
        assert "only refuses it: privileged: Host only does not allow privileged jobs" in (
            stuck.placement_reason
        )
        assert all(ContainerJob.objects.get(pk=o.pk).status == JobStatus.COMPLETED for o in others)


def test_ten_unplaceable_high_priority_jobs_do_not_hold_up_ten_ordinary_ones():
    """A backlog of jobs that fit no host, larger than the worker's free slots and ahead of
    everything by priority, never stops the jobs behind it from running at once."""
    FakeExecutor.engine_for(FAKE_URL).script(FakeOutcome())
    host("only", max_concurrent_jobs=4)
    stuck = [submit(image="busybox", labels={"gpu": "true"}, priority=100) for _ in range(10)]
    ordinary = [submit(image="busybox") for _ in range(10)]
    Worker(concurrency=2, burst=True, shutdown_timeout=5).run()
    assert {ContainerJob.objects.get(pk=j.pk).status for j in ordinary} == {JobStatus.COMPLETED}
    waiting = ContainerJob.objects.filter(pk__in=[j.pk for j in stuck])
    assert {j.status for j in waiting} == {JobStatus.QUEUED}
    assert all(
        j.placement_reason.startswith("Waiting: no active, healthy host fits") for j in waiting
    )
