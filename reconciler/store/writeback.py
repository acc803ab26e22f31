"""A file writer that hands what it has written to the disk as it goes.

A store write ends in fsync. Left alone, the kernel keeps a bundle's pages dirty
until then (background writeback starts only at a share of RAM, gigabytes on a
training host), so the whole bundle goes to disk after compression instead of
during it (bench P6). Every WINDOW bytes this starts writeback of the new window
without waiting for it (POSIX_FADV_DONTNEED starts it on Linux) and drops the
window before, by then clean, from the page cache: a bundle does not evict what
a small host (the Pi) needs. Where posix_fadvise is missing it only writes.
"""

from __future__ import annotations

import os
from typing import BinaryIO

WINDOW = 32 << 20


class WritebackFile:
    """Wraps a buffered binary file open for writing from offset 0; write and flush
    only, the caller keeps closing and fsyncing it."""

    def __init__(self, out: BinaryIO, window: int = WINDOW) -> None:
        self.out = out
        self.window = window
        self.written = 0
        self._kicked = 0  # writeback started for [0, _kicked)
        self._advise = getattr(os, "posix_fadvise", None)

    def write(self, data: bytes) -> int:
        n = self.out.write(data)
        self.written += n
        if self._advise is not None and self.written - self._kicked >= self.window:
            self.out.flush()
            start = max(0, self._kicked - self.window)
            try:
                self._advise(self.out.fileno(), start, self.written - start,
                             os.POSIX_FADV_DONTNEED)
            except OSError:
                self._advise = None  # advice only: a filesystem may refuse it
            self._kicked = self.written
        return n

    def flush(self) -> None:
        self.out.flush()
