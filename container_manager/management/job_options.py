"""The options of ``manage.py container_job submit`` and their translation into the
keywords of :func:`container_manager.queue.submit` (same words: ``--mount`` -> ``mounts``).

Only the shape of the text is checked here (``KEY=VALUE``, JSON); what the values mean is
checked by ``queue.submit``, whose error names the field.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from container_manager.exceptions import InvalidJobError

__all__ = ["add_submit_arguments", "read_job_lines", "submit_keywords"]

_SPEC_HELP = """\
the container spec options in detail:
  --entrypoint takes a JSON list that replaces the image's entrypoint; the command after --
  is the argv that follows it:  --entrypoint '["/bin/sh", "-c"]' -- 'echo $HOME'
  --mount (repeatable) is one of
      volume:NAME:/target[:ro]          a named volume (read-write unless :ro)
      bind:/host/path:/target[:ro|:rw]  a host directory (read-only unless :rw), only
                                        under the host's allowed bind prefixes
      tmpfs:/target:SIZE_MB             an in-memory filesystem of that size
  --secret-env NAME=REFERENCE (repeatable): REFERENCE is env:VARIABLE (the worker's
  environment) or file:/path (a file on the worker); the worker reads it at launch, the
  database only ever holds the reference.
"""


def add_submit_arguments(submit: CommandParser) -> None:
    """Every option of ``submit``: placement, the job, the container spec."""
    submit.epilog = _SPEC_HELP
    submit.formatter_class = _RawEpilog
    _add_job_arguments(submit)
    _add_spec_arguments(submit.add_argument_group("container spec"))
    submit.add_argument(
        "command",
        nargs="*",
        metavar="-- COMMAND ARGS",
        help="The command and its arguments (no shell; none: the image's default).",
    )


class _RawEpilog(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout; option help is wrapped as usual."""


def _add_job_arguments(submit: CommandParser) -> None:
    add = submit.add_argument
    add("--host", help="Name of a registered host (none: the queue places the job).")
    add(
        "--label",
        action="append",
        default=[],
        dest="labels",
        metavar="NAME[=VALUE]",
        help="A host label the job needs when placed (repeatable), e.g. --label gpu.",
    )
    add(
        "--run-after",
        metavar="ISO-TIME",
        help="Not before this time, e.g. 2026-12-01T08:00:00+00:00.",
    )
    one = submit.add_mutually_exclusive_group(required=True)
    one.add_argument("--image", help="Image reference, e.g. busybox:latest.")
    one.add_argument(
        "--from-file",
        metavar="JOBS.jsonl",
        help="Instead of --image: queue many jobs, one JSON object a line of submit()'s"
        ' keywords (image, host, command, ...), e.g. {"image": "busybox:latest", "command":'
        ' ["echo", "hi"]}; - reads stdin. All or none: a bad line is reported by its number'
        " and nothing is queued.",
    )
    add(
        "--skip-invalid",
        action="store_true",
        help="With --from-file: queue the good lines and report the bad ones.",
    )
    add("--name", default="", help="A name to recognise the job by.")
    add("--memory", type=int, metavar="MB", help="Memory limit in MB.")
    add("--cpu", type=float, metavar="CORES", help="CPU limit in cores.")
    add(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="An environment variable (repeatable); wins over the template's.",
    )
    add("--env-template", metavar="NAME", help="Environment template name.")
    add("--timeout", type=int, metavar="S", help="Seconds before it is stopped.")
    add("--priority", type=int, default=0, help="Higher runs first (0).")
    add(
        "--queue",
        default="default",
        metavar="NAME",
        help="The job's queue (default); process_container_jobs --queue NAME runs only its own.",
    )
    add("--max-retries", type=int, default=0, metavar="N", help="Retries (0).")
    add(
        "--retry-on-failure",
        action="store_true",
        help="Also retry when the command exits non-zero (not only when launching fails).",
    )
    add("--workdir", default="", metavar="/PATH", help="Working directory.")


def _add_spec_arguments(group: Any) -> None:
    add = group.add_argument
    add(
        "--entrypoint",
        metavar="JSON-LIST",
        help='Replaces the image\'s entrypoint, as a JSON list: \'["/bin/sh", "-c"]\'.',
    )
    add("--user", default="", metavar="UID[:GID]", help="Numeric user (and group) to run as.")
    add(
        "--mount",
        action="append",
        default=[],
        dest="mounts",
        metavar="MOUNT",
        help="volume:NAME:/target[:ro], bind:/host/path:/target[:ro|:rw] or"
        " tmpfs:/target:SIZE_MB (repeatable).",
    )
    add("--network", default="", metavar="NAME", help="A network the host allows, or none.")
    add(
        "--secret-env",
        action="append",
        default=[],
        metavar="NAME=REFERENCE",
        help="A secret variable read by the worker at launch: NAME=env:VAR or"
        " NAME=file:/path (repeatable).",
    )
    add(
        "--registry-credential",
        metavar="NAME",
        help="Registered credential to pull with (default: the one for the image's registry).",
    )
    add("--gpus", type=int, metavar="N", help="GPUs (the host must declare them).")
    add("--shm-size-mb", type=int, metavar="MB", help="Size of /dev/shm.")
    add("--pids-limit", type=int, metavar="N", help="Most processes the container may run.")
    add("--read-only-rootfs", action="store_true", help="Mount the image's filesystem read-only.")
    add(
        "--cap-add",
        action="append",
        default=[],
        metavar="CAP",
        help="A capability to add, within the host's allowed ones (repeatable).",
    )
    add(
        "--cap-drop",
        action="append",
        default=[],
        metavar="CAP",
        help="A capability to drop, e.g. ALL (repeatable).",
    )
    add("--privileged", action="store_true", help="Privileged mode (only where the host allows).")


def submit_keywords(options: dict[str, Any]) -> dict[str, Any]:
    """The keywords of ``queue.submit`` from ``submit``'s parsed options."""
    return {
        "host": options["host"],
        "labels": options["labels"],
        "run_after": _run_after(options["run_after"]),
        "image": options["image"],
        "command": options["command"],
        "name": options["name"],
        "environment": environment_pairs(options["env"]),
        "template": options["env_template"],
        "memory_limit": options["memory"],
        "cpu_limit": options["cpu"],
        "timeout_seconds": options["timeout"],
        "priority": options["priority"],
        "queue": options["queue"],
        "max_retries": options["max_retries"],
        "retry_on_failure": options["retry_on_failure"],
        "working_directory": options["workdir"],
        "entrypoint": _entrypoint(options["entrypoint"]),
        "user": options["user"],
        "mounts": options["mounts"],
        "network": options["network"],
        "secret_environment": _secret_pairs(options["secret_env"]),
        "registry_credential": options["registry_credential"],
        "gpus": options["gpus"],
        "shm_size_mb": options["shm_size_mb"],
        "pids_limit": options["pids_limit"],
        "read_only_rootfs": options["read_only_rootfs"],
        "cap_add": options["cap_add"],
        "cap_drop": options["cap_drop"],
        "privileged": options["privileged"],
    }


def environment_pairs(pairs: list[str]) -> dict[str, str]:
    """``--env KEY=VALUE`` options as a dict."""
    environment: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CommandError(f"--env {pair!r}: expected KEY=VALUE.")
        if "\n" in value or "\r" in value:
            raise CommandError(f"--env {name}: a value cannot contain a line break.")
        environment[name] = value
    return environment


def _secret_pairs(pairs: list[str]) -> dict[str, str]:
    """``--secret-env NAME=REFERENCE`` options as a dict. Messages never repeat what was
    given after the name: a mistyped option might hold the secret itself."""
    secrets: dict[str, str] = {}
    for pair in pairs:
        name, sep, reference = pair.partition("=")
        if not sep or not name:
            raise CommandError(
                "Invalid job: secret_environment: --secret-env expects NAME=env:VARIABLE or"
                " NAME=file:/path."
            )
        secrets[name] = reference
    return secrets


def _entrypoint(text: str | None) -> list[str] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, list):
        raise CommandError(
            "Invalid job: entrypoint: --entrypoint expects a JSON list of strings,"
            ' e.g. \'["/bin/sh", "-c"]\'.'
        )
    return value


def _run_after(text: str | None) -> Any:
    if not text:
        return None
    moment = parse_datetime(text)
    if moment is None or timezone.is_naive(moment):
        raise CommandError(
            f"--run-after {text!r}: give an ISO time with a time zone,"
            " e.g. 2026-12-01T08:00:00+00:00"
        )
    return moment


def read_job_lines(path: str) -> tuple[list[Any], list[int]]:
    """The jobs of a JSON-lines file (``-``: stdin) and their line numbers: each a parsed
    object, or an InvalidJobError for a line that is not JSON. Blank lines are skipped."""
    try:
        with _opened(path) as lines:
            return _parse_lines(lines)
    except OSError as err:
        raise CommandError(f"--from-file {path}: {err.strerror or err}.") from err
    except UnicodeDecodeError as err:
        raise CommandError(f"--from-file {path}: not UTF-8 text ({err.reason}).") from err


def _opened(path: str) -> IO[str]:
    if path == "-":
        return open(sys.stdin.fileno(), encoding="utf-8", closefd=False)
    return open(path, encoding="utf-8")


def _parse_lines(lines: IO[str]) -> tuple[list[Any], list[int]]:
    specs: list[Any] = []
    numbers: list[int] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            specs.append(json.loads(line))
        except ValueError as err:
            specs.append(InvalidJobError(f"Not JSON: {getattr(err, 'msg', err)}"))
        numbers.append(number)
    return specs, numbers
