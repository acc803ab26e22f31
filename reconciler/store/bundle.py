"""Bundles: a deterministic tar of a job's outputs, zstd-compressed, hashed while streamed.

Identical outputs give bit-identical bundles (sorted names, mtime 0, uid/gid 0,
no user names, modes 0o644/0o755, PAX, UTF-8, zstd in multi-threaded mode, whose
output does not depend on the thread count), so the content-addressed store
keeps one. Memory stays constant whatever the size: files are streamed, never
read whole.

Unpacking, which treats a bundle as attacker data, is reconciler/store/unpack.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import stat
import tarfile
import threading
from pathlib import Path
from typing import BinaryIO

import zstandard

from reconciler.protocol.errors import BundleError
from reconciler.protocol.state import Artifact  # what schema re-exports, without pydantic

CHUNK = 1 << 20
JOB_SIZE = 4 << 20
DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_MAX_BYTES = 8 << 30


class HashingWriter:
    """A file-like sink that hashes, counts and writes what passes through on a
    thread of its own, so that hashing and writing the bundle overlap with
    compressing it instead of following it (bench P6). Bounded: at most DEPTH
    chunks wait. An error writing `out` is raised again, as it was, by the
    next write() or by close()."""

    DEPTH = 8

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=self.DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="bundle-sink", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> int:
        if self._error is not None:
            raise self._error
        self._queue.put(bytes(data))
        return len(data)

    def flush(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait until every chunk is hashed and written."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is not None:
                continue  # keep taking chunks, so a blocked write() wakes up
            try:
                self.sha.update(data)
                self.out.write(data)
                self.size += len(data)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc


def members(src: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Sorted (arcname, path, lstat) of every entry; anything but regular files
    and directories is refused, naming the path, and so is an unreadable directory
    (os.walk would silently skip it and bundle less than the job wrote)."""
    if Path(src).is_symlink() or not Path(src).is_dir():
        raise BundleError(f"{src}: not a directory", path=str(src))

    def fail(exc: OSError) -> None:
        raise BundleError(f"{exc.filename}: cannot be listed: {exc.strerror}",
                          path=str(exc.filename))

    out = []
    for root, dirs, files in os.walk(src, onerror=fail, followlinks=False):
        for name in dirs + files:
            path = Path(root) / name
            try:
                st = path.lstat()
            except OSError as exc:
                raise BundleError(f"{path}: changed while being bundled ({exc.strerror})",
                                  path=str(path)) from None
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise BundleError(f"{path}: only regular files and directories may be bundled",
                                  path=str(path))
            out.append((path.relative_to(src).as_posix(), path, st))
    out.sort(key=lambda m: m[0])  # a directory sorts before everything below it
    return out


def _tarinfo(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode, info.size = tarfile.DIRTYPE, 0o755, 0
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, st.st_size
    return info


class _Source:
    """One output file, opened without following links, that must not shrink:
    a short read is a BundleError naming the file, not a truncated member."""

    def __init__(self, path: Path, st: os.stat_result) -> None:
        self.path, self.left = path, st.st_size
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise BundleError(f"{path}: cannot be read: {exc.strerror}", path=str(path)) from None
        self.f = os.fdopen(fd, "rb", buffering=0)
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino, now.st_size) != (st.st_dev, st.st_ino, st.st_size):
            self.f.close()
            raise BundleError(f"{path}: changed while being bundled", path=str(path))

    def read(self, size: int) -> bytes:
        try:
            data = self.f.read(min(size, self.left))
        except OSError as exc:
            raise BundleError(f"{self.path}: cannot be read: {exc.strerror}",
                              path=str(self.path)) from None
        if len(data) < min(size, self.left):
            raise BundleError(f"{self.path}: changed while being bundled", path=str(self.path))
        self.left -= len(data)
        return data


def _check_fetchable(entries: list[tuple[str, Path, os.stat_result]]) -> None:
    """Refuse to pack what `fetch-artifact` would refuse by default: a job must
    not complete with a bundle nobody can fetch without raising the caps."""
    if len(entries) > DEFAULT_MAX_MEMBERS:
        raise BundleError(f"{len(entries)} files and directories in the outputs, over the "
                          f"{DEFAULT_MAX_MEMBERS} that fetch-artifact unpacks by default: "
                          "archive them into fewer files", field="members")
    total = sum(st.st_size for _, _, st in entries if stat.S_ISREG(st.st_mode))
    if total > DEFAULT_MAX_BYTES:
        raise BundleError(f"outputs total {total} bytes, over the {DEFAULT_MAX_BYTES} that "
                          "fetch-artifact unpacks by default", field="bytes")


def pack(src: Path, out: BinaryIO, *, level: int = 3, threads: int = -1) -> Artifact:
    """Write the bundle of `src` to `out`; returns its sha256 and size.

    Errors reading `src` are BundleErrors; errors writing `out` (a full disk) stay
    OSErrors, so the store can say which side failed."""
    sink = HashingWriter(out)
    # zstd's multi-threaded format is identical for 1..N threads but differs from
    # single-threaded mode (measured), so at least one worker thread, always.
    # 4 MiB jobs keep the compressor's buffers near 32 MiB (8 MiB jobs peaked at
    # ~70 MiB, bench P6); 1 MiB tar records and copies, not 10 KiB ones.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads if threads != 0 else 1, write_checksum=True,
        write_content_size=False, write_dict_id=False, job_size=JOB_SIZE)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    try:
        entries = members(Path(src))
        _check_fetchable(entries)
        with cctx.stream_writer(sink, closefd=False, write_size=CHUNK) as zout, \
                tarfile.open(fileobj=zout, mode="w|", format=tarfile.PAX_FORMAT,
                             encoding="utf-8", bufsize=CHUNK, copybufsize=CHUNK) as tar:
            for arcname, path, st in entries:
                info = _tarinfo(arcname, st)
                if info.isdir():
                    tar.addfile(info)
                    continue
                source = _Source(path, st)
                with source.f:
                    tar.addfile(info, source)  # type: ignore[arg-type]
    except BaseException:
        with contextlib.suppress(BaseException):
            sink.close()  # the sink's own error, if any, is secondary to this one
        raise
    sink.close()
    return Artifact(sha256=sink.sha.hexdigest(), size=sink.size)
