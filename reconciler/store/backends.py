"""The sha256 content-addressed store: `<root>/sha256/<aa>/<sha256>.tar.zst`.

What every kind of store shares: the `Store` protocol the worker, fetch-artifact
and fsck use, sha256 names checked before they reach a path or an argv, reads
that re-hash and refuse a mismatch at EOF, files never opened through a link;
and the two ways in, `open_store` (a URL to a LocalStore, reconciler/store/local.py,
or an SshStore, reconciler/store/ssh.py) and `pack_into`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from reconciler.git.sshconn import is_ssh
from reconciler.protocol.errors import StoreError
from reconciler.protocol.state import Artifact  # not schema: no pydantic in the forced command

CHUNK = 1 << 20
GET_MISMATCH = 3  # serve_get's exit code for a bundle that does not re-hash
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# O_NONBLOCK: a FIFO planted under a bundle's name must not hang the reader.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def check_sha(sha256: object) -> str:
    """64 lowercase hex or StoreError: a name like `-o...` or `../x` never reaches
    a path or an argv."""
    if not isinstance(sha256, str) or not SHA_RE.match(sha256):
        raise StoreError(f"not a sha256: {sha256!r}", sha256=sha256)
    return sha256


class Store(Protocol):
    """What the worker, fetch-artifact and fsck need, whether local or over ssh."""

    def put(self, sha256: str, src: BinaryIO) -> Artifact: ...
    def put_file(self, path: Path) -> Artifact: ...
    def has(self, sha256: str) -> bool: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def verify(self, sha256: str) -> bool: ...
    def iter_shas(self) -> Iterator[str]: ...
    def location(self, sha256: str) -> str: ...


class VerifyingReader(io.RawIOBase):
    """A bundle's bytes, hashed as they are read: EOF raises StoreError when they
    do not hash to the name, so no reader can take corrupt bytes for good ones."""

    def __init__(self, raw: BinaryIO, sha256: str, label: str,
                 on_eof: Callable[[], None] | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self.raw, self.sha256, self.label = raw, sha256, label
        self.on_eof, self.on_close = on_eof, on_close
        self.digest, self.size, self.done = hashlib.sha256(), 0, False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self.digest.update(memoryview(buffer)[:n])
            self.size += n
            return n
        if not self.done:
            if self.on_eof:
                self.on_eof()
            if self.digest.hexdigest() != self.sha256:
                raise StoreError(f"{self.label}: bundle {self.sha256[:12]} does not re-hash to "
                                 f"its name (got {self.digest.hexdigest()[:12]}, {self.size} "
                                 "bytes)", sha256=self.sha256, mismatch=True)
            self.done = True
        return 0

    def close(self) -> None:
        if not self.closed:
            try:
                if self.on_close:
                    self.on_close()
            finally:
                self.raw.close()
        super().close()


class StoreBase:
    """verify and put_file in terms of has, open and put, for both kinds of store."""

    def has(self, sha256: str) -> bool: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def put(self, sha256: str, src: BinaryIO) -> Artifact: ...

    def intact_size(self, sha256: str) -> int | None:
        """Size of the bundle if present and it re-hashes to its name, else None."""
        if not self.has(sha256):
            return None
        try:
            with self.open(sha256) as f:
                while f.read(CHUNK):
                    pass
                return f.size  # type: ignore[attr-defined]
        except StoreError as exc:
            if getattr(exc, "mismatch", False):
                return None
            raise

    def verify(self, sha256: str) -> bool:
        return self.intact_size(sha256) is not None

    def put_file(self, path: Path) -> Artifact:
        sha, _ = sha256_file(path)
        with open_nofollow(path) as f:
            return self.put(sha, f)


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, streamed, never through a link."""
    digest, size = hashlib.sha256(), 0
    with open_nofollow(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def open_nofollow(path: Path, dir_fd: int | None = None) -> BinaryIO:
    """Open a regular file, never through a link; with `dir_fd`, `path` is only
    the name inside that directory (an absolute path would ignore the fd)."""
    name = path.name if dir_fd is not None else path
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}", path=str(path)) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreError(f"{path}: not a regular file; refused", path=str(path))
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb", buffering=0)


def os_error(root: Path, what: str, exc: OSError) -> StoreError:
    """A failed OS call on the store as a StoreError, with its errno's name."""
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = " (disk full or file size limit)" if exc.errno in (errno.ENOSPC, errno.EFBIG,
                                                             errno.EDQUOT) else ""
    return StoreError(f"store {root}: {what} failed: {exc.strerror or exc}"
                      f"{f' [{name}]' if name else ''}{hint}", errno=exc.errno)


def pack_into(store: Store, src_dir: Path, tmp_dir: Path) -> Artifact:
    """Bundle `src_dir` and put it: straight into a LocalStore, else through a temp
    file in `tmp_dir` (constant memory). A store failure is a StoreError (worth a
    retry); outputs that cannot be bundled (a symlink) are a BundleError (not)."""
    from reconciler.store.bundle import pack
    from reconciler.store.local import LocalStore

    if isinstance(store, LocalStore):
        return store.pack(src_dir)
    try:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=".bundle-", dir=tmp_dir) as out:
            artifact = pack(src_dir, out)
            out.flush()
            out.seek(0)
            stored = store.put(artifact.sha256, out)
    except OSError as exc:
        raise os_error(tmp_dir, f"bundling {src_dir}", exc) from None
    if stored != artifact:
        raise StoreError(f"store reported {stored}, expected {artifact}")
    return artifact


def open_store(url: str, state_dir: Path) -> Store:
    """A path or file:// URL is a LocalStore; ssh://[user@]host[:port]/path or
    scp-style [user@]host:/path an SshStore (never a local dir named `host:`)."""
    from reconciler.protocol.storeurl import normalize
    from reconciler.store.local import LocalStore
    from reconciler.store.ssh import SshStore

    url = normalize(url)
    if url.startswith("ssh://"):
        return SshStore(url, state_dir)
    if url.startswith("file://"):
        rest = url.removeprefix("file://")
        path = rest.removeprefix("localhost") if rest.startswith("localhost/") else rest
        if not path.startswith("/"):
            raise StoreError(f"store URL {url!r}: file:// needs an absolute local path")
        return LocalStore(Path(path))
    if not url or "://" in url or is_ssh(url):
        raise StoreError(f"store URL {url!r}: use a path, file:///path or "
                         "ssh://[user@]host[:port]/path")
    return LocalStore(Path(url))
