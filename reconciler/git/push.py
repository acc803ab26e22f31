"""What a write proposes, what its push returned, and how long to wait after a loss.

`Ledger.write` builds a `Proposal` on the tip it read, pushes it and reads git's
answer into a `PushResult` (won, lost the race, refused by the hook, or
ambiguous); a lost race is retried after `compute_backoff`. The values live
here, apart from the git Ledger, because the in-memory ledger and the loops use
them too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from reconciler.git.snapshot import Snapshot
from reconciler.protocol import trailers
from reconciler.protocol.schema import JobState
from reconciler.protocol.transitions import Step


def compute_backoff(
    attempt: int, *, base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None
) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (AWS's analysis)."""
    return (rng or random).uniform(0, min(cap, base * (2 ** min(attempt, 30))))


@dataclass(frozen=True)
class Proposal:
    """What a writer wants to commit on the tip it read."""

    files: dict[str, bytes]
    changes: list[trailers.Change]
    subject: str | None = None
    body: str = ""
    kind: str | None = None  # the Ledger-Kind trailer (trailers.RESTORE), if not a transition

    @classmethod
    def of_states(
        cls, states: list[JobState], changes: list[trailers.Change], subject: str | None = None,
        body: str = "", kind: str | None = None,
    ) -> Proposal:
        return cls({s.path: s.to_json().encode() for s in states}, changes, subject, body, kind)

    @classmethod
    def of_steps(cls, steps: list[Step], body: str = "", kind: str | None = None) -> Proposal:
        """The commit of these moves: each new state and its derived trailer group."""
        return cls.of_states([s.new for s in steps], [s.change for s in steps], body=body,
                             kind=kind)


class PushStatus(Enum):
    WON = "won"
    LOST = "lost"
    REJECTED = "rejected"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class PushResult:
    status: PushStatus
    message: str = ""


@dataclass(frozen=True)
class WriteOutcome:
    commit: str | None  # None: the builder had nothing to write
    snapshot: Snapshot  # the snapshot the (last) proposal was built on
    lost_races: int = 0


_LOST_MARKERS = (
    "non-fast-forward", "fetch first", "stale info", "cannot lock ref", "failed to update ref",
    "failed to lock", "but expected", "incorrect old value",
)
# Remote rejections that say no for good. Any other `[remote rejected]` (an
# unpacker error, a failed write, receive-pack dying beside its own `gc --auto`)
# is the server failing, not answering: the push may or may not have landed.
_FINAL_REJECTIONS = (
    "hook declined", "deletion prohibited", "shallow update not allowed", "hidden ref",
    "pack exceeds maximum allowed size", "currently checked out",
)


def read_push(returncode: int, out: str, err: str) -> PushResult:
    """The result of a `git push --porcelain` from its exit status and output.

    REJECTED is an answer (the hook's or git's policy) and is never retried;
    AMBIGUOUS is checked against the ledger and retried like a lost race."""
    status_lines = [ln for ln in out.splitlines() if ln[:1] in "!=*+- " and "\t" in ln]
    if returncode == 0 and status_lines and status_lines[0][0] != "!":
        return PushResult(PushStatus.WON)
    text = f"{out}\n{err}"
    remote = " ".join(
        ln.removeprefix("remote:").strip() for ln in err.splitlines()
        if ln.startswith("remote:") and ln.removeprefix("remote:").strip()
    )
    final = any(marker in text for marker in _FINAL_REJECTIONS)
    if any(marker in text for marker in _LOST_MARKERS) and not final:
        return PushResult(PushStatus.LOST, text.strip())
    if final or "[rejected]" in text:
        return PushResult(PushStatus.REJECTED, remote or text.strip())
    return PushResult(PushStatus.AMBIGUOUS, text.strip())
