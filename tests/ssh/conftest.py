"""A real sshd (Debian's openssh-server) on a loopback port, as the current user.

The fixture installs openssh-server when /usr/sbin/sshd is missing (CI runs as
root on a fresh machine), writes its own host key, sshd_config and
authorized_keys under a temp dir, and stops sshd at the end of the session.
Every client gets its own key, enrolled with `reconciler enroll` exactly as an
operator would, so the identity of each connection comes from its key.
"""

from __future__ import annotations

import contextlib
import getpass
import itertools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
INSTALL_TIMEOUT_S = 600


def _install_sshd() -> str | None:
    """Install openssh-server; return why it is impossible, or None."""
    if shutil.which("apt-get") is None:
        return "/usr/sbin/sshd is missing and there is no apt-get to install openssh-server"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        return "/usr/sbin/sshd is missing; installing openssh-server needs root (or sudo)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "openssh-server"]):
        proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, env=env,
                              timeout=INSTALL_TIMEOUT_S)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            return f"`{' '.join(argv)}` failed: {' '.join(tail)}"
    return None if SSHD.exists() else "openssh-server installed but /usr/sbin/sshd is missing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path, comment: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True, capture_output=True)
    return path


@dataclass
class SshClient:
    """One enrolled host: its key and the environment that makes git and the store use it."""

    name: str
    key: Path
    server: SshServer

    @property
    def ssh_argv(self) -> list[str]:
        return self.server.ssh_argv(self.key)

    @property
    def env(self) -> dict[str, str]:
        return {"GIT_SSH_COMMAND": shlex.join(self.ssh_argv)}

    def run(self, command: str | None, *, input: bytes = b"", timeout: float = 20
            ) -> subprocess.CompletedProcess[bytes]:
        """`ssh host COMMAND` with this key (None: an interactive login attempt)."""
        argv = [*self.ssh_argv, self.server.host] + ([command] if command is not None else [])
        return subprocess.run(argv, input=input, capture_output=True, timeout=timeout)


@dataclass
class SshServer:
    port: int
    root: Path
    user: str
    authorized_keys: Path
    known_hosts: Path
    proc: subprocess.Popen[bytes]
    log: Path

    _counter = itertools.count()

    @property
    def host(self) -> str:
        return f"{self.user}@127.0.0.1"

    def url(self, path: Path | str) -> str:
        return f"ssh://{self.host}{Path(path).absolute()}"

    def ssh_argv(self, key: Path) -> list[str]:
        return ["ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
                "-o", "IdentityAgent=none", "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(self.port),
                # ssh keeps the first value of an option: this beats the 120 s that
                # sshconn asks for, so no master outlives the tests by more than 3 s
                "-o", "ControlPersist=3"]

    def unenrolled(self, name: str) -> SshClient:
        """A client whose key is in no authorized_keys line."""
        return SshClient(name, _keygen(self.root / "keys" / f"{name}-{next(self._counter)}",
                                       name), self)

    def enroll(self, name: str, ledger: Path | None, store: Path | None,
               role: str = "worker") -> SshClient:
        """A fresh key for `name`, enrolled with `reconciler enroll --authorized-keys`."""
        key = _keygen(self.root / "keys" / f"{name}-{next(self._counter)}", name)
        argv = [sys.executable, "-m", "reconciler.cli", "enroll", name, "--pubkey",
                f"{key}.pub", "--role", role, "--authorized-keys", str(self.authorized_keys)]
        argv += ["--ledger", str(ledger)] if ledger else []
        argv += ["--store", str(store)] if store else []
        subprocess.run(argv, check=True, capture_output=True)
        return SshClient(name, key, self)


def _wait_listening(server: SshServer, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({server.proc.returncode}): "
                               f"{server.log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{server.port} within {timeout}s")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    if not SSHD.exists():
        why = _install_sshd()
        if why:
            pytest.skip(f"needs Debian's openssh-server: {why}")
    root = tmp_path_factory.mktemp("sshd")
    (root / "keys").mkdir(mode=0o700)
    host_key = _keygen(root / "ssh_host_ed25519_key", "trainledger-test-host")
    authorized_keys = root / "authorized_keys"
    authorized_keys.touch(mode=0o600)
    port = _free_port()
    user = getpass.getuser()
    config = root / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized_keys}",
        f"PidFile {root / 'sshd.pid'}",
        f"AllowUsers {user}",
        "StrictModes no",
        "PermitUserEnvironment no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        # Deliberately lax: a client may send these, so the tests show that the
        # forced command, not sshd, keeps a key from choosing its identity.
        "AcceptEnv GIT_* TRAINLEDGER_*",
        "MaxStartups 100:30:200",
        "MaxSessions 100",
        "LogLevel VERBOSE",
        "",
    ]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
    known_hosts = root / "known_hosts"
    public = (root / "ssh_host_ed25519_key.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    log = root / "sshd.log"
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                            start_new_session=True)
    server = SshServer(port, root, user, authorized_keys, known_hosts, proc, log)
    try:
        _wait_listening(server)
        yield server
    finally:
        # the whole group: per-connection children (and with them the clients'
        # ControlPersist masters) go with the listener
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
