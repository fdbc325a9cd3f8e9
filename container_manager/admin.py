"""The admin: presentation only. Actions and the job form call the queue, and the host
action the health code; pages read the database and never call an engine while they
render (only the "check now" action does). Hosts, registry credentials and environment
templates are in :mod:`container_manager.admin_hosts`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict, cast
from urllib.parse import parse_qsl, urlencode

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.db.models.functions import Length, Right
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from . import admin_hosts, overview, queue, tally
from .admin_fields import (
    EstimatingPaginator,
    LinesField,
    PairsField,
    QueueFilter,
    SafeLookups,
    badge,
    row_checkbox,
    seconds,
    short_time,
)
from .admin_search import job_search, search_note
from .environment import HIDDEN, format_environment, mask_environment
from .exceptions import InvalidJobError, JobStateError
from .models import DEFAULT_QUEUE, ContainerJob, JobAttempt, JobStatus
from .spec import SPEC_FIELDS
from .spec_text import MERGED_NOTE, mount_text, recorded_spec_text, secrets_text

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec
    from django.forms import ModelForm
    from django_stubs_ext import WithAnnotations

    class _Tails(TypedDict):
        stdout_tail: str | None
        stderr_tail: str | None
        output_length: int


__all__ = ["ContainerJobAdmin", "admin_hosts"]

LIVE_TAIL = 64 * 1024  # characters of each stream the live view sends


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
        "exit_code", "oom_killed", "error", "started_at", "finished_at", "ran_with")  # fmt: skip

    def get_queryset(self, request: HttpRequest) -> QuerySet[JobAttempt]:
        return super().get_queryset(request).select_related("host")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        perms = ("container_manager.view_containerjob", "container_manager.change_containerjob")
        return any(request.user.has_perm(p) for p in perms)

    @admin.display(description="ran with (secrets by name)")
    def ran_with(self, obj: JobAttempt) -> SafeString:
        return format_html('<code class="cm-spec">{}</code>', recorded_spec_text(obj.spec))


#: The fields of a new job, submitted from the admin.
ADD_FIELDSETS: _FieldsetSpec = (
    (None, {"fields": ("name", "docker_host", "required_labels", "docker_image", "command",
                       "working_directory")}),
    ("Environment", {"fields": ("environment_template", "override_environment")}),
    ("Container spec", {"fields": ("entrypoint", "user", "mounts", "network",
        "secret_environment", "registry_credential", "gpus", "shm_size_mb", "pids_limit",
        "read_only_rootfs", "cap_add", "cap_drop", "privileged")}),
    ("Limits and retries", {"fields": ("memory_limit", "cpu_limit", "timeout_seconds",
        "priority", "queue", "max_retries", "retry_on_failure", "run_after")}),
)  # fmt: skip


class ContainerJobAddForm(forms.ModelForm):
    """A new job: the spec's lists one entry per line. The model's ``clean`` validates it
    against its host's policy and executor; saving submits it through the queue."""

    entrypoint = LinesField(help_text="Replaces the image's entrypoint: one argument per line.")
    mounts = LinesField(
        render=mount_text,
        help_text="One per line: volume:NAME:/target[:ro], bind:/host/path:/target[:ro|:rw]"
        " (read-only unless :rw; only under the host's allowed prefixes), tmpfs:/target:SIZE_MB.",
    )
    secret_environment = PairsField(
        expected="NAME=env:VARIABLE or NAME=file:/path",
        help_text="NAME=env:VARIABLE or NAME=file:/path, one per line: references the worker"
        " reads at launch, never the secret itself.",
    )
    cap_add = LinesField(label="Capabilities to add", help_text="One per line, e.g. NET_ADMIN.")
    cap_drop = LinesField(label="Capabilities to drop", help_text="One per line, e.g. ALL.")
    queue = forms.CharField(
        required=False,
        max_length=100,
        initial=DEFAULT_QUEUE,
        help_text=f"Empty: {DEFAULT_QUEUE!r}. Workers started with --queue take only their"
        " queues' jobs.",
    )

    def clean_queue(self) -> str:
        return str(self.cleaned_data.get("queue") or DEFAULT_QUEUE)

    class Meta:
        model = ContainerJob
        fields = tuple(cast(str, f) for _, o in ADD_FIELDSETS for f in o["fields"])


def _submit_keywords(job: ContainerJob) -> dict[str, Any]:
    """The keywords of ``queue.submit`` for an unsaved job built by the add form."""
    return {
        "host": job.docker_host if job.docker_host_id is not None else None,
        "labels": job.required_labels,
        "image": job.docker_image,
        "command": job.command,
        "name": job.name,
        "environment": job.override_environment,
        "template": job.environment_template if job.environment_template_id else None,
        "memory_limit": job.memory_limit,
        "cpu_limit": job.cpu_limit,
        "timeout_seconds": job.timeout_seconds,
        "priority": job.priority,
        "queue": job.queue,
        "max_retries": job.max_retries,
        "retry_on_failure": job.retry_on_failure,
        "run_after": job.run_after,
        "working_directory": job.working_directory,
        **{name: getattr(job, name) for name in SPEC_FIELDS},
    }


#: The columns the job list reads (no output, environment or spec).
LIST_COLUMNS = ("id", "name", "status", "docker_host", "docker_host__name", "queue",
                "docker_image", "exit_code", "created_at", "started_at",
                "completed_at")  # fmt: skip


class JobChangeList(ChangeList):
    """The job list: its rows read only :data:`LIST_COLUMNS`, and each row's link is the
    change page's URL reversed once for the page, with the list's filters kept (what
    Django's ``add_preserved_filters`` makes of it, resolving every row's URL)."""

    _PK = "cm0job0pk"

    def __init__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        if note := search_note(self.root_queryset, self.query, self.result_count):
            messages.info(request, note)
        kept = dict(parse_qsl(self.preserved_filters))
        self._link_query = f"?{urlencode(kept)}" if kept else ""
        self.preserved_filters = ""  # in the link already
        self._link = reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(self._PK,),
            current_app=self.model_admin.admin_site.name,
        )

    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        return super().get_queryset(request, exclude_parameters).only(*LIST_COLUMNS)

    def url_for_result(self, result: Any) -> str:
        return self._link.replace(self._PK, quote(str(result.pk))) + self._link_query


def _whole(jobs: QuerySet[ContainerJob]) -> QuerySet[ContainerJob]:
    """The list's selected jobs with every column but the output (for the actions)."""
    return jobs.defer(None).defer("stdout_log", "stderr_log")


@admin.register(ContainerJob)
class ContainerJobAdmin(SafeLookups):
    list_display = ("job", "status_badge", "host", "queue", "docker_image", "duration",
                    "exit_code", "created")  # fmt: skip
    list_filter = ("status", "docker_host", QueueFilter, "created_at")
    search_fields = ("id", "name", "docker_image")
    search_help_text = "A job id (or its first characters), or the start of a name or image."
    list_select_related = ("docker_host",)
    # Every page at millions of jobs: no count of the whole table (the paginator counts up
    # to a bound, then shows PostgreSQL's estimate, labelled), no facet counts.
    paginator = EstimatingPaginator
    # A row costs Django about 0.5 ms to render here (see JobChangeList, row_checkbox); the
    # SQL of a page, a few ms.
    list_per_page = 50
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ("cancel_jobs", "retry_jobs", "requeue_jobs")
    action_checkbox = row_checkbox
    inlines = (JobAttemptInline,)
    fieldsets = (
        (None, {"fields": ("id", "name", "status_display", "docker_host", "docker_image",
                           "command", "working_directory")}),
        ("Outcome", {"fields": ("exit_code_display", "last_error_display", "oom_killed",
                                "created_at", "started_display", "completed_display",
                                "duration_display", "attempts_display")}),
        ("Output", {"fields": ("stdout_display", "stderr_display")}),
        ("Environment", {"fields": ("environment_template", "environment_display")}),
        ("Container spec", {"fields": ("entrypoint", "user", "mounts_display", "network",
            "secrets_display", "registry_credential", "gpus", "shm_size_mb", "pids_limit",
            "read_only_rootfs", "cap_add", "cap_drop", "privileged")}),
        ("Placement, limits and retries", {"classes": ("collapse",), "fields": (
            "required_labels", "auto_placed", "placement_reason", "memory_limit", "cpu_limit",
            "timeout_seconds", "priority", "queue", "max_retries", "retry_on_failure",
            "run_after")}),
        ("Worker", {"classes": ("collapse",), "fields": (
            "worker_id", "lease_expires_at", "container_id", "cancel_requested",
            "peak_memory_bytes", "cpu_seconds", "stdout_file", "stderr_file")}),
    )  # fmt: skip
    # Every fieldset above lists plain field names (no grouped rows).
    readonly_fields = tuple(cast(str, f) for _, o in fieldsets for f in o["fields"])
    add_form = ContainerJobAddForm
    add_fieldsets = ADD_FIELDSETS

    exit_code_display = _live_field("cm-exit-code", "exit code")
    last_error_display = _live_field("cm-last-error", "last error")
    started_display = _live_field("cm-started-at", "started at")
    completed_display = _live_field("cm-completed-at", "completed at")
    duration_display = _live_field("cm-duration", "duration")
    attempts_display = _live_field("cm-attempt-count", "attempts")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ContainerJob]:
        return super().get_queryset(request).defer("stdout_log", "stderr_log")

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return JobChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[ContainerJob], search_term: str
    ) -> tuple[QuerySet[ContainerJob], bool]:
        return job_search(queryset, search_term), False

    # ---- adding: a form whose save submits the job through the queue ----------------------

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> _FieldsetSpec:
        return self.fieldsets if obj is not None else self.add_fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.readonly_fields if obj is not None else ()

    def get_inlines(self, request: HttpRequest, obj: Any) -> Any:
        return self.inlines if obj is not None else ()

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> type[ModelForm[ContainerJob]]:
        if obj is None:
            kwargs["form"] = self.add_form
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: ContainerJob, form: Any, change: bool) -> None:
        if change:  # the job page is read-only: nothing of a submitted job is edited here
            return
        who = f"user:{request.user.get_username()}"
        job = queue.submit(**_submit_keywords(obj), submitted_by=who)
        obj.pk, obj._state = job.pk, job._state  # the log entry and message name the new job

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
        shown = self._log("stderr", obj.stderr_log, obj.stderr_truncated)
        if obj.output_merged:
            return format_html('{}<p id="cm-output-merged">{}</p>', shown, MERGED_NOTE)
        return shown

    @admin.display(description="mounts")
    def mounts_display(self, obj: ContainerJob) -> SafeString:
        mounts = obj.mounts if isinstance(obj.mounts, list) else []
        return self._lines("cm-mounts", [mount_text(m) for m in mounts])

    @admin.display(description="secret environment (references, read by the worker)")
    def secrets_display(self, obj: ContainerJob) -> SafeString:
        return self._lines("cm-secrets", secrets_text(obj.secret_environment or {}))

    @staticmethod
    def _lines(element: str, lines: list[str]) -> SafeString:
        if not lines:
            return format_html("{}", "—")
        rows = format_html_join("\n", "{}", ((line,) for line in lines))
        return format_html('<pre id="{}" class="cm-env">{}</pre>', element, rows)

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
        """The job's status, changing fields and output tails, for its page, from the database
        only (a running job's latest output is what its worker recorded last: the web process
        never asks an engine)."""
        query = (
            self.get_queryset(request)
            .annotate(
                stdout_tail=Right("stdout_log", LIVE_TAIL),
                stderr_tail=Right("stderr_log", LIVE_TAIL),
                output_length=Length("stdout_log") + Length("stderr_log"),
            )
            .defer("override_environment")
        )
        job: WithAnnotations[ContainerJob, _Tails] = get_object_or_404(query, pk=object_id)
        if not self.has_view_permission(request, job):
            raise PermissionDenied
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
        totals = tally.totals()
        counts = overview.counts_by_status(totals)
        context = {
            **self.admin_site.each_context(request),
            "title": "Queue overview",
            "opts": self.model._meta,
            "statuses": [(badge(s), counts[s.value], s.value) for s in JobStatus],
            "status_names": JobStatus.values,
            "by_host": overview.counts_by_host(totals),
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
        done = [job for job in _whole(jobs) if queue.cancel(job)]
        for job in done:
            self.log_change(request, job, "Cancelled from the admin.")
        return self._report(request, done, "cancelled (running ones stop shortly)", len(jobs))

    @admin.action(permissions=["change"], description="Retry selected ended jobs (new attempt)")
    def retry_jobs(self, request: HttpRequest, jobs: QuerySet[ContainerJob]) -> Any:
        done = []
        for job in _whole(jobs):
            try:
                done.append(queue.retry(job))
            except JobStateError:
                continue
            self.log_change(request, job, "Retried from the admin (a new attempt).")
        return self._report(request, done, "queued again", len(jobs))

    @admin.action(permissions=["change"], description="Requeue a copy of selected jobs")
    def requeue_jobs(self, request: HttpRequest, jobs: QuerySet[ContainerJob]) -> Any:
        copies = []
        for job in _whole(jobs):
            copies.append(copy := queue.requeue_copy(job))
            self.log_change(request, job, f"Requeued from the admin as job {copy.pk}.")
            self.log_addition(request, copy, f"Copy of job {job.pk}, from the admin.")
        return self._report(request, copies, "copied and queued", len(jobs))
