"""The admin of what jobs run with: engine hosts (with their policy and capacity), registry
credentials and environment templates. Registered from :mod:`container_manager.admin`.

Pages read the database and never call an engine while they render (only the "check now"
action does). Secrets show as references or masked values, never in the clear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString

from . import overview
from .admin_fields import BADGE, LinesField, SafeLookups, short_time
from .conf import get_settings
from .environment import MASK, masked_text, stored_as_text, unmask
from .exceptions import InvalidJobError
from .models import EnvironmentVariableTemplate, ExecutorHost, RegistryCredential
from .spec_text import host_capacity_text

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups, _FieldsetSpec

__all__ = ["EnvironmentVariableTemplateAdmin", "ExecutorHostAdmin", "RegistryCredentialAdmin"]


#: The host page; capacity and health are read-only (written by health checks).
HOST_FIELDSETS: _FieldsetSpec = (
    (None, {"fields": ("name", "connection_string", "executor_type", "is_active", "labels",
                       "auto_pull_images")}),
    ("TLS", {"description": "Paths of files on the worker machines; never read here.",
             "fields": ("tls_enabled", "insecure_tcp", "tls_verify", "tls_ca_cert",
                        "tls_client_cert", "tls_client_key")}),
    ("Policy", {"description": "What jobs may ask for on this host: nothing beyond the"
                               " secure defaults unless it is listed here.",
                "fields": ("allowed_bind_prefixes", "allowed_networks", "default_network",
                           "allow_root", "allow_privileged", "allowed_capabilities",
                           "gpus")}),
    ("Capacity", {"fields": ("max_concurrent_jobs", "weight", "load", "engine_capacity",
                             "cpu_capacity", "memory_capacity_mb")}),
    ("Health (as last checked)", {"fields": ("health", "last_health_check", "last_healthy_at",
                                             "health_check_failures", "last_health_error")}),
)  # fmt: skip

_READ_ONLY = ("health", "load", "engine_capacity", "cpu_capacity", "memory_capacity_mb",
              "last_health_check", "last_healthy_at", "health_check_failures",
              "last_health_error", "created_at")  # fmt: skip


class ExecutorHostForm(forms.ModelForm):
    """The policy's lists edited one entry per line."""

    allowed_bind_prefixes = LinesField(
        label="Allowed bind prefixes",
        help_text="Host paths jobs may bind-mount, one per line (none: binds refused).",
    )
    allowed_networks = LinesField(
        label="Allowed networks", help_text="Networks jobs may name, one per line (and none)."
    )
    allowed_capabilities = LinesField(
        label="Allowed capabilities",
        help_text="Capabilities jobs may add, one per line, e.g. NET_ADMIN.",
    )

    class Meta:
        model = ExecutorHost
        fields = tuple(
            f
            for _, o in HOST_FIELDSETS
            for f in cast(tuple[str, ...], o["fields"])
            if f not in _READ_ONLY
        )


def _trusts_engines(request: HttpRequest) -> bool:
    return bool(request.user.has_perm("container_manager.trust_engine"))


@admin.register(ExecutorHost)
class ExecutorHostAdmin(SafeLookups):
    form = ExecutorHostForm
    list_display = ("name", "connection_string", "health", "last_check", "load", "weight")
    list_filter = ("is_active", "executor_type")
    search_fields = ("name", "connection_string")
    actions = ("check_now",)
    readonly_fields = _READ_ONLY
    fieldsets = HOST_FIELDSETS

    def get_queryset(self, request: HttpRequest) -> QuerySet[ExecutorHost]:
        return overview.with_load(super().get_queryset(request))

    # A host receives the environment of every job placed on it: pointing one at an engine
    # needs the trust_engine permission besides Django's own (superusers have every one).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and _trusts_engines(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and _trusts_engines(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and _trusts_engines(request)

    @admin.display(description="health", ordering="health_check_failures")
    def health(self, obj: ExecutorHost) -> SafeString:
        colour, word = ("#2b8a3e", "healthy") if obj.is_healthy else ("#c92a2a", "unhealthy")
        failures = obj.health_check_failures
        note = f" {failures} failed check{'s' if failures > 1 else ''} in a row" if failures else ""
        note += "" if obj.is_active else " (inactive: takes no new jobs)"
        return format_html('<span class="cm-badge" style="{}{}">{}</span>{}', BADGE, colour, word,
                           note)  # fmt: skip

    @admin.display(description="last check", ordering="last_health_check")
    def last_check(self, obj: ExecutorHost) -> str:
        return short_time(obj.last_health_check) if obj.last_health_check else "pending"

    @admin.display(description="running / capacity")
    def load(self, obj: ExecutorHost) -> str:
        running = getattr(obj, "running", None)
        return f"{'?' if running is None else running} / {obj.max_concurrent_jobs}"

    @admin.display(description="engine capacity (read at health checks)")
    def engine_capacity(self, obj: ExecutorHost) -> str:
        return host_capacity_text(obj)

    @admin.action(permissions=["change"], description="Check at the workers' next health pass")
    def check_now(self, request: HttpRequest, hosts: QuerySet[ExecutorHost]) -> None:
        """Ask the workers to check these hosts (inactive ones too) at their next health
        pass: the web process never talks to an engine, so it needs no engine credentials."""
        within = get_settings().HEALTH_CHECK_INTERVAL
        for host in hosts:
            host.request_health_check()
            self.log_change(request, host, "Health check requested from the admin.")
            self.message_user(
                request,
                f"{host.name}: check requested; a worker checks it within {within:.0f}s"
                " (reload this page to see the outcome).",
                messages.SUCCESS,
            )


@admin.register(RegistryCredential)
class RegistryCredentialAdmin(SafeLookups):
    """The password is a reference the worker reads; there is no password field."""

    list_display = ("name", "registry", "username", "password_reference", "jobs_using")
    search_fields = ("name", "registry", "username")
    fields = ("name", "registry", "username", "password_reference", "created_at")
    readonly_fields = ("created_at",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[RegistryCredential]:
        return super().get_queryset(request).annotate(jobs_count=Count("jobs"))

    @admin.display(description="jobs", ordering="jobs_count")
    def jobs_using(self, obj: RegistryCredential) -> int:
        return getattr(obj, "jobs_count", 0)


class EnvironmentTemplateForm(forms.ModelForm):
    """Shows secret-looking values masked; a value left masked keeps the stored secret."""

    class Meta:
        model = EnvironmentVariableTemplate
        fields = ("name", "description", "environment_variables")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stored = self.instance.environment_variables
        if self.instance.pk and masked_text(stored) != stored_as_text(stored):
            self.initial["environment_variables"] = masked_text(stored)
        if field := self.fields.get("environment_variables"):
            field.help_text = f"KEY=VALUE, one per line. {MASK} keeps the stored secret."

    def clean_environment_variables(self) -> str:
        stored = self.instance.environment_variables if self.instance.pk else ""
        try:
            return unmask(self.cleaned_data["environment_variables"], stored)
        except InvalidJobError as err:
            raise forms.ValidationError(str(err)) from err


@admin.register(EnvironmentVariableTemplate)
class EnvironmentVariableTemplateAdmin(SafeLookups):
    form = EnvironmentTemplateForm
    list_display = ("name", "description", "variables", "created_at")
    search_fields = ("name", "description")
    readonly_fields = ("variables", "created_at")

    def get_fields(self, request: HttpRequest, obj: Any = None) -> _FieldGroups:
        can_edit = obj is None or self.has_change_permission(request, obj)
        return ["name", "description", "environment_variables" if can_edit else "variables",
                "created_at"]  # fmt: skip

    @admin.display(description="variables (secrets masked)")
    def variables(self, obj: EnvironmentVariableTemplate) -> SafeString:
        return format_html('<pre class="cm-env">{}</pre>', masked_text(obj.environment_variables))
