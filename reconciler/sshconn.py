"""One reused ssh connection per actor for git and the store.

Measured here: a fetch costs ~250 ms over a fresh ssh connection and ~30 ms
over a reused one, so every ssh:// ledger or store gets a ControlMaster socket
under the actor's state dir (or a short /tmp dir when that path is too long for
a unix socket).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from pathlib import Path

# sun_path is 108 bytes with its NUL. The socket is "<dir>/<8 hex>-%C" (%C: 40
# hex), and ssh first binds it under a temporary name 17 characters longer
# ("<path>.<16 random>") before renaming it into place.
MAX_SOCKET_PATH = 107
SOCKET_NAME_CHARS = 1 + 8 + 1 + 40 + 17


def is_ssh(url: str) -> bool:
    """ssh://... or git's scp-like `[user@]host:path` (a colon before any slash)."""
    from reconciler.storeurl import is_scp

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


def ssh_command(state_dir: Path, base: str | None = None) -> list[str]:
    """argv of ssh with connection reuse; `base` is e.g. $GIT_SSH_COMMAND.

    %C does not cover the key: two actors sharing a state dir with different
    `-i` keys would share one connection, hence one identity. The socket name
    carries a digest of the base command so each key gets its own master."""
    argv = shlex.split(base or os.environ.get("GIT_SSH_COMMAND") or "ssh")
    tag = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:8]
    return [
        *argv,
        "-o", "BatchMode=yes",
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={control_dir(state_dir)}/{tag}-%C",
        "-o", "ControlPersist=120",
    ]


def ssh_env(url: str, state_dir: Path) -> dict[str, str]:
    """Environment for git talking to `url`: reuse one connection when it is ssh."""
    if not is_ssh(url):
        return {}
    return {"GIT_SSH_COMMAND": shlex.join(ssh_command(state_dir))}
