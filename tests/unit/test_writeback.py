"""WritebackFile: early writeback is advice only; the bytes written are exactly
what was given, whatever the window, and a refused advice is not an error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.store.writeback import WritebackFile


def write_all(path: Path, chunks: list[bytes], window: int) -> WritebackFile:
    with path.open("wb", buffering=1 << 12) as out:
        w = WritebackFile(out, window=window)
        for chunk in chunks:
            assert w.write(chunk) == len(chunk)
        w.flush()
        os.fsync(out.fileno())
    return w


def test_bytes_are_intact_across_many_windows(tmp_path: Path) -> None:
    chunks = [os.urandom(n) for n in (1, 5000, 16384, 3, 70000, 4096, 1 << 17)]
    w = write_all(tmp_path / "f", chunks, window=8192)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    assert w.written == sum(map(len, chunks))
    if hasattr(os, "posix_fadvise"):
        assert w._kicked > 0 and w.written - w._kicked < 8192 + (1 << 17)


def test_a_refused_advice_stops_advising_and_keeps_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def refuse(*args: object) -> None:
        calls.append(args)
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "posix_fadvise", refuse, raising=False)
    chunks = [b"x" * 10_000] * 5
    write_all(tmp_path / "f", chunks, window=4096)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    assert len(calls) == 1  # tried once, then left alone
