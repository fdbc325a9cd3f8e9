"""The engine's answer to a logs request, as the Docker SDK's request helpers hand it over:
for unit tests of the executors' one-request output reader, which mock the SDK's edge."""

from __future__ import annotations

import io
from typing import Any

import requests

ENGINE = "http+docker://localhost/v1.41"


def frame(kind: int, payload: bytes) -> bytes:
    """One frame of a multiplexed (non-TTY) answer: 1 stdout, 2 stderr."""
    return bytes([kind, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


class _Trickle(io.BytesIO):
    """A body that arrives a few bytes at a time, cutting frames and headers anywhere."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(3)


def logs_answer(body: bytes, status: int = 200, *, trickle: bool = False) -> requests.Response:
    """The engine's answer with ``body``, whole or trickling in."""
    response = requests.Response()
    response.status_code = status
    response.raw = _Trickle(body) if trickle else io.BytesIO(body)
    response.url = f"{ENGINE}/containers/c1/logs"
    return response


def answer_logs(api: Any, answer: requests.Response) -> Any:
    """Make the mocked SDK ``api`` build URLs as the SDK does (``_url``) and answer ``_get``
    with ``answer``; returns ``api``."""
    api._url.side_effect = lambda path, *args: ENGINE + path.format(*args)
    api._get.return_value = answer
    return api
