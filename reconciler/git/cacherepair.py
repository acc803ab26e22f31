"""A broken local ledger cache is found and replaced, not mistaken for an outage.

The cache is only a copy: everything in it comes from the ledger. When its
objects are damaged (a disk error, junk written over loose objects), every
fetch fails with `inflate: data stream error` or `loose object ... is corrupt`
while the ledger itself is fine. Retrying cannot help; a fresh clone does.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from reconciler.git.repo import GitRepo

if TYPE_CHECKING:
    from reconciler.git.ledger import Ledger

FSCK_TIMEOUT_S = 120.0


def cache_damage(ledger: Ledger) -> str | None:
    """The first problem `git fsck` finds in the cache, or None when it is sound.
    Full fsck (objects are inflated and hashed), so it is run only after a
    failure the remote alone does not explain."""
    repo = ledger.repo
    if not (repo.path / "HEAD").is_file():
        return f"{repo.path}: not a git repository any more"
    proc = repo.git("fsck", "--no-progress", "--no-dangling", "--full", check=False,
                    timeout=FSCK_TIMEOUT_S)
    if proc.returncode == 0:
        return None
    lines = (proc.stderr + proc.stdout).decode(errors="replace").strip().splitlines()
    return lines[0][:300] if lines else f"git fsck exit {proc.returncode}"


def reclone(ledger: Ledger) -> None:
    """Throw the cache away and start an empty one; the next fetch fills it.
    Everything the Ledger derived from the old cache is forgotten with it."""
    path, env = ledger.repo.path, ledger.repo.env
    ledger.repo.close()
    shutil.rmtree(path, ignore_errors=True)
    ledger.repo = GitRepo.init_bare(path, env)
    ledger.repo.git("config", "gc.auto", "256")
    ledger.repo.git("config", "gc.pruneExpire", "1.hour.ago")
    ledger._states = {}
    ledger._index = None
    ledger._manifest = None
    ledger._access = None
    ledger._heartbeat_lease = None
