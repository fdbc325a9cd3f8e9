"""KEY=VALUE environment text: parse, merge and mask. Pure functions, no Django."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from .exceptions import InvalidJobError, SecretUnavailableError
from .spec import MAX_SECRETS, JobSpec

__all__ = [
    "check_reference",
    "format_environment",
    "mask_environment",
    "masked_text",
    "merge_environments",
    "parse_environment",
    "parse_secret_environment",
    "redact",
    "resolve_reference",
    "secret_values",
    "secrets_of",
    "unmask",
]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REFERENCE = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]*|file:/[^\0\n]*")
#: Bytes a ``file:`` secret may hold.
MAX_SECRET_BYTES = 1024 * 1024
_SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL|PASSWD|DSN", re.IGNORECASE)
#: A value that holds a secret by its shape: a URL with a password (``scheme://user:pw@``).
_SECRET_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
#: Values shorter than this are not redacted from text: they would match by chance.
MIN_REDACTED_CHARS = 4
MASK = "********"
HIDDEN = "(not KEY=VALUE text: hidden)"


def parse_environment(text: str | None) -> dict[str, str]:
    """Parse ``KEY=VALUE`` lines into a dict.

    Blank lines and lines starting with ``#`` are ignored; the value is everything after the
    first ``=`` (it may contain ``=`` and spaces). A malformed line raises
    :class:`InvalidJobError` naming the line.
    """
    result: dict[str, str] = {}
    for number, raw in enumerate((text or "").splitlines(), start=1):
        line = raw.lstrip().rstrip("\r")
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise InvalidJobError(f"environment line {number} is not KEY=VALUE")
        if not _NAME.match(name):
            raise InvalidJobError(
                f"environment line {number}: {name!r} is not a valid variable name "
                "(letters, digits and _, not starting with a digit)"
            )
        result[name] = value
    return result


def merge_environments(*layers: Mapping[str, str]) -> dict[str, str]:
    """Merge environment dicts; later layers win (template < job)."""
    merged: dict[str, str] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def is_secret(name: str, value: str = "") -> bool:
    """Whether a variable looks like it holds a secret: by its name, or by its value's shape
    (a URL with a password, such as a DSN)."""
    return bool(_SECRET.search(name) or _SECRET_SHAPE.search(value))


def mask_environment(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` with the values of secret-looking variables masked."""
    return {name: (MASK if is_secret(name, value) else value) for name, value in env.items()}


def secret_values(env: Mapping[str, str]) -> set[str]:
    """The values of ``env``'s secret-looking variables (with the password part of a URL on
    its own too): what :func:`redact` takes out of text."""
    values = {v for k, v in env.items() if is_secret(k, v)}
    for value in list(values):
        values.update(m.group(0).rsplit(":", 1)[-1][:-1] for m in _SECRET_SHAPE.finditer(value))
    return {v for v in values if len(v) >= MIN_REDACTED_CHARS}


def secrets_of(spec: JobSpec) -> set[str]:
    """The values to keep out of what is recorded of a job: its secret-looking environment,
    its resolved secret references, its registry password."""
    values = secret_values(spec.environment) | secret_values(
        {f"SECRET_{name}": value for name, value in spec.secrets.items()}
    )
    if spec.registry_auth is not None and len(spec.registry_auth.password) >= MIN_REDACTED_CHARS:
        values.add(spec.registry_auth.password)
    return values


def redact(text: str, secrets: set[str]) -> str:
    """``text`` with every occurrence of each secret value replaced by MASK (longest first,
    so that a secret containing another goes whole)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def format_environment(env: Mapping[str, str]) -> str:
    """The inverse of :func:`parse_environment`. A value with a line break would turn into
    another variable, so it is refused with InvalidJobError."""
    for name, value in env.items():
        if "\n" in str(value) or "\r" in str(value):
            raise InvalidJobError(
                f"environment variable {name!r}: a value cannot contain a line break"
            )
    return "\n".join(f"{name}={value}" for name, value in env.items())


def stored_as_text(text: str) -> str:
    """``text`` normalised (parsed and formatted again), or HIDDEN when it is not KEY=VALUE."""
    try:
        return format_environment(parse_environment(text))
    except InvalidJobError:
        return HIDDEN


def masked_text(text: str) -> str:
    """KEY=VALUE text with secret-looking values masked (unreadable text is hidden whole)."""
    try:
        return format_environment(mask_environment(parse_environment(text)))
    except InvalidJobError:
        return HIDDEN


def unmask(edited: str, stored: str) -> str:
    """The text to store after someone edited masked text: a value left as MASK keeps the
    stored secret. InvalidJobError for malformed text, or a MASK that stands for no secret."""
    new = parse_environment(edited)
    if MASK not in new.values():
        return edited
    try:
        old = parse_environment(stored)
    except InvalidJobError:
        old = {}
    lost = [k for k, v in new.items() if v == MASK and (k not in old or not is_secret(k, old[k]))]
    if lost:
        raise InvalidJobError(f"Give a real value for: {', '.join(lost)}.")
    return format_environment({k: old[k] if v == MASK else v for k, v in new.items()})


def check_reference(reference: object) -> str:
    """``reference`` when it is ``env:NAME`` or ``file:/absolute/path``, else InvalidJobError
    (the message describes the form, never repeats the text given)."""
    if not isinstance(reference, str) or not _REFERENCE.fullmatch(reference):
        raise InvalidJobError(
            "a secret reference is env:VARIABLE (the worker's environment) or file:/path"
            " (a file on the worker), never the secret itself"
        )
    return reference


def parse_secret_environment(value: object) -> dict[str, str]:
    """``{"NAME": "env:VAR" | "file:/path"}`` checked: valid names, valid references."""
    if value in (None, ""):
        return {}
    if not isinstance(value, Mapping):
        raise InvalidJobError("secret_environment must map variable names to references")
    if len(value) > MAX_SECRETS:
        raise InvalidJobError(f"secret_environment holds at most {MAX_SECRETS} names")
    checked: dict[str, str] = {}
    for name, reference in value.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidJobError(
                "secret_environment names are variable names (letters, digits and _)"
            )
        try:
            checked[name] = check_reference(reference)
        except InvalidJobError as err:
            raise InvalidJobError(f"secret_environment[{name}]: {err}") from None
    return checked


def resolve_reference(reference: str) -> str:
    """The value ``reference`` points at, read now from this process's environment or a
    file. SecretUnavailableError names the reference (never a value) when it cannot be read."""
    check_reference(reference)
    kind, _, where = reference.partition(":")
    if kind == "env":
        value = os.environ.get(where)
        if value is None:
            raise SecretUnavailableError(
                f"secret reference {reference}: the worker has no environment variable {where}"
            )
        return value
    try:
        with open(where, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as err:
        raise SecretUnavailableError(
            f"secret reference {reference}: the worker cannot read it ({err.strerror})"
        ) from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretUnavailableError(f"secret reference {reference}: larger than 1 MiB")
    try:
        return data.decode().removesuffix("\n")
    except UnicodeDecodeError:
        raise SecretUnavailableError(f"secret reference {reference}: not UTF-8 text") from None
