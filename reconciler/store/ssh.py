"""The Pi's store over ssh: `SshStore`, a client of the forced command's
store-put, store-get and store-has (reconciler/store/serve.py on the far end).
"""

from __future__ import annotations

import contextlib
import re
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from reconciler.git.sshconn import ssh_command
from reconciler.protocol.errors import StoreError
from reconciler.protocol.state import Artifact  # not schema: no pydantic in the forced command
from reconciler.store.backends import CHUNK, GET_MISMATCH, StoreBase, VerifyingReader, check_sha

SSH_URL_RE = re.compile(r"^ssh://(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                        r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9._-]*)"
                        r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/.*)?$")


class SshStore(StoreBase):
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
