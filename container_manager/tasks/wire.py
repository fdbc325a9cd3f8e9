"""The one line a task's container writes to report its outcome, and how it is read back.

The container-side command ends by printing, on stdout::

    @@container-task-result@@ <nonce> <base64url of the JSON outcome>

The nonce is made per job at enqueue and handed to the container in its environment
(``CONTAINER_TASK_NONCE``), which the command removes before the task runs: a line the task
prints (user data echoed, a log line) cannot pass for the outcome. The last line that carries
the job's nonce and decodes wins. The outcome is ``{"status": "SUCCESSFUL", "return_value":
...}`` or ``{"status": "FAILED", "exception_class_path": ..., "traceback": ...}``, with the
``attempt`` it is the outcome of (``CONTAINER_JOB_ATTEMPT``, which the worker sets at every
launch): an outcome is read back only for the job's current attempt, never an earlier one's.
No database credentials are needed inside the container.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Any

__all__ = ["MARKER", "NONCE_ENV", "Outcome", "frame", "new_nonce", "parse"]

MARKER = "@@container-task-result@@"
NONCE_ENV = "CONTAINER_TASK_NONCE"


@dataclass(frozen=True)
class Outcome:
    """What the container reported: success with a JSON value, or an exception."""

    successful: bool
    return_value: Any = None
    exception_class_path: str = ""
    traceback: str = ""
    attempt: int = 1

    def as_json(self) -> dict[str, Any]:
        if self.successful:
            return {
                "status": "SUCCESSFUL",
                "return_value": self.return_value,
                "attempt": self.attempt,
            }
        return {
            "status": "FAILED",
            "exception_class_path": self.exception_class_path,
            "traceback": self.traceback,
            "attempt": self.attempt,
        }


def new_nonce() -> str:
    return secrets.token_hex(16)


def frame(outcome: Outcome, nonce: str) -> str:
    """The result line (no newline). The outcome must already be JSON-serialisable."""
    body = json.dumps(outcome.as_json(), separators=(",", ":"), allow_nan=False)
    return f"{MARKER} {nonce} {base64.urlsafe_b64encode(body.encode()).decode()}"


def _decode(line: str, nonce: str) -> Outcome | None:
    parts = line.strip().split(" ")
    if len(parts) != 3 or parts[0] != MARKER or not secrets.compare_digest(parts[1], nonce):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(parts[2].encode()))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    attempt = data.get("attempt", 1)
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        return None
    if data.get("status") == "SUCCESSFUL":
        return Outcome(True, return_value=data.get("return_value"), attempt=attempt)
    if data.get("status") == "FAILED" and isinstance(data.get("exception_class_path"), str):
        return Outcome(
            False,
            exception_class_path=data["exception_class_path"],
            traceback=str(data.get("traceback", "")),
            attempt=attempt,
        )
    return None


def parse(stdout: str, nonce: str, attempt: int | None = None) -> Outcome | None:
    """The outcome in ``stdout`` framed with ``nonce`` (the last valid one), or None; with
    ``attempt``, only an outcome of that attempt."""
    if not nonce:
        return None
    for line in reversed(stdout.splitlines()):
        if not line.startswith(MARKER) or (outcome := _decode(line, nonce)) is None:
            continue
        if attempt is None or outcome.attempt == attempt:
            return outcome
    return None
