"""Turn-taking between workers that race for the same jobs.

Every claim is a compare-and-swap push on main, and the loser of a race backs
off, longer after every loss, while the winner of short jobs asks again at
once: so a worker on a slower or busier host can lose every race and never
claim (seen: one of two workers claimed all 20 jobs of a test). Backoff alone
cannot fix that, because the loser leaves no trace on main.

It does leave one elsewhere: its heartbeat says how many slots it has and its
capability, and main says how many jobs it holds. A worker that won two
claims in a row while such a rival sat with a free slot, and sees the rival still
waiting for a job the rival may take, lets the rival have the next turn: it
skips claiming until the rival holds a job, or for at most `defer_s`. It then
claims whatever happens, so a rival that waits but never claims (paused,
broken) costs it at most one short pause every third claim, and a single worker
never pauses at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from reconciler.git.snapshot import HeartbeatRecord
from reconciler.protocol.eligibility import reasons
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.manifest import LoadedManifest
from reconciler.protocol.schema import HELD, JobState

DEFER_MAX_S = 2.0  # a pause costs the fleet this much at most when the rival does not come
STREAK = 2  # claims won in a row while a rival waited before giving it a turn: two
# workers that each won once while the other waited (slots > 1, short jobs) must
# not both pause at once


def waiting_rivals(me: str, beats: Mapping[str, HeartbeatRecord], states: Mapping[str, JobState],
                   now: float, stale_after_s: float) -> dict[str, HeartbeatRecord]:
    """Live workers other than `me` whose slots are not all taken: their beat is
    fresh, and main (or their beat) shows fewer jobs held than slots."""
    held: dict[str, int] = {}
    for state in states.values():
        if state.holder and state.status in HELD:
            held[state.holder] = held.get(state.holder, 0) + 1
    out = {}
    for name, record in beats.items():
        beat = record.beat
        if name == me or beat is None or beat.capability is None:
            continue
        if now - record.commit_time > stale_after_s:
            continue  # gone, or about to be swept: not waiting for anything
        if max(held.get(name, 0), len(beat.jobs)) < beat.slots:
            out[name] = record
    return out


def rival_could_take(rivals: Mapping[str, HeartbeatRecord], specs: Iterable[JobSpec],
                     states: Mapping[str, JobState], loaded: LoadedManifest) -> bool:
    """Whether some waiting rival may claim one of these jobs (its own eligibility
    judged as it would judge it, from its beat's capability)."""
    for spec in specs:
        for name, record in rivals.items():
            cap = record.beat.capability if record.beat else None
            if cap is not None and not reasons(spec, states.get(spec.job_id), name,
                                               loaded.manifest.hosts.get(name), cap, states):
                return True
    return False


@dataclass
class TurnTaking:
    """This worker's side of the turn: how many claims in a row it won while a
    rival waited, and until when it is leaving the next one to the rival."""

    streak: int = 0
    defer_until: float | None = None
    deferrals: int = 0  # how many times it gave a rival its turn (for logs and tests)
    beats: dict[str, HeartbeatRecord] = field(default_factory=dict)
    beats_read_at: float | None = None

    def should_yield(self, rival_waiting: bool, now: float, defer_s: float) -> bool:
        """Called before a claim: True means skip this claim and let the rival in."""
        if not rival_waiting:
            self.streak, self.defer_until = 0, None
            return False
        if self.defer_until is not None:
            if now < self.defer_until:
                return True
            self.streak, self.defer_until = 0, None  # the rival had its chance: claim
            return False
        if self.streak >= STREAK:
            self.defer_until = now + min(defer_s, DEFER_MAX_S)
            self.deferrals += 1
            return True
        return False

    def claimed(self, rival_waiting: bool) -> None:
        """After a claim landed: a win while a rival waited extends the streak."""
        self.streak = self.streak + 1 if rival_waiting else 0
        self.defer_until = None
