"""Every commit's trailers against the state change it made, read from git alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.protocol import trailers
from reconciler.protocol.state import parse_state


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def _state(repo: Path, rev: str, path: str):
    out = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True)
    if out.returncode != 0:
        return None
    state = parse_state(out.stdout, Path(path).stem)
    assert not isinstance(state, str), state
    return state


def assert_trailers_match(repo: Path) -> int:
    """For each commit on main: the (job, attempt, from->to) groups of its
    trailers are exactly the state files it changed; returns the commits seen."""
    commits = _git(repo, "rev-list", "--reverse", "--first-parent", "main").split()
    for sha in commits:
        parents = _git(repo, "rev-list", "--parents", "-n", "1", sha).split()[1:]
        message = _git(repo, "log", "-1", "--format=%B", sha)
        said = sorted(trailers.changes_of(message))
        if not parents:
            continue  # the init commit: every job new->pending, checked by the hook tests
        paths = [p for p in _git(repo, "diff-tree", "-r", "--name-only", "--no-commit-id",
                                 parents[0], sha).split() if p.startswith("state/")]
        made = []
        for path in paths:
            old, new = _state(repo, parents[0], path), _state(repo, sha, path)
            assert new is not None, f"{sha[:12]}: {path} deleted"
            label = f"{old.status.value if old else 'new'}->{new.status.value}"
            made.append((new.job_id, new.attempt, label))
        assert said == sorted(made), f"commit {sha[:12]}:\n{message}\nchanged {made}"
    return len(commits)
