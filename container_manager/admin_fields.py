"""Small presentation pieces shared by the admin modules: status badges, times, and form
fields that edit a list (or a NAME=VALUE mapping) one entry per line.

The fields only turn text into the stored shape; the model's ``clean`` says whether the
values are acceptable, naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from django import forms
from django.utils.formats import date_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.timezone import localtime

from .models import JobStatus

__all__ = ["BADGE", "COLOURS", "LinesField", "PairsField", "badge", "seconds", "short_time"]

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
    return date_format(localtime(value), "M j, H:i:s") if value else "—"


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
