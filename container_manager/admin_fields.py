"""Small presentation pieces shared by the admin modules: status badges, times, and form
fields that edit a list (or a NAME=VALUE mapping) one entry per line.

The fields only turn text into the stored shape; the model's ``clean`` says whether the
values are acceptable, naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cached_property
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.filters import SimpleListFilter
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.dates import MONTHS_3
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timezone import localtime
from django.utils.translation import gettext as _

from .models import DEFAULT_QUEUE, JobStatus

__all__ = [
    "BADGE",
    "COLOURS",
    "EstimatingPaginator",
    "LinesField",
    "PairsField",
    "QueueFilter",
    "SafeLookups",
    "badge",
    "row_checkbox",
    "seconds",
    "short_time",
]

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
    """``value`` in the current time zone as ``date_format(value, "M j, H:i:s")`` writes it,
    without its generic machinery (a list shows fifty)."""
    if value is None:
        return "—"
    at = localtime(value)
    return f"{str(MONTHS_3[at.month]).title()} {at.day}, {at:%H:%M:%S}"


def row_checkbox(model_admin: admin.ModelAdmin[Any], obj: Any) -> SafeString:
    """A change list's action checkbox, as Django's ``action_checkbox`` renders it, written
    without rendering a form widget's template for every row."""
    label = format_html(_("Select this object for an action - {}"), str(obj))
    return format_html(
        '<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
        ACTION_CHECKBOX_NAME,
        str(obj.pk),
        label,
    )


class LinesField(forms.CharField):
    """A list of strings, one per line (blank lines ignored, each line stripped)."""

    def __init__(self, *, render: Callable[[Any], str] = str, **kwargs: Any) -> None:
        self.render = render
        kwargs.setdefault("required", False)
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 3, "cols": 60}))
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return "\n".join(self.render(v) for v in value)
        return value  # the text as typed, when a form is shown again

    def to_python(self, value: Any) -> list[str]:  # type: ignore[override]
        text = super().to_python(value) or ""
        return [line.strip() for line in text.splitlines() if line.strip()]


class PairsField(LinesField):
    """A mapping, one ``NAME=VALUE`` per line. An error names the line, never its text
    (a mistyped secret reference might be the secret itself)."""

    def __init__(self, *, expected: str = "NAME=VALUE", **kwargs: Any) -> None:
        self.expected = expected
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, Mapping):
            return "\n".join(f"{name}={text}" for name, text in value.items())
        return value

    def to_python(self, value: Any) -> dict[str, str]:  # type: ignore[override]
        pairs: dict[str, str] = {}
        for number, line in enumerate(super().to_python(value), start=1):
            name, sep, text = line.partition("=")
            if not sep or not name.strip():
                raise forms.ValidationError(f"Line {number}: expected {self.expected}.")
            pairs[name.strip()] = text.strip()
        return pairs


class SafeLookups(admin.ModelAdmin):  # type: ignore[type-arg]
    """Only the lookups the change list's own filters and date hierarchy produce are allowed
    in its query string (Django allows any lookup on a model's own fields, so that
    ``?override_environment__regex=^A`` answers yes or no about a secret, one character at a
    time, and runs a user's regex in the database). Anything else is a 400."""

    #: What a filter of the list may add to a field: equality, emptiness, ranges, choices.
    SAFE_SUFFIXES: frozenset[str] = frozenset(
        {"", "exact", "isnull", "in", "gte", "gt", "lte", "lt", "id__exact", "id__in"}
        | {"pk__exact", "day", "month", "year"}
    )

    def lookup_allowed(self, lookup: str, value: str, request: HttpRequest | None = None) -> bool:
        field, _, suffix = lookup.partition("__")
        return field in self._filtered_fields(request) and suffix in self.SAFE_SUFFIXES

    def _filtered_fields(self, request: HttpRequest | None) -> set[str]:
        items = self.get_list_filter(request) if request is not None else self.list_filter
        names = {self.date_hierarchy} if self.date_hierarchy else set()
        for item in items:
            if isinstance(item, type) and issubclass(item, SimpleListFilter):
                names.add(str(item.parameter_name))
            else:
                names.add(str(item[0]) if isinstance(item, list | tuple) else str(item))
        return names


class EstimatingPaginator(Paginator):
    """A paginator that never counts a whole table: it counts up to :attr:`exact_up_to`
    rows (a bounded scan); beyond that, ``count`` is PostgreSQL's estimate of the rows (its
    planner's statistics) and :attr:`estimated` is ``"estimate"``. Elsewhere, with no
    estimate to ask, ``count`` is ``exact_up_to + 1`` and :attr:`estimated` is
    ``"more than"``. Past an estimate too low, the last rows are reached by narrowing the
    list (a filter, a search), not by paging."""

    exact_up_to = 1000
    #: "" (counted), "estimate" or "more than".
    estimated = ""

    @cached_property
    def count(self) -> int:
        query: QuerySet[Any] = self.object_list.order_by()  # type: ignore[attr-defined]
        found = query[: self.exact_up_to + 1].count()
        if found <= self.exact_up_to:
            return found
        guess = planner_estimate(query)
        self.estimated = "more than" if guess is None else "estimate"
        return found if guess is None else max(found, guess)


def planner_estimate(query: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of the rows of ``query`` (EXPLAIN: planning only, nothing is
    read); None on other databases."""
    if connections[query.db].vendor != "postgresql":
        return None
    plan = json.loads(query.explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def known_queues() -> list[str]:
    """The queues a project names: the default one and the ``QUEUES`` of its Tasks backends
    (settings only: no query, whatever the number of jobs)."""
    from django.conf import settings

    names = {DEFAULT_QUEUE}
    for backend in (getattr(settings, "TASKS", None) or {}).values():
        names.update(str(name) for name in backend.get("QUEUES") or ())
    return sorted(names)


class QueueFilter(SimpleListFilter):
    """The job list by queue: the queues of :func:`known_queues`, and the one asked for in
    the address (``?queue=NAME``). Its choices cost no query; the list's query is an ordered
    scan of cm_job_queue_created_idx."""

    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = set(known_queues())
        if self.value():
            names.add(str(self.value()))
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(queue=self.value()) if self.value() else queryset
