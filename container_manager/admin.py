"""The admin: presentation only. Actions call the queue and health code; pages read the
database and never call an engine while they render (only the "check now" action does)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict, cast

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.db.models.functions import Length, Right
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

from . import health, overview, queue
from .environment import (
    HIDDEN,
    MASK,
    format_environment,
    mask_environment,
    masked_text,
    stored_as_text,
    unmask,
)
from .exceptions import InvalidJobError, JobStateError
from .models import ContainerJob, EnvironmentVariableTemplate, ExecutorHost, JobAttempt, JobStatus
from .output import live_tail

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldGroups
    from django_stubs_ext import WithAnnotations

    class _Tails(TypedDict):
        stdout_tail: str | None
        stderr_tail: str | None
        output_length: int


COLOURS = {
    JobStatus.QUEUED: "#6c757d",
    JobStatus.LAUNCHING: "#0b7285",
    JobStatus.RUNNING: "#1c64d1",
    JobStatus.COMPLETED: "#2b8a3e",
    JobStatus.FAILED: "#c92a2a",
    JobStatus.TIMEOUT: "#d9480f",
    JobStatus.CANCELLED: "#6741d9",
}
BADGE = "color:#fff;padding:2px 9px;border-radius:9px;font-size:11px;white-space:nowrap;background:"
LIVE_TAIL = 64 * 1024  # characters of each stream the live view sends


def badge(status: str) -> SafeString:
    """A coloured badge for a job status."""
    colour = COLOURS.get(JobStatus(status), "#444")
    label = JobStatus(status).label
    return format_html('<span class="cm-badge" data-status="{}" style="{}{}">{}</span>',
                       status, BADGE, colour, label)  # fmt: skip


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    minutes, secs = divmod(value, 60)
    return f"{int(minutes)} min {secs:.0f} s" if minutes else f"{secs:.1f} s"


def short_time(value: datetime | None) -> str:
    return date_format(localtime(value), "M j, H:i:s") if value else "—"


def live_text(job: ContainerJob) -> dict[str, str]:
    """Element id -> text of the job page's fields that change while the job runs."""
    return {
        "cm-exit-code": "—" if job.exit_code is None else str(job.exit_code),
        "cm-last-error": job.last_error or "—",
        "cm-duration": seconds(job.duration),
        "cm-started-at": short_time(job.started_at),
        "cm-completed-at": short_time(job.completed_at),
        "cm-attempt-count": str(job.attempt_count),
    }


def _live_field(element: str, description: str) -> Callable[[Any, ContainerJob], SafeString]:
    @admin.display(description=description)
    def show(self: Any, obj: ContainerJob) -> SafeString:
        return format_html('<span id="{}">{}</span>', element, live_text(obj)[element])

    return show


class JobAttemptInline(admin.TabularInline):
    model = JobAttempt
    extra = 0
    can_delete = False
    fields = readonly_fields = ("number", "status", "host", "worker_id", "container_name",
        "exit_code", "oom_killed", "error", "started_at", "finished_at")  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[JobAttempt]:
        return super().get_queryset(request).select_related("host")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        perms = ("container_manager.view_containerjob", "container_manager.change_containerjob")
        return any(request.user.has_perm(p) for p in perms)


@admin.register(ContainerJob)
class ContainerJobAdmin(admin.ModelAdmin):
    list_display = ("job", "status_badge", "host", "docker_image", "duration", "exit_code",
                    "created")  # fmt: skip
    list_filter = ("status", "docker_host", "created_at")
    search_fields = ("id", "name", "docker_image")
    list_select_related = ("docker_host",)
    actions = ("cancel_jobs", "retry_jobs", "requeue_jobs")
    inlines = (JobAttemptInline,)
    fieldsets = (
        (None, {"fields": ("id", "name", "status_display", "docker_host", "docker_image",
                           "command", "working_directory")}),
        ("Outcome", {"fields": ("exit_code_display", "last_error_display", "oom_killed",
                                "created_at", "started_display", "completed_display",
                                "duration_display", "attempts_display")}),
        ("Output", {"fields": ("stdout_display", "stderr_display")}),
        ("Environment", {"fields": ("environment_template", "environment_display")}),
        ("Placement, limits and retries", {"classes": ("collapse",), "fields": (
            "required_labels", "auto_placed", "placement_reason", "memory_limit", "cpu_limit",
            "timeout_seconds", "priority", "max_retries", "retry_on_failure", "run_after")}),
        ("Worker", {"classes": ("collapse",), "fields": (
            "worker_id", "lease_expires_at", "container_id", "cancel_requested",
            "peak_memory_bytes", "cpu_seconds", "stdout_file", "stderr_file")}),
    )  # fmt: skip
    # Every fieldset above lists plain field names (no grouped rows).
    readonly_fields = tuple(cast(str, f) for _, o in fieldsets for f in o["fields"])

    exit_code_display = _live_field("cm-exit-code", "exit code")
    last_error_display = _live_field("cm-last-error", "last error")
    started_display = _live_field("cm-started-at", "started at")
    completed_display = _live_field("cm-completed-at", "completed at")
    duration_display = _live_field("cm-duration", "duration")
    attempts_display = _live_field("cm-attempt-count", "attempts")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ContainerJob]:
        return super().get_queryset(request).defer("stdout_log", "stderr_log")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are submitted with queue.submit or `manage.py container_job`

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        held = obj is not None and obj.status in JobStatus.active()  # cancel it first
        return not held and super().has_delete_permission(request, obj)

    @admin.display(description="job", ordering="name")
    def job(self, obj: ContainerJob) -> SafeString:
        return format_html("<code>{}</code> {}", str(obj.pk)[:8], obj.name)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: ContainerJob) -> str:
        return short_time(obj.created_at)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: ContainerJob) -> SafeString:
        return badge(obj.status)

    @admin.display(description="host", ordering="docker_host__name")
    def host(self, obj: ContainerJob) -> str:
        return obj.docker_host.name if obj.docker_host else "—"

    @admin.display(description="duration")
    def duration(self, obj: ContainerJob) -> str:
        return seconds(obj.duration)

    @admin.display(description="status")
    def status_display(self, obj: ContainerJob) -> SafeString:
        return format_html('<span id="cm-status">{}</span>', badge(obj.status))

    def _log(self, stream: str, text: str, truncated: bool) -> SafeString:
        note = " (the start was cut: only the tail is kept)" if truncated else ""
        return format_html('<pre id="cm-{}" class="cm-log">{}</pre>{}', stream, text, note)

    @admin.display(description="stdout")
    def stdout_display(self, obj: ContainerJob) -> SafeString:
        return self._log("stdout", obj.stdout_log, obj.stdout_truncated)

    @admin.display(description="stderr")
    def stderr_display(self, obj: ContainerJob) -> SafeString:
        return self._log("stderr", obj.stderr_log, obj.stderr_truncated)

    @admin.display(description="environment (merged, secrets masked)")
    def environment_display(self, obj: ContainerJob) -> SafeString:
        try:
            text = format_environment(mask_environment(obj.environment))
        except InvalidJobError:
            text = HIDDEN  # not KEY=VALUE text: shown as nothing of it
        return format_html('<pre class="cm-env">{}</pre>', text or "—")

    # ---- pages ------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("overview/", view(self.overview_view), name="container_manager_overview"),
            path("<uuid:object_id>/live/", view(self.live_view), name="container_manager_live"),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        job = self.get_object(request, object_id)
        actions: list[tuple[str, str]] = []
        if job is not None and self.has_change_permission(request, job):
            ended = JobStatus(job.status).is_terminal
            actions = [("retry_jobs", "Retry") if ended else ("cancel_jobs", "Cancel"),
                       ("requeue_jobs", "Requeue a copy")]  # fmt: skip
        context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "live_url": job and reverse("admin:container_manager_live", args=[job.pk]),
            "is_terminal": job is not None and JobStatus(job.status).is_terminal,
            "job_actions": actions,
        }
        return super().change_view(request, object_id, form_url, context)

    def live_view(self, request: HttpRequest, object_id: Any) -> JsonResponse:
        """The job's status, changing fields and output tails, for its page: from the database,
        and for a running job its output so far from the engine (this one job, on demand)."""
        query = ContainerJob.objects.annotate(
            stdout_tail=Right("stdout_log", LIVE_TAIL),
            stderr_tail=Right("stderr_log", LIVE_TAIL),
            output_length=Length("stdout_log") + Length("stderr_log"),
        ).defer("stdout_log", "stderr_log", "override_environment")
        job: WithAnnotations[ContainerJob, _Tails] = get_object_or_404(query, pk=object_id)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
        if live := live_tail(job):  # a running job's output so far, from its engine
            job.stdout_tail, job.stderr_tail = live
            job.output_length = len(live[0]) + len(live[1])
        return JsonResponse({
            "status": job.status,
            "badge": badge(job.status),
            "terminal": JobStatus(job.status).is_terminal,
            "exit_code": job.exit_code,
            "text": live_text(job),
            "stdout": job.stdout_tail or "",
            "stderr": job.stderr_tail or "",
            "cut": len(job.stdout_tail or "") + len(job.stderr_tail or "") < job.output_length,
        })  # fmt: skip

    def overview_view(self, request: HttpRequest) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        buckets = overview.throughput()
        counts = overview.counts_by_status()
        context = {
            **self.admin_site.each_context(request),
            "title": "Queue overview",
            "opts": self.model._meta,
            "statuses": [(badge(s), counts[s.value], s.value) for s in JobStatus],
            "status_names": JobStatus.values,
            "by_host": overview.counts_by_host(),
            "depth": overview.queue_depth(),
            "buckets": buckets,
            "peak": max([b.total for b in buckets] + [1]),
            "finished": sum(b.total for b in buckets),
            "failures": sum(b.failed for b in buckets),
        }
        return TemplateResponse(request, "admin/container_manager/overview.html", context)

    # ---- actions ----------------------------------------------------------------------

    def _report(self, request: HttpRequest, jobs: list[ContainerJob], what: str, asked: int) -> Any:
        self.message_user(request, f"{len(jobs)} job(s) {what}.", messages.SUCCESS)
        if asked > len(jobs):
            self.message_user(request, f"{asked - len(jobs)} job(s) skipped: not {what}.",
                              messages.WARNING)  # fmt: skip
        if request.POST.get("cm_from_page") and jobs:  # a job page's button: back to a job page
            return HttpResponseRedirect(reverse("admin:container_manager_containerjob_change",
                                                args=[jobs[0].pk]))  # fmt: skip
        return None

    @admin.action(permissions=["change"], description="Cancel selected jobs")
    def cancel_jobs(self, request: HttpRequest, jobs: QuerySet[ContainerJob]) -> Any:
        done = [job for job in jobs if queue.cancel(job)]
        for job in done:
            self.log_change(request, job, "Cancelled from the admin.")
        return self._report(request, done, "cancelled (running ones stop shortly)", len(jobs))

    @admin.action(permissions=["change"], description="Retry selected ended jobs (new attempt)")
    def retry_jobs(self, request: HttpRequest, jobs: QuerySet[ContainerJob]) -> Any:
        done = []
        for job in jobs:
            try:
                done.append(queue.retry(job))
            except JobStateError:
                continue
            self.log_change(request, job, "Retried from the admin (a new attempt).")
        return self._report(request, done, "queued again", len(jobs))

    @admin.action(permissions=["change"], description="Requeue a copy of selected jobs")
    def requeue_jobs(self, request: HttpRequest, jobs: QuerySet[ContainerJob]) -> Any:
        copies = []
        for job in jobs:
            copies.append(copy := queue.requeue_copy(job))
            self.log_change(request, job, f"Requeued from the admin as job {copy.pk}.")
            self.log_addition(request, copy, f"Copy of job {job.pk}, from the admin.")
        return self._report(request, copies, "copied and queued", len(jobs))


@admin.register(ExecutorHost)
class ExecutorHostAdmin(admin.ModelAdmin):
    list_display = ("name", "connection_string", "health", "last_check", "load", "weight")
    list_filter = ("is_active", "executor_type")
    search_fields = ("name", "connection_string")
    actions = ("check_now",)
    readonly_fields = ("health", "load", "last_health_check", "last_healthy_at",
                       "health_check_failures", "last_health_error", "created_at")  # fmt: skip
    fieldsets = (
        (None, {"fields": ("name", "connection_string", "executor_type", "is_active", "labels",
                           "auto_pull_images")}),
        ("TLS", {"description": "Paths of files on the worker machines; never read here.",
                 "fields": ("tls_enabled", "tls_verify", "tls_ca_cert", "tls_client_cert",
                            "tls_client_key")}),
        ("Capacity", {"fields": ("max_concurrent_jobs", "weight", "load")}),
        ("Health (as last checked)", {"fields": ("health", "last_health_check", "last_healthy_at",
                                                 "health_check_failures", "last_health_error")}),
    )  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[ExecutorHost]:
        return overview.with_load(super().get_queryset(request))

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
        return short_time(obj.last_health_check)

    @admin.display(description="running / capacity")
    def load(self, obj: ExecutorHost) -> str:
        running = getattr(obj, "running", None)
        return f"{'?' if running is None else running} / {obj.max_concurrent_jobs}"

    @admin.action(permissions=["change"], description="Check now (ping the engines)")
    def check_now(self, request: HttpRequest, hosts: QuerySet[ExecutorHost]) -> None:
        for host in hosts:
            healthy, detail = health.check_host(host)
            word = "healthy" if healthy else "unhealthy"
            self.log_change(request, host, f"Health check from the admin: {word} ({detail}).")
            level = messages.SUCCESS if healthy else messages.WARNING
            self.message_user(request, f"{host.name}: {word} ({detail})", level)


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
class EnvironmentVariableTemplateAdmin(admin.ModelAdmin):
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
