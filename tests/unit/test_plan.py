"""plan() is pure: the view, observations and `now` in; actions out.

Every case is one row: a manifest, the state files, what the reconciler saw on
its own clock, `now`, and the actions expected. Every planned change is also
checked against the hook's transition table, so the plan never proposes what
the ledger would refuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ledgerkit import manifest_text
from reconciler.daemon.observe import live_workers, observe
from reconciler.daemon.plan import Observations, View, next_due, orphans, plan
from reconciler.git.snapshot import HeartbeatRecord
from reconciler.protocol.manifest import LoadedManifest, load_manifest
from reconciler.protocol.schema import Heartbeat, HeldJob
from reconciler.protocol.state import JobState, Status
from reconciler.protocol.transitions import Actor, Role, check_transition

STALE, GRACE, MAX = 10.0, 5.0, 3
RECONCILER = Actor("reconciler", Role.RECONCILER)
JOBS = [{"name": "a", "seed": 1}, {"name": "gpuish", "seed": 2, "prefer_cuda": True}]
_CACHE: dict[str, LoadedManifest] = {}


def loaded(jobs: list[dict] | None = None, prune: bool = False) -> LoadedManifest:
    text = manifest_text(jobs or JOBS, fleet={
        "heartbeat_s": 1, "stale_after_s": STALE, "max_attempts": MAX,
        "prefer_cuda_grace_s": GRACE, "prune": prune})
    if text not in _CACHE:
        _CACHE[text] = load_manifest(text.encode())
    return _CACHE[text]


ID = {s.name: s.job_id for s in loaded().specs.values()}


ART = {"sha256": "0" * 64, "size": 1}


def st(name: str, status: Status = Status.PENDING, **kw: object) -> JobState:
    if status is Status.COMPLETED:
        kw.setdefault("artifact", ART)
    return JobState(job_id=ID[name], name=kw.pop("as_name", name), status=status, **kw)


def running(name: str = "a", attempt: int = 1, lost: int = 0) -> JobState:
    return st(name, Status.RUNNING, attempt=attempt, holder="w1", lost=lost)


def held_at(t: float, name: str = "a", attempt: int = 1) -> dict:
    return {(ID[name], attempt, "running"): t}


def beat(t: float, *jobs: tuple[str, int]) -> dict:
    return {"beat_seen": {"w1": ("sha", t)},
            "beat_jobs": {"w1": frozenset((ID[n], a) for n, a in jobs)}}


@dataclass
class Case:
    id: str
    states: list[JobState]
    now: float
    expected: list[tuple[str, str, str]]  # (name, meaning, new status)
    obs: dict = field(default_factory=dict)
    jobs: list[dict] | None = None
    prune: bool = False
    started_at: float = 0.0
    fill: bool = True  # manifest jobs not in `states` are pending (and open to CPUs)


CASES = [
    Case("new jobs get pending states", [], 1,
         [("a", "create", "pending"), ("gpuish", "create", "pending")], fill=False),
    Case("nothing to do", [st("a"), st("gpuish", cpu_ok=True)], 1, []),
    Case("cancel in the manifest stops even a running job", [running()], 1,
         [("a", "cancel", "cancelled")], jobs=[{"name": "a", "seed": 1, "cancel": True}]),
    Case("a cancelled job stays cancelled", [st("a", Status.CANCELLED)], 1, [],
         jobs=[{"name": "a", "seed": 1, "cancel": True}]),
    Case("an orphan is kept as it is", [st("a"), running("gpuish")], 1, [],
         jobs=[{"name": "a", "seed": 1}]),
    Case("prune cancels an orphan", [st("a"), running("gpuish")], 1,
         [("gpuish", "cancel", "cancelled")], jobs=[{"name": "a", "seed": 1}], prune=True),
    Case("a held orphan is not swept while its holder may live",
         [st("a"), running("gpuish")], 50 + STALE - 0.1, [], jobs=[{"name": "a", "seed": 1}],
         obs={"held_seen": held_at(50, "gpuish")}),
    Case("a held orphan whose holder went silent is swept like any job",
         [st("a"), running("gpuish")], 50 + STALE, [("gpuish", "sweep", "pending")],
         jobs=[{"name": "a", "seed": 1}], obs={"held_seen": held_at(50, "gpuish")}),
    Case("a held orphan whose budget is spent is swept to failed",
         [st("a"), running("gpuish", attempt=3, lost=MAX - 1)], 100,
         [("gpuish", "sweep", "failed")], jobs=[{"name": "a", "seed": 1}],
         obs={"held_seen": held_at(0, "gpuish", attempt=3)}),
    Case("prune leaves a finished orphan", [st("a"), st("gpuish", Status.COMPLETED)], 1, [],
         jobs=[{"name": "a", "seed": 1}], prune=True),
    Case("grace: not yet", [st("a"), st("gpuish")], 100 + GRACE - 0.1, [],
         obs={"pending_seen": {ID["gpuish"]: 100.0}}),
    Case("grace: over, opened to CPU workers", [st("a"), st("gpuish")], 100 + GRACE,
         [("gpuish", "open", "pending")], obs={"pending_seen": {ID["gpuish"]: 100.0}}),
    Case("grace: already open", [st("a"), st("gpuish", cpu_ok=True)], 1000, [],
         obs={"pending_seen": {ID["gpuish"]: 0.0}}),
    Case("sweep: not yet", [running(), st("gpuish", cpu_ok=True)], 50 + STALE - 0.1, [],
         obs={"held_seen": held_at(50)}),
    Case("sweep: silent for stale_after_s", [running(), st("gpuish", cpu_ok=True)],
         50 + STALE, [("a", "sweep", "pending")], obs={"held_seen": held_at(50)}),
    Case("sweep: budget spent, failed", [running(attempt=3, lost=MAX - 1)], 100,
         [("a", "sweep", "failed")], obs={"held_seen": held_at(0, attempt=3)}),
    Case("restart: a fresh reconciler waits a full period", [running()], 100 + STALE - 1, [],
         obs={"held_seen": held_at(0)}, started_at=100),
    Case("restart: then sweeps", [running()], 100 + STALE, [("a", "sweep", "pending")],
         obs={"held_seen": held_at(0)}, started_at=100),
    Case("a new beat listing the job keeps it alive", [running()], 100, [],
         obs={"held_seen": held_at(0), **beat(95, ("a", 1))}),
    Case("a beat that no longer lists the job does not", [running()], 100,
         [("a", "sweep", "pending")], obs={"held_seen": held_at(0), **beat(95)}),
    Case("a beat for an older attempt does not", [running(attempt=2)], 100,
         [("a", "sweep", "pending")],
         obs={"held_seen": held_at(0, attempt=2), **beat(95, ("a", 1))}),
    Case("a rename keeps the job", [st("a", Status.COMPLETED, as_name="old", attempt=1)], 1,
         [("a", "rename", "completed")], jobs=[{"name": "a", "seed": 1}]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_plan(case: Case) -> None:
    lm = loaded(case.jobs, case.prune)
    states = {s.job_id: s for s in case.states}
    for spec in lm.specs.values() if case.fill else ():
        states.setdefault(spec.job_id, st(spec.name, cpu_ok=spec.prefer_cuda))
    view = View(lm.specs, lm.fleet, states)
    obs = Observations(started_at=case.started_at, **case.obs)
    actions = plan(view, obs, case.now)
    for a in actions:  # every planned change is legal for the reconciler
        check_transition(a.old, a.new, RECONCILER, max_attempts=MAX)
    assert [(a.new.name, a.meaning, a.new.status.value) for a in actions] == case.expected


def test_a_sweep_says_whose_silence_and_for_how_long() -> None:
    lm = loaded()
    view = View(lm.specs, lm.fleet, {ID["a"]: running(), ID["gpuish"]: st("gpuish", cpu_ok=True)})
    [action] = plan(view, Observations(started_at=0, held_seen=held_at(0)), 12.0)
    assert action.reason == action.new.last_error
    assert "no sign of life from w1 for 12s (attempt 1); 1 of 3 claims lost" in action.reason
    assert action.change.transition == "running->pending" and action.change.attempt == 1


def test_next_due_is_the_earliest_sweep_or_grace_deadline() -> None:
    lm = loaded()
    states = {ID["a"]: running(), ID["gpuish"]: st("gpuish")}
    obs = Observations(started_at=0, held_seen=held_at(3),
                       pending_seen={ID["gpuish"]: 4.0})
    view = View(lm.specs, lm.fleet, states)
    assert next_due(view, obs, now=5.0) == pytest.approx(4.0 + GRACE - 5.0)
    obs.pending_seen.clear()
    assert next_due(view, obs, now=5.0) == pytest.approx(3.0 + STALE - 5.0)
    late_start = Observations(started_at=20.0, held_seen=held_at(3))
    assert next_due(view, late_start, now=21.0) == pytest.approx(20.0 + STALE - 21.0)
    assert next_due(View(lm.specs, lm.fleet, {}), obs, now=5.0) is None


def test_orphans() -> None:
    lm = loaded([{"name": "a", "seed": 1}])
    view = View(lm.specs, lm.fleet, {ID["a"]: st("a"), ID["gpuish"]: st("gpuish")})
    assert [s.name for s in orphans(view)] == ["gpuish"]


# ------------------------------------------------------------------ observe


def record(sha: str, *jobs: tuple[str, int], worker: str = "w1",
           sent_at: float = 0.0) -> HeartbeatRecord:
    hb = Heartbeat(worker=worker, seq=0, sent_at=sent_at,
                   jobs=[HeldJob(job_id=ID[n], attempt=a) for n, a in jobs])
    return HeartbeatRecord(worker, sha, hb, None, commit_time=sent_at)


def test_observe_notes_first_sightings_on_its_own_clock() -> None:
    obs = Observations(started_at=0)
    states = {ID["a"]: running(), ID["gpuish"]: st("gpuish")}
    # a worker clock hours ahead changes nothing: only the ref value counts
    observe(obs, states, {"w1": record("s1", ("a", 1), sent_at=1e9)}, now=1.0)
    observe(obs, states, {"w1": record("s1", ("a", 1), sent_at=2e9)}, now=5.0)
    assert obs.held_seen == {(ID["a"], 1, "running"): 1.0}
    assert obs.beat_seen["w1"] == ("s1", 1.0) and obs.pending_seen == {ID["gpuish"]: 1.0}
    assert obs.last_sign(running()) == 1.0
    observe(obs, states, {"w1": record("s2", ("a", 1))}, now=7.0)
    assert obs.last_sign(running()) == 7.0
    observe(obs, states, {"w1": record("s3")}, now=8.0)  # the job is no longer listed
    assert obs.last_sign(running()) == 1.0
    assert live_workers(obs, now=9.0, stale_after_s=STALE) == {"w1": 1.0}


def test_observe_forgets_what_is_gone_so_memory_stays_flat() -> None:
    obs = Observations(started_at=0)
    observe(obs, {ID["a"]: running()}, {"w1": record("s1", ("a", 1))}, now=1.0)
    claimed_again = st("a", Status.CLAIMED, attempt=2, holder="w2")
    observe(obs, {ID["a"]: claimed_again}, {}, now=2.0)
    assert obs.held_seen == {(ID["a"], 2, "claimed"): 2.0}
    assert obs.beat_seen == {} and obs.beat_jobs == {}
    observe(obs, {ID["a"]: st("a", Status.FAILED, attempt=2)}, {}, now=3.0)
    assert obs.held_seen == {} and obs.pending_seen == {}
