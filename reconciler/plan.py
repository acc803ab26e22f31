"""The reconciler's decisions, pure: `plan(view, observations, now) -> actions`.

No git, no I/O, no clock: `now` and every time in `Observations` are seconds on
the reconciler's own monotonic clock, so tests pass them in (rq's
`cleanup(timestamp)`). `reconciler/apply.py` turns the actions into one commit;
`reconciler/observe.py` fills the observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler import trailers
from reconciler.identity import JobSpec
from reconciler.schema import Fleet
from reconciler.state import HELD, TERMINAL, JobState, Status


@dataclass(frozen=True)
class View:
    """What one pass acts on: the manifest in force (the tip's, or the last valid
    one) and the state files at the tip."""

    specs: Mapping[str, JobSpec]
    fleet: Fleet
    states: Mapping[str, JobState]


@dataclass
class Observations:
    """What the reconciler saw and when, on its own clock (reconciler/observe.py)."""

    started_at: float
    # (job_id, attempt, status) of a held job -> when that claim or start was first seen
    held_seen: dict[tuple[str, int, str], float] = field(default_factory=dict)
    beat_seen: dict[str, tuple[str, float]] = field(default_factory=dict)  # worker -> (sha, t)
    beat_jobs: dict[str, frozenset[tuple[str, int]]] = field(default_factory=dict)
    pending_seen: dict[str, float] = field(default_factory=dict)  # job_id -> pending since

    def last_sign(self, state: JobState) -> float | None:
        """Latest sign of life of a held job: its claim/start first seen, or a new
        value of the holder's heartbeat that lists this job and attempt."""
        seen = self.held_seen.get((state.job_id, state.attempt, state.status.value))
        holder = state.holder or ""
        if (state.job_id, state.attempt) in self.beat_jobs.get(holder, frozenset()):
            beat = self.beat_seen.get(holder)
            if beat is not None:
                seen = beat[1] if seen is None else max(seen, beat[1])
        return seen


@dataclass(frozen=True)
class Action:
    """One state change: the new state and the trailer that explains it."""

    old: JobState | None
    new: JobState
    meaning: str  # create, cancel, open, sweep, rename, restore
    reason: str = ""

    @property
    def change(self) -> trailers.Change:
        before = self.old.status.value if self.old else "new"
        return trailers.Change(self.new.job_id, self.new.name, self.new.attempt,
                               f"{before}->{self.new.status.value}", self.meaning)


def plan(view: View, obs: Observations, now: float) -> list[Action]:
    """Every action the ledger needs now: manifest jobs in manifest order, then
    orphans (pruned, or swept when held by a silent worker). At most one action
    per job."""
    actions: list[Action] = []
    fleet = view.fleet
    for job_id, spec in view.specs.items():
        state = view.states.get(job_id)
        if state is None:
            actions.append(Action(None, JobState(job_id=job_id, name=spec.name,
                                                 status=Status.PENDING), "create"))
            continue
        action = (_cancel(state, spec.cancel, "cancel = true in the manifest")
                  or _sweep(state, fleet, obs, now) or _grace(spec, state, fleet, obs, now)
                  or _rename(state, spec))
        if action:
            actions.append(action)
    for state in orphans(view):
        # A held orphan whose holder went silent is swept like any other job (else it
        # stays claimed forever); with prune, a cancel comes first.
        action = (_cancel(state, fleet.prune, "removed from the manifest ([fleet] prune)")
                  or _sweep(state, fleet, obs, now))
        if action:
            actions.append(action)
    return actions


def next_due(view: View, obs: Observations, now: float) -> float | None:
    """Seconds until a time rule could next fire if nothing else changes (the
    earliest sweep or grace deadline), None if none is pending. The daemon
    sleeps no longer than this, so a sweep is on time however long its tick."""
    fleet = view.fleet
    due: list[float] = []
    for state in view.states.values():
        if state.status in HELD:
            last = obs.last_sign(state)
            if last is not None:
                due.append(max(last, obs.started_at) + fleet.stale_after_s)
        elif state.status is Status.PENDING and not state.cpu_ok:
            spec = view.specs.get(state.job_id)
            since = obs.pending_seen.get(state.job_id)
            if spec and spec.prefer_cuda and not spec.require_cuda and since is not None:
                due.append(since + fleet.prefer_cuda_grace_s)
    return max(0.0, min(due) - now) if due else None


def orphans(view: View) -> list[JobState]:
    """Jobs with a state file but no longer in the manifest."""
    return [s for job_id, s in view.states.items() if job_id not in view.specs]


def _cancel(state: JobState, cancel: bool, reason: str) -> Action | None:
    if not cancel or state.status in TERMINAL:
        return None
    new = state.model_copy(update={"status": Status.CANCELLED, "holder": None,
                                   "last_error": reason})
    return Action(state, new, "cancel", reason)


def _sweep(state: JobState, fleet: Fleet, obs: Observations, now: float) -> Action | None:
    """A held job silent for stale_after_s, judged only once the reconciler itself
    has been up for stale_after_s (a restart gives every claim a full period)."""
    if state.status not in HELD or now - obs.started_at < fleet.stale_after_s:
        return None
    last = obs.last_sign(state)
    if last is None or now - last < fleet.stale_after_s:
        return None
    lost = state.lost + 1
    spent = lost >= fleet.max_attempts
    reason = (f"swept: no sign of life from {state.holder} for {now - last:.0f}s "
              f"(attempt {state.attempt}); {lost} of {fleet.max_attempts} claims lost"
              + (": failed" if spent else ""))
    new = state.model_copy(update={"status": Status.FAILED if spent else Status.PENDING,
                                   "holder": None, "lost": lost, "last_error": reason})
    return Action(state, new, "sweep", reason)


def _grace(spec: JobSpec, state: JobState, fleet: Fleet, obs: Observations,
           now: float) -> Action | None:
    if (not spec.prefer_cuda or spec.require_cuda or state.status is not Status.PENDING
            or state.cpu_ok):
        return None
    since = obs.pending_seen.get(state.job_id)
    if since is None or now - since < fleet.prefer_cuda_grace_s:
        return None
    reason = f"prefer_cuda grace of {fleet.prefer_cuda_grace_s:g}s is over: open to CPU workers"
    return Action(state, state.model_copy(update={"cpu_ok": True}), "open", reason)


def _rename(state: JobState, spec: JobSpec) -> Action | None:
    if state.name == spec.name:
        return None
    return Action(state, state.model_copy(update={"name": spec.name}), "rename",
                  f"renamed {state.name} -> {spec.name} in the manifest")
