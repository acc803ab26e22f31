"""One reused ssh connection per actor for git and the store, renewed often.

Measured here: a fetch costs ~250 ms over a fresh ssh connection and ~30 ms
over a reused one, so every ssh:// ledger or store gets a ControlMaster socket
under the actor's state dir (or a short /tmp dir when that path is too long for
a unix socket).

sshd reads `authorized_keys` only when a connection authenticates, and a master
in use never closes: revoking a host by deleting its key line would never take
effect. So the socket's name carries the current `rotate_s` period (the shell
that git runs GIT_SSH_COMMAND through computes it at each use): every period a
new master authenticates afresh, and the old one, idle, exits after
ControlPersist. A revoked key's writes stop within one period plus a push.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
import time
from pathlib import Path

# sun_path is 108 bytes with its NUL. The socket is "<dir>/<8 hex>-%C" (%C: 40
# hex), and ssh first binds it under a temporary name 17 characters longer
# ("<path>.<16 random>") before renaming it into place.
MAX_SOCKET_PATH = 107
SOCKET_NAME_CHARS = 1 + 8 + 1 + 11 + 40 + 17  # 11: "<period number>-"
ROTATE_S = 10.0  # a fresh, re-authenticated master at least this often


def is_ssh(url: str) -> bool:
    """ssh://... or git's scp-like `[user@]host:path` (a colon before any slash)."""
    from reconciler.protocol.storeurl import is_scp

    return url.startswith("ssh://") or is_scp(url)


def control_dir(state_dir: Path) -> Path:
    wanted = Path(state_dir) / "ssh"
    if len(str(wanted)) + SOCKET_NAME_CHARS <= MAX_SOCKET_PATH:
        wanted.mkdir(parents=True, exist_ok=True, mode=0o700)
        return wanted
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:10]
    short = Path(tempfile.gettempdir()) / f"tl-{os.getuid()}-{digest}"
    short.mkdir(parents=True, exist_ok=True, mode=0o700)
    return short


def ssh_command(state_dir: Path, base: str | None = None,
                rotate_s: float = ROTATE_S) -> list[str]:
    """argv of ssh with connection reuse; `base` is e.g. $GIT_SSH_COMMAND. The
    master is the current period's (see the module's docstring): call it again
    for each connection.

    %C does not cover the key: two actors sharing a state dir with different
    `-i` keys would share one connection, hence one identity. The socket name
    carries a digest of the base command so each key gets its own master."""
    argv = _base(base)
    period = int(time.time() // _period(rotate_s))
    return [*argv, *_options(state_dir, argv, f"{period}", rotate_s)]


def ssh_env(url: str, state_dir: Path, rotate_s: float = ROTATE_S) -> dict[str, str]:
    """Environment for git talking to `url`: reuse one connection when it is ssh,
    a new one each `rotate_s` period (computed by the shell at every use)."""
    if not is_ssh(url):
        return {}
    argv = _base(None)
    period = f'"$(( $(date +%s) / {_period(rotate_s)} ))"'
    options = _options(state_dir, argv, "\0", rotate_s)
    text = shlex.join([*argv, *options])
    return {"GIT_SSH_COMMAND": text.replace("\0", "'" + period + "'")}


def _base(base: str | None) -> list[str]:
    return shlex.split(base or os.environ.get("GIT_SSH_COMMAND") or "ssh")


def _period(rotate_s: float) -> int:
    return max(1, int(rotate_s))


def _options(state_dir: Path, argv: list[str], period: str, rotate_s: float) -> list[str]:
    tag = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:8]
    return [
        "-o", "BatchMode=yes",
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={control_dir(state_dir)}/{tag}-{period}-%C",
        # an old period's master is idle once the next one exists: let it go soon
        "-o", f"ControlPersist={2 * _period(rotate_s)}",
    ]
