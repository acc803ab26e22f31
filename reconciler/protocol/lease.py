"""The lease and timing policy: every deadline, derived from `[fleet]` alone.

Pure arithmetic, no clock and no I/O: the worker, its heartbeat thread and the
reconciler ask this module, so a timing rule lives in one place and the
schema's defaults (`Fleet()`) are the only defaults. `Lease.of(None)` is the
policy before any manifest was read.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from reconciler.protocol.schema import Fleet

RENEW_FRACTION = 2 / 3  # a worker stops trusting its lease at 2/3 of stale_after_s
BEAT_PUSH_MIN_S, BEAT_PUSH_MAX_S = 2.0, 60.0
WRITE_PUSH_MIN_S, WRITE_PUSH_MAX_S = 5.0, 60.0
WRITE_DEADLINE_MIN_S = 30.0  # a fenced write keeps retrying at least this long


@dataclass(frozen=True)
class Lease:
    heartbeat_s: float
    stale_after_s: float
    max_attempts: int
    prefer_cuda_grace_s: float

    @classmethod
    def of(cls, fleet: Fleet | None) -> Lease:
        fleet = fleet if fleet is not None else _schema_defaults()
        return cls(fleet.heartbeat_s, fleet.stale_after_s, fleet.max_attempts,
                   fleet.prefer_cuda_grace_s)

    @property
    def renew_deadline_s(self) -> float:
        """Silence (no good heartbeat) after which a worker assumes the sweep took
        its jobs: it stops them and drops results, a third before the sweep."""
        return self.stale_after_s * RENEW_FRACTION

    @property
    def tick_s(self) -> float:
        """The reconciler's pass tick and a busy worker's poll: a new beat is seen
        within one beat, and a sweep is judged at least four times per period."""
        return min(self.heartbeat_s, self.stale_after_s / 4)

    def worker_tick_s(self, poll_s: float) -> float:
        """A worker with trainers running wakes at least every tick to reap them
        and check its lease; an idle one polls every `poll_s`."""
        return min(poll_s, self.tick_s)

    @property
    def beat_push_timeout_s(self) -> float:
        """A beat that hangs must fail well inside the renew deadline."""
        return min(BEAT_PUSH_MAX_S, max(BEAT_PUSH_MIN_S, self.stale_after_s / 3))

    @property
    def write_push_timeout_s(self) -> float:
        return min(WRITE_PUSH_MAX_S, max(WRITE_PUSH_MIN_S, self.stale_after_s))

    @property
    def write_deadline_s(self) -> float:
        """How long a claim or result keeps retrying lost races."""
        return max(WRITE_DEADLINE_MIN_S, self.renew_deadline_s)

    def lease_lost(self, silent_s: float) -> bool:
        """True once a worker has had no good heartbeat for longer than the renew deadline."""
        return silent_s > self.renew_deadline_s

    def sweep_due(self, last_sign: float, started_at: float) -> float:
        """When a held job silent since `last_sign` is swept, on the reconciler's
        clock: stale_after_s after its last sign of life, and never before the
        reconciler itself has been up that long (a restart gives a full period)."""
        return max(last_sign, started_at) + self.stale_after_s

    def grace_due(self, pending_since: float) -> float:
        """When a prefer_cuda job pending since then opens to CPU workers."""
        return pending_since + self.prefer_cuda_grace_s


@cache
def _schema_defaults() -> Fleet:
    return Fleet()
