"""A trainer's output, kept within bytes: per line, in memory and on disk.

A trainer may print lines of any length (a probe printed 40 lines of 16 MiB:
the worker reached 740 MiB RSS and a 640 MiB log). Here only the first
`LINE_CAP` bytes of a line are kept (in memory and in the log), and the log
file is cut to its newest half whenever it passes `LOG_CAP`. What is dropped
is said in the log itself.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

LINE_CAP = 16 * 1024  # bytes of one line kept; the rest is counted, not stored
LOG_CAP = 64 * 1024 * 1024  # log file bytes; past it the newest half is kept
LINE_END = re.compile(rb"\r\n|\r|\n")  # `\r` ends a line too: progress bars redraw


class LineReader:
    """Splits output into lines at `\n`, `\r\n` or `\r` (a progress bar's redraw),
    each kept to `cap` bytes: the rest of a longer line is counted, not stored,
    and a marker says how much was cut. Holds at most `cap` bytes between feeds,
    however long a line runs."""

    def __init__(self, cap: int | None = None) -> None:
        self.cap = cap or LINE_CAP
        self.pending = b""  # the current line so far (a bar being redrawn)
        self._cut = 0  # bytes of the current line dropped so far

    def feed(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """(line, terminator) for every line `chunk` ends."""
        data, out, start = self.pending + chunk, [], 0
        for m in LINE_END.finditer(data):  # linear: a long line is never rescanned
            out.append((self._capped(data[start:m.start()]), m.group()))
            start = m.end()
        rest = data[start:]
        if len(rest) > self.cap:
            self._cut += len(rest) - self.cap
            rest = rest[:self.cap]
        self.pending = rest
        return out

    def close(self) -> list[tuple[bytes, bytes]]:
        """The last line, when the output ended without a line end."""
        rest, self.pending = self.pending, b""
        return [(self._capped(rest), b"\n")] if rest or self._cut else []

    def _capped(self, line: bytes) -> bytes:
        cut = self._cut + max(0, len(line) - self.cap)
        self._cut = 0
        line = line[:self.cap]
        return line + f" ... [{cut} bytes of this line cut]".encode() if cut else line


class BoundedLog:
    """An append-only log file that keeps its newest half once it passes `cap`."""

    def __init__(self, path: Path, cap: int | None = None) -> None:
        self.path = path
        self.cap = cap or LOG_CAP
        self._file = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        self._size += len(data)
        if self._size > self.cap:
            self._cut()

    def _cut(self) -> None:
        keep = self.cap // 2
        with self.path.open("rb") as f:
            f.seek(max(0, self._size - keep))
            tail = f.read(keep)
        dropped = self._size - len(tail)
        self._file.truncate(0)
        self._file.seek(0, os.SEEK_SET)
        header = f"[trainledger: log over {self.cap} bytes; {dropped} older bytes dropped]\n"
        self._file.write(header.encode() + tail)
        self._file.flush()
        self._size = self._file.tell()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> BoundedLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
