"""Which store bundles were ever recorded as a job's checkpoint, read from the
ledger's history: `reconciler fsck --fix` removes those no state references
any more (the job completed, or a newer checkpoint replaced it), so the store
keeps only the checkpoints a next attempt could start from. Artifacts are
never removed this way, even unreferenced ones: they are results."""

from __future__ import annotations

import json

from reconciler.git.repo import GitRepo
from reconciler.protocol.layout import ZERO


def recorded_checkpoints(repo: GitRepo, rev: str) -> set[str]:
    """sha256 of every checkpoint any commit of `rev` wrote into a state file.
    Only commits whose state diffs mention a checkpoint object are read (`-G`)."""
    commits = repo.git("log", "--format=%H", "-G", '"checkpoint": [{]', rev, "--",
                       "state/").stdout.decode().split()
    blobs: set[str] = set()
    for commit in commits:
        raw = repo.git("diff-tree", "-r", "--root", "--no-commit-id", commit, "--",
                       "state/").stdout.decode()
        for line in raw.splitlines():
            fields = line.split("\t", 1)[0].split()
            if len(fields) >= 4 and fields[3] != ZERO:
                blobs.add(fields[3])
    out = set()
    for found in repo.read_objects(sorted(blobs)).values():
        if found is None or found[0] != "blob":
            continue
        try:
            checkpoint = json.loads(found[1]).get("checkpoint")
        except (ValueError, AttributeError):
            continue
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("sha256"), str):
            out.add(checkpoint["sha256"])
    return out
