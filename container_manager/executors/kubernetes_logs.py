"""Reading a pod's log followed with ``timestamps``: the kubelet (dockershim) sends the
engine's log entries, each ``<RFC 3339 time> <text>`` up to its newline, a line longer than
16 KiB in pieces of 16 KiB each with its own time. When the container is removed while its
log is followed (a deleted pod's, as the kubelet removes it), the kubelet ends the answer with
its own words (``rpc error: ... No such container``) where the next time is due: the time
tells the container's output from them."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

__all__ = ["PIECE", "untimed"]

#: The size of the pieces of a long line in the engine's log (json-file).
PIECE = 16 * 1024
_TIME = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:\d\d) ")
_TIME_MAX = 36  # bytes of the longest time and its space


def untimed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The container's output of a timestamped log answer arriving in ``chunks``, without
    the times; it ends where text without a time stands where a time is due."""
    data, left = b"", 0  # left: bytes of the current entry still to come (0: a time is due)
    for chunk in chunks:
        data += chunk
        while data:
            if not left:
                stamp = _TIME.match(data)
                if stamp is None:
                    if len(data) >= _TIME_MAX or b" " in data:
                        return  # not a time: not the container's
                    break  # the time goes on in the next chunk
                data, left = data[stamp.end() :], PIECE
                continue
            end = data.find(b"\n", 0, left)
            size = end + 1 if end >= 0 else min(len(data), left)
            yield data[:size]
            left = 0 if end >= 0 else left - size
            data = data[size:]
