"""worker/logcap.LineReader: lines end at \\n, \\r\\n or \\r (a progress bar's
redraw), each kept to its cap with a marker, across any chunking."""

from __future__ import annotations

from worker.logcap import LineReader


def feed_all(reader: LineReader, *chunks: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for chunk in chunks:
        out += reader.feed(chunk)
    return out + reader.close()


def test_every_line_end_splits_and_a_split_crlf_stays_one_end() -> None:
    lines = feed_all(LineReader(), b"a\nb\r\nc\r 45%|##", b"  |\r", b"\nlast")
    assert lines == [(b"a", b"\n"), (b"b", b"\r\n"), (b"c", b"\r"), (b" 45%|##  |", b"\r"),
                     (b"", b"\n"), (b"last", b"\n")]


def test_a_bar_being_redrawn_is_the_pending_line() -> None:
    reader = LineReader()
    assert reader.feed(b"\r 10%|#") == [(b"", b"\r")]
    assert reader.pending == b" 10%|#"


def test_long_lines_are_cut_with_a_marker_and_never_held_whole() -> None:
    reader = LineReader(cap=16)
    out = []
    for _ in range(100):  # one 100 KiB line in 1 KiB chunks
        out += reader.feed(b"x" * 1024)
        assert len(reader.pending) <= 16
    out += reader.feed(b"\nshort\n")
    assert out == [(b"x" * 16 + f" ... [{100 * 1024 - 16} bytes of this line cut]".encode(),
                    b"\n"), (b"short", b"\n")]


def test_a_line_with_no_end_is_read_once() -> None:
    """4 MiB without a line end, in the worker's 64 KiB reads: the first version
    rescanned the pending bytes on every read and never finished (pytest-timeout)."""
    reader = LineReader()
    for _ in range(64):
        reader.feed(b"y" * 65536)
    (line, end), = reader.close()
    assert line.endswith(b"bytes of this line cut]") and end == b"\n"
