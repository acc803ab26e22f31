"""A throwaway sshd on a loopback port for P1 over ssh (as tests/ssh does it).

Each identity gets its own key, enrolled with `reconciler enroll`, so every
connection runs the forced command a real fleet runs; git then reuses one
ControlMaster connection per actor (reconciler/git/sshconn.py). Without
/usr/sbin/sshd the row says so instead of installing anything.
"""

from __future__ import annotations

import getpass
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


@dataclass
class Sshd:
    root: Path
    port: int
    user: str
    known_hosts: Path
    authorized_keys: Path

    def url(self, path: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1{Path(path).absolute()}"

    def enroll(self, name: str, ledger: Path, store: Path) -> str:
        """A key for `name`; returns the GIT_SSH_COMMAND that uses it."""
        key = self.root / f"key-{name}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f",
                        str(key)], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "reconciler.cli", "enroll", name, "--pubkey",
                        f"{key}.pub", "--role", "worker", "--authorized-keys",
                        str(self.authorized_keys), "--ledger", str(ledger), "--store",
                        str(store)], check=True, capture_output=True)
        return shlex.join([
            "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-p", str(self.port)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def sshd(root: Path) -> Iterator[Sshd | None]:
    """Yields None when there is no sshd on this machine."""
    if not SSHD.exists():
        yield None
        return
    root.mkdir(parents=True, exist_ok=True)
    host_key = root / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                   check=True, capture_output=True)
    authorized = root / "authorized_keys"
    authorized.touch(mode=0o600)
    port, user = _free_port(), getpass.getuser()
    config = root / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}", f"PidFile {root / 'sshd.pid'}",
        f"AllowUsers {user}", "StrictModes no", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no", "AcceptEnv GIT_PROTOCOL",
        "MaxStartups 100:30:200", "MaxSessions 100", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    public = (root / "host_key.pub").read_text().split()
    known = root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                            stdout=(root / "sshd.log").open("ab"), stderr=subprocess.STDOUT,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("sshd did not start: "
                                   + (root / "sshd.log").read_text(errors="replace")[-500:])
            time.sleep(0.05)
        yield Sshd(root, port, user, known, authorized)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
