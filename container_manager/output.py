"""Job output: read a container's streams in chunks, keep a bounded tail, optionally keep
everything through Django's storage API. Memory stays bounded whatever a job prints."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from django.core.files import File
from django.core.files.storage import storages

from .conf import get_settings

if TYPE_CHECKING:
    from .executors.base import BaseExecutor, Stream
    from .models import ContainerJob

__all__ = ["CollectedOutput", "TailBuffer", "collect_output", "live_tail"]


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

    def text(self) -> str:
        """The tail as text: undecodable bytes replaced, NULs (which PostgreSQL text cannot
        hold) shown as U+FFFD, and a character cut by the tail dropped."""
        data = bytes(self._buffer[-self.limit :])
        text = data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        if self.truncated and text.startswith("\ufffd"):
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


def collect_output(
    executor: BaseExecutor, container_id: str, storage_names: Mapping[Stream, str] | None = None
) -> dict[Stream, CollectedOutput]:
    """Read both streams of the container in chunks, in one pass; keep the configured tail
    of each and, when ``LOG_STORAGE`` is set, the full output in that storage under the
    name ``storage_names`` gives the stream (a stream with no name is not stored)."""
    conf = get_settings()
    names = storage_names or {}
    streams: tuple[Stream, Stream] = ("stdout", "stderr")
    with ExitStack() as stack:
        collectors: dict[Stream, _Collector] = {}
        for stream in streams:
            name = names.get(stream, "") if conf.LOG_STORAGE else ""
            spool = None
            if name:
                spool = stack.enter_context(
                    tempfile.SpooledTemporaryFile(max_size=conf.LOG_TAIL_BYTES)
                )
            collectors[stream] = _Collector(
                TailBuffer(conf.LOG_TAIL_BYTES), spool, conf.LOG_STORAGE or "", name
            )
        for stream, chunk in executor.iter_outputs(container_id):
            collectors[stream].write(chunk)
        return {stream: collector.result() for stream, collector in collectors.items()}


def live_tail(job: ContainerJob, lines: int = 200) -> tuple[str, str] | None:
    """The last ``lines`` of a running job's stdout and stderr, read from its engine now;
    None when the job is not running or its engine does not answer. For one job's page, on
    demand: never call it while rendering a list."""
    from .exceptions import ContainerManagerError
    from .executors import get_executor
    from .models import JobStatus

    if job.status != JobStatus.RUNNING or not job.container_id or job.docker_host is None:
        return None
    streams: tuple[Stream, Stream] = ("stdout", "stderr")
    try:
        executor = get_executor(job.docker_host)
        out, err = (executor.tail_output(job.container_id, s, lines) for s in streams)
    except ContainerManagerError:
        return None
    return _text(out), _text(err)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
