"""Where jobs run and what they may use: engine hosts, environment templates, registry
credentials."""

from __future__ import annotations

from typing import ClassVar

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone

from ..conf import get_settings
from ..exceptions import ConfigurationError, InvalidJobError
from ..spec import (
    image_registry,
    parse_capabilities,
)
from .validators import (
    NETWORK_NAME,
    REGISTRY_HOST,
    is_text_list,
    nul_errors,
    validate_environment_text,
    validate_labels,
    validate_reference,
)

__all__ = ["EnvironmentVariableTemplate", "ExecutorHost", "RegistryCredential"]


class ExecutorHost(models.Model):
    """A container engine the app can run jobs on."""

    #: Unique name the host is known by (commands, admin, jobs' ``host``).
    name = models.CharField(max_length=100, unique=True)
    connection_string = models.CharField(
        "engine URL",
        max_length=500,
        blank=True,
        help_text="unix:///var/run/docker.sock or tcp://host:2376 (checked by the host's executor)",
    )
    executor_type = models.CharField(
        max_length=50, default="docker", help_text="Alias of the executor in CONTAINER_MANAGER"
    )
    #: Connect to a ``tcp://`` engine with TLS.
    tls_enabled = models.BooleanField(default=False)
    insecure_tcp = models.BooleanField(
        "plain TCP (no TLS)",
        default=False,
        help_text="Allow tcp:// without TLS: jobs' environment crosses the network in the clear",
    )
    #: Check the engine's certificate against ``tls_ca_cert`` (off only for tests).
    tls_verify = models.BooleanField(default=True)
    #: Path, on the worker's machine, of the CA certificate that signed the engine's.
    tls_ca_cert = models.CharField("CA certificate path", max_length=500, blank=True)
    #: Path of the client certificate the worker presents.
    tls_client_cert = models.CharField("client certificate path", max_length=500, blank=True)
    #: Path of the client certificate's key (only the path is stored).
    tls_client_key = models.CharField("client key path", max_length=500, blank=True)
    #: Pull an image the engine does not have; off: such a job fails its launch.
    auto_pull_images = models.BooleanField(default=True)
    #: Jobs running on this host at once, counted across all workers.
    max_concurrent_jobs = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1), MaxValueValidator(10_000)]
    )
    #: Share of open jobs: the least loaded relative to its weight takes the next one.
    weight = models.PositiveIntegerField(
        default=100, validators=[MinValueValidator(1), MaxValueValidator(1000)]
    )
    is_active = models.BooleanField(
        default=True, help_text="Takes new jobs (off: drained; running jobs finish)"
    )
    start_timeout = models.PositiveIntegerField(
        "start timeout (s)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Seconds a launch may take to reach running, pulls included (empty: the"
        " START_TIMEOUT setting)",
    )
    labels = models.JSONField(
        default=dict, blank=True, help_text='Placement labels, e.g. {"gpu": "true", "region": "eu"}'
    )
    # ---- policy: what a job may ask for on this host (nothing beyond the defaults) ----
    allowed_bind_prefixes = models.JSONField(
        default=list, blank=True, help_text='Host paths jobs may bind-mount, e.g. ["/srv/data"]'
    )
    allowed_networks = models.JSONField(
        default=list, blank=True, help_text='Networks jobs may name, e.g. ["backend"]'
    )
    default_network = models.CharField(
        max_length=200, blank=True, help_text="Network of jobs that name none (empty: NETWORK_MODE)"
    )
    allow_root = models.BooleanField(default=False, help_text="Jobs may set user 0 (root)")
    allow_privileged = models.BooleanField(default=False, help_text="Jobs may run privileged")
    allowed_capabilities = models.JSONField(
        default=list, blank=True, help_text='Capabilities jobs may add, e.g. ["NET_ADMIN"]'
    )
    gpus = models.PositiveIntegerField("GPUs", default=0, help_text="GPUs jobs may ask for")
    # ---- capacity, read from the engine at each health check ----
    #: CPUs of the engine, read at each health check; jobs asking more are refused.
    cpu_capacity = models.FloatField("CPUs", null=True, blank=True, editable=False)
    #: Memory of the engine in MB, read at each health check.
    memory_capacity_mb = models.PositiveIntegerField(
        "memory (MB)", null=True, blank=True, editable=False
    )
    #: When the last health check ran (empty: never, or a check was asked for).
    last_health_check = models.DateTimeField(null=True, blank=True)
    #: When a health check last succeeded.
    last_healthy_at = models.DateTimeField(null=True, blank=True)
    #: Consecutive failed health checks (``UNHEALTHY_AFTER`` of them: no new jobs).
    health_check_failures = models.PositiveIntegerField(default=0)
    #: Why the last failed health check failed.
    last_health_error = models.TextField(blank=True)
    #: When the host was registered.
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["name"]
        permissions: ClassVar = [
            (
                "trust_engine",
                "Can point a host at an engine (that engine receives every placed job's"
                " environment)",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.connection_string})"

    def clean(self) -> None:
        from ..executors import executor_class

        errors: dict[str, str] = {}
        try:
            executor = executor_class(self.executor_type)
        except ConfigurationError:
            aliases = set(get_settings().EXECUTORS)
            errors["executor_type"] = (
                f"Unknown executor {self.executor_type!r}; registered: "
                f"{', '.join(sorted(aliases))}."
            )
        else:
            errors.update(executor.validate_host(self))
        if label_error := validate_labels(self.labels):
            errors["labels"] = label_error
        errors.update(self._policy_errors())
        errors.update(nul_errors(self))
        if errors:
            raise ValidationError(errors)

    def _policy_errors(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        prefixes = self.allowed_bind_prefixes
        if not is_text_list(prefixes) or not all(
            p.startswith("/") and ".." not in p.split("/") and "\0" not in p for p in prefixes
        ):
            errors["allowed_bind_prefixes"] = "A list of absolute host paths without '..'."
        if not is_text_list(self.allowed_networks) or not all(
            NETWORK_NAME.fullmatch(n) for n in self.allowed_networks
        ):
            errors["allowed_networks"] = "A list of network names."
        if self.default_network and not NETWORK_NAME.fullmatch(self.default_network):
            errors["default_network"] = "Not a network name."
        try:
            parse_capabilities(self.allowed_capabilities)
        except InvalidJobError as err:
            errors["allowed_capabilities"] = f"{err}."
        return errors

    def allows_network(self, network: str) -> bool:
        """Whether a job may name ``network`` on this host."""
        return network in {"none", self.default_network, *(self.allowed_networks or [])}

    def allows_bind(self, source: str) -> bool:
        """Whether ``source`` lies under one of the allowed bind prefixes."""
        path = source.rstrip("/") or "/"
        for prefix in self.allowed_bind_prefixes or []:
            base = prefix.rstrip("/") or "/"
            if path == base or path.startswith(base if base == "/" else base + "/"):
                return True
        return False

    def request_health_check(self) -> None:
        """Have the workers check this host at their next health pass, even if inactive."""
        ExecutorHost.objects.filter(pk=self.pk).update(last_health_check=None)
        self.last_health_check = None

    def record_health(
        self, healthy: bool, error: str = "", capacity: tuple[float, int] | None = None
    ) -> None:
        """Record the outcome of a health check (and the engine's CPUs and memory in MB)."""
        self.last_health_check = timezone.now()
        self.health_check_failures = 0 if healthy else self.health_check_failures + 1
        self.last_health_error = "" if healthy else error
        fields = ["last_health_check", "health_check_failures", "last_health_error"]
        if capacity is not None:
            self.cpu_capacity, self.memory_capacity_mb = capacity
            fields += ["cpu_capacity", "memory_capacity_mb"]
        if healthy:
            self.last_healthy_at = self.last_health_check
            fields.append("last_healthy_at")
        self.save(update_fields=fields)

    @property
    def is_healthy(self) -> bool:
        """Fewer consecutive failed checks than UNHEALTHY_AFTER."""
        return self.health_check_failures < get_settings().UNHEALTHY_AFTER

    def effective_labels(self) -> dict[str, str]:
        """The host's labels plus ``executor=<alias>``, as placement sees them."""
        return {
            **{str(k): str(v) for k, v in (self.labels or {}).items()},
            "executor": self.executor_type,
        }


class EnvironmentVariableTemplate(models.Model):
    """Named KEY=VALUE lines that jobs can share; a job's own lines win."""

    #: Unique name jobs refer to it by.
    name = models.CharField(max_length=100, unique=True)
    #: What it is for.
    description = models.TextField(blank=True)
    environment_variables = models.TextField(
        blank=True, validators=[validate_environment_text], help_text="KEY=VALUE, one per line"
    )
    #: When it was created.
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if errors := nul_errors(self):
            raise ValidationError(errors)


class RegistryCredential(models.Model):
    """How to log in to a private registry. The password is a reference (``env:VAR`` or
    ``file:/path``) that the worker resolves at launch: the database never holds it."""

    #: Unique name jobs refer to it by.
    name = models.CharField(max_length=100, unique=True)
    registry = models.CharField(
        max_length=255, unique=True, help_text="Registry host[:port], e.g. registry.example.com"
    )
    #: The registry user.
    username = models.CharField(max_length=255)
    password_reference = models.CharField(
        max_length=500,
        validators=[validate_reference],
        help_text="env:VARIABLE or file:/path, read by the worker; never the password itself",
    )
    #: When it was created.
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.username}@{self.registry})"

    def clean(self) -> None:
        errors = nul_errors(self)
        if not REGISTRY_HOST.fullmatch(self.registry or ""):
            errors["registry"] = "A registry host[:port], such as ghcr.io."
        if errors:
            raise ValidationError(errors)

    @classmethod
    def for_image(cls, image: str) -> RegistryCredential | None:
        """The credential of the registry ``image`` names, if one is registered."""
        return cls.objects.filter(registry=image_registry(image)).first()
