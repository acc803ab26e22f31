"""The sha256 content-addressed store: `<root>/sha256/<aa>/<sha256>.tar.zst`.

A put streams into a temp file in the final directory, hashes, fsyncs, compares
with the claimed sha and only then renames into place (and fsyncs the
directory), so bytes that do not match their name never appear, and a
duplicate put adds nothing. Nothing here follows a symlink.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from reconciler.bundle import CHUNK, pack
from reconciler.errors import StoreError
from reconciler.schema import Artifact
from reconciler.sshconn import ssh_command

SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha(sha256: str) -> str:
    if not isinstance(sha256, str) or not SHA_RE.match(sha256):
        raise StoreError(f"not a sha256: {sha256!r}", sha256=sha256)
    return sha256


class Store(Protocol):
    def put(self, sha256: str, src: BinaryIO) -> Artifact: ...
    def put_file(self, path: Path) -> Artifact: ...
    def has(self, sha256: str) -> bool: ...
    def open(self, sha256: str) -> BinaryIO: ...
    def verify(self, sha256: str) -> bool: ...
    def iter_shas(self) -> Iterator[str]: ...
    def location(self, sha256: str) -> str: ...


def sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with _open_nofollow(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _open_nofollow(path: Path) -> BinaryIO:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise StoreError(f"{path}: {exc.strerror}", path=str(path)) from None
    return os.fdopen(fd, "rb")


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()

    def path(self, sha256: str) -> Path:
        sha = check_sha(sha256)
        return self.root / "sha256" / sha[:2] / f"{sha}.tar.zst"

    def location(self, sha256: str) -> str:
        return str(self.path(sha256))

    def _directory(self, sha256: str) -> Path:
        """The bundle's directory, created, refusing any symlink on the way."""
        directory = self.path(sha256).parent
        for part in (self.root / "sha256", directory):
            if part.is_symlink():
                raise StoreError(f"{part}: is a symlink; the store refuses to follow it",
                                 path=str(part))
            try:
                part.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"store {self.root}: cannot create {part}: "
                                 f"{exc.strerror or exc}", path=str(part)) from None
        real_root = os.path.realpath(self.root)
        if os.path.commonpath([real_root, os.path.realpath(directory)]) != real_root:
            raise StoreError(f"{directory}: resolves outside the store root {self.root}")
        return directory

    def has(self, sha256: str) -> bool:
        path = self.path(sha256)
        return path.is_file() and not path.is_symlink()

    def verify(self, sha256: str) -> bool:
        if not self.has(sha256):
            return False
        return sha256_file(self.path(sha256))[0] == sha256

    def open(self, sha256: str) -> BinaryIO:
        return _open_nofollow(self.path(sha256))

    def iter_shas(self) -> Iterator[str]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for path in sorted(base.glob("??/*.tar.zst")):
            sha = path.name.removesuffix(".tar.zst")
            if SHA_RE.match(sha) and path.parent.name == sha[:2]:
                yield sha

    def put(self, sha256: str, src: BinaryIO) -> Artifact:
        check_sha(sha256)
        if self.verify(sha256):
            return Artifact(sha256=sha256, size=self.path(sha256).stat().st_size)
        directory = self._directory(sha256)
        fd, tmp = _mkstemp(directory, ".put-", self.root)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise StoreError(f"bytes hash to {digest.hexdigest()}, not {sha256}: refused",
                                 sha256=sha256)
            os.replace(tmp, self.path(sha256))
            _fsync_dir(directory)
            return Artifact(sha256=sha256, size=size)
        except OSError as exc:
            raise StoreError(f"store {self.root}: writing {sha256[:12]} failed: "
                             f"{exc.strerror or exc}", sha256=sha256) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def pack(self, src_dir: Path) -> Artifact:
        """Bundle straight into the store: one write, hashed as it streams, fsync,
        rename. Bundling to a temp file and put()ting a copy wrote, read and
        hashed every byte twice (bench P6: half the throughput); the name is the
        sha256 of exactly the bytes written, so the rename is as safe as put's."""
        staging = self.root / "sha256"
        if staging.is_symlink():
            raise StoreError(f"{staging}: is a symlink; the store refuses to follow it",
                             path=str(staging))
        fd, tmp = _mkstemp(staging, ".pack-", self.root)
        try:
            with os.fdopen(fd, "wb") as out:
                artifact = pack(src_dir, out)
                out.flush()
                os.fsync(out.fileno())
            if self.verify(artifact.sha256):
                return artifact  # identical outputs: stored once
            directory = self._directory(artifact.sha256)
            os.replace(tmp, self.path(artifact.sha256))
            _fsync_dir(directory)
            return artifact
        except OSError as exc:
            raise StoreError(f"store {self.root}: bundling {src_dir} failed: "
                             f"{exc.strerror or exc}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def put_file(self, path: Path) -> Artifact:
        sha, _ = sha256_file(path)
        with _open_nofollow(path) as f:
            return self.put(sha, f)


def _mkstemp(directory: Path, prefix: str, root: Path) -> tuple[int, str]:
    """A temp file in `directory` (created): a full or broken store is one clear
    StoreError, never a traceback that kills the worker."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StoreError(f"store {root}: cannot write in {directory}: {exc.strerror or exc}",
                         path=str(directory)) from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pack_into(store: Store, src_dir: Path, tmp_dir: Path) -> Artifact:
    """Bundle `src_dir` into a temp file (constant memory), then put it."""
    if isinstance(store, LocalStore):
        return store.pack(src_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".bundle-", suffix=".tar.zst", dir=tmp_dir)
    try:
        with os.fdopen(fd, "w+b") as out:
            artifact = pack(src_dir, out)
            out.flush()
            out.seek(0)
            stored = store.put(artifact.sha256, out)
        if stored != artifact:
            raise StoreError(f"store reported {stored}, expected {artifact}")
        return artifact
    except OSError as exc:
        raise StoreError(f"bundling {src_dir} failed: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# ------------------------------------------------------------------ over ssh


class SshStore:
    """The Pi's store through its forced command (`trainledger-shell NAME`), which
    knows the store root: the URL's path is informational. One reused ssh
    connection (reconciler/sshconn.py) serves git and the store alike."""

    def __init__(self, url: str, state_dir: Path, ssh_argv: list[str] | None = None) -> None:
        m = re.match(r"^ssh://(?:([^@/]+)@)?([^:/]+)(?::(\d+))?(/.*)?$", url)
        if not m:
            raise StoreError(f"not an ssh store URL: {url!r} (ssh://[user@]host[:port]/path)")
        user, host, port, path = m.groups()
        self.url = url
        self.path = path or "/"
        base = list(ssh_argv) if ssh_argv is not None else ssh_command(Path(state_dir))
        self.argv = [*base, *(["-p", port] if port else []),
                     f"{user}@{host}" if user else host]

    def location(self, sha256: str) -> str:
        sha = check_sha(sha256)
        return f"{self.url.rstrip('/')}/sha256/{sha[:2]}/{sha}.tar.zst"

    def _run(self, command: str, sha256: str, stdin: BinaryIO | None = None,
             stdout: BinaryIO | int | None = subprocess.PIPE) -> subprocess.CompletedProcess:
        check_sha(sha256)
        try:
            return subprocess.run([*self.argv, command, sha256], stdin=stdin or subprocess.DEVNULL,
                                  stdout=stdout, stderr=subprocess.PIPE, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StoreError(f"{self.url}: {command} {sha256[:12]} failed: {exc}") from None

    def _error(self, proc: subprocess.CompletedProcess, what: str) -> StoreError:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        return StoreError(f"{self.url}: {what}: {err[-1] if err else f'exit {proc.returncode}'}")

    def has(self, sha256: str) -> bool:
        proc = self._run("store-has", sha256)
        if proc.returncode not in (0, 1):
            raise self._error(proc, f"store-has {sha256[:12]}")
        return proc.returncode == 0

    def put(self, sha256: str, src: BinaryIO) -> Artifact:
        proc = self._run("store-put", sha256, stdin=src)
        if proc.returncode != 0:
            raise self._error(proc, f"store-put {sha256[:12]}")
        size = int((proc.stdout or b"0").split()[0]) if proc.stdout.strip() else 0
        return Artifact(sha256=sha256, size=size)

    def put_file(self, path: Path) -> Artifact:
        sha, size = sha256_file(path)
        with _open_nofollow(path) as f:
            stored = self.put(sha, f)
        return Artifact(sha256=sha, size=stored.size or size)

    def open(self, sha256: str) -> BinaryIO:
        """Downloaded into a temp file and re-hashed before it is handed out."""
        tmp = tempfile.TemporaryFile()  # noqa: SIM115 - handed to the caller, who closes it
        proc = self._run("store-get", sha256, stdout=tmp)
        if proc.returncode != 0:
            tmp.close()
            raise self._error(proc, f"store-get {sha256[:12]}")
        tmp.seek(0)
        digest = hashlib.sha256()
        while chunk := tmp.read(CHUNK):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            tmp.close()
            raise StoreError(f"{self.url}: bundle {sha256[:12]} does not re-hash to its name")
        tmp.seek(0)
        return tmp  # type: ignore[return-value]

    def verify(self, sha256: str) -> bool:
        try:
            self.open(sha256).close()
        except StoreError:
            return False
        return True

    def iter_shas(self) -> Iterator[str]:
        raise StoreError(f"{self.url}: listing a remote store is not supported; run "
                         "`reconciler fsck` on the Pi")


# ------------------------------------------------------- the forced command's side


def serve_put(root: Path, sha256: str, stdin: BinaryIO) -> int:
    try:
        artifact = LocalStore(root).put(sha256, stdin)
    except StoreError as exc:
        print(f"store-put: {exc}", file=sys.stderr)
        return 1
    print(artifact.size)
    return 0


def serve_get(root: Path, sha256: str, stdout: BinaryIO) -> int:
    store = LocalStore(root)
    try:
        if not store.has(sha256):
            print(f"store-get: no bundle {sha256}", file=sys.stderr)
            return 1
        with store.open(sha256) as f:
            shutil.copyfileobj(f, stdout, CHUNK)
        stdout.flush()
    except StoreError as exc:
        print(f"store-get: {exc}", file=sys.stderr)
        return 1
    return 0


def serve_has(root: Path, sha256: str) -> int:
    try:
        return 0 if LocalStore(root).has(sha256) else 1
    except StoreError as exc:
        print(f"store-has: {exc}", file=sys.stderr)
        return 2


def open_store(url: str, state_dir: Path) -> Store:
    if url.startswith("ssh://"):
        return SshStore(url, state_dir)
    return LocalStore(Path(url.removeprefix("file://")))
