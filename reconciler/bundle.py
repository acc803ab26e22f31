"""Bundles: a deterministic tar of a job's outputs, zstd-compressed, hashed while streamed.

Identical outputs give bit-identical bundles (sorted names, mtime 0, uid/gid 0,
no user names, normalised modes), so the content-addressed store keeps one.
Memory stays constant whatever the size: files are streamed, never read whole.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO

import zstandard

from reconciler.errors import BundleError
from reconciler.schema import Artifact

CHUNK = 1 << 20
JOB_SIZE = 4 << 20


class HashingWriter:
    """A file-like sink that hashes and counts what passes through."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()


def members(src: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Sorted (arcname, path, lstat) of every entry; anything but regular files
    and directories is refused, naming the path."""
    out = []
    for root, dirs, files in os.walk(src, followlinks=False):
        dirs.sort()
        for name in sorted(dirs + files):
            path = Path(root) / name
            st = path.lstat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise BundleError(f"{path}: only regular files and directories may be bundled",
                                  path=str(path))
            out.append((path.relative_to(src).as_posix(), path, st))
    out.sort(key=lambda m: m[0])
    return out


def _tarinfo(arcname: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if stat.S_ISDIR(st.st_mode):
        info.type, info.mode, info.size = tarfile.DIRTYPE, 0o755, 0
    else:
        info.type, info.size = tarfile.REGTYPE, st.st_size
        info.mode = 0o755 if st.st_mode & stat.S_IXUSR else 0o644
    return info


def pack(src: Path, out: BinaryIO, *, level: int = 3, threads: int = -1) -> Artifact:
    """Write the bundle of `src` to `out`; returns its sha256 and size."""
    sink = HashingWriter(out)
    # 4 MiB zstd jobs keep the multi-threaded compressor's buffers near 32 MiB
    # (level 3's default 8 MiB jobs peaked at ~70 MiB, bench P6). The tar stream
    # copies and writes in 1 MiB pieces: its default 10 KiB records meant 100
    # compressor calls per MiB and re-slicing a 1 MiB buffer 100 times.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, write_checksum=True, write_content_size=False,
        job_size=JOB_SIZE)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    with cctx.stream_writer(sink, closefd=False) as zout, \
            tarfile.open(fileobj=zout, mode="w|", format=tarfile.PAX_FORMAT,
                         bufsize=CHUNK, copybufsize=CHUNK) as tar:
        for arcname, path, st in members(Path(src)):
            info = _tarinfo(arcname, st)
            if info.isdir():
                tar.addfile(info)
                continue
            with path.open("rb") as f:
                if os.fstat(f.fileno()).st_size != st.st_size:
                    raise BundleError(f"{path}: changed while being bundled", path=str(path))
                tar.addfile(info, f)
    return Artifact(sha256=sink.sha.hexdigest(), size=sink.size)


# ------------------------------------------------------------------ unpacking

MAX_WINDOW = 1 << 27  # zstd window cap: a bigger window is refused, not allocated
DEFAULT_MAX_MEMBERS = 100_000
DEFAULT_MAX_BYTES = 64 << 30


class _Capped:
    """A reader that refuses to produce more than `limit` bytes (zstd bombs)."""

    def __init__(self, raw: BinaryIO, limit: int) -> None:
        self.raw, self.limit, self.total = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size if size and size > 0 else CHUNK)
        self.total += len(data)
        if self.total > self.limit:
            raise BundleError(f"bundle decompresses to more than {self.limit} bytes: refused")
        return data


def _stream(path: Path, limit: int) -> tuple[BinaryIO, _Capped]:
    raw = path.open("rb")
    dctx = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
    return raw, _Capped(dctx.stream_reader(raw, read_across_frames=False), limit)


def check_member(info: tarfile.TarInfo) -> str | None:
    """Why a member may not be extracted, or None. Checked before anything is
    written, because tarfile's `data` filter alone has been bypassed."""
    name = info.name
    if not (info.isreg() or info.isdir()):
        return "only regular files and directories are allowed"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if any(part == ".." for part in name.replace("\\", "/").split("/")):
        return "path with '..'"
    if info.mode & 0o7000:
        return "setuid, setgid or sticky bit"
    return None


def unpack(src: Path, dest: Path, *, max_members: int = DEFAULT_MAX_MEMBERS,
           max_bytes: int = DEFAULT_MAX_BYTES) -> int:
    """Extract a bundle file into `dest` (absent or empty); returns the member count.

    Two passes over the stream: the first checks every member and the totals
    without writing anything; the second extracts with `filter="data"` too."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BundleError(f"{dest}: must not exist or be empty")
    limit = max_bytes + 1024 * (max_members + 16)  # member bytes plus tar headers
    count, total = 0, 0
    raw, reader = _stream(Path(src), limit)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for info in tar:
                count += 1
                total += max(info.size, 0)
                why = check_member(info)
                if why:
                    raise BundleError(f"member {info.name!r}: {why}: refused", member=info.name)
                if count > max_members:
                    raise BundleError(f"more than {max_members} members: refused")
                if total > max_bytes:
                    raise BundleError(f"members total more than {max_bytes} bytes: refused")
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        raise BundleError(f"{src}: not a readable bundle ({exc})") from None
    finally:
        raw.close()
    dest.mkdir(parents=True, exist_ok=True)
    raw, reader = _stream(Path(src), limit)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        raise BundleError(f"{src}: extraction failed ({exc})") from None
    finally:
        raw.close()
    return count
