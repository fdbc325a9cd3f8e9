"""A pod's log followed with timestamps, as the kubelet sends it: the times taken off, long
lines in 16 KiB pieces, and the kubelet's own words at the end of a removed container's log
left out."""

from __future__ import annotations

from container_manager.executors.kubernetes_logs import PIECE, untimed

T = b"2026-12-02T06:23:54.123456789Z "


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_lines_lose_their_times_in_chunks_of_any_size():
    data = T + b"first\n" + T + b"second\n" + b"2026-12-02T06:23:55Z third\n"
    for size in (1, 2, 7, 31, 1000):
        assert b"".join(untimed(_split(data, size))) == b"first\nsecond\nthird\n", size


def test_a_long_line_comes_in_pieces_each_with_its_time():
    line = b"x" * (2 * PIECE + 5) + b"\n"
    data = T + line[:PIECE] + T + line[PIECE : 2 * PIECE] + T + line[2 * PIECE :]
    assert b"".join(untimed(_split(data, 4096))) == line
    times_inside = b"x" * 10 + T.strip() + b"\n"  # a time the job prints is its output
    assert b"".join(untimed([T + times_inside])) == times_inside


def test_the_kubelets_words_where_a_time_is_due_end_the_output():
    said = b"rpc error: code = Unknown desc = Error: No such container: 3bbcdc8e9c49"
    for tail in (said, said[:3], b"\n" + said):
        data = T + b"slow\n" + tail
        assert b"".join(untimed(_split(data, 5))) == b"slow\n", tail
    assert b"".join(untimed([T + b"no newline yet"])) == b"no newline yet"
