"""Private images with the Docker SDK mocked at its edge: the credentials reach the pull as
``auth_config``, and a registry's refusal becomes ImageAccessDeniedError (never retried),
with the registry's words and never the password.

The SDK errors are made the way the SDK makes them from an engine answer
(``create_api_error_from_http_exception``), with the status codes and messages a docker 20.10
engine (API 1.41) really answers a pull from a distribution 2.8 registry with htpasswd auth.
"""

from __future__ import annotations

import json
from unittest.mock import patch

import pytest
import requests
from docker.errors import APIError, ImageNotFound, create_api_error_from_http_exception

from container_manager.exceptions import (
    ExecutorError,
    ImageAccessDeniedError,
    ImageUnavailableError,
)
from container_manager.executors.base import JobSpec
from container_manager.executors.docker import DockerExecutor
from container_manager.models import JobAttempt, JobStatus, RegistryCredential
from container_manager.queue import claim, submit
from container_manager.runner import JobRunner, RunControl
from container_manager.spec import RegistryAuth
from container_manager.testing.factories import ExecutorHostFactory

pytestmark = pytest.mark.django_db

IMAGE = "127.0.0.1:5555/cm-test/busybox:1"
PASSWORD = "s3cret-Pa55word"
AUTH = RegistryAuth("127.0.0.1:5555", "cmtest", PASSWORD)
NO_CREDENTIALS = (
    'Head "http://127.0.0.1:5555/v2/cm-test/busybox/manifests/1": no basic auth credentials'
)


def engine_error(status: int, message: str) -> APIError:
    """The SDK's error for an engine answer ``status`` ``{"message": message}``."""
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"message": message}).encode()
    response.url = "http+docker://localhost/v1.41/images/create"
    try:
        response.raise_for_status()
    except requests.exceptions.HTTPError as http_error:
        try:
            create_api_error_from_http_exception(http_error)
        except APIError as err:
            return err
    raise AssertionError(f"{status} is no error")


def _executor() -> DockerExecutor:
    return DockerExecutor({"docker_host": "unix:///var/run/docker.sock"})


def _pull_fails(mock_client, error: Exception) -> None:
    mock_client.return_value.images.pull.side_effect = error


# ---- the credentials reach the pull -------------------------------------------------------


def test_pull_image_passes_the_credentials_as_auth_config():
    with patch("docker.DockerClient") as mock_client:
        assert _executor().pull_image(IMAGE, AUTH) is True
    mock_client.return_value.images.pull.assert_called_once_with(
        "127.0.0.1:5555/cm-test/busybox",
        tag="1",
        auth_config={"username": "cmtest", "password": PASSWORD, "serveraddress": "127.0.0.1:5555"},
    )


def test_pull_image_without_credentials_keeps_the_seed_call():
    with patch("docker.DockerClient") as mock_client:
        assert _executor().pull_image(IMAGE) is True
    mock_client.return_value.images.pull.assert_called_once_with(
        "127.0.0.1:5555/cm-test/busybox", tag="1"
    )


def test_a_launch_pulls_a_missing_image_with_the_specs_credentials():
    spec = JobSpec(job_id="j1", attempt=1, image=IMAGE, argv=["true"], registry_auth=AUTH)
    with patch("docker.DockerClient") as mock_client:
        created = mock_client.return_value.containers.create
        created.side_effect = [ImageNotFound("No such image"), created.return_value]
        created.return_value.id = "c1"
        created.return_value.status = "created"
        assert _executor().run(spec) == "c1"
    mock_client.return_value.images.pull.assert_called_once_with(
        "127.0.0.1:5555/cm-test/busybox", tag="1", auth_config=AUTH.as_auth_config()
    )
    assert created.call_count == 2
    created.return_value.start.assert_called_once_with()


# ---- refusals -----------------------------------------------------------------------------


def test_a_wrong_password_is_access_denied_with_the_registry_answer():
    with patch("docker.DockerClient") as mock_client:
        _pull_fails(mock_client, engine_error(500, "unauthorized: authentication required"))
        with pytest.raises(ImageAccessDeniedError) as raised:
            _executor().pull_image(IMAGE, AUTH)
    assert str(raised.value) == (
        f"Image {IMAGE!r} could not be pulled: the registry 127.0.0.1:5555 refused the"
        " credentials of user 'cmtest': unauthorized: authentication required"
    )
    assert isinstance(raised.value, ExecutorError)
    assert isinstance(raised.value.__cause__.__cause__, APIError), "raise ... from the SDK error"


def test_no_credential_is_access_denied_and_says_none_is_registered():
    with patch("docker.DockerClient") as mock_client:
        _pull_fails(mock_client, engine_error(500, NO_CREDENTIALS))
        with pytest.raises(ImageAccessDeniedError) as raised:
            _executor().pull_image(IMAGE)
    assert str(raised.value) == (
        f"Image {IMAGE!r} could not be pulled: no registry credential is registered for"
        f" 127.0.0.1:5555 (the registry answered: {NO_CREDENTIALS})"
    )


@pytest.mark.parametrize("status", [401, 403])
def test_an_unauthorized_or_forbidden_status_is_access_denied_whatever_its_words(status):
    with patch("docker.DockerClient") as mock_client:
        _pull_fails(mock_client, engine_error(status, "go away"))
        with pytest.raises(ImageAccessDeniedError, match=r"refused the credentials.*: go away$"):
            _executor().pull_image(IMAGE, AUTH)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, 'Get "http://127.0.0.1:5556/v2/": dial tcp 127.0.0.1:5556: connect: refused'),
        (404, f"manifest for {IMAGE} not found: manifest unknown: manifest unknown"),
        (500, "unauthorized-looking text without the error code"),
    ],
)
def test_other_pull_failures_stay_unavailable(status, message):
    with patch("docker.DockerClient") as mock_client:
        _pull_fails(mock_client, engine_error(status, message))
        with pytest.raises(ImageUnavailableError) as raised:
            _executor().pull_image(IMAGE, AUTH)
    assert not isinstance(raised.value, ImageAccessDeniedError)
    assert str(raised.value).endswith(f"could not be pulled: Pull image {IMAGE!r}: {message}")


def test_an_error_without_a_status_is_no_refusal():
    with patch("docker.DockerClient") as mock_client:
        _pull_fails(mock_client, APIError("unauthorized: authentication required"))
        with pytest.raises(ImageUnavailableError) as raised:
            _executor().pull_image(IMAGE, AUTH)
    assert not isinstance(raised.value, ImageAccessDeniedError)


@pytest.mark.parametrize(
    ("status", "raised_as"),
    [(500, ImageAccessDeniedError), (401, ImageAccessDeniedError), (502, ImageUnavailableError)],
)
def test_a_password_the_engine_echoes_never_reaches_the_message(status, raised_as):
    with patch("docker.DockerClient") as mock_client:
        _pull_fails(mock_client, engine_error(status, f"unauthorized: bad password {PASSWORD}"))
        with pytest.raises(raised_as) as raised:
            _executor().pull_image(IMAGE, AUTH)
    assert PASSWORD not in str(raised.value)
    assert "bad password ***" in str(raised.value)


def test_launch_job_tells_the_refusal():
    host = ExecutorHostFactory()
    job = submit(host=host, image=IMAGE, command="true")
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = ImageNotFound("No such image")
        _pull_fails(mock_client, engine_error(500, NO_CREDENTIALS))
        success, message = DockerExecutor({"docker_host": host}).launch_job(job)
    assert success is False
    assert "no registry credential is registered for 127.0.0.1:5555" in message


# ---- the runner: a refusal is not retried ---------------------------------------------------


def _run_one_attempt(monkeypatch, pull_error: Exception):
    monkeypatch.setenv("CM_TEST_PULL_PASSWORD", PASSWORD)
    host = ExecutorHostFactory(auto_pull_images=True)
    RegistryCredential.objects.create(
        name="local",
        registry="127.0.0.1:5555",
        username="cmtest",
        password_reference="env:CM_TEST_PULL_PASSWORD",
    )
    job = submit(host=host, image=IMAGE, command="true", max_retries=2)
    [claimed] = claim("w1", 1)
    with patch("docker.DockerClient") as mock_client:
        mock_client.return_value.containers.create.side_effect = ImageNotFound("No such image")
        _pull_fails(mock_client, pull_error)
        JobRunner(claimed.job, "w1", DockerExecutor({"docker_host": host}), RunControl()).run()
    assert mock_client.return_value.images.pull.call_args.kwargs["auth_config"]["password"] == (
        PASSWORD
    ), "the worker resolved the reference for the pull"
    job.refresh_from_db()
    return job


def test_the_runner_fails_a_refused_pull_at_once(monkeypatch):
    job = _run_one_attempt(monkeypatch, engine_error(500, "unauthorized: authentication required"))
    assert (job.status, job.attempt_count, job.exit_code) == (JobStatus.FAILED, 1, None)
    assert job.last_error.startswith(f"Launch failed: Image {IMAGE!r} could not be pulled:")
    assert job.last_error.endswith(
        "refused the credentials of user 'cmtest': unauthorized: authentication required"
    )
    [attempt] = JobAttempt.objects.filter(job=job)
    assert (attempt.status, attempt.error) == (JobStatus.FAILED, job.last_error)
    assert PASSWORD not in attempt.error and PASSWORD not in str(attempt.spec)


def test_the_runner_still_retries_a_pull_that_may_work_later(monkeypatch):
    job = _run_one_attempt(
        monkeypatch, engine_error(500, 'Get "http://127.0.0.1:5555/v2/": connection refused')
    )
    assert (job.status, job.attempt_count) == (JobStatus.QUEUED, 1), "requeued for a retry"
    assert "connection refused" in job.last_error
