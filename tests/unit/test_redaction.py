"""Secrets by value, not just by name: values that look secret by their shape are masked,
and every known secret value of a job is redacted from the errors, log lines and output
tails the app records about it."""

from __future__ import annotations

import logging

import pytest

from container_manager.environment import (
    MASK,
    mask_environment,
    masked_text,
    redact,
    secret_values,
    unmask,
)
from container_manager.executors.fake import FakeExecutor, FakeOutcome
from container_manager.models import ContainerJob, ExecutorHost, JobAttempt, JobStatus
from container_manager.queue import submit
from container_manager.worker import Worker

FAKE_URL = "unix:///fake/engine.sock"
DSN = "postgres://app:pa55-word@db.internal:5432/app"


class TestShape:
    def test_urls_with_a_password_are_masked_whatever_their_name(self):
        env = {"DATABASE_URL": DSN, "SENTRY": "https://key:s3cr3t@sentry.io/1", "HOME": "/root",
               "SITE": "https://example.com/a:b@c"}  # fmt: skip
        assert mask_environment(env) == {
            "DATABASE_URL": MASK,
            "SENTRY": MASK,
            "HOME": "/root",
            "SITE": "https://example.com/a:b@c",
        }
        assert mask_environment({"SENTRY_DSN": "https://abc@o1.ingest.sentry.io/2"}) == {
            "SENTRY_DSN": MASK
        }

    def test_a_masked_url_keeps_its_stored_value_when_edited(self):
        stored = f"DATABASE_URL={DSN}\nDEBUG=1"
        assert masked_text(stored) == f"DATABASE_URL={MASK}\nDEBUG=1"
        assert unmask(f"DATABASE_URL={MASK}\nDEBUG=0", stored) == f"DATABASE_URL={DSN}\nDEBUG=0"

    def test_secret_values_include_a_urls_password(self):
        values = secret_values({"DATABASE_URL": DSN, "API_TOKEN": "tok-9876", "PIN": "12"})
        assert values == {DSN, "pa55-word", "tok-9876"}
        assert secret_values({"API_KEY": "abc"}) == set(), "too short to redact safely"

    def test_redact(self):
        text = f"runc: env API_TOKEN=tok-9876 DATABASE_URL={DSN} and pa55-word again"
        assert redact(text, {DSN, "pa55-word", "tok-9876"}) == (
            f"runc: env API_TOKEN={MASK} DATABASE_URL={MASK} and {MASK} again"
        )


@pytest.mark.django_db(transaction=True)
class TestRecordedTexts:
    @pytest.fixture
    def host(self, settings):
        settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "POLL_INTERVAL": 0.05}
        return ExecutorHost.objects.create(
            name="redact", connection_string=FAKE_URL, executor_type="fake"
        )

    def run(self, host, outcome, **fields):
        engine = FakeExecutor.engine_for(FAKE_URL)
        engine.script(outcome)
        job = submit(host=host, image="busybox", command="run", **fields)
        Worker(concurrency=1, burst=True, shutdown_timeout=5).run()
        job.refresh_from_db()
        return job

    def test_an_engine_error_that_echoes_the_environment(self, host, monkeypatch, caplog):
        monkeypatch.setenv("CM_REDACT_TEST", "ref-secret-777")
        echo = f"OCI runtime: env API_TOKEN=tok-9876 DATABASE_URL={DSN} S=ref-secret-777"
        caplog.set_level(logging.INFO, logger="container_manager")
        job = self.run(
            host,
            FakeOutcome(fail_on="create", error=echo),
            environment={"API_TOKEN": "tok-9876", "DATABASE_URL": DSN},
            secret_environment={"S": "env:CM_REDACT_TEST"},
        )
        assert job.status == JobStatus.FAILED
        assert "OCI runtime" in job.last_error and MASK in job.last_error
        texts = [job.last_error, *JobAttempt.objects.values_list("error", flat=True), caplog.text]
        for text in texts:
            for secret in ("tok-9876", "pa55-word", "ref-secret-777"):
                assert secret not in text

    def test_output_tails_are_redacted_unless_turned_off(self, host, settings):
        outcome = FakeOutcome(stdout="token is tok-9876\n", stderr=f"connecting to {DSN}\n")
        job = self.run(host, outcome, environment={"API_TOKEN": "tok-9876", "DATABASE_URL": DSN})
        assert job.stdout_log == f"token is {MASK}\n"
        assert job.stderr_log == f"connecting to {MASK}\n"
        settings.CONTAINER_MANAGER = {**settings.CONTAINER_MANAGER, "REDACT_OUTPUT": False}
        job = self.run(host, outcome, environment={"API_TOKEN": "tok-9876"})
        assert job.stdout_log == "token is tok-9876\n"
        assert ContainerJob.objects.count() == 2
