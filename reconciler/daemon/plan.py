"""The reconciler's decisions, pure: `plan(view, observations, now) -> actions`.

No git, no I/O, no clock: `now` and every time in `Observations` are seconds on
the reconciler's own monotonic clock, so tests pass them in (rq's
`cleanup(timestamp)`). `reconciler/daemon/apply.py` turns the actions into one commit;
`reconciler/daemon/observe.py` fills the observations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.protocol import trailers, transitions
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.lease import Lease
from reconciler.protocol.schema import Fleet
from reconciler.protocol.state import HELD, TERMINAL, JobState, Status


@dataclass(frozen=True)
class View:
    """What one pass acts on: the manifest in force (the tip's, or the last valid
    one) and the state files at the tip."""

    specs: Mapping[str, JobSpec]
    fleet: Fleet
    states: Mapping[str, JobState]


@dataclass
class Observations:
    """What the reconciler saw and when, on its own clock (reconciler/daemon/observe.py)."""

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
    """One move the reconciler makes (built by transitions.py) and why."""

    step: transitions.Step
    reason: str = ""

    @property
    def old(self) -> JobState | None:
        return self.step.old

    @property
    def new(self) -> JobState:
        return self.step.new

    @property
    def meaning(self) -> transitions.Move:
        return self.step.move

    @property
    def change(self) -> trailers.Change:
        return self.step.change


def plan(view: View, obs: Observations, now: float) -> list[Action]:
    """Every action the ledger needs now: manifest jobs in manifest order, then
    orphans (pruned, or swept when held by a silent worker). At most one action
    per job."""
    actions: list[Action] = []
    fleet = view.fleet
    for job_id, spec in view.specs.items():
        state = view.states.get(job_id)
        if state is None:
            actions.append(Action(transitions.create(job_id, spec.name)))
            continue
        action = (_cancel(state, spec.cancel, "cancel = true in the manifest")
                  or _sweep(state, fleet, obs, now)[0] or _grace(spec, state, fleet, obs, now)[0]
                  or _rename(state, spec))
        if action:
            actions.append(action)
    for state in orphans(view):
        # A held orphan whose holder went silent is swept like any other job (else it
        # stays claimed forever); with prune, a cancel comes first.
        action = (_cancel(state, fleet.prune, "removed from the manifest ([fleet] prune)")
                  or _sweep(state, fleet, obs, now)[0])
        if action:
            actions.append(action)
    return actions


def next_due(view: View, obs: Observations, now: float) -> float | None:
    """Seconds until a time rule could next fire if nothing else changes (the
    earliest sweep or grace deadline), None if none is pending. The daemon
    sleeps no longer than this, so a sweep is on time however long its tick.
    Each deadline is the one its rule returns: predicate and deadline are one
    code path."""
    fleet = view.fleet
    due: list[float] = []
    for state in view.states.values():
        spec = view.specs.get(state.job_id)
        for _action, at in (_sweep(state, fleet, obs, now),
                            _grace(spec, state, fleet, obs, now) if spec else (None, None)):
            if at is not None:
                due.append(at)
    return max(0.0, min(due) - now) if due else None


def orphans(view: View) -> list[JobState]:
    """Jobs with a state file but no longer in the manifest."""
    return [s for job_id, s in view.states.items() if job_id not in view.specs]


def _cancel(state: JobState, cancel: bool, reason: str) -> Action | None:
    if not cancel or state.status in TERMINAL:
        return None
    return Action(transitions.cancel(state, reason), reason)


def _sweep(state: JobState, fleet: Fleet, obs: Observations,
           now: float) -> tuple[Action | None, float | None]:
    """A held job silent for stale_after_s, judged only once the reconciler itself
    has been up for stale_after_s (a restart gives every claim a full period).
    Returns the sweep if due now, and when it falls due (None: not held, or no
    sign of it seen yet)."""
    if state.status not in HELD:
        return None, None
    last = obs.last_sign(state)
    if last is None:
        return None, None
    due = Lease.of(fleet).sweep_due(last, obs.started_at)
    if now < due:
        return None, due
    lost = state.lost + 1
    spent = transitions.budget_spent(lost, fleet.max_attempts)
    reason = (f"swept: no sign of life from {state.holder} for {now - last:.0f}s "
              f"(attempt {state.attempt}); {lost} of {fleet.max_attempts} claims lost"
              + (": failed" if spent else ""))
    return Action(transitions.sweep(state, fleet.max_attempts, reason), reason), due


def _grace(spec: JobSpec, state: JobState, fleet: Fleet, obs: Observations,
           now: float) -> tuple[Action | None, float | None]:
    """A prefer_cuda job pending for prefer_cuda_grace_s opens to CPU workers;
    returns the opening if due now, and when it falls due."""
    if (not spec.prefer_cuda or spec.require_cuda or state.status is not Status.PENDING
            or state.cpu_ok):
        return None, None
    since = obs.pending_seen.get(state.job_id)
    if since is None:
        return None, None
    due = Lease.of(fleet).grace_due(since)
    if now < due:
        return None, due
    reason = f"prefer_cuda grace of {fleet.prefer_cuda_grace_s:g}s is over: open to CPU workers"
    return Action(transitions.open_to_cpu(state), reason), due


def _rename(state: JobState, spec: JobSpec) -> Action | None:
    if state.name == spec.name:
        return None
    return Action(transitions.rename(state, spec.name),
                  f"renamed {state.name} -> {spec.name} in the manifest")
