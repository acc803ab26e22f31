"""A trainer's output, kept within bytes: per line, in memory and on disk.

A trainer may print lines of any length (a probe printed 40 lines of 16 MiB:
the worker reached 740 MiB RSS and a 640 MiB log). Here each line is read in
chunks of at most `LINE_CAP` bytes and only its first chunk is kept, the
in-memory tail holds `TAIL_BYTES`, and the log file is cut to its newest half
whenever it passes `LOG_CAP`. What is dropped is said in the log itself.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

LINE_CAP = 16 * 1024  # bytes of one line kept; the rest is counted, not stored
TAIL_BYTES = 8 * 1024  # bytes of the newest output kept in memory (failure reports)
LOG_CAP = 64 * 1024 * 1024  # log file bytes; past it the newest half is kept


def read_lines(stream: BinaryIO, line_cap: int | None = None) -> Iterator[bytes]:
    """Each line of `stream`, at most `line_cap` bytes of it; a longer line gets
    a marker saying how much was cut. Never holds more than `line_cap` bytes."""
    cap = line_cap or LINE_CAP
    while True:
        chunk = stream.readline(cap)
        if not chunk:
            return
        if chunk.endswith(b"\n") or len(chunk) < cap:
            yield chunk
            continue
        cut = 0
        while True:  # drain the rest of this line without keeping it
            more = stream.readline(cap)
            if not more:
                break
            cut += len(more)
            if more.endswith(b"\n"):
                cut -= 1
                break
        yield chunk + f" ... [{cut} bytes of this line cut]\n".encode()


class ByteTail:
    """The newest output, bounded by bytes (a line count alone is not a bound)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or TAIL_BYTES
        self._chunks: deque[bytes] = deque()
        self._size = 0

    def append(self, data: bytes) -> None:
        data = data[-self.limit:]
        self._chunks.append(data)
        self._size += len(data)
        while self._size > self.limit and len(self._chunks) > 1:
            self._size -= len(self._chunks.popleft())

    def text(self, limit: int) -> str:
        return b"".join(self._chunks)[-limit:].decode("utf-8", "replace")


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
