"""``manage.py container_job``: submit, inspect, read the output of, cancel and list jobs.

    JOB=$(manage.py container_job submit --host local --image busybox:latest -- echo hi)
    manage.py container_job submit --image app:1 --user 1000 --mount volume:data:/data \
        --mount bind:/srv/in:/in:ro --network backend --secret-env TOKEN=env:API_TOKEN -- run
    manage.py container_job show $JOB
    manage.py container_job logs $JOB [--stdout | --stderr]
    manage.py container_job cancel $JOB
    manage.py container_job list [--status running] [--limit 20]

``submit`` prints only the new job's id on stdout, so that shells can capture it; its
options are in :mod:`container_manager.management.job_options` (``submit --help``).
"""

from __future__ import annotations

import getpass
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from container_manager import queue
from container_manager.environment import mask_environment
from container_manager.exceptions import BulkSubmitError, InvalidJobError
from container_manager.management.job_options import (
    add_submit_arguments,
    read_job_lines,
    submit_keywords,
)
from container_manager.management.output import printable, rows_text, table_text
from container_manager.models import ContainerJob, JobStatus
from container_manager.spec_text import MERGED_NOTE, job_spec_rows, recorded_spec_text


def _when(moment: Any) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "-"


def _get_job(job_id: str) -> ContainerJob:
    try:
        return ContainerJob.objects.select_related(
            "docker_host", "environment_template", "registry_credential"
        ).get(pk=job_id)
    except (ContainerJob.DoesNotExist, ValidationError) as err:
        raise CommandError(f"No job with id {job_id!r}.") from err


class Command(BaseCommand):
    help = "Submit container jobs and look at them: show, logs, cancel, list."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        add_submit_arguments(
            actions.add_parser(
                "submit",
                help="Queue a job; prints its id.",
                description="Queue a job and print its id. Put the command after --, e.g. "
                "submit --host local --image busybox:latest -- sh -c 'echo hi'",
            )
        )
        show = actions.add_parser("show", help="A job's status, settings and outcome.")
        show.add_argument("job_id", metavar="ID")

        logs = actions.add_parser("logs", help="The output a job's container printed.")
        logs.add_argument("job_id", metavar="ID")
        stream = logs.add_mutually_exclusive_group()
        stream.add_argument("--stdout", dest="stream", action="store_const", const="stdout")
        stream.add_argument("--stderr", dest="stream", action="store_const", const="stderr")

        cancel = actions.add_parser("cancel", help="Cancel a job (idempotent).")
        cancel.add_argument("job_id", metavar="ID")

        listing = actions.add_parser("list", help="The most recent jobs.")
        listing.add_argument("--status", choices=JobStatus.values)
        listing.add_argument("--host", help="Only jobs of this host (name).")
        listing.add_argument("--limit", type=int, default=20, help="At most this many (20).")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    # ---- submit ------------------------------------------------------------------------

    def _submit(self, options: dict[str, Any]) -> None:
        if options["from_file"]:
            self._submit_file(options)
            return
        keywords = {**submit_keywords(options), "submitted_by": f"cli:{getpass.getuser()}"}
        try:
            job = queue.submit(**keywords)
        except InvalidJobError as err:
            raise CommandError(str(err)) from err
        if options["verbosity"] >= 2:
            where = f"on host {job.docker_host.name!r}" if job.docker_host else "to be placed"
            self.stderr.write(f"Queued job {job.pk} {where}.")
        self.stdout.write(str(job.pk))

    def _submit_file(self, options: dict[str, Any]) -> None:
        """Every line of the file a job: ids on stdout, bad lines on stderr by number."""
        if options["command"]:
            raise CommandError("--from-file takes the jobs from the file: no command after --.")
        specs, numbers = read_job_lines(options["from_file"])
        try:
            done = queue.submit_many(
                specs,
                line_numbers=numbers,
                skip_invalid=options["skip_invalid"],
                submitted_by=f"cli:{getpass.getuser()}",
            )
        except BulkSubmitError as err:
            self._rejected(err.rejected)
            raise CommandError(
                f"{len(err.rejected)} of {len(specs)} line(s) are invalid (above): no job was"
                " queued. Fix them, or pass --skip-invalid to queue the others."
            ) from err
        self._rejected(done.rejected)
        for job in done.jobs:
            self.stdout.write(str(job.pk))
        if options["verbosity"] >= 1:
            skipped = f", {len(done.rejected)} line(s) skipped" if done.rejected else ""
            self.stderr.write(f"Queued {len(done.jobs)} job(s){skipped}.")

    def _rejected(self, rejected: list[tuple[int, str]]) -> None:
        for number, why in rejected:
            self.stderr.write(printable(f"line {number}: {why}"))

    # ---- show --------------------------------------------------------------------------

    def _show(self, options: dict[str, Any]) -> None:
        job = _get_job(options["job_id"])
        duration = job.duration
        rows = [
            ("Job", str(job.pk)),
            ("Name", job.name or "-"),
            ("Status", job.status + (" (cancel requested)" if job.cancel_requested else "")),
            ("Host", self._host(job)),
            ("Placement", job.placement_reason or "-"),
            ("Image", job.docker_image),
            ("Command", job.command or "(the image's default command)"),
            ("Working dir", job.working_directory or "-"),
            ("Limits", self._limits(job)),
            *job_spec_rows(job),
            ("Priority", str(job.priority)),
            ("Queue", job.queue),
            ("Attempts", f"{job.attempt_count} (retries allowed: {job.max_retries})"),
            ("Container", job.container_id or "-"),
            ("Exit code", "-" if job.exit_code is None else str(job.exit_code)),
            ("OOM killed", "yes" if job.oom_killed else "no"),
            ("Submitter", job.submitted_by or "-"),
            ("Created", _when(job.created_at)),
            ("Started", _when(job.started_at)),
            ("Completed", _when(job.completed_at)),
            ("Duration", "-" if duration is None else f"{duration:.2f}s"),
            ("Peak memory", "-" if job.peak_memory_bytes is None else f"{job.peak_memory_bytes} B"),
            ("CPU time", "-" if job.cpu_seconds is None else f"{job.cpu_seconds:.2f}s"),
            ("Last error", job.last_error or "-"),
        ]
        if job.output_merged:
            rows.append(("Output", MERGED_NOTE))
        for line in rows_text(rows, 13):
            self.stdout.write(line)
        self._show_environment(job)
        for attempt in job.attempts.select_related("host"):
            self.stdout.write(
                printable(
                    f"  attempt {attempt.number}: {attempt.status} on {attempt.host.name}, "
                    f"container {attempt.container_id[:12] or attempt.container_name}, "
                    f"exit code {'-' if attempt.exit_code is None else attempt.exit_code}, "
                    f"started {_when(attempt.started_at)}"
                    + (f", error: {attempt.error}" if attempt.error else "")
                )
            )
            self.stdout.write(printable(f"    ran with: {recorded_spec_text(attempt.spec)}"))

    @staticmethod
    def _host(job: ContainerJob) -> str:
        if job.docker_host is None:
            labels = ", ".join(f"{k}={v}" for k, v in job.required_labels.items())
            return f"(not placed yet; labels required: {labels or 'none'})"
        return f"{job.docker_host.name} ({job.docker_host.connection_string})"

    @staticmethod
    def _limits(job: ContainerJob) -> str:
        parts = [
            f"memory {job.memory_limit} MB" if job.memory_limit else "",
            f"cpu {job.cpu_limit:g} cores" if job.cpu_limit else "",
            f"timeout {job.timeout_seconds}s" if job.timeout_seconds else "",
        ]
        return ", ".join(p for p in parts if p) or "none"

    def _show_environment(self, job: ContainerJob) -> None:
        try:
            environment = mask_environment(job.environment)
        except InvalidJobError as err:
            self.stdout.write(f"{'Environment:':<13}(unreadable: {err})")
            return
        template = (
            f" (template {job.environment_template.name})" if job.environment_template else ""
        )
        summary = f"{len(environment)} variable(s)" if environment else "none"
        self.stdout.write(f"{'Environment:':<13}{summary}{template}")
        for name, value in environment.items():
            self.stdout.write(printable(f"  {name}={value}"))

    # ---- logs --------------------------------------------------------------------------

    def _logs(self, options: dict[str, Any]) -> None:
        job = _get_job(options["job_id"])
        streams = [options["stream"]] if options["stream"] else ["stdout", "stderr"]
        for stream in streams:
            text: str = getattr(job, f"{stream}_log")
            if len(streams) > 1:
                self.stdout.write(f"----- {stream} -----")
            if text:
                self.stdout.write(text)
            if getattr(job, f"{stream}_truncated"):
                where = getattr(job, f"{stream}_file")
                self.stderr.write(
                    f"[{stream} was truncated: only its last part is kept in the database"
                    + (f"; the full output is in {where}]" if where else "]")
                )
        if job.output_merged:
            self.stderr.write(f"[{MERGED_NOTE}]")
        if not (job.stdout_log or job.stderr_log) and job.status not in JobStatus.terminal():
            self.stderr.write(f"[no output recorded yet: the job is {job.status}]")
        elif job.status == JobStatus.RUNNING:
            self.stderr.write("[the job is running: the end of its output as its worker last"
                              " recorded it]")  # fmt: skip

    # ---- cancel ------------------------------------------------------------------------

    def _cancel(self, options: dict[str, Any]) -> None:
        job = _get_job(options["job_id"])
        cancelled = queue.cancel(job)
        job.refresh_from_db(fields=["status", "cancel_requested"])
        if not cancelled:
            raise CommandError(f"Job {job.pk} already ended as {job.status}; it was not cancelled.")
        if job.status == JobStatus.CANCELLED:
            self.stdout.write(f"Job {job.pk}: cancelled")
        else:
            self.stdout.write(
                f"Job {job.pk}: cancel requested; the worker holding it stops its container "
                f"(status now: {job.status})"
            )

    # ---- list --------------------------------------------------------------------------

    def _list(self, options: dict[str, Any]) -> None:
        if options["limit"] < 1:
            raise CommandError("--limit must be at least 1.")
        query = ContainerJob.objects.select_related("docker_host").order_by("-created_at")
        if options["status"]:
            query = query.filter(status=options["status"])
        if options["host"]:
            query = query.filter(docker_host__name=options["host"])
        jobs = list(query[: options["limit"]])
        if not jobs:
            self.stdout.write("No jobs.")
            return
        rows = [("ID", "STATUS", "HOST", "IMAGE", "NAME", "EXIT", "CREATED")]
        rows += [
            (
                str(job.pk),
                job.status,
                job.docker_host.name if job.docker_host else "(open)",
                job.docker_image,
                job.name or "-",
                "-" if job.exit_code is None else str(job.exit_code),
                _when(job.created_at),
            )
            for job in jobs
        ]
        for line in table_text(rows):
            self.stdout.write(line)
