"""Find and kill every process a worker's trainers started, wherever it went.

Each trainer (and so everything it forks) carries `TRAINLEDGER_FENCE=<token>`
in its environment, where the token is `<worker state dir hash>:<job>-<attempt>`.
A process group is not enough: a child may call `setsid()` and leave it, and
its parent may exit so it is re-parented to init. The environment survives
both, so a scan of `/proc/*/environ` finds them all (a trainer that clears its
own environment *and* leaves the session escapes this; the shepherd's
subreaper still catches it while the shepherd lives: docs/failure-model.md).

Used by the shepherd when its worker dies, by the worker after it stops a
trainer, and by a restarted worker before its first claim (what a SIGKILLed
predecessor left behind).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from pathlib import Path

FENCE_ENV = "TRAINLEDGER_FENCE"


def state_token(state_dir: Path) -> str:
    """One worker's prefix: its state dir, which two workers never share."""
    return hashlib.sha256(str(Path(state_dir).absolute()).encode()).hexdigest()[:16]


def run_token(state_dir: Path, job_id: str, attempt: int) -> str:
    return f"{state_token(state_dir)}:{job_id}-{attempt}"


def fenced_pids(prefix: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids (not ours) whose environment has TRAINLEDGER_FENCE starting with
    `prefix`. Processes we may not read (another user's) are not ours to kill."""
    needle = f"{FENCE_ENV}={prefix}".encode()
    me = os.getpid()
    out = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in env.split(b"\0")):
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def kill_fenced(prefix: str, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every fenced process until none is left (a dying fork bomb may
    start new ones); returns the pids killed. Bounded by `timeout_s`."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout_s
    while True:
        pids = [p for p in fenced_pids(prefix) if _alive(p)]
        if not pids or time.monotonic() > deadline:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        _reap_children()
        time.sleep(0.02)


def _reap_children() -> None:
    """Collect zombies that are our children (the shepherd is a subreaper)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
