"""Input bounds, checked before any parsing: size caps on what a job carries, NUL bytes
refused in every text field, working directories kept out of the kernel's views, priority
bounded. Run on SQLite and PostgreSQL (a NUL byte would make PostgreSQL raise on save)."""

from __future__ import annotations

import time

import pytest
from django.core.exceptions import ValidationError

from container_manager.exceptions import InvalidJobError
from container_manager.models import (
    ContainerJob,
    EnvironmentVariableTemplate,
    ExecutorHost,
    RegistryCredential,
)
from container_manager.queue import submit
from container_manager.spec import MAX_COMMAND_CHARS, MAX_ENVIRONMENT_CHARS, MAX_LABELS

pytestmark = pytest.mark.django_db


@pytest.fixture
def host():
    return ExecutorHost.objects.create(
        name="bounds", connection_string="unix:///fake/engine.sock", executor_type="fake"
    )


def refusal(host, **fields):
    with pytest.raises(InvalidJobError) as caught:
        submit(host=host, image="busybox", **fields)
    return str(caught.value)


def test_a_huge_command_is_refused_at_once(host):
    started = time.process_time()
    message = refusal(host, command="x" * (10 * 1024 * 1024))
    assert time.process_time() - started < 2, "refused before splitting"
    assert f"command: At most {MAX_COMMAND_CHARS} characters" in message


def test_a_command_within_the_cap_is_accepted(host):
    job = submit(host=host, image="busybox", command="x" * (MAX_COMMAND_CHARS - 1))
    assert job.argv == ["x" * (MAX_COMMAND_CHARS - 1)]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"environment": "A=" + "x" * MAX_ENVIRONMENT_CHARS}, "override_environment"),
        ({"entrypoint": ["x" * 40_000]}, "entrypoint"),
        ({"labels": {f"l{i}": "1" for i in range(MAX_LABELS + 1)}}, "required_labels"),
        ({"labels": {"zone": "x" * 300}}, "required_labels"),
        ({"name": "n" * 201}, "name"),
        ({"secret_environment": {f"S{i}": "env:X" for i in range(257)}}, "secret_environment"),
        ({"priority": 101}, "priority"),
        ({"priority": -101}, "priority"),
    ],
)
def test_caps_name_the_field(host, fields, field):
    assert refusal(host, **fields).startswith(f"Invalid job: {field}: ")


@pytest.mark.parametrize(
    "fields",
    [
        {"command": "echo a\0b"},
        {"name": "bad\0name"},
        {"environment": {"A": "x\0y"}},
        {"working_directory": "/tmp/\0"},
        {"entrypoint": ["/bin/sh\0"]},
        {"labels": {"zone": "eu\0"}},
        {"user": "1000\0"},
        {"network": "net\0"},
    ],
)
def test_nul_bytes_are_a_validation_error(host, fields):
    assert refusal(host, **fields).startswith("Invalid job: ")
    assert ContainerJob.objects.count() == 0


def test_nul_bytes_in_hosts_templates_and_credentials():
    with pytest.raises(ValidationError) as caught:
        ExecutorHost(name="h\0", connection_string="unix:///x.sock").full_clean()
    assert "name" in caught.value.message_dict
    with pytest.raises(ValidationError) as caught:
        EnvironmentVariableTemplate(name="t", description="a\0b").full_clean()
    assert caught.value.message_dict == {"description": ["Contains a NUL byte."]}
    with pytest.raises(ValidationError) as caught:
        RegistryCredential(
            name="r", registry="r.io", username="u\0", password_reference="env:P"
        ).full_clean()
    assert caught.value.message_dict == {"username": ["Contains a NUL byte."]}


@pytest.mark.parametrize(
    "path", ["/proc/self/fd/7", "/proc", "/sys/fs", "/dev", "/work/../proc", "relative"]
)
def test_working_directory_stays_out_of_the_kernels_views(host, path):
    assert refusal(host, working_directory=path).startswith("Invalid job: working_directory: ")


@pytest.mark.parametrize("path", ["/work", "/processing", "/device/x", "/srv/dev"])
def test_ordinary_working_directories(host, path):
    assert submit(host=host, image="busybox", working_directory=path).pk


@pytest.mark.parametrize(
    "url",
    [
        "unix:///var/run/docker.sock\n",
        "tcp://host:2376\n",
        "tcp://host:65536",
        "tcp://host:0",
    ],
)
def test_engine_urls_are_checked_whole(url):
    with pytest.raises(ValidationError) as caught:
        ExecutorHost(name="h", connection_string=url).full_clean()
    assert "connection_string" in caught.value.message_dict
