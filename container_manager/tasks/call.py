"""What a task job runs: the container-side command line, written at enqueue and read back.

A task job's command is ``<OPTIONS["command"]> run_container_task <task path> --result-id
<id> --backend <alias> --queue <name> --arguments <JSON {"args": [...], "kwargs": {...}}>``.
The job row is the only record of a task: its command says what was called, with what.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMMAND_NAME", "TaskCall", "parse_call"]

COMMAND_NAME = "run_container_task"
_FLAGS = {"--result-id": "result_id", "--backend": "backend", "--queue": "queue_name"}


@dataclass(frozen=True)
class TaskCall:
    """One call of a task, as its job's command carries it."""

    module_path: str
    result_id: str
    backend: str
    queue_name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    def argv(self) -> list[str]:
        """The arguments after the command's name."""
        arguments = json.dumps({"args": self.args, "kwargs": self.kwargs}, allow_nan=False)
        return [
            self.module_path,
            "--result-id",
            self.result_id,
            "--backend",
            self.backend,
            "--queue",
            self.queue_name,
            "--arguments",
            arguments,
        ]


def parse_call(argv: Sequence[str]) -> TaskCall | None:
    """The task call in a job's argv, or None when the job is not a task's."""
    try:
        rest = list(argv[list(argv).index(COMMAND_NAME) + 1 :])
    except ValueError:
        return None
    if not rest or len(rest) % 2 != 1:
        return None
    values: dict[str, Any] = {"module_path": rest[0]}
    for flag, value in zip(rest[1::2], rest[2::2], strict=True):
        if flag == "--arguments":
            try:
                arguments = json.loads(value)
            except ValueError:
                return None
            values["args"] = list(arguments.get("args", []))
            values["kwargs"] = dict(arguments.get("kwargs", {}))
        elif flag in _FLAGS:
            values[_FLAGS[flag]] = value
        else:
            return None
    if not all(k in values for k in _FLAGS.values()):
        return None
    return TaskCall(**values)
