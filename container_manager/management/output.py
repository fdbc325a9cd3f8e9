"""Text the commands print: tables, labelled rows, and terminal control characters escaped
(a job's name or an engine's error could otherwise move the cursor, retitle the terminal or
hide what follows)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["printable", "rows_text", "table_text"]

# C0 controls but tab and newline, DEL, and the C1 controls (ESC sequences' 8-bit forms).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with terminal control characters written as ``\\xNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def table_text(rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a table: columns padded to their widest cell, cells made printable."""
    cells = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def rows_text(rows: Iterable[tuple[str, str]], width: int) -> list[str]:
    """``Label:  value`` lines, the labels padded to ``width``, values made printable."""
    return [f"{label + ':':<{width}}{printable(value)}" for label, value in rows]
