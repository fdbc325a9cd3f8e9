"""New-job notifications: PostgreSQL LISTEN/NOTIFY, so idle workers claim a new job within
milliseconds instead of at their next poll. Elsewhere (SQLite) workers poll."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.db import connection, transaction

from .outage import OUTAGE, backoff

__all__ = ["CHANNEL", "Listener", "notify_new_job"]

CHANNEL = "container_manager_jobs"
_STOP_CHECK = 0.1  # seconds between the listener's looks at its stop flag
log = logging.getLogger("container_manager.worker")


def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def notify_new_job() -> None:
    """Wake listening workers once the current transaction (if any) commits."""
    if not _is_postgres():
        return

    def send() -> None:
        with connection.cursor() as cursor:
            cursor.execute(f"NOTIFY {CHANNEL}")

    transaction.on_commit(send)


class Listener(threading.Thread):
    """Calls ``wake`` whenever a job is submitted (PostgreSQL only; a no-op elsewhere).

    Uses its own connection, outside Django's, and reconnects after errors.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__(name="job-listener", daemon=True)
        self.wake = wake
        self.stopping = threading.Event()
        self.params = connection.get_connection_params() if _is_postgres() else None

    @property
    def enabled(self) -> bool:
        return self.params is not None

    def run(self) -> None:
        import psycopg

        tries = 0
        while not self.stopping.is_set():
            try:
                with psycopg.connect(**self.params, autocommit=True) as conn:  # type: ignore[arg-type]
                    conn.execute(f"LISTEN {CHANNEL}")
                    if tries:  # back after an outage: jobs may have come meanwhile
                        OUTAGE.recovered()
                        self.wake()
                    tries = 0
                    while not self.stopping.is_set():
                        # A short timeout: a stopping worker must not wait long for this.
                        for _ in conn.notifies(timeout=_STOP_CHECK, stop_after=1):
                            self.wake()
            except psycopg.Error as err:
                # One line per outage (the worker's), not one per reconnection attempt.
                OUTAGE.failed("job listener", err, tries=tries)
                self.stopping.wait(backoff(tries))
                tries += 1

    def stop(self) -> None:
        self.stopping.set()
