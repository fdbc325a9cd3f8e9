"""Database outages, as a worker's threads see them: a lost connection is a transient fault.

Every thread of a worker that touches the database reports its failures and successes to
the one process-wide :data:`OUTAGE`, which logs one line when the database stops answering
and one when it answers again (never a traceback per attempt), and keeps the figures the
metrics show. :func:`retry_db` runs one database call until it succeeds, closing the broken
connection and waiting with capped backoff between tries.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone

from .exceptions import ContainerManagerError

__all__ = [
    "ADOPTIONS",
    "DB_ERRORS",
    "INFRASTRUCTURE_RETRIES",
    "OUTAGE",
    "STUCK_LAUNCHES",
    "Adoptions",
    "DatabaseUnavailable",
    "Outage",
    "Tally",
    "backoff",
    "is_outage",
    "retry_db",
]

log = logging.getLogger("container_manager.outage")

#: What a lost, refused or dropped connection raises through Django.
DB_ERRORS = (OperationalError, InterfaceError)
BACKOFF_FIRST = 0.1  # seconds before the first retry
BACKOFF_MAX = 5.0  # seconds between retries, at most
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})
_OUTAGE_SQLITE_CODES = frozenset({5, 6, 10, 14})  # BUSY, LOCKED, IOERR, CANTOPEN

T = TypeVar("T")


class DatabaseUnavailable(ContainerManagerError):
    """The database did not answer before the caller was told to stop waiting for it."""


def backoff(tries: int) -> float:
    """Seconds to wait before retry number ``tries + 1``: doubling, capped."""
    return min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(tries, 10))


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the database is out of reach (gone, restarting, refusing, busy),
    not that a query is wrong: PostgreSQL's connection (08), resources (53) and operator
    intervention (57: shutdown, restart) classes, SQLite's busy, locked, I/O and cannot-open
    codes, and any connection error that carries no code (a refused connection)."""
    if isinstance(err, InterfaceError):
        return True
    if not isinstance(err, OperationalError):
        return False
    cause = err.__cause__
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate is not None:
        return str(sqlstate)[:2] in _OUTAGE_SQLSTATE_CLASSES
    sqlite_code = getattr(cause, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return int(sqlite_code) & 0xFF in _OUTAGE_SQLITE_CODES
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Outage:
    """The database's state as this process last saw it; thread-safe.

    A thread's first failed try may only mean that its connection went stale while the
    database was briefly away (a restart another thread already saw the end of): the outage
    is confirmed, logged and counted when a retry fails too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every outage (for tests)."""
        self._since: float | None = None
        self._confirmed = False
        self.since: datetime | None = None  # wall clock of its first failure, for people
        self.outages = 0  # confirmed ones
        self.seconds = 0.0  # spent in confirmed outages that ended
        self.last: tuple[datetime, float] | None = None  # the last one's start and length

    @property
    def down(self) -> bool:
        return self._confirmed

    def failed(self, where: str, err: BaseException, *, tries: int = 1) -> None:
        """A database call failed on a lost connection after ``tries`` failed tries before
        it; the first confirmed failure of an outage logs."""
        with self._lock:
            if self._since is None:
                self._since = time.monotonic()
                self.since = timezone.now()
            if self._confirmed or tries < 1:
                return
            self._confirmed = True
            self.outages += 1
        log.warning("database unreachable (%s): %s; retrying", where, _first_line(err))

    def recovered(self) -> None:
        """A database call succeeded: the first success after a confirmed outage logs."""
        if self._since is None:  # the happy path: no lock, no work
            return
        with self._lock:
            if self._since is None:
                return
            took, confirmed = time.monotonic() - self._since, self._confirmed
            self._since, self._confirmed = None, False
            if confirmed:
                self.seconds += took
                if self.since is not None:
                    self.last = (self.since, took)
        if confirmed:
            log.warning("database back after %.1fs", took)

    def last_fault(self) -> str:
        """The last confirmed outage that ended, for the worker's heartbeat ('' if none)."""
        if self.last is None:
            return ""
        since, took = self.last
        return f"database unreachable since {since:%Y-%m-%d %H:%M:%S} UTC, for {took:.1f}s"

    def current_seconds(self) -> float:
        """Seconds spent in confirmed outages, the one under way included."""
        with self._lock:
            started = self._since if self._confirmed else None
            return self.seconds + (time.monotonic() - started if started is not None else 0.0)


OUTAGE = Outage()


class Adoptions:
    """How many jobs this process adopted, by cause (``lease_expired``, ``holder_dead``)."""

    CAUSES = ("lease_expired", "holder_dead")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self.CAUSES, 0)

    def add(self, cause: str, count: int) -> None:
        if count:
            with self._lock:
                self.counts[cause] += count

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def reset(self) -> None:
        """Forget every adoption (for tests)."""
        with self._lock:
            self.counts = dict.fromkeys(self.CAUSES, 0)


#: This process's adoptions of jobs another worker held.
ADOPTIONS = Adoptions()


def close_broken() -> None:
    """Drop this thread's connection (Django opens a new one at the next query)."""
    with contextlib.suppress(*DB_ERRORS):  # it was broken: closing it is all that was asked
        connection.close()


def retry_db(call: Callable[[], T], *, stop: threading.Event, where: str) -> T:
    """``call()``, retried while the database is unreachable; DatabaseUnavailable once
    ``stop`` is set (checked only while waiting: a call that succeeds is never refused)."""
    tries = 0
    while True:
        try:
            result = call()
        except DB_ERRORS as err:
            if not is_outage(err):
                raise
            OUTAGE.failed(where, err, tries=tries)
            close_broken()
            if stop.wait(backoff(tries)):
                raise DatabaseUnavailable(f"database unreachable ({where})") from err
            tries += 1
            continue
        if tries:  # it failed, and now reached the database: (only) that proves it is back
            OUTAGE.recovered()
        return result


class Tally:
    """A count of one kind of fault this process met; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1

    def reset(self) -> None:
        """Forget the count (for tests)."""
        with self._lock:
            self.count = 0


#: Launches this process gave up after START_TIMEOUT.
STUCK_LAUNCHES = Tally()
#: Attempts this process retried because their engine stopped under them.
INFRASTRUCTURE_RETRIES = Tally()
