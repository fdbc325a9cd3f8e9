"""factory_boy factories for the app's models (``pip install factory-boy``)."""

from __future__ import annotations

from typing import Any, ClassVar

import factory

from ..models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost, RegistryCredential

__all__ = [
    "ContainerJobFactory",
    "EnvironmentVariableTemplateFactory",
    "ExecutorHostFactory",
    "RegistryCredentialFactory",
]


class ExecutorHostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ExecutorHost
        django_get_or_create: ClassVar = ("name",)

    name = factory.Sequence(lambda n: f"host-{n}")
    connection_string = "unix:///var/run/docker.sock"
    executor_type = "docker"
    max_concurrent_jobs = 10


class EnvironmentVariableTemplateFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = EnvironmentVariableTemplate

    name = factory.Sequence(lambda n: f"template-{n}")
    environment_variables = "APP_ENV=test"


class RegistryCredentialFactory(factory.django.DjangoModelFactory):
    """A registry login whose password the worker reads from ``$REGISTRY_PASSWORD``."""

    class Meta:
        model = RegistryCredential

    name = factory.Sequence(lambda n: f"registry-{n}")
    registry = factory.Sequence(lambda n: f"registry-{n}.example.com")
    username = "robot"
    password_reference = "env:REGISTRY_PASSWORD"


class ContainerJobFactory(factory.django.DjangoModelFactory):
    """A waiting job. ``environment_variables=`` is accepted as a synonym of
    ``override_environment=`` (the name older code used)."""

    class Meta:
        model = ContainerJob

    class Params:
        environment_variables: Any = None

    docker_host = factory.SubFactory(ExecutorHostFactory)
    name = factory.Sequence(lambda n: f"job-{n}")
    docker_image = "busybox:latest"
    command = "echo hello"
    override_environment = factory.LazyAttribute(lambda o: o.environment_variables or "")
