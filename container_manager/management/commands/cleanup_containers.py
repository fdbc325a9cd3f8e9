"""Remove containers the app no longer needs (and, with --prune-jobs, old job rows)::

manage.py cleanup_containers [--older-than-hours H] [--dry-run] [--host NAME ...]
                             [--prune-jobs [--no-vacuum]]
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...conf import get_settings
from ...models import ExecutorHost
from ...reaper import prune_jobs, reap
from ...retention import vacuum_jobs
from ...tally import compact


class Command(BaseCommand):
    help = (
        "Remove the app's containers of jobs that ended before the cut-off, and orphans "
        "(unknown jobs, stale attempts). Never touches a container without the app's labels."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than-hours",
            type=float,
            default=24.0,
            help="Keep a finished job's container this many hours (default 24)",
        )
        parser.add_argument("--dry-run", action="store_true", help="List, remove nothing")
        parser.add_argument(
            "--host",
            action="append",
            dest="hosts",
            default=[],
            metavar="NAME",
            help="Only this host (repeatable; default: every active host)",
        )
        parser.add_argument(
            "--prune-jobs",
            action="store_true",
            help="Also delete ended jobs older than CONTAINER_MANAGER['JOB_RETENTION_DAYS']",
        )
        parser.add_argument(
            "--no-vacuum",
            action="store_true",
            help="With --prune-jobs on PostgreSQL: leave the tables to autovacuum "
            "(default: VACUUM ANALYZE them after a prune that deleted jobs)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["older_than_hours"] < 0:
            raise CommandError("--older-than-hours must not be negative")
        dry_run: bool = options["dry_run"]
        removals = reap(
            older_than=timedelta(hours=options["older_than_hours"]),
            dry_run=dry_run,
            hosts=self._hosts(options["hosts"]),
        )
        for removal in removals:
            self.stdout.write(
                f"{removal.host}\t{removal.container_id[:12]}\t{removal.name}\t{removal.reason}"
            )
        verb = "Would remove" if dry_run else "Removed"
        self.stdout.write(f"{verb} {len(removals)} container(s).")
        if not dry_run:
            compact()  # the tally's rows older than two hours into its totals
        if options["prune_jobs"]:
            self._prune(dry_run, vacuum=not options["no_vacuum"])

    def _hosts(self, names: list[str]) -> list[ExecutorHost] | None:
        if not names:
            return None
        hosts = list(ExecutorHost.objects.filter(name__in=names))
        missing = sorted(set(names) - {h.name for h in hosts})
        if missing:
            raise CommandError(f"Unknown host(s): {', '.join(missing)}")
        return hosts

    def _prune(self, dry_run: bool, vacuum: bool) -> None:
        days = get_settings().JOB_RETENTION_DAYS
        if days is None:
            self.stdout.write("JOB_RETENTION_DAYS is not set: job rows are kept.")
            return
        count = prune_jobs(timedelta(days=days), dry_run=dry_run)
        verb = "Would prune" if dry_run else "Pruned"
        self.stdout.write(f"{verb} {count} job(s) that ended more than {days} day(s) ago.")
        if count and vacuum and not dry_run:
            began = time.monotonic()
            if vacuum_jobs():
                took = time.monotonic() - began
                self.stdout.write(f"Vacuumed the jobs' and attempts' tables ({took:.1f} s).")
