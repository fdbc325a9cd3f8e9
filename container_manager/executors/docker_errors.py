"""The Docker engine's error answers, read: its own words, its status code as the app's error,
and a registry's refusal of a pull told apart from an unreachable registry."""

from __future__ import annotations

import re
from datetime import datetime

import docker
import requests
import urllib3

from ..exceptions import (
    ContainerNotFoundError,
    ExecutorError,
    ImageUnavailableError,
    SpecRefusedError,
)
from ..spec import RegistryAuth, image_registry

__all__ = [
    "api_error",
    "denied_message",
    "engine_message",
    "is_read_timeout",
    "parse_time",
    "raise_for_status",
    "redact",
    "registry_refusal",
]


def engine_message(err: BaseException) -> str:
    """The engine's own words for an SDK error, without the HTTP wrapping."""
    explanation = getattr(err, "explanation", None)
    if explanation:
        return explanation.decode() if isinstance(explanation, bytes) else str(explanation)
    return str(err) or type(err).__name__


def is_read_timeout(err: BaseException) -> bool:
    if isinstance(err, requests.exceptions.ReadTimeout):
        return True
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in err.args)


def raise_for_status(response: requests.Response) -> None:
    """An engine error answer as the SDK's own error (NotFound for a 404, and so on)."""
    try:
        response.raise_for_status()
    except requests.exceptions.HTTPError as err:
        raise docker.errors.create_api_error_from_http_exception(err) from err


def api_error(action: str, err: docker.errors.APIError) -> ExecutorError:
    """The app's error for an engine's error answer, by its status code."""
    message, status = f"{action}: {engine_message(err)}", err.status_code
    kind: type[ExecutorError] = ExecutorError
    if isinstance(err, docker.errors.ImageNotFound):
        kind = ImageUnavailableError
    elif isinstance(err, docker.errors.NotFound):
        kind = ContainerNotFoundError
    elif status == 400:
        kind = SpecRefusedError
    return kind(message, status_code=status)


def parse_time(value: str | None) -> datetime | None:
    if not value or value.startswith("0001-"):
        return None
    # Engine times carry nanoseconds: 2024-01-01T10:00:00.123456789Z
    head, _, rest = value.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(rest + '000000')[:6]}+00:00")


# What this engine (docker 20.10, API 1.41) answers a pull from a registry with htpasswd
# auth (distribution 2.8), seen for real: a wrong password (or user) is a 500 with
# "unauthorized: authentication required"; no credential a 500 with 'Head
# "http://127.0.0.1:5555/v2/cm-test/busybox/manifests/TAG": no basic auth credentials'.
# An unreachable registry is a 500 as well ('Get "http://127.0.0.1:5556/v2/": dial tcp
# 127.0.0.1:5556: connect: connection refused'), a missing tag or repository a 404
# (NotFound). So the status code decides where it can (a 401 or 403 is a refusal; a 404
# never is); a 500 is a refusal only when it carries the registry's error code
# (``unauthorized:``, ``denied:``: the distribution spec's codes as the engine prints
# them) or the engine's own "no basic auth credentials".
_REFUSED_STATUS: frozenset[int] = frozenset({401, 403})
_REFUSAL: re.Pattern[str] = re.compile(r"\b(?:unauthorized|denied): |no basic auth credentials")


def registry_refusal(err: BaseException | None) -> str | None:
    """The registry's words when the SDK error ``err`` is a refusal of access, else None."""
    status = getattr(err, "status_code", None)
    if err is None or status is None:
        return None
    message = engine_message(err)
    if status in _REFUSED_STATUS or (status == 500 and _REFUSAL.search(message)):
        return message
    return None


def redact(text: str, auth: RegistryAuth | None) -> str:
    """``text`` without the password, should an engine or registry ever echo it."""
    return text.replace(auth.password, "***") if auth and auth.password else text


def denied_message(image: str, auth: RegistryAuth | None, refusal: str) -> str:
    """What a job's error says when the registry refused its image's pull."""
    registry = image_registry(image)
    if auth is None:
        return (
            f"Image {image!r} could not be pulled: no registry credential is registered"
            f" for {registry} (the registry answered: {refusal})"
        )
    return redact(
        f"Image {image!r} could not be pulled: the registry {registry} refused the"
        f" credentials of user {auth.username!r}: {refusal}",
        auth,
    )
