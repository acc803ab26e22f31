"""plan() is pure: manifest specs, states, observations and `now` in; actions out."""

from __future__ import annotations

import pytest

from ledgerkit import manifest_text
from reconciler.manifest import load_manifest
from reconciler.plan import Observations, plan
from reconciler.state import JobState, Status
from reconciler.transitions import Actor, Role, check_transition

STALE, GRACE, MAX = 10.0, 5.0, 3
RECONCILER = Actor("reconciler", Role.RECONCILER)


def loaded(jobs=None, prune=False):
    jobs = jobs or [{"name": "a", "seed": 1}, {"name": "gpuish", "seed": 2, "prefer_cuda": True}]
    text = manifest_text(jobs, fleet={"heartbeat_s": 1, "stale_after_s": STALE,
                                      "max_attempts": MAX, "prefer_cuda_grace_s": GRACE,
                                      "prune": prune})
    return load_manifest(text.encode())


def state_of(lm, name, **kw) -> JobState:
    spec = lm.by_name()[name]
    return JobState(job_id=spec.job_id, name=name, **{"status": Status.PENDING, **kw})


def run(lm, states, obs, now, fill=True):
    """Jobs without a given state are pending (and not cpu_ok) unless fill=False."""
    given = {s.job_id: s for s in states}
    if fill:
        for spec in lm.specs.values():
            given.setdefault(spec.job_id, state_of(lm, spec.name))
    actions = plan(lm.specs, lm.fleet, given, obs, now)
    for a in actions:  # every planned change is legal for the reconciler
        check_transition(a.old, a.new, RECONCILER, max_attempts=MAX)
    return [(a.new.name, a.meaning, a.new.status.value) for a in actions]


def held(lm, name="a", attempt=1, lost=0, status=Status.RUNNING):
    return state_of(lm, name, status=status, attempt=attempt, holder="w1", lost=lost)


def test_new_manifest_jobs_get_pending_states() -> None:
    lm = loaded()
    assert run(lm, [], Observations(started_at=0), now=1, fill=False) == [
        ("a", "create", "pending"), ("gpuish", "create", "pending")]


def test_cancel_in_the_manifest_cancels_even_a_running_job() -> None:
    lm = loaded([{"name": "a", "seed": 1, "cancel": True}])
    assert run(lm, [held(lm)], Observations(started_at=0), 1) == [("a", "cancel", "cancelled")]
    done = state_of(lm, "a", status=Status.CANCELLED)
    assert run(lm, [done], Observations(started_at=0), 1) == []


def test_orphans_are_kept_unless_prune() -> None:
    full = loaded()
    orphan = state_of(full, "gpuish")
    lm = loaded([{"name": "a", "seed": 1}])
    a = state_of(lm, "a")
    assert run(lm, [a, orphan], Observations(started_at=0), 1, fill=False) == []
    pruned = loaded([{"name": "a", "seed": 1}], prune=True)
    assert run(pruned, [a, orphan], Observations(started_at=0), 1) == [
        ("gpuish", "cancel", "cancelled")]


@pytest.mark.parametrize(("waited", "opened"), [(GRACE - 0.1, False), (GRACE, True)])
def test_prefer_cuda_grace(waited: float, opened: bool) -> None:
    lm = loaded()
    s = state_of(lm, "gpuish")
    obs = Observations(started_at=0, pending_seen={s.job_id: 100.0})
    got = run(lm, [state_of(lm, "a"), s], obs, 100.0 + waited)
    assert got == ([("gpuish", "open", "pending")] if opened else [])


@pytest.mark.parametrize(("silent", "swept"), [(STALE - 0.1, False), (STALE, True)])
def test_sweep_after_stale_after_s_without_a_sign_of_life(silent: float, swept: bool) -> None:
    lm = loaded()
    s = held(lm)
    obs = Observations(started_at=0, held_seen={(s.job_id, 1, "running"): 50.0})
    assert run(lm, [s], obs, 50.0 + silent) == ([("a", "sweep", "pending")] if swept else [])


def test_budget_spent_sweeps_to_failed() -> None:
    lm = loaded()
    s = held(lm, attempt=3, lost=MAX - 1)
    obs = Observations(started_at=0, held_seen={(s.job_id, 3, "running"): 0.0})
    assert run(lm, [s], obs, 100) == [("a", "sweep", "failed")]


def test_a_fresh_reconciler_waits_a_full_stale_period() -> None:
    lm = loaded()
    s = held(lm)
    obs = Observations(started_at=100.0, held_seen={(s.job_id, 1, "running"): 0.0})
    assert run(lm, [s], obs, 100.0 + STALE - 1) == []
    assert run(lm, [s], obs, 100.0 + STALE) == [("a", "sweep", "pending")]


def test_a_heartbeat_listing_the_job_keeps_it_alive() -> None:
    lm = loaded()
    s = held(lm)
    obs = Observations(started_at=0, held_seen={(s.job_id, 1, "running"): 0.0},
                       beat_seen={"w1": ("sha", 95.0)},
                       beat_jobs={"w1": frozenset({(s.job_id, 1)})})
    assert run(lm, [s], obs, 100.0) == []


def test_a_heartbeat_without_the_job_or_for_an_old_attempt_does_not() -> None:
    lm = loaded()
    s = held(lm, attempt=2)
    for jobs in (frozenset(), frozenset({(s.job_id, 1)})):
        obs = Observations(started_at=0, held_seen={(s.job_id, 2, "running"): 0.0},
                           beat_seen={"w1": ("sha", 95.0)}, beat_jobs={"w1": jobs})
        assert run(lm, [s], obs, 100.0) == [("a", "sweep", "pending")]


def test_rename_keeps_the_job() -> None:
    lm = loaded([{"name": "renamed", "seed": 1}])
    spec = lm.by_name()["renamed"]
    old = JobState(job_id=spec.job_id, name="a", status=Status.COMPLETED, attempt=1,
                   artifact={"sha256": "0" * 64, "size": 1})
    assert run(lm, [old], Observations(started_at=0), 1) == [("renamed", "rename", "completed")]
