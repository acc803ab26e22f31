"""Unpacking a bundle, which it treats as attacker data (docs/failure-model.md,
security rules 9 and 10): the zstd frame's structure is walked first (window cap,
truncation, trailing bytes), then every member is checked while nothing is
written, and only then is it extracted, with `filter="data"` as well, into a
fresh directory. The format itself is reconciler/store/bundle.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard

from reconciler.protocol.errors import BundleError
from reconciler.store.bundle import CHUNK, DEFAULT_MAX_BYTES, DEFAULT_MAX_MEMBERS

MAX_WINDOW_LOG = 27
HEADER_CAP = 64 << 10  # one pax/GNU long-name header; tarfile reads it whole into memory
MEMBER_OVERHEAD = 8 << 10  # tar header, padding and a long-path pax header per member
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CONTENT_SIZE_UNKNOWN = 2**64 - 1
EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
            tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
KINDS = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "device",
         tarfile.BLKTYPE: "device", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "contiguous file",
         tarfile.GNUTYPE_SPARSE: "sparse file"}


def _refuse(why: str, rule: str, member: str | None = None) -> BundleError:
    text = f"member {member!r}: {why}: refused" if member is not None else f"{why}: refused"
    return BundleError(text, member=member, rule=rule)


class _Capped:
    """A reader that refuses to produce more than `limit` bytes (zstd bombs):
    the frame's declared content size is never trusted."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw, self.limit, self.total = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        try:
            data = self.raw.read(size if size and size > 0 else CHUNK)
        except zstandard.ZstdError as exc:
            raise _refuse(f"corrupt zstd data ({exc})", "corrupt") from None
        self.total += len(data)
        if self.total > self.limit:
            raise _refuse(f"bundle decompresses to more than {self.limit} bytes", "output")
        return data


def _info_class() -> type[tarfile.TarInfo]:
    """A TarInfo that refuses a huge or endless chain of extended headers before
    tarfile reads it into memory (or recurses over it)."""

    class Checked(tarfile.TarInfo):
        chain = 0

        @classmethod
        def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
            info = super().frombuf(buf, encoding, errors)
            cls.chain = cls.chain + 1 if info.type in EXTENDED else 0
            if info.type in EXTENDED and (info.size > HEADER_CAP or cls.chain > 8):
                raise _refuse(f"an extended header that decompresses to more than {HEADER_CAP}"
                              " bytes or chains more than 8 headers", "header", info.name)
            return info

    return Checked


def _seekable(src: BinaryIO | Path, stack: contextlib.ExitStack, cap: int) -> tuple[BinaryIO,
                                                                                     int, int]:
    """(file, start, end) of the compressed bytes; a pipe is spooled to an
    anonymous temp file first (capped), because unpacking reads it twice."""
    if isinstance(src, (str, os.PathLike)):
        f = stack.enter_context(open(src, "rb"))  # noqa: SIM115 - closed by the stack
    elif src.seekable():
        f = src
    else:
        f = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
        total = 0
        while chunk := src.read(CHUNK):
            total += len(chunk)
            if total > cap:
                raise _refuse(f"bundle is larger than {cap} bytes", "output")
            f.write(chunk)
        f.seek(0)
    start = f.tell()
    end = f.seek(0, os.SEEK_END)
    if end - start > cap:
        raise _refuse(f"bundle of {end - start} bytes is larger than {cap} bytes", "output")
    return f, start, end


def scan_frame(f: BinaryIO, start: int, end: int, max_window: int, limit: int) -> None:
    """Walk one zstd frame's block headers without decompressing: the window is
    within the cap, the frame is complete (python-zstandard's stream reader
    returns a short, clean EOF on a truncated frame) and nothing follows it."""
    f.seek(start)
    head = f.read(18)
    if len(head) < 4:
        raise _refuse(f"truncated zstd frame ({len(head)} bytes)", "truncated")
    if head[:4] != ZSTD_MAGIC:
        raise _refuse("not a zstd frame (bad magic)", "corrupt")
    try:
        params = zstandard.get_frame_parameters(head)
        pos = start + zstandard.frame_header_size(head)
    except zstandard.ZstdError as exc:
        raise _refuse(f"truncated zstd frame ({exc})", "truncated") from None
    if params.window_size > max_window:
        raise _refuse(f"zstd window of {params.window_size} bytes is over the "
                      f"{max_window}-byte cap", "window")
    if params.content_size != CONTENT_SIZE_UNKNOWN and params.content_size > limit:
        raise _refuse(f"bundle declares {params.content_size} bytes: it decompresses to more "
                      f"than {limit} bytes", "output")
    blocks, max_blocks = 0, limit // 1024 + 4096  # real encoders write <=128 KiB blocks
    while True:
        if pos + 3 > end:
            raise _refuse(f"truncated zstd frame (ends inside block {blocks})", "truncated")
        f.seek(pos)
        header = int.from_bytes(f.read(3), "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise _refuse(f"corrupt zstd frame (reserved block type at byte {pos})", "corrupt")
        pos += 3 + (1 if kind == 1 else size)
        blocks += 1
        if blocks > max_blocks:
            raise _refuse(f"zstd frame of more than {max_blocks} blocks", "corrupt")
        if last:
            break
    pos += 4 if params.has_checksum else 0
    if pos > end:
        raise _refuse("truncated zstd frame (ends inside its last block or checksum)",
                      "truncated")
    if pos < end:
        raise _refuse(f"{end - pos} bytes follow the zstd frame", "trailing")


def _parts(name: str) -> list[str]:
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def check_member(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """(rule, why) a member may not be extracted, or None. Checked before anything
    is written, because tarfile's `data` filter alone has been bypassed."""
    name = info.name
    if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        kind = KINDS.get(info.type, f"type {info.type!r}")
        return "type", f"only regular files and directories are allowed, not a {kind}"
    if info.sparse is not None:
        return "type", "only regular files and directories are allowed, not a sparse file"
    if "\0" in name:
        return "name", "NUL in the name"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute", "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "dotdot", "path with '..'"
    if not _parts(name):
        return "name", "empty name"
    if info.mode & 0o7000:
        return "mode", "setuid, setgid or sticky bit"
    if info.size < 0 or (info.isdir() and info.size):
        return "corrupt", f"impossible size {info.size}"
    return None


def _key(info: tarfile.TarInfo) -> tuple[str, bytes, int, int]:
    return info.name, info.type, info.size, info.mode


def _check_all(reader: _Capped, max_members: int, max_bytes: int) -> list[tuple]:
    """Pass 1: every member's header, the totals and the zstd checksum, nothing written."""
    seen: list[tuple] = []
    kinds: dict[str, bool] = {}  # normalised path -> is a directory
    total = 0
    with tarfile.open(fileobj=reader, mode="r|", encoding="utf-8", bufsize=CHUNK,
                      tarinfo=_info_class()) as tar:
        for info in tar:
            problem = check_member(info)
            if problem:
                raise _refuse(problem[1], problem[0], info.name)
            parts = _parts(info.name)
            path = "/".join(parts)
            if path in kinds:
                raise _refuse("a second member with this path", "duplicate", info.name)
            if any(kinds.get("/".join(parts[:i])) is False for i in range(1, len(parts))):
                raise _refuse("a path below a regular file", "name", info.name)
            kinds[path] = info.isdir()
            seen.append(_key(info))
            total += info.size
            if len(seen) > max_members:
                raise _refuse(f"more than {max_members} members", "members", info.name)
            if total > max_bytes:
                raise _refuse(f"members total more than {max_bytes} bytes", "bytes", info.name)
    while reader.read(CHUNK):  # the rest (tar padding) so zstd checks its checksum
        pass
    return seen


# tarfile's extraction filters came in Python 3.11.4; Debian 12 (and Raspberry Pi
# OS on the Pi) ships 3.11.2. Without them, members (already checked to be plain
# files and directories with safe relative names) are written by hand.
HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


def _extract_checked(tar: tarfile.TarFile, info: tarfile.TarInfo, dest: Path) -> None:
    """What the `data` filter leaves of a checked member: no links, no owner, no
    special bits, never through a symlink, never over an existing file."""
    target = dest / info.name
    if info.isdir():
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    src = tar.extractfile(info)
    if src is None:
        raise _refuse("not a regular file", "type", info.name)
    mode = 0o755 if info.mode & 0o100 else 0o644
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)


def _extract_all(reader: _Capped, dest: Path, seen: list[tuple]) -> None:
    """Pass 2: extract what pass 1 checked, refusing any difference (the source
    changed in between), with tarfile's `data` filter on top."""
    count = 0
    with tarfile.open(fileobj=reader, mode="r|", encoding="utf-8", bufsize=CHUNK,
                      tarinfo=_info_class(), errorlevel=2) as tar:
        for info in tar:
            if count >= len(seen) or _key(info) != seen[count]:
                raise _refuse("the bundle changed while being unpacked", "changed", info.name)
            if HAS_DATA_FILTER:
                tar.extract(info, dest, filter="data")
            else:
                _extract_checked(tar, info, dest)
            count += 1
    if count != len(seen):
        raise _refuse("the bundle changed while being unpacked", "changed")


def _fresh(dest: Path) -> bool:
    """Whether `dest` exists (then empty); refuses anything but absent or empty."""
    if dest.is_symlink():
        raise _refuse(f"{dest}: is a symlink; give a new directory", "dest")
    if dest.exists():
        if not dest.is_dir() or any(dest.iterdir()):
            raise _refuse(f"{dest}: must not exist or be an empty directory", "dest")
        return True
    if not dest.parent.is_dir():
        raise _refuse(f"{dest.parent}: no such directory", "dest")
    return False


def clear(dest: Path, existed: bool) -> None:
    """Undo a partial unpack: `dest` goes back to absent or empty."""
    if dest.is_symlink() or not dest.is_dir():
        return
    if not existed:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _readers(f: BinaryIO, start: int, max_window: int, limit: int) -> Iterator[_Capped]:
    while True:
        f.seek(start)
        dctx = zstandard.ZstdDecompressor(max_window_size=max_window)
        yield _Capped(dctx.stream_reader(f, read_size=CHUNK, read_across_frames=False,
                                         closefd=False), limit)


def unpack(src: BinaryIO | Path, dest: Path, *, max_members: int = DEFAULT_MAX_MEMBERS,
           max_bytes: int = DEFAULT_MAX_BYTES, max_window_log: int = MAX_WINDOW_LOG) -> list[str]:
    """Extract a bundle (a file path or a binary stream) into `dest`, which must
    not exist or be an empty directory; returns the member names in order.

    Any refusal raises BundleError(member=..., rule=...) and leaves `dest` as it
    was (absent or empty); nothing is ever written outside it."""
    dest = Path(dest)
    if not 10 <= max_window_log <= 31:
        raise ValueError(f"max_window_log must be 10..31, not {max_window_log}")
    max_window = 1 << max_window_log
    existed = _fresh(dest)
    limit = max_bytes + MEMBER_OVERHEAD * (max_members + 2)  # member bytes plus tar headers
    with contextlib.ExitStack() as stack:
        f, start, end = _seekable(src, stack, limit + limit // 16384 + 4096)
        scan_frame(f, start, end, max_window, limit)
        readers = _readers(f, start, max_window, limit)
        try:
            seen = _check_all(next(readers), max_members, max_bytes)
        except BundleError:
            raise
        except Exception as exc:  # tarfile's errors, RecursionError, ValueError...
            raise _refuse(f"not a readable bundle ({exc})", "corrupt") from None
        if not existed:
            try:
                dest.mkdir()
            except OSError as exc:
                raise _refuse(f"{dest}: cannot be created ({exc.strerror})", "dest") from None
        try:
            _extract_all(next(readers), dest, seen)
        except BaseException as exc:
            clear(dest, existed)
            if isinstance(exc, BundleError) or not isinstance(exc, Exception):
                raise
            raise _refuse(f"extraction failed ({exc})", "extract") from None
    return [key[0] for key in seen]
