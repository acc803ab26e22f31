"""The reconciler loop (reconciler/daemon/loop.py `run`) on fake time against the
in-memory ledger: a sweep exactly at stale_after_s and never a pass before,
the prefer_cuda grace, the restore of an illegal commit, and a broken manifest
that stops nothing. Time is exact here, so the timing claims live here (the
fault rows assert outcomes only)."""

from __future__ import annotations

import threading

import pytest

from loopkit import FakeClock, memory_ledger
from reconciler.daemon.loop import Reconciler, run
from reconciler.git.memory import MemoryLedger, MemoryRechecker
from reconciler.git.push import Proposal
from reconciler.protocol import trailers, transitions
from reconciler.protocol.audit import trail_mismatches
from reconciler.protocol.state import Status


def drive(rec: Reconciler, clock: FakeClock, until: float) -> list[float]:
    """Run the real loop until the fake clock passes `until`; the pass times."""
    stop = threading.Event()
    passes: list[float] = []
    pass_once = rec.pass_once

    def counted():
        passes.append(clock())
        return pass_once()

    rec.pass_once = counted  # type: ignore[method-assign]

    def wait(seconds: float) -> None:
        clock.sleep(seconds)
        if clock() > until:
            stop.set()

    run(rec, stop=stop, wait=wait)
    return passes


def claim(mem: MemoryLedger, name: str, worker: str = "w1") -> None:
    mem.port(worker).write(lambda snap: Proposal.of_steps(
        [transitions.claim(next(s for s in snap.states.values() if s.name == name), worker)]))


def landed(mem: MemoryLedger, meaning: str) -> list[float]:
    return [c.at for c in mem.commits if meaning in c.meanings.values()]


def test_a_silent_claim_is_swept_at_stale_after_s_and_never_a_pass_before() -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], heartbeat_s=7, stale_after_s=60)
    claimed_at = clock()
    claim(mem, "a")
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    passes = drive(rec, clock, until=claimed_at + 70)
    (swept_at,) = landed(mem, "sweep")
    # the tick is 7 s, yet the sweep lands at the deadline next_due gave, not a tick late
    assert 60 <= swept_at - claimed_at <= 60.02, passes
    assert all(t - claimed_at < 60 for t in passes if t < swept_at)
    state = next(iter(mem.states().values()))
    assert (state.status, state.lost, state.holder) == (Status.PENDING, 1, None)
    assert state.last_error.startswith("swept: no sign of life from w1")


def test_a_heartbeat_listing_the_job_moves_the_sweep_deadline() -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], heartbeat_s=7, stale_after_s=60)
    claim(mem, "a")
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    drive(rec, clock, until=clock() + 30)
    from reconciler.protocol.schema import Heartbeat, HeldJob

    state = next(iter(mem.states().values()))
    mem.port("w1").push_heartbeat(Heartbeat(worker="w1", seq=1, sent_at=0.0, slots=1,
                                            jobs=[HeldJob(job_id=state.job_id, attempt=1)]))
    seen = clock()
    drive(rec, clock, until=seen + 80)
    (swept_at,) = landed(mem, "sweep")
    # the beat is first seen on the next pass (within one tick); the sweep is 60 s after that
    assert 60 <= swept_at - seen <= 60 + 7 + 0.02


def test_prefer_cuda_opens_to_cpu_at_the_end_of_its_grace() -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "gpu-please", "seed": 1, "prefer_cuda": True}],
                        heartbeat_s=7, prefer_cuda_grace_s=30)
    start = clock()
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    drive(rec, clock, until=start + 40)
    (opened_at,) = landed(mem, "open")
    assert 30 <= opened_at - start <= 30.02
    assert next(iter(mem.states().values())).cpu_ok is True


def test_an_illegal_commit_is_restored_with_a_restore_kind() -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}])
    claim(mem, "a", "w1")
    legal = next(iter(mem.states().values()))
    # w2 takes w1's attempt, on a ledger no hook protects
    stolen = legal.model_copy(update={"holder": "w2"})
    mem.force("w2", [stolen], subject="steal a")
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=MemoryRechecker(mem))
    rec.pass_once()
    assert any("held by w1" in f for f in rec.report.findings), rec.report.findings
    rec.pass_once()  # the restore was written by the first pass: nothing more to do
    assert next(iter(mem.states().values())) == legal
    restore = mem.commits[-1]
    assert trailers.kind_of(restore.message) == trailers.RESTORE
    assert restore.meanings == {legal.job_id: "restore"}
    assert trail_mismatches(restore.sha, restore.message, restore.changes) == []
    assert len(rec.report.findings) == 1  # the restore itself, re-checked, is no finding


def test_a_broken_manifest_stops_nothing() -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], heartbeat_s=7, stale_after_s=60)
    claim(mem, "a")
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    rec.pass_once()
    good = rec.report.applied_revision
    broken = mem.set_manifest(b"schema_version = 1\n[fleet\n")
    drive(rec, clock, until=clock() + 70)
    assert rec.report.manifest_error and "manifest" in rec.report.manifest_error.lower()
    assert rec.report.manifest_error_commit == broken
    assert rec.report.applied_revision == good
    assert landed(mem, "sweep"), "the last valid manifest still sweeps"
    # a reconciler restarted on the broken tip finds the last valid manifest in history
    fresh = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    fresh.pass_once()
    assert fresh.manifest is not None and fresh.report.applied_revision == mem.commits[0].sha


@pytest.mark.parametrize("fleet", [{}, {"heartbeat_s": 30, "stale_after_s": 60}])
def test_the_tick_comes_from_the_lease_policy(fleet: dict) -> None:
    from reconciler.protocol.lease import Lease

    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], **fleet)
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    rec.pass_once()
    assert rec.wait_s() == Lease.of(rec.manifest.fleet).tick_s


@pytest.mark.parametrize("skew_s", [3600.0, -3600.0])
def test_a_skewed_workers_beats_move_no_deadline(skew_s: float) -> None:
    """The reconciler judges on its own clock: a worker whose clock (its beats'
    sent_at and commit dates) is an hour off is swept exactly stale_after_s after
    its last beat was first seen, as an unskewed one is."""
    from reconciler.protocol.schema import Heartbeat, HeldJob

    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], heartbeat_s=7, stale_after_s=60)
    skewed = mem.port("w1")
    skewed.clock = lambda: clock() + skew_s
    claim(mem, "a")
    job = next(iter(mem.states().values())).job_id
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    rec.pass_once()
    skewed.push_heartbeat(Heartbeat(worker="w1", seq=1, sent_at=skewed.clock(), slots=1,
                                    jobs=[HeldJob(job_id=job, attempt=1)]))
    beat_at = clock()
    rec.pass_once()  # first sight of the beat, at once
    drive(rec, clock, until=beat_at + 80)
    (swept_at,) = landed(mem, "sweep")
    assert 60 <= swept_at - beat_at <= 60.02
