"""``manage.py container_host``: register, list, check and remove container engine hosts.

    manage.py container_host add NAME --url unix:///var/run/docker.sock [--update] ...
    manage.py container_host add NAME --kubeconfig PATH --namespace NS [--context C] ...
    manage.py container_host list
    manage.py container_host show NAME
    manage.py container_host check NAME | --all
    manage.py container_host remove NAME
    manage.py container_host drain NAME | undrain NAME

``add`` refuses a name that exists unless ``--update`` is given; with ``--update`` it
creates the host or changes only the options given on the command line (an upsert, so
scripts can run it again and again). Its policy options (``--allow-bind-prefix``,
``--allow-network``, ``--default-network``, ``--allow-root``, ``--allow-privileged``,
``--allow-capability``, ``--gpus``) say what jobs may ask for on the host; ``show`` prints
them with the engine's capacity as the last health check read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import ProtectedError
from django.utils import timezone

from container_manager import overview
from container_manager.health import check_host
from container_manager.management.host_options import TLS_FILES, add_host_arguments, host_changes
from container_manager.management.output import rows_text, table_text
from container_manager.models import ExecutorHost, JobStatus
from container_manager.spec_text import host_capacity_text, host_policy_rows

_ERROR_WIDTH = 80  # characters of the last health error shown by ``list``


def _validation_message(err: ValidationError) -> str:
    """One line from ``full_clean``'s per-field errors."""
    return "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in err.message_dict.items())


def _when(moment: Any) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _tls_text(host: ExecutorHost) -> str:
    if host.tls_enabled:
        return "on" + ("" if host.tls_verify else " (certificate not verified)")
    return "off (plain TCP allowed)" if host.insecure_tcp else "off"


class Command(BaseCommand):
    help = "Register, list, health-check and remove the container engines jobs run on."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

        add_host_arguments(
            actions.add_parser("add", help="Register a host (or change one, with --update).")
        )

        actions.add_parser("list", help="List hosts with their running jobs and last health check.")
        show = actions.add_parser("show", help="A host's settings, policy and capacity.")
        show.add_argument("name")

        check = actions.add_parser("check", help="Ask hosts' engines whether they answer.")
        which = check.add_mutually_exclusive_group(required=True)
        which.add_argument("name", nargs="?", help="Host to check.")
        which.add_argument("--all", action="store_true", help="Check every registered host.")

        remove = actions.add_parser("remove", help="Remove a host that no job refers to.")
        remove.add_argument("name")

        drain = actions.add_parser("drain", help="Stop giving a host new jobs (running ones end).")
        drain.add_argument("name")
        undrain = actions.add_parser("undrain", help="Let a drained host take new jobs again.")
        undrain.add_argument("name")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, f"_{options['action']}")(options)

    # ---- add ---------------------------------------------------------------------------

    def _add(self, options: dict[str, Any]) -> None:
        given = host_changes(options)
        for option in (*TLS_FILES, "kubeconfig"):
            path = options.get(option)
            if path and not Path(path).is_file():
                raise CommandError(f"--{option.replace('_', '-')}: no such file: {path}")
        host = ExecutorHost.objects.filter(name=options["name"]).first()
        if host is not None and not options["update"]:
            raise CommandError(
                f"Host {host.name!r} already exists; add --update to change it "
                "(only the options you give are changed)."
            )
        created = host is None
        if host is None:
            if "connection_string" not in given:
                raise CommandError(
                    "--url is required to register a new host (for a Kubernetes cluster:"
                    " --kubeconfig PATH or --in-cluster, with --namespace NS)."
                )
            host = ExecutorHost(name=options["name"])
        for field, value in given.items():
            setattr(host, field, value)
        try:
            host.full_clean()
        except ValidationError as err:
            raise CommandError(f"Invalid host: {_validation_message(err)}") from err
        host.save()
        verb = "Registered" if created else "Updated"
        self.stdout.write(
            f"{verb} host {host.name!r}: {host.connection_string} (executor {host.executor_type}, "
            f"max {host.max_concurrent_jobs} concurrent, weight {host.weight}, "
            f"pull {'on' if host.auto_pull_images else 'off'}, "
            f"TLS {'on' if host.tls_enabled else 'off'}, "
            f"{'active' if host.is_active else 'inactive'})"
        )
        policy = "; ".join(f"{label.lower()} {text}" for label, text in host_policy_rows(host))
        self.stdout.write(f"  policy: {policy}")

    # ---- list --------------------------------------------------------------------------

    def _list(self, options: dict[str, Any]) -> None:
        hosts = overview.hosts_with_load().order_by("name")
        if not hosts:
            self.stdout.write(
                "No hosts registered. Add one with: container_host add NAME --url URL"
            )
            return
        rows = [("NAME", "URL", "EXECUTOR", "STATE", "RUNNING", "WEIGHT", "LABELS", "HEALTH")]
        for host in hosts:
            labels = ",".join(f"{k}={v}" for k, v in sorted(host.labels.items())) or "-"
            rows.append(
                (
                    host.name,
                    host.connection_string,
                    host.executor_type,
                    "active" if host.is_active else "drained",
                    f"{host.running}/{host.max_concurrent_jobs}",
                    str(host.weight),
                    labels,
                    self._health_summary(host),
                )
            )
        for line in table_text(rows):
            self.stdout.write(line)

    @staticmethod
    def _health_summary(host: ExecutorHost) -> str:
        if host.last_health_check is None:
            return "never"
        if host.health_check_failures == 0:
            return f"healthy (checked {_when(host.last_health_check)})"
        error = host.last_health_error
        if len(error) > _ERROR_WIDTH:
            error = error[: _ERROR_WIDTH - 3] + "..."
        state = "healthy" if host.is_healthy else "UNHEALTHY"
        return (
            f"{state}, {host.health_check_failures} failed check(s)"
            f" (last {_when(host.last_health_check)}): {error}"
        )

    # ---- show --------------------------------------------------------------------------

    def _show(self, options: dict[str, Any]) -> None:
        host = self._get_host(options["name"])
        running = host.jobs.filter(status__in=JobStatus.active()).count()
        labels = ", ".join(f"{k}={v}" for k, v in sorted(host.labels.items()))
        rows = [
            ("Host", host.name),
            ("URL", host.connection_string),
            ("Executor", host.executor_type),
            ("State", "active" if host.is_active else "drained"),
            ("Running", f"{running} of at most {host.max_concurrent_jobs}"),
            ("Weight", str(host.weight)),
            ("Start limit", f"{host.start_timeout}s" if host.start_timeout else "START_TIMEOUT"),
            ("Labels", labels or "-"),
            ("Pull images", "yes" if host.auto_pull_images else "no"),
            ("TLS", _tls_text(host)),
            ("Health", self._health_summary(host)),
            ("Capacity", host_capacity_text(host)),
            *host_policy_rows(host),
        ]
        for line in rows_text(rows, 14):
            self.stdout.write(line)

    # ---- check -------------------------------------------------------------------------

    def _check(self, options: dict[str, Any]) -> None:
        if options["all"]:
            hosts = list(ExecutorHost.objects.order_by("name"))
            if not hosts:
                raise CommandError("No hosts registered.")
        else:
            hosts = [self._get_host(options["name"])]
        failed = [host.name for host in hosts if not self._check_one(host)]
        if failed:
            raise CommandError(
                f"{len(failed)} of {len(hosts)} host(s) failed the health check: "
                f"{', '.join(failed)}"
            )

    def _check_one(self, host: ExecutorHost) -> bool:
        """Ping the engine, record and print the outcome."""
        healthy, detail = check_host(host)
        label = "" if host.is_active else " (drained)"
        if healthy:
            self.stdout.write(
                self.style.SUCCESS(f"OK      {host.name}{label}: {host.connection_string}")
                + f" (engine version {detail})"
            )
        else:
            self.stdout.write(
                self.style.ERROR(f"FAILED  {host.name}{label}: {host.connection_string}")
                + f": {detail}"
            )
        return healthy

    # ---- drain -------------------------------------------------------------------------

    def _drain(self, options: dict[str, Any]) -> None:
        self._set_active(options["name"], active=False)

    def _undrain(self, options: dict[str, Any]) -> None:
        self._set_active(options["name"], active=True)

    def _set_active(self, name: str, *, active: bool) -> None:
        host = self._get_host(name)
        host.is_active = active
        host.save(update_fields=["is_active"])
        running = host.jobs.filter(status__in=JobStatus.active()).count()
        if active:
            self.stdout.write(f"Host {host.name!r} takes new jobs again.")
        else:
            self.stdout.write(
                f"Host {host.name!r} drained: no new jobs; {running} running job(s) will finish."
            )

    # ---- remove ------------------------------------------------------------------------

    def _remove(self, options: dict[str, Any]) -> None:
        host = self._get_host(options["name"])
        jobs = host.jobs.count()
        attempts = host.attempts.count()
        if jobs or attempts:
            active = host.jobs.exclude(status__in=JobStatus.terminal()).count()
            raise CommandError(
                f"Host {host.name!r} cannot be removed: {jobs} job(s) refer to it "
                f"({active} still waiting or running), and {attempts} attempt record(s). "
                f"Delete those jobs first, or stop new work with: "
                f"container_host add {host.name} --update --inactive"
            )
        try:
            host.delete()
        except ProtectedError as err:  # a job arrived since we counted
            raise CommandError(f"Host {host.name!r} cannot be removed: jobs refer to it.") from err
        self.stdout.write(f"Removed host {host.name!r}.")

    @staticmethod
    def _get_host(name: str) -> ExecutorHost:
        host = ExecutorHost.objects.filter(name=name).first()
        if host is None:
            known = ", ".join(ExecutorHost.objects.values_list("name", flat=True))
            raise CommandError(
                f"Unknown host {name!r} (known hosts: {known or 'none registered'})."
            )
        return host
