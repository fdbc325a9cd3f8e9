"""Reading a container's log answer from the Engine API: the multiplexed frames of a
non-TTY container, read after its exit (:func:`frames`) or followed while it runs
(:func:`followed_frames`)."""

from __future__ import annotations

import struct
from collections import Counter, deque
from collections.abc import Iterable, Iterator

import docker

from .base import Stream

__all__ = ["READ_SIZE", "REPLAY_WINDOW", "followed_frames", "frames"]

#: A frame of a multiplexed log answer: 1 byte stream (1 stdout, 2 stderr), 3 padding, 4 size.
_FRAME_HEADER = struct.Struct(">BxxxL")
_FRAME_STREAMS: dict[int, Stream] = {1: "stdout", 2: "stderr"}
READ_SIZE = 64 * 1024
#: Frames of each stream remembered to recognise one the engine sends again: the replays
#: seen (Docker 20.10, json-file, at each rotation) go back 0 to about 400 lines (40 KB).
REPLAY_WINDOW = 16384


def frames(chunks: Iterable[bytes]) -> Iterator[tuple[Stream, bytes]]:
    """Demultiplex a non-TTY log answer that arrives in ``chunks`` of any size: each
    stream's bytes, tagged with the stream, in pieces of at most a chunk (plus the few bytes
    of a header the previous chunk cut). A frame is one line (or a 16 KiB part of a long
    one), so frames are parsed here in bulk, and the consecutive frames of a stream within a
    chunk are joined: reading frame by frame off the socket costs seconds of CPU per million
    lines."""
    data = b""  # what is left of the previous chunk: part of a frame header
    kind, left = 0, 0  # the current frame's stream, and how much of its payload is to come
    for chunk in chunks:
        data = data + chunk if data else chunk
        pos, run_kind = 0, 0
        run: list[bytes] = []
        while pos < len(data):
            if not left:
                if len(data) - pos < _FRAME_HEADER.size:
                    break
                kind, left = _FRAME_HEADER.unpack_from(data, pos)
                pos += _FRAME_HEADER.size
                continue
            piece = data[pos : pos + left]
            pos += len(piece)
            left -= len(piece)
            if kind not in _FRAME_STREAMS:
                continue
            if run and kind != run_kind:
                yield _FRAME_STREAMS[run_kind], b"".join(run)
                run = []
            run_kind = kind
            run.append(piece)
        if run:
            yield _FRAME_STREAMS[run_kind], b"".join(run)
        data = data[pos:]
    if data or left:
        raise docker.errors.DockerException("log answer cut inside a frame")


class _Seen:
    """The last :data:`REPLAY_WINDOW` frames of one stream, as sent (timestamp included),
    remembered by their hash (64 bits: a false match within the window is about as likely
    as a disk's bit flip)."""

    def __init__(self) -> None:
        self.order: deque[int] = deque()
        self.counts: Counter[int] = Counter()
        self.last = 0  # the hash of the last frame let through
        self.mid_line = False  # whether it ended inside a line (a long line's part)

    def admit(self, frame: bytes) -> bool:
        """Remember ``frame`` and say True, unless the engine sent it before. The parts of
        a long line share their timestamp, so a part equal to the one just let through,
        in the middle of a line, is the line's next part, not a replay."""
        key = hash(frame)
        if key in self.counts and not (self.mid_line and key == self.last):
            return False
        self.order.append(key)
        self.counts[key] += 1
        if len(self.order) > REPLAY_WINDOW:
            old = self.order.popleft()
            self.counts[old] -= 1
            if not self.counts[old]:
                del self.counts[old]
        self.last = key
        self.mid_line = not frame.endswith(b"\n")
        return True


def followed_frames(chunks: Iterable[bytes]) -> Iterator[tuple[Stream, bytes]]:
    """Demultiplex a followed log answer asked for with ``timestamps=1``: each frame's
    payload without its timestamp, tagged with its stream; consecutive frames of a stream
    within a chunk joined, as :func:`frames` does.

    Followed across a rotation of its json-file log, Docker 20.10 sends a few hundred lines
    again (measured here: replays of 0 to 408 lines at each rotation, none lost while the
    reader keeps up). A frame's timestamp (nanoseconds, the time the engine read the line)
    makes each frame of a stream unique, so a frame sent again is recognised and dropped,
    while a line the job prints twice is not: it carries another timestamp.
    """
    seen: dict[int, _Seen] = {1: _Seen(), 2: _Seen()}
    pending = b""
    for chunk in chunks:
        data = pending + chunk if pending else chunk
        pos, run_kind = 0, 0
        run: list[bytes] = []
        while len(data) - pos >= _FRAME_HEADER.size:
            kind, size = _FRAME_HEADER.unpack_from(data, pos)
            end = pos + _FRAME_HEADER.size + size
            if end > len(data):
                break
            frame = data[pos + _FRAME_HEADER.size : end]
            pos = end
            stream = seen.get(kind)
            if stream is None or not stream.admit(frame):
                continue
            if run and kind != run_kind:
                yield _FRAME_STREAMS[run_kind], b"".join(run)
                run = []
            run_kind = kind
            run.append(frame.partition(b" ")[2])
        if run:
            yield _FRAME_STREAMS[run_kind], b"".join(run)
        pending = data[pos:]
    if pending:
        raise docker.errors.DockerException("log answer cut inside a frame")
