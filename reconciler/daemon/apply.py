"""A pass's actions become one commit on main, through the compare-and-swap loop.

`decide(snapshot)` is called on the tip that was read and, after every lost
race, again on the new tip: the plan is always made from what the commit will
sit on, never patched (level-triggered, explicit results).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.daemon.plan import Action
from reconciler.git.ledger import Ledger
from reconciler.git.push import Proposal
from reconciler.git.snapshot import Snapshot
from reconciler.protocol import trailers
from reconciler.protocol.transitions import Move


@dataclass(frozen=True)
class Applied:
    """What a pass wrote: the commit (None when nothing was due), its actions,
    the snapshot they were planned on, and how many races were lost first."""

    commit: str | None
    actions: tuple[Action, ...]
    snapshot: Snapshot
    lost_races: int = 0


def proposal_of(actions: Sequence[Action]) -> Proposal | None:
    """One commit for all actions: the trailers repeat per job, and the body
    gives each reason (a sweep's says whose silence and for how long)."""
    if not actions:
        return None
    body = "\n".join(f"{a.new.name}: {a.reason}" for a in actions if a.reason)
    restore = all(a.meaning is Move.RESTORE for a in actions)
    if not restore and any(a.meaning is Move.RESTORE for a in actions):
        raise ValueError("a restore is committed alone: its Ledger-Kind covers the commit")
    return Proposal.of_steps([a.step for a in actions], body=body,
                             kind=trailers.RESTORE if restore else None)


def apply(ledger: Ledger, decide: Callable[[Snapshot], Sequence[Action]]) -> Applied:
    """Write what `decide` wants on the current tip; re-decide after a lost race.

    Raises `LostRace` when the loop gives up and `PushRejected` when the ledger
    refuses the commit (a hook said no): both leave main untouched."""
    decided: list[Action] = []

    def build(snap: Snapshot) -> Proposal | None:
        decided[:] = decide(snap)
        return proposal_of(decided)

    outcome = ledger.write(build)
    written = tuple(decided) if outcome.commit else ()
    return Applied(outcome.commit, written, outcome.snapshot, outcome.lost_races)
