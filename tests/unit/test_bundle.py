"""Bundles: deterministic packing, and unpacking that refuses every bad input of
docs/failure-model.md (security rules 9 and 10) before writing, leaving DEST as it was and
nothing outside it. Real files, real tar, real zstd."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import tarfile
import threading
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from reconciler.protocol.errors import BundleError
from reconciler.store.bundle import pack
from reconciler.store.unpack import unpack

# ------------------------------------------------------------------ helpers


def outputs(root: Path) -> Path:
    """A small job output tree, written in a scrambled order."""
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "z.txt").write_text("last\n")
    (root / "sub" / "deep" / "weights.bin").write_bytes(bytes(range(256)) * 512)
    (root / "metrics.json").write_text('{"loss": 0.1}\n')
    (root / "sub" / "a b é.txt").write_text("unicode and spaces\n")
    (root / ("long-" + "x" * 150)).write_text("a name over 100 chars needs a pax header\n")
    (root / "empty").mkdir()
    return root


def bundle_of(src: Path, **kw: int) -> bytes:
    out = io.BytesIO()
    art = pack(src, out, **kw)
    data = out.getvalue()
    assert art.sha256 == hashlib.sha256(data).hexdigest() and art.size == len(data)
    return data


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def raw_tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """A tar crafted by hand, as an attacker with a worker key could."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return raw.getvalue()


def streamed(data: bytes, **params: int) -> bytes:
    """zstd without a content size in the header, as a streaming writer makes it."""
    out = io.BytesIO()
    cctx = zstandard.ZstdCompressor(
        compression_params=zstandard.ZstdCompressionParameters(**params) if params else None)
    with cctx.stream_writer(out, closefd=False) as z:
        z.write(data)
    return out.getvalue()


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


OK = [(member("ok.txt"), b"fine")]
SMALL = {"max_members": 100, "max_bytes": 1 << 20}

# ------------------------------------------------------------------ packing


def test_same_contents_give_identical_bytes_whatever_metadata_threads_or_order(
        tmp_path: Path) -> None:
    a = outputs(tmp_path / "a")
    b = outputs(tmp_path / "b")
    os.utime(b / "z.txt", (1, 1))  # different mtimes, modes and creation order
    (b / "metrics.json").chmod(0o600)
    (b / "z.txt").chmod(0o755)
    first = bundle_of(a)
    assert bundle_of(a) == first
    assert bundle_of(b) == first
    assert bundle_of(a, threads=1) == bundle_of(a, threads=4) == bundle_of(a, threads=0) == first


def test_pack_normalises_every_header(tmp_path: Path) -> None:
    data = bundle_of(outputs(tmp_path / "out"))
    params = zstandard.get_frame_parameters(data)
    assert params.has_checksum and params.content_size == zstandard.CONTENTSIZE_UNKNOWN
    with tarfile.open(fileobj=io.BytesIO(zstandard.ZstdDecompressor().decompressobj()
                                         .decompress(data)), mode="r:") as tar:
        infos = tar.getmembers()
    names = [i.name for i in infos]
    assert names == sorted(names) and "sub" in names and "empty" in names
    for info in infos:
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
        assert info.mode == (0o755 if info.isdir() else 0o644)
        assert info.isdir() or info.isreg()


def test_pack_roundtrips_through_unpack(tmp_path: Path) -> None:
    src = outputs(tmp_path / "out")
    names = unpack(io.BytesIO(bundle_of(src)), tmp_path / "dest")
    assert sorted(names) == tree(src) == tree(tmp_path / "dest")
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "dest" / path.relative_to(src)).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("kind", ["symlink", "dir-symlink", "fifo"])
def test_pack_refuses_anything_but_files_and_directories(tmp_path: Path, kind: str) -> None:
    src = outputs(tmp_path / "out")
    bad = src / "sub" / "bad"
    if kind == "symlink":
        bad.symlink_to("/etc/passwd")
    elif kind == "dir-symlink":
        bad.symlink_to(tmp_path)
    else:
        os.mkfifo(bad)
    with pytest.raises(BundleError, match="only regular files and directories") as err:
        pack(src, io.BytesIO())
    assert err.value.path == str(bad)


class FullDisk(io.RawIOBase):
    """A sink that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room, self.got = room, bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(self.got) + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.got += data
        return len(data)


def test_a_write_error_of_the_sink_is_raised_as_it_was(tmp_path: Path) -> None:
    """Hashing and writing run on a thread of their own (bench P6): its OSError
    must reach the caller unchanged (the store says which side failed) and the
    thread must end."""
    src = tmp_path / "out"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(6 << 20))
    with pytest.raises(OSError) as caught:
        pack(src, FullDisk(1 << 20))
    assert caught.value.errno == errno.ENOSPC
    assert not [t for t in threading.enumerate() if t.name == "bundle-sink"]
    whole = io.BytesIO()
    artifact = pack(src, whole)
    assert artifact.size == len(whole.getvalue())
    assert artifact.sha256 == hashlib.sha256(whole.getvalue()).hexdigest()


def test_pack_reads_files_in_pieces(tmp_path: Path) -> None:
    """Constant memory: a 48 MiB output never sits in Python's memory whole."""
    src = tmp_path / "out"
    src.mkdir()
    with (src / "big.bin").open("wb") as f:
        f.truncate(48 << 20)

    class Sink:
        def write(self, data: bytes) -> int:
            return len(data)

    tracemalloc.start()
    try:
        art = pack(src, Sink(), threads=1)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert art.size > 0 and peak < 12 << 20, peak


# ------------------------------------------------------------------ unpacking

BAD_MEMBERS = {
    "dotdot": ([*OK, (member("../escape.txt"), b"x")], "dotdot", "'../escape.txt'"),
    "dotdot-inner": ([(member("a/../../escape.txt"), b"x")], "dotdot", "path with '..'"),
    "absolute": ([(member("/tmp/abs.txt"), b"x")], "absolute", "absolute path"),
    "symlink": ([(member("link", tarfile.SYMTYPE, linkname="/etc"), None),
                 (member("link/through.txt"), b"x")], "type", "not a symlink"),
    "relative-symlink": ([(member("link", tarfile.SYMTYPE, linkname="ok.txt"), None)],
                         "type", "not a symlink"),
    "hardlink": ([*OK, (member("hard", tarfile.LNKTYPE, linkname="ok.txt"), None)],
                 "type", "not a hardlink"),
    "device": ([(member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)],
               "type", "not a device"),
    "block-device": ([(member("sda", tarfile.BLKTYPE, devmajor=8), None)], "type", "device"),
    "fifo": ([(member("pipe", tarfile.FIFOTYPE), None)], "type", "not a fifo"),
    "setuid": ([(member("suid", mode=0o4755), b"#!/bin/sh\n")], "mode", "setuid"),
    "setgid-dir": ([(member("d", tarfile.DIRTYPE, mode=0o2755), None)], "mode", "setgid"),
    "sticky": ([(member("d", tarfile.DIRTYPE, mode=0o1777), None)], "mode", "sticky"),
    "duplicate": ([*OK, (member("ok.txt"), b"again")], "duplicate", "a second member"),
    "below-a-file": ([*OK, (member("ok.txt/x"), b"x")], "name", "below a regular file"),
    "too-many-members": ([(member(f"f{i}"), b"") for i in range(101)], "members",
                         "more than 100 members"),
    "too-many-bytes": ([(member("a"), bytes(600 << 10)), (member("b"), bytes(600 << 10))],
                       "bytes", f"members total more than {1 << 20} bytes"),
}


@pytest.fixture(params=[False, True], ids=["new-dest", "empty-dest"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    d = tmp_path / "work" / "dest"
    d.parent.mkdir()
    if request.param:
        d.mkdir()
    return d


def refused(data: bytes, dest: Path, rule: str, words: str, **caps: int) -> BundleError:
    """Unpack must refuse, and leave `dest` as it was and its parent untouched."""
    existed = dest.exists()
    before = tree(dest.parent.parent)
    with pytest.raises(BundleError) as err:
        unpack(io.BytesIO(data), dest, **{**SMALL, **caps})
    assert err.value.rule == rule, err.value
    assert words in str(err.value), err.value
    assert tree(dest.parent.parent) == before
    assert (list(dest.iterdir()) == []) if existed else not dest.exists()
    return err.value


@pytest.mark.parametrize("case", list(BAD_MEMBERS))
def test_unpack_refuses_bad_members_before_writing(case: str, dest: Path) -> None:
    entries, rule, words = BAD_MEMBERS[case]
    # a good member first, so "nothing written" is a real claim
    data = streamed(raw_tar([(member("first.txt"), b"first"), *entries]))
    error = refused(data, dest, rule, words)
    assert error.member is not None and error.member in str(error)
    assert not (dest.parent / "escape.txt").exists()
    assert not (dest.parent.parent / "escape.txt").exists()


def test_unpack_refuses_a_window_over_the_cap(dest: Path) -> None:
    data = streamed(raw_tar(OK) + os.urandom(1 << 16), window_log=28)
    assert zstandard.get_frame_parameters(data).window_size == 1 << 28
    refused(data, dest, "window", "zstd window of 268435456 bytes")
    # and the cap is the caller's: a level-3 bundle (2^21 window) under a 2^20 cap
    normal = streamed(raw_tar(OK), window_log=21)
    refused(normal, dest, "window", "zstd window", max_window_log=20)


def test_unpack_stops_a_bomb_at_the_running_output_cap(dest: Path) -> None:
    # a valid tar followed by 64 MiB of zeros: a few KiB that no member accounts for
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as z:
        z.write(raw_tar(OK))
        for _ in range(64):
            z.write(bytes(1 << 20))
    assert len(out.getvalue()) < 64 << 10
    refused(out.getvalue(), dest, "output", "decompresses to more than")


def test_unpack_refuses_a_huge_extended_header_before_reading_it(dest: Path) -> None:
    out = io.BytesIO()
    with zstandard.ZstdCompressor().stream_writer(out, closefd=False) as z:
        z.write(member("././@PaxHeader", tarfile.XHDTYPE, size=64 << 20)
                .tobuf(tarfile.USTAR_FORMAT))
        for _ in range(64):
            z.write(bytes(1 << 20))
    refused(out.getvalue(), dest, "header", "decompresses to more than",
            max_bytes=256 << 20)


def test_unpack_never_trusts_a_declared_content_size(dest: Path) -> None:
    big = zstandard.ZstdCompressor().compress(raw_tar(OK) + bytes(4 << 20))
    refused(big, dest, "output", "decompresses to more than")


@pytest.mark.parametrize("cut", [0, 2, 5, 0.5, -4, -1])
def test_unpack_refuses_a_truncated_frame(dest: Path, tmp_path: Path, cut: float) -> None:
    data = bundle_of(outputs(tmp_path / "out"))
    end = int(len(data) * cut) if isinstance(cut, float) else cut % len(data) if cut else 0
    refused(data[:end], dest, "truncated", "truncated zstd frame")


def test_unpack_refuses_trailing_bytes_and_corrupt_data(dest: Path, tmp_path: Path) -> None:
    data = bundle_of(outputs(tmp_path / "out"))
    refused(data + b"\0", dest, "trailing", "1 bytes follow the zstd frame")
    refused(data + data, dest, "trailing", "follow the zstd frame")
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0xFF
    refused(bytes(corrupt), dest, "corrupt", "")
    refused(b"not zstd at all", dest, "corrupt", "not a zstd frame")


def test_unpack_refuses_a_dest_that_is_not_fresh(tmp_path: Path) -> None:
    data = bundle_of(outputs(tmp_path / "out"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    (tmp_path / "link").symlink_to(tmp_path / "out")
    for bad, words in [(full, "must not exist or be an empty directory"),
                       (tmp_path / "link", "is a symlink"),
                       (tmp_path / "missing" / "dest", "no such directory")]:
        with pytest.raises(BundleError, match=words) as err:
            unpack(io.BytesIO(data), bad)
        assert err.value.rule == "dest"
    assert tree(full) == ["keep.txt"]


def test_unpack_reads_a_path_a_pipe_or_a_seekable_stream_at_its_offset(tmp_path: Path) -> None:
    src = outputs(tmp_path / "out")
    data = bundle_of(src)
    path = tmp_path / "b.tar.zst"
    path.write_bytes(data)
    unpack(path, tmp_path / "from-path")
    with subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None and not cat.stdout.seekable()
        names = unpack(cat.stdout, tmp_path / "from-pipe")
    assert sorted(names) == tree(src) == tree(tmp_path / "from-path") == \
        tree(tmp_path / "from-pipe")
    offset = io.BytesIO(b"prefix" + data)
    offset.seek(6)
    assert sorted(unpack(offset, tmp_path / "from-offset")) == tree(src)


def test_unpack_accepts_exactly_the_caps(tmp_path: Path) -> None:
    entries = [(member(f"f{i}"), bytes(1 << 10)) for i in range(10)]
    data = streamed(raw_tar(entries))
    assert len(unpack(io.BytesIO(data), tmp_path / "d", max_members=10,
                      max_bytes=10 << 10)) == 10
    with pytest.raises(BundleError, match="members total more than"):
        unpack(io.BytesIO(data), tmp_path / "e", max_members=10, max_bytes=(10 << 10) - 1)
