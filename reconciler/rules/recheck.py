"""Re-judge the commits the reconciler reads, with the hook's own rules.

A ledger hosted where hooks cannot run is still protected: every commit on main
since the last one checked is judged against its parent, taking the actor from
its author (the only identity history keeps). An illegal change of a state
file is reported, and the job's last legal state is offered for restoring; so is
a commit whose trailers do not match the state changes it made (audit.py).
"""

from __future__ import annotations

from reconciler.git.repo import GitRepo
from reconciler.protocol.audit import Finding, is_restore, trail_mismatches
from reconciler.protocol.state import JobState, parse_state
from reconciler.protocol.transitions import Actor, Role
from reconciler.rules.validate import (
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
        """A finding if `commit` breaks a rule on top of its first parent, or if
        its trailers do not match the state changes it made (audit.py). `ctx`
        (the ledger as of the parent) and `diffs` may be passed by a caller that
        walks history and has them already (fsck --history)."""
        author, parents = author_of(self.repo, commit)
        parent = parents[0] if parents else None
        message = self.repo.commit_message(commit)
        diffs = diff_tree(self.repo, parent, commit) if diffs is None else diffs
        if parent is not None:  # the first commit is `reconciler init`'s
            ctx = ctx or context_at(self.repo, parent)
            role = ctx.access.role_of(author)
            # a reconciler's undo of an illegal commit is not a transition of the table
            if not (role is Role.RECONCILER and is_restore(message)):
                try:
                    if role is None:
                        raise Refused(f"commit {commit[:12]}: author {author!r} has no role")
                    if len(parents) > 1:
                        raise Refused(f"commit {commit[:12]}: a merge commit on main")
                    check_commit(self.repo, ctx, Actor(author, role), commit, parent, diffs)
                except Refused as exc:
                    return Finding(commit, author, str(exc), self._restores(diffs))
        mismatches = trail_mismatches(commit, message, self._changes(diffs))
        if mismatches:
            return Finding(commit, author, "; ".join(mismatches))
        return None

    def _changes(self, diffs: list[Diff]) -> dict[str, tuple[JobState | None, JobState]]:
        """The readable state changes of a commit: job id -> (before, after)."""
        wanted = [(d, m.group(2)) for d in diffs if (m := STATE_RE.match(d.path))
                  and d.new_sha != ZERO]
        blobs = self.repo.read_objects([s for d, _ in wanted for s in (d.old_sha, d.new_sha)
                                        if s != ZERO])
        out: dict[str, tuple[JobState | None, JobState]] = {}
        for d, job_id in wanted:
            new = parse_state((blobs.get(d.new_sha) or ("", b""))[1], job_id)
            old = parse_state((blobs.get(d.old_sha) or ("", b""))[1], job_id) \
                if d.old_sha != ZERO else None
            if isinstance(new, JobState) and not isinstance(old, str):
                out[job_id] = (old, new)
        return out

    def _restores(self, diffs: list[Diff]) -> dict[str, tuple[JobState, JobState]]:
        return {job_id: (new, old) for job_id, (old, new) in self._changes(diffs).items()
                if old is not None}
