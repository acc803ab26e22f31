"""Re-judge the commits the reconciler reads, with the hook's own rules.

A ledger hosted where hooks cannot run is still protected: every commit on main
since the last one checked is judged against its parent, taking the actor from
its author (the only identity history keeps). An illegal change of a state
file is reported, and the job's last legal state is offered for restoring.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.gitrepo import GitRepo
from reconciler.state import JobState, parse_state
from reconciler.transitions import Actor, Role
from reconciler.validate import (
    STATE_RE,
    ZERO,
    Context,
    Diff,
    Refused,
    author_of,
    check_commit,
    context_at,
    diff_tree,
)


@dataclass(frozen=True)
class Finding:
    commit: str
    author: str
    message: str
    # job id -> (the state the illegal commit wrote, the last legal state before it)
    restore: dict[str, tuple[JobState, JobState]] = field(default_factory=dict)


class Rechecker:
    def __init__(self, repo: GitRepo, window: int = 200) -> None:
        self.repo = repo
        self.window = window  # commits judged on the first pass after a start
        self.checked: str | None = None

    def check(self, tip: str) -> list[Finding]:
        span = [tip, f"^{self.checked}"] if self.checked else [f"-n{self.window}", tip]
        commits = self.repo.git("rev-list", "--reverse", *span).stdout.decode().split()
        findings = [f for c in commits if (f := self.judge(c)) is not None]
        self.checked = tip
        return findings

    def judge(self, commit: str, *, ctx: Context | None = None,
              diffs: list[Diff] | None = None) -> Finding | None:
        """A finding if `commit` breaks a rule on top of its first parent. `ctx`
        (the ledger as of the parent) and `diffs` may be passed by a caller that
        walks history and has them already (fsck --history)."""
        author, parents = author_of(self.repo, commit)
        if not parents:
            return None  # the first commit is `reconciler init`'s
        parent = parents[0]
        ctx = ctx or context_at(self.repo, parent)
        role = ctx.access.role_of(author)
        if role is Role.RECONCILER and \
                self.repo.commit_message(commit).startswith("restore "):
            return None  # a reconciler's undo of an illegal commit is not a transition
        try:
            if role is None:
                raise Refused(f"commit {commit[:12]}: author {author!r} has no role")
            if len(parents) > 1:
                raise Refused(f"commit {commit[:12]}: a merge commit on main")
            check_commit(self.repo, ctx, Actor(author, role), commit, parent, diffs)
        except Refused as exc:
            return Finding(commit, author, str(exc), self._restores(commit, parent))
        return None

    def _restores(self, commit: str, parent: str) -> dict[str, tuple[JobState, JobState]]:
        out = {}
        for d in diff_tree(self.repo, parent, commit):
            m = STATE_RE.match(d.path)
            if not m or d.old_sha == ZERO or d.new_sha == ZERO:
                continue
            blobs = self.repo.read_objects([d.old_sha, d.new_sha])
            old = parse_state((blobs.get(d.old_sha) or ("", b""))[1], m.group(2))
            new = parse_state((blobs.get(d.new_sha) or ("", b""))[1], m.group(2))
            if isinstance(old, JobState) and isinstance(new, JobState):
                out[m.group(2)] = (new, old)
        return out
