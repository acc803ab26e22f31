"""The sha256 content-addressed store: `<root>/sha256/<aa>/<sha256>.tar.zst`.

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
import io
import os
import re
import secrets
import shlex
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, cast

from reconciler.git.sshconn import is_ssh, ssh_command
from reconciler.protocol.errors import StoreError
from reconciler.protocol.state import Artifact  # not schema: no pydantic in the forced command
from reconciler.store.writeback import WritebackFile

CHUNK = 1 << 20
GET_MISMATCH = 3  # serve_get's exit code for a bundle that does not re-hash
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a bundle's name must not hang the reader.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
SSH_URL_RE = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                        r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
                        r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/.*)?$")


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


class _Common:
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
        with _open_nofollow(path) as f:
            return self.put(sha, f)


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256, size) of a file, streamed, never through a link."""
    digest, size = hashlib.sha256(), 0
    with _open_nofollow(path) as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _open_nofollow(path: Path, dir_fd: int | None = None) -> BinaryIO:
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


def _os_error(root: Path, what: str, exc: OSError) -> StoreError:
    name = errno.errorcode.get(exc.errno or 0, "")
    hint = " (disk full or file size limit)" if exc.errno in (errno.ENOSPC, errno.EFBIG,
                                                             errno.EDQUOT) else ""
    return StoreError(f"store {root}: {what} failed: {exc.strerror or exc}"
                      f"{f' [{name}]' if name else ''}{hint}", errno=exc.errno)


class LocalStore(_Common):
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
            raise _os_error(self.root, "opening the store", exc) from None
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
                    raise _os_error(self.root, f"opening {walked}", exc) from None
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
            raw = _open_nofollow(self.path(sha256), dir_fd=found[0])
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
            raise _os_error(self.root, f"writing {sha256[:12]}", exc) from None
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
            raise _os_error(self.root, f"bundling {src_dir}", exc) from None
        finally:
            os.close(tfd)


def pack_into(store: Store, src_dir: Path, tmp_dir: Path) -> Artifact:
    """Bundle `src_dir` and put it: straight into a LocalStore, else through a temp
    file in `tmp_dir` (constant memory). A store failure is a StoreError (worth a
    retry); outputs that cannot be bundled (a symlink) are a BundleError (not)."""
    from reconciler.store.bundle import pack

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
        raise _os_error(tmp_dir, f"bundling {src_dir}", exc) from None
    if stored != artifact:
        raise StoreError(f"store reported {stored}, expected {artifact}")
    return artifact


# ------------------------------------------------------------------ over ssh


class SshStore(_Common):
    """The Pi's store through its forced command (`trainledger-shell NAME`), which
    knows the store root: the URL's path is informational. One reused ssh
    connection (reconciler/git/sshconn.py) serves git and the store alike;
    `ssh_argv` replaces the ssh program (tests run a local script instead)."""

    def __init__(self, url: str, state_dir: Path, ssh_argv: list[str] | None = None) -> None:
        m = SSH_URL_RE.match(url)
        if not m or (m["port"] and not 0 < int(m["port"]) < 65536):
            raise StoreError(f"not an ssh store URL: {url!r} (ssh://[user@]host[:port]/path)")
        host = m["host"].strip("[]")
        self.url, self.path = url, m["path"] or "/"
        self._ssh = (Path(state_dir), shlex.join(ssh_argv) if ssh_argv else None)
        self._target = [*(["-p", m["port"]] if m["port"] else []),
                        f"{m['user']}@{host}" if m["user"] else host]

    @property
    def argv(self) -> list[str]:
        """Built per connection: the master is renewed each period (sshconn.py)."""
        return [*ssh_command(*self._ssh), *self._target]

    def location(self, sha256: str) -> str:
        sha = check_sha(sha256)
        return f"{self.url.rstrip('/')}/sha256/{sha[:2]}/{sha}.tar.zst"

    def _popen(self, command: str, sha256: str, stdin: int | BinaryIO | None,
               stdout: int | BinaryIO | None, stderr: BinaryIO) -> subprocess.Popen:
        check_sha(sha256)
        try:
            return subprocess.Popen([*self.argv, command, sha256], bufsize=0, stdin=stdin,
                                    stdout=stdout, stderr=stderr)
        except OSError as exc:
            raise StoreError(f"{self.url}: {command} {sha256[:12]}: cannot run ssh: "
                             f"{exc.strerror or exc}") from None

    def _error(self, what: str, code: int, err: BinaryIO) -> StoreError:
        err.seek(0)
        lines = err.read(1 << 16).decode(errors="replace").strip().splitlines()
        return StoreError(f"{self.url}: {what}: {lines[-1] if lines else f'exit {code}'}",
                          exit_code=code, mismatch=code == GET_MISMATCH)

    def _wait(self, proc: subprocess.Popen, what: str, timeout: float) -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise StoreError(f"{self.url}: {what}: no answer in {timeout:.0f}s") from None

    def has(self, sha256: str) -> bool:
        with tempfile.TemporaryFile() as err:
            proc = self._popen("store-has", sha256, subprocess.DEVNULL, subprocess.DEVNULL, err)
            code = self._wait(proc, f"store-has {sha256[:12]}", 120)
            if code not in (0, 1):
                raise self._error(f"store-has {sha256[:12]}", code, err)
        return code == 0

    def put(self, sha256: str, src: BinaryIO) -> Artifact:
        """Stream `src` to store-put; the remote end hashes and refuses a mismatch.
        It may answer early (already stored): a broken pipe is not the error then."""
        what = f"store-put {sha256[:12]}"
        size = 0
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = self._popen("store-put", sha256, subprocess.PIPE, out, err)
            assert proc.stdin is not None
            try:
                with contextlib.suppress(BrokenPipeError):
                    while chunk := src.read(CHUNK):
                        proc.stdin.write(chunk)
                        size += len(chunk)
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            code = self._wait(proc, what, 600)
            if code != 0:
                raise self._error(what, code, err)
            out.seek(0)
            answer = out.read(64).decode(errors="replace").strip()
        return Artifact(sha256=sha256, size=int(answer) if answer.isdigit() else size)

    def open(self, sha256: str) -> BinaryIO:
        """Streams store-get; EOF checks the exit code and the hash (StoreError)."""
        what = f"store-get {sha256[:12]}"
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the reader
        try:
            proc = self._popen("store-get", sha256, subprocess.DEVNULL, subprocess.PIPE, err)
        except StoreError:
            err.close()
            raise

        def on_eof() -> None:
            code = self._wait(proc, what, 120)
            if code != 0:
                raise self._error(what, code, err)

        def on_close() -> None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            err.close()

        reader = VerifyingReader(proc.stdout, sha256, self.url, on_eof, on_close)  # type: ignore[arg-type]
        return reader  # type: ignore[return-value]

    def iter_shas(self) -> Iterator[str]:
        raise StoreError(f"{self.url}: listing a remote store is not supported; run "
                         "`reconciler fsck` on the Pi")


# ------------------------------------------------------- the forced command's side


def _fail(command: str, exc: Exception, code: int) -> int:
    text = str(exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
    print(f"{command}: {' '.join(text.split())}", file=sys.stderr)
    return code


def serve_put(root: Path, sha256: str, stdin: BinaryIO) -> int:
    """store-put: 0 and the size on stdout, or 1 and one line on stderr."""
    try:
        artifact = LocalStore(root).put(sha256, stdin)
    except (StoreError, OSError) as exc:
        return _fail("store-put", exc, 1)
    print(artifact.size, flush=True)
    return 0


def serve_get(root: Path, sha256: str, stdout: BinaryIO) -> int:
    """store-get: 0 and the bytes; 1 absent, 3 bytes that do not re-hash (after
    sending them), 2 any other error."""
    try:
        store = LocalStore(root)
        if not store.has(sha256):
            return _fail("store-get", StoreError(f"no bundle {sha256}"), 1)
        with store.open(sha256) as f:
            while chunk := f.read(CHUNK):
                stdout.write(chunk)
        stdout.flush()
    except (StoreError, OSError) as exc:
        return _fail("store-get", exc, GET_MISMATCH if getattr(exc, "mismatch", False) else 2)
    return 0


def serve_has(root: Path, sha256: str) -> int:
    """store-has: 0 present, 1 absent, 2 refused (bad sha, planted link...)."""
    try:
        return 0 if LocalStore(root).has(sha256) else 1
    except (StoreError, OSError) as exc:
        return _fail("store-has", exc, 2)


def open_store(url: str, state_dir: Path) -> Store:
    """A path or file:// URL is a LocalStore; ssh://[user@]host[:port]/path or
    scp-style [user@]host:/path an SshStore (never a local dir named `host:`)."""
    from reconciler.protocol.storeurl import normalize

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
