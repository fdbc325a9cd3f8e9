"""Run the worker: ``manage.py process_container_jobs [--burst] [--concurrency N]``."""

from __future__ import annotations

import logging
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...worker import Worker


class Command(BaseCommand):
    help = "Run queued container jobs. --burst: run until nothing is left, then exit."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--burst", action="store_true", help="Exit when nothing is left to do")
        parser.add_argument(
            "--concurrency", type=int, default=1, help="Jobs run at once (default 1)"
        )
        parser.add_argument(
            "--host",
            action="append",
            dest="hosts",
            default=[],
            help="Only jobs of this host (repeatable)",
        )
        parser.add_argument(
            "--queue",
            action="append",
            dest="queues",
            default=[],
            metavar="NAME",
            help="Only jobs of this queue (repeatable; default: every queue)",
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            default=30.0,
            help="On SIGTERM/SIGINT, seconds to let running jobs finish before leaving them"
            " for another worker to adopt",
        )
        parser.add_argument(
            "--poll-interval", type=float, default=None, help="Seconds between polls"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        if options["verbosity"] >= 2:
            logger = logging.getLogger("container_manager")
            logger.setLevel(logging.INFO if options["verbosity"] == 2 else logging.DEBUG)
            if not logger.handlers:
                # The stream OutputWrapper wraps; the stubs do not declare ``_out``.
                handler = logging.StreamHandler(cast(TextIO, self.stderr._out))
                handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
                logger.addHandler(handler)
        worker = Worker(
            concurrency=options["concurrency"],
            burst=options["burst"],
            hosts=options["hosts"],
            queues=options["queues"],
            shutdown_timeout=options["shutdown_timeout"],
            poll_interval=options["poll_interval"],
        )
        worker.install_signal_handlers()
        processed = worker.run()
        if options["verbosity"] >= 1:
            self.stdout.write(f"Worker {worker.worker_id} done: {processed} job(s) processed.")
