"""Validators and parsers of the models' fields (migrations refer to some by their path in
:mod:`container_manager.models`, which re-exports them)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.db import models

from ..environment import (
    check_reference,
    parse_environment,
)
from ..exceptions import InvalidJobError
from ..spec import (
    MAX_COMMAND_CHARS,
    MAX_ENVIRONMENT_CHARS,
    MAX_LABEL_VALUE_CHARS,
    MAX_LABELS,
    image_reference_problem,
)

_ENGINE_URL = re.compile(r"^(unix://(/[^\s]+)|tcp://[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5})$")


def validate_image_reference(value: str) -> None:
    """Reject an empty or malformed image reference."""
    if problem := image_reference_problem(value):
        raise ValidationError(problem)


def validate_engine_url(value: str) -> None:
    """Accept ``unix:///path/to/socket`` or ``tcp://host:port``."""
    if not _ENGINE_URL.match(value or ""):
        raise ValidationError(
            f"{value!r} is not an engine URL: use unix:///path/to/docker.sock or tcp://host:port."
        )


def validate_environment_text(value: str) -> None:
    """Reject environment text that is not KEY=VALUE lines (or is over the size cap)."""
    if len(value or "") > MAX_ENVIRONMENT_CHARS:
        raise ValidationError(f"At most {MAX_ENVIRONMENT_CHARS} characters.")
    try:
        parse_environment(value)
    except InvalidJobError as err:
        raise ValidationError(str(err)) from err


def validate_command(value: str) -> None:
    """Reject a command that shlex cannot split (unbalanced quotes), or over the size cap."""
    if len(value or "") > MAX_COMMAND_CHARS:
        raise ValidationError(
            f"At most {MAX_COMMAND_CHARS} characters: pass long input in a mount or the"
            " environment."
        )
    try:
        shlex.split(value or "")
    except ValueError as err:
        raise ValidationError(f"The command cannot be split into arguments: {err}.") from err


def validate_labels(value: object) -> str:
    """'' when ``value`` is a dict of simple string labels, else what is wrong."""
    if not isinstance(value, dict):
        return "Labels must be a mapping of name to value."
    if len(value) > MAX_LABELS:
        return f"At most {MAX_LABELS} labels."
    for name, label in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name):
            return "A label name is letters, digits, '.', '-', '_' (at most 63)."
        if not isinstance(label, str | int | float | bool):
            return f"Label {name!r} must have a plain value, not {type(label).__name__}."
        if len(str(label)) > MAX_LABEL_VALUE_CHARS or "\0" in str(label):
            return f"Label {name!r}: a value is at most {MAX_LABEL_VALUE_CHARS} characters, no NUL."
    return ""


_LABEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}")
#: Where a job's working directory may not be: the kernel's views (CVE-2024-21626).
_FORBIDDEN_WORKDIRS = ("/proc", "/sys", "/dev")


def working_directory_error(path: str) -> str:
    """What is wrong with a working directory ('' when nothing is)."""
    if not path:
        return ""
    parts = path.split("/")
    if not path.startswith("/") or ".." in parts:
        return "The working directory must be an absolute path without '..'."
    if any(path == d or path.startswith(d + "/") for d in _FORBIDDEN_WORKDIRS):
        return "The working directory cannot be under /proc, /sys or /dev."
    return ""


def nul_errors(instance: models.Model) -> dict[str, str]:
    """Fields of ``instance`` whose text (or JSON strings) holds a NUL byte, which
    PostgreSQL cannot store and engines misread."""
    return {
        f.name: "Contains a NUL byte."
        for f in instance._meta.concrete_fields
        if isinstance(f, models.CharField | models.TextField | models.JSONField)
        and _has_nul(getattr(instance, f.attname))
    }


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\0" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


#: The range of a job's priority (Django's Tasks framework uses the same).
PRIORITY_MIN, PRIORITY_MAX = -100, 100

#: A registry as an image reference names it: ``host[:port]``.
REGISTRY_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?")


def validate_reference(value: str) -> None:
    """A secret reference (``env:NAME`` or ``file:/path``), never a value."""
    try:
        check_reference(value)
    except InvalidJobError as err:
        raise ValidationError(f"{err}.") from None


#: A network name as engines spell them.
NETWORK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def is_text_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``["gpu", "region=eu"]`` -> ``{"gpu": "true", "region": "eu"}``."""
    labels: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        labels[name.strip()] = value.strip() if sep else "true"
    return labels
