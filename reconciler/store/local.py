"""A store directory on this host (the Pi's own, or one mounted here): `LocalStore`.

A put streams into a temp file in the final directory, hashes, fsyncs, compares
with the claimed sha and only then renames into place (and fsyncs the
directory), so bytes that do not match their name never appear, and a
duplicate put adds nothing. Below the root nothing follows a symlink: every
directory and file is opened relative to its parent's fd with O_NOFOLLOW, so a
planted link is refused, not raced. Reads re-hash and refuse a mismatch at EOF.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from reconciler.protocol.errors import StoreError
from reconciler.protocol.state import Artifact  # not schema: no pydantic in the forced command
from reconciler.store.backends import (
    CHUNK,
    SHA_RE,
    StoreBase,
    VerifyingReader,
    check_sha,
    open_nofollow,
    os_error,
)
from reconciler.store.writeback import WritebackFile

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalStore(StoreBase):
    """A store directory on this host (the Pi's own, or one mounted here)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def path(self, sha256: str) -> Path:
        sha = check_sha(sha256)
        return self.root / "sha256" / sha[:2] / f"{sha}.tar.zst"

    def location(self, sha256: str) -> str:
        return str(self.path(sha256))

    def _dir(self, parts: tuple[str, ...], create: bool) -> int | None:
        """fd of root/parts, each step opened with O_NOFOLLOW relative to the last;
        None when missing and not `create`. A link anywhere below the root, or a
        directory resolving outside it, is refused."""
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, DIR_FLAGS & ~os.O_NOFOLLOW)  # the root may be a link
        except OSError as exc:
            if exc.errno == errno.ENOENT and not create:
                return None
            raise os_error(self.root, "opening the store", exc) from None
        walked = self.root
        try:
            for part in parts:
                walked = walked / part
                if create:
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                        os.fsync(fd)  # the new entry survives a power loss
                    except FileExistsError:
                        pass
                try:
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ENOENT and not create:
                        os.close(fd)
                        return None
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        kind = "a symlink" if os.path.islink(walked) else "not a directory"
                        raise StoreError(f"{walked}: is {kind}; the store refuses it",
                                         path=str(walked)) from None
                    raise os_error(self.root, f"opening {walked}", exc) from None
                os.close(fd)
                fd = child
            real_root, real = os.path.realpath(self.root), os.path.realpath(walked)
            if os.path.commonpath([real_root, real]) != real_root:
                raise StoreError(f"{walked}: resolves outside the store root {self.root}",
                                 path=str(walked))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _lstat(self, sha256: str) -> tuple[int, os.stat_result] | None:
        """(dir fd, lstat) of a present bundle, or None; a link or a special file
        under a bundle's name is refused."""
        sha = check_sha(sha256)
        dfd = self._dir(("sha256", sha[:2]), create=False)
        if dfd is None:
            return None
        try:
            st = os.stat(f"{sha}.tar.zst", dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(dfd)
            return None
        if not stat.S_ISREG(st.st_mode):
            os.close(dfd)
            kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise StoreError(f"{self.path(sha)}: is {kind}; the store refuses it",
                             path=str(self.path(sha)))
        return dfd, st

    def has(self, sha256: str) -> bool:
        found = self._lstat(sha256)
        if found is not None:
            os.close(found[0])
        return found is not None

    def open(self, sha256: str) -> BinaryIO:
        found = self._lstat(sha256)
        if found is None:
            raise StoreError(f"store {self.root}: no bundle {sha256}", sha256=sha256)
        try:
            raw = open_nofollow(self.path(sha256), dir_fd=found[0])
        finally:
            os.close(found[0])
        return VerifyingReader(raw, sha256, f"store {self.root}")  # type: ignore[return-value]

    def iter_shas(self) -> Iterator[str]:
        """Every bundle name, sorted; links and stray files are skipped."""
        base = self.root / "sha256"
        if base.is_symlink() or not base.is_dir():
            return
        for aa in sorted(os.scandir(base), key=lambda e: e.name):
            if len(aa.name) != 2 or not aa.is_dir(follow_symlinks=False):
                continue
            for entry in sorted(os.scandir(aa.path), key=lambda e: e.name):
                sha = entry.name.removesuffix(".tar.zst")
                if SHA_RE.match(sha) and sha[:2] == aa.name and \
                        entry.name.endswith(".tar.zst") and entry.is_file(follow_symlinks=False):
                    yield sha

    def _stage(self, dfd: int, fill: Callable[[BinaryIO], Artifact]) -> tuple[str, Artifact]:
        """A new temp file in `dfd` (O_EXCL, never a link), filled, flushed and
        fsynced; removed again on any failure. Returns its name and `fill`'s result."""
        name = f".put-{os.getpid()}-{secrets.token_hex(6)}.tmp"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as out:
                # write() is all a fill uses; the disk gets the bytes as they come
                result = fill(cast(BinaryIO, WritebackFile(out)))
                out.flush()
                os.fsync(out.fileno())
            return name, result
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dfd)
            raise

    def _install(self, tfd: int, name: str, sha256: str) -> None:
        """Rename a staged file to its sha's name (unless an intact copy is already
        there) and fsync the directory; the temp file never outlives this call."""
        try:
            if self.intact_size(sha256) is None:
                dfd = self._dir(("sha256", sha256[:2]), create=True)
                assert dfd is not None
                try:
                    os.replace(name, f"{sha256}.tar.zst", src_dir_fd=tfd, dst_dir_fd=dfd)
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=tfd)

    def put(self, sha256: str, src: BinaryIO) -> Artifact:
        """Stream `src` in under `sha256`; bytes that hash otherwise never appear."""
        size = self.intact_size(sha256)
        if size is not None:
            return Artifact(sha256=sha256, size=size)  # content-addressed: already there

        def fill(out: BinaryIO) -> Artifact:
            digest, size = hashlib.sha256(), 0
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            return Artifact(sha256=digest.hexdigest(), size=size)

        dfd = self._dir(("sha256", sha256[:2]), create=True)
        assert dfd is not None
        try:
            name, got = self._stage(dfd, fill)
            if got.sha256 != sha256:
                os.unlink(name, dir_fd=dfd)
                raise StoreError(f"store {self.root}: the bytes hash to {got.sha256}, not "
                                 f"{sha256}: refused", sha256=sha256)
            self._install(dfd, name, sha256)
            return got
        except OSError as exc:
            raise os_error(self.root, f"writing {sha256[:12]}", exc) from None
        finally:
            os.close(dfd)

    def pack(self, src_dir: Path) -> Artifact:
        """Bundle straight into the store: one write, hashed as it streams, fsync,
        rename. Bundling to a temp file and put()ting a copy wrote, read and hashed
        every byte twice (bench P6: half the throughput). The sha is unknown until
        the end, so the temp file lives in `sha256/.tmp/` (same filesystem) and is
        renamed into `sha256/<aa>/`; the name is the hash of exactly those bytes."""
        from reconciler.store.bundle import pack  # zstd and tarfile: not for the forced command

        tfd = self._dir(("sha256", ".tmp"), create=True)
        assert tfd is not None
        try:
            name, artifact = self._stage(tfd, lambda out: pack(src_dir, out))
            self._install(tfd, name, artifact.sha256)
            return artifact
        except OSError as exc:
            raise os_error(self.root, f"bundling {src_dir}", exc) from None
        finally:
            os.close(tfd)
