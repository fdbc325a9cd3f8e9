"""Job output: read a container's streams in chunks, keep a bounded tail, optionally keep
everything through Django's storage API. Memory stays bounded whatever a job prints."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from django.core.files import File
from django.core.files.storage import storages

from .conf import get_settings

if TYPE_CHECKING:
    from .executors.base import BaseExecutor, Stream

__all__ = ["STREAMS", "CollectedOutput", "OutputCollection", "TailBuffer", "collect_output"]

STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it, and how many were written in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self._buffer = bytearray()

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self._buffer += chunk
        if len(self._buffer) > 2 * self.limit:
            del self._buffer[: len(self._buffer) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self, limit: int | None = None) -> str:
        """The tail (its last ``limit`` bytes) as text: undecodable bytes replaced, NULs
        (which PostgreSQL text cannot hold) shown as U+FFFD, and a character cut by the
        tail dropped."""
        limit = self.limit if limit is None else min(limit, self.limit)
        data = bytes(self._buffer[-limit:])
        text = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        if self.total > limit and text.startswith("\ufffd"):
            text = text.lstrip("\ufffd")
        return text


@dataclass(frozen=True)
class CollectedOutput:
    """One stream of a finished container: its tail, whether it was cut, and where the whole
    of it was stored (a storage name, or '')."""

    text: str
    truncated: bool
    total_bytes: int
    stored_as: str = ""


@dataclass
class _Collector:
    """One stream being read: its tail and, when it is to be stored, a spool of all of it
    (in memory up to the tail's size, then in a temporary file)."""

    tail: TailBuffer
    spool: IO[bytes] | None = None
    storage: str = ""
    name: str = ""

    def write(self, chunk: bytes) -> None:
        self.tail.write(chunk)
        if self.spool is not None:
            self.spool.write(chunk)

    def result(self) -> CollectedOutput:
        stored = ""
        if self.spool is not None and self.tail.total:
            self.spool.seek(0)
            stored = storages[self.storage].save(self.name, File(self.spool))
        return CollectedOutput(self.tail.text(), self.tail.truncated, self.tail.total, stored)


class OutputCollection:
    """Both streams of one container being read: the configured tail of each and, when
    ``LOG_STORAGE`` is set, all of it spooled for that storage under the name
    ``storage_names`` gives the stream (a stream with no name is not stored).

    One thread writes (the reader of the engine's log); others may read :meth:`recent`
    meanwhile. Close it (it is a context manager) to drop the spools.
    """

    def __init__(self, storage_names: Mapping[Stream, str] | None = None) -> None:
        conf = get_settings()
        names = storage_names or {}
        self._stack = ExitStack()
        self._lock = threading.Lock()
        self._collectors: dict[Stream, _Collector] = {}
        self.written = 0  # bytes written in all, both streams
        for stream in STREAMS:
            name = names.get(stream, "") if conf.LOG_STORAGE else ""
            spool = None
            if name:
                spool = self._stack.enter_context(
                    tempfile.SpooledTemporaryFile(max_size=conf.LOG_TAIL_BYTES)  # noqa: SIM115 (the stack closes it)
                )
            self._collectors[stream] = _Collector(
                TailBuffer(conf.LOG_TAIL_BYTES), spool, conf.LOG_STORAGE or "", name
            )

    def __enter__(self) -> OutputCollection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def write(self, stream: Stream, chunk: bytes) -> None:
        with self._lock:
            self._collectors[stream].write(chunk)
            self.written += len(chunk)

    def recent(self, limit: int) -> dict[Stream, str]:
        """The last ``limit`` bytes of each stream so far, as text (for a live view)."""
        with self._lock:
            return {s: c.tail.text(limit) for s, c in self._collectors.items()}

    def result(self) -> dict[Stream, CollectedOutput]:
        """Each stream's tail, and where all of it was stored (storing it now)."""
        return {stream: collector.result() for stream, collector in self._collectors.items()}


def collect_output(
    executor: BaseExecutor, container_id: str, storage_names: Mapping[Stream, str] | None = None
) -> dict[Stream, CollectedOutput]:
    """Read both streams of the (exited) container in chunks, in one pass, into an
    :class:`OutputCollection`; each stream's tail and stored name."""
    with OutputCollection(storage_names) as output:
        for stream, chunk in executor.iter_outputs(container_id):
            output.write(stream, chunk)
        return output.result()
