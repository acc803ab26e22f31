"""The worker loop (worker/daemon.py, worker/beat.py) driven step by step on
fake time against the in-memory ledger, with fake trainers: claim, run and
complete; a lost race; a revoked job; self-fencing exactly past the renew
deadline; release on stop. No process, no sleep: time moves when the test
says."""

from __future__ import annotations

import random
from pathlib import Path

from loopkit import FakeClock, FakeRun, fake_worker, memory_ledger
from reconciler.git.push import Proposal
from reconciler.protocol import transitions
from reconciler.protocol.audit import trail_mismatches
from reconciler.protocol.lease import Lease
from reconciler.protocol.state import Status

JOBS = [{"name": "a", "seed": 1}, {"name": "b", "seed": 2}]


def by_name(mem, name: str):
    return next(s for s in mem.states().values() if s.name == name)


def assert_trail_matches(mem) -> None:
    for c in mem.commits:
        assert trail_mismatches(c.sha, c.message, c.changes) == [], c.message


def test_claim_run_complete(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS[:1])
    worker = fake_worker(mem, clock, tmp_path)
    assert worker.step() is False  # claims and starts
    (run,) = FakeRun.runs
    assert by_name(mem, "a").status is Status.RUNNING
    run.finish(0)
    worker.step()
    state = by_name(mem, "a")
    assert state.status is Status.COMPLETED and state.artifact is not None
    assert (tmp_path / "store" / "sha256" / state.artifact.sha256[:2]).is_dir()
    assert [m[1:] for m in mem.moves()] == [
        ("a", 0, "new->pending", "create"), ("a", 1, "pending->claimed", "claim"),
        ("a", 1, "claimed->running", "start"), ("a", 1, "running->completed", "complete")]
    assert_trail_matches(mem)


def test_a_lost_race_rebuilds_on_the_new_tip_and_takes_the_other_job(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS)
    worker = fake_worker(mem, clock, tmp_path)
    rival = mem.port("w2")

    def w2_claims_everything_pending() -> None:
        rival.write(lambda snap: Proposal.of_steps(
            [transitions.claim(s, "w2") for s in snap.states.values()
             if s.status is Status.PENDING][:1]))

    mem.lose_races(1, rival=w2_claims_everything_pending)
    worker.step()
    (run,) = FakeRun.runs
    holders = {s.name: s.holder for s in mem.states().values()}
    assert holders[run.spec.name] == "w1" and list(holders.values()).count("w2") == 1
    claims = [m for m in mem.moves() if m[3] == "pending->claimed"]
    assert sorted(m[0] for m in claims) == ["w1", "w2"]
    assert_trail_matches(mem)


def test_a_revoked_job_is_stopped_and_writes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS[:1])
    worker = fake_worker(mem, clock, tmp_path)
    worker.step()
    (run,) = FakeRun.runs
    mem.port("operator").write(lambda snap: Proposal.of_steps(
        [transitions.cancel(by_name_in(snap, "a"), "cancelled by the operator")]))
    written = len(mem.commits)
    worker.beater.beat_once()  # the beat sees the cancel
    worker.step()
    assert run.stopped == "cancelled" and not worker.runs
    assert len(mem.commits) == written  # the worker wrote nothing after the cancel
    assert by_name(mem, "a").status is Status.CANCELLED


def by_name_in(snap, name: str):
    return next(s for s in snap.states.values() if s.name == name)


def test_self_fencing_exactly_past_the_renew_deadline(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS[:1])
    worker = fake_worker(mem, clock, tmp_path)
    worker.beater.beat_once()
    worker.step()
    (run,) = FakeRun.runs
    renew = Lease.of(worker.manifest.fleet).renew_deadline_s
    assert renew == 40.0  # 2/3 of stale_after_s = 60
    mem.down = True  # the ledger goes away: beats fail from now on
    last_ok = worker.beater.last_ok
    clock.t = last_ok + renew  # at the deadline the lease still holds
    assert worker.beater.beat_once() is False
    worker.step()
    assert run.stopped is None and worker.runs
    clock.t = last_ok + renew + 0.001  # just past it the worker stops its trainer
    worker.step()
    assert run.stopped is not None and "lease probably lost" in run.stopped
    assert not worker.runs
    assert by_name(mem, "a").status is Status.RUNNING  # nothing could be written
    assert clock.t - last_ok < Lease.of(worker.manifest.fleet).stale_after_s  # before a sweep


def test_stop_releases_held_jobs_without_spending_budget(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS[:1])
    worker = fake_worker(mem, clock, tmp_path)
    worker.step()
    (run,) = FakeRun.runs
    worker.stop()
    worker.teardown()
    state = by_name(mem, "a")
    assert (state.status, state.lost, state.holder) == (Status.PENDING, 0, None)
    assert run.stopped == "worker shutting down"
    assert mem.moves()[-1][1:] == ("a", 1, "running->pending", "release")
    assert mem.beats["w1"].beat.jobs == []  # the last beat lists nothing
    assert_trail_matches(mem)


def test_a_store_that_fails_spends_the_budget_and_fails_the_job(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS[:1], max_attempts=2)
    worker = fake_worker(mem, clock, tmp_path)
    worker._store_factory = lambda _loaded: _broken_store(tmp_path)
    worker.step()  # claims attempt 1
    FakeRun.runs[-1].finish(0)
    worker.step()  # the store fails 3 times: released, one claim spent; claims attempt 2
    assert [r.attempt for r in FakeRun.runs] == [1, 2]
    FakeRun.runs[-1].finish(0)
    worker.step()  # fails again: the budget is spent
    state = by_name(mem, "a")
    assert (state.status, state.lost) == (Status.FAILED, 2)
    assert "store failed on w1" in state.last_error
    assert [m[3:] for m in mem.moves() if m[0] == "w1" and m[3].startswith("running->")] == [
        ("running->pending", "release"), ("running->failed", "fail")]
    assert_trail_matches(mem)


def _broken_store(tmp: Path):
    from reconciler.store.local import LocalStore

    path = tmp / "store-is-a-file"
    path.write_text("not a directory\n")
    return LocalStore(path)


def test_a_failed_push_claims_nothing_and_the_next_turn_does(tmp_path: Path) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS[:1])
    worker = fake_worker(mem, clock, tmp_path)
    mem.fail_pushes(1)
    worker.step()
    assert FakeRun.runs == [] and by_name(mem, "a").status is Status.PENDING
    assert worker._unreachable_since == clock()
    worker.step()
    assert [r.attempt for r in FakeRun.runs] == [1]
    assert by_name(mem, "a").status is Status.RUNNING and worker._unreachable_since is None


def test_the_hook_refuses_what_the_table_refuses(tmp_path: Path) -> None:
    """The in-memory ledger judges writes as the pre-receive hook does."""
    import pytest

    from reconciler.protocol.errors import PushRejected

    clock = FakeClock()
    mem = memory_ledger(clock, JOBS[:1])
    thief = mem.port("w2")
    fake_worker(mem, clock, tmp_path).step()  # w1 holds attempt 1
    with pytest.raises(PushRejected, match="held by w1"):
        thief.write(lambda snap: Proposal.of_steps(
            [transitions.start(by_name_in(snap, "a"))]))
    assert mem.rejected and by_name(mem, "a").holder == "w1"


def test_after_a_result_the_worker_yields_before_claiming_again(tmp_path: Path) -> None:
    """A random pause of up to two pushes (at most a heartbeat) between a result
    and the next claim gives a slower rival a window on main."""
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS, heartbeat_s=5)
    worker = fake_worker(mem, clock, tmp_path)
    worker.ledger.push_cost_s = 4.0  # a loaded ledger: pushes take 4 s
    worker.step()
    assert clock.slept == []  # no result yet, no pause
    FakeRun.runs[-1].finish(0)
    worker.rng = random.Random(0)  # its first draw is 0.844...
    worker.step()
    (pause,) = clock.slept
    assert pause == random.Random(0).uniform(0, 5.0)  # uniform(0, min(2 x 4 s, heartbeat_s))
    assert len(FakeRun.runs) == 2  # and then it claimed the other job
