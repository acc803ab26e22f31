"""A worker that cannot finish what it holds hands it over (issue 19, finding 1),
on fake time against the in-memory ledger, with the real reconciler loop and a
second worker: a ledger cache a re-clone repairs costs nothing; a cache that
stays damaged after a re-clone (a disk that corrupts what is written to it), or
an operator removing the worker's role, makes it give the job up at once,
saying why, and another worker has it within stale_after_s and a beat or two."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from loopkit import FakeClock, FakeRun, fake_worker, memory_ledger
from reconciler.daemon.loop import Reconciler
from reconciler.protocol.state import Status

HEARTBEAT_S, STALE_S = 5.0, 60.0
DAMAGE = "error: inflate: data stream error (incorrect header check)"


def the_job(mem):
    (state,) = mem.states().values()
    return state


def beating_sleep(worker, clock: FakeClock):
    """The worker's sleep, with its heartbeat thread's beats in between (the
    thread does not run here: time is the test's)."""
    def sleep(seconds: float) -> None:
        while seconds > 0:
            step = min(seconds, HEARTBEAT_S)
            clock.sleep(step)
            seconds -= step
            worker.beater.beat_once()
    return sleep


def until_swept(mem, clock: FakeClock, rec: Reconciler, worker, *, since: float, tick: float,
                step: bool = False) -> None:
    """Time moves in `tick`s: the worker beats every heartbeat_s (and steps, if
    asked), the reconciler passes every tick, until the job is back at pending."""
    while the_job(mem).status is not Status.PENDING:
        assert clock() - since < STALE_S + 3 * HEARTBEAT_S, "never swept"
        clock.sleep(tick)
        if clock() % HEARTBEAT_S < tick:
            worker.beater.beat_once()
        if step:
            worker.step()
        rec.pass_once()


@pytest.fixture
def worker_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="trainledger.worker")
    return caplog


def test_a_cache_a_reclone_repairs_costs_nothing(tmp_path: Path, worker_log) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], heartbeat_s=HEARTBEAT_S,
                        stale_after_s=STALE_S)
    w1 = fake_worker(mem, clock, tmp_path)
    w1.beater.beat_once()
    w1.step()
    (run,) = FakeRun.runs
    w1.ledger.break_cache(DAMAGE)
    run.finish(0)
    w1.step()
    assert the_job(mem).status is Status.COMPLETED
    assert [m[:3] for m in mem.moves() if m[3] == "running->completed"] == [("w1", "a", 1)]
    assert "event=cache-broken worker=w1" in worker_log.text
    assert "action=re-clone" in worker_log.text and "event=gave-up" not in worker_log.text


def test_a_cache_that_stays_damaged_hands_the_job_over(tmp_path: Path, worker_log) -> None:
    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], heartbeat_s=HEARTBEAT_S,
                        stale_after_s=STALE_S, max_attempts=3)
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    rec.pass_once()
    w1 = fake_worker(mem, clock, tmp_path)
    w1.sleep = beating_sleep(w1, clock)
    w1.beater.beat_once()
    w1.step()
    (run,) = FakeRun.runs
    assert the_job(mem).status is Status.RUNNING
    # Given w1's cache goes bad for good (its heartbeats use their own cache and land)
    damaged_at = clock()
    w1.ledger.break_cache(DAMAGE, repairable=False)
    run.finish(0)
    # When w1 tries to record the result
    w1.step()
    # Then it re-clones once, finds the cache damaged again, and gives the job up
    # at its next check (a heartbeat later), saying exactly why
    text = worker_log.text
    assert text.count("event=cache-broken worker=w1") == 2, text
    assert "action=re-clone" in text and "action=give-up" in text
    assert "event=gave-up job=a attempt=1 worker=w1" in text
    assert f"the ledger cache stays damaged after a re-clone: {DAMAGE}" in text
    gave_up_after = clock() - damaged_at
    assert gave_up_after <= 2 * HEARTBEAT_S, gave_up_after
    # and its beats stop naming the job while w1 itself stays alive
    w1.beater.beat_once()
    assert mem.beats["w1"].beat.jobs == []
    assert the_job(mem).status is Status.RUNNING  # nothing w1 wrote landed
    # And the reconciler sweeps it once w1 has said nothing of it for stale_after_s
    until_swept(mem, clock, rec, w1, since=damaged_at, tick=1.0)
    swept = the_job(mem)
    assert swept.lost == 1 and swept.holder is None
    # so that another worker claims it within stale_after_s and a beat or two of the damage
    w2 = fake_worker(mem, clock, tmp_path, name="w2")
    w2.step()
    state = the_job(mem)
    assert (state.status, state.holder, state.attempt) == (Status.RUNNING, "w2", 2)
    handed_over_after = clock() - damaged_at
    assert STALE_S <= handed_over_after <= STALE_S + 2 * HEARTBEAT_S, handed_over_after
    FakeRun.runs[-1].finish(0)
    w2.step()
    assert the_job(mem).status is Status.COMPLETED
    assert [m[0] for m in mem.moves() if m[3] == "running->completed"] == ["w2"]


def test_a_worker_whose_role_is_removed_loses_the_job_within_stale_after_s_and_a_beat(
        tmp_path: Path, worker_log) -> None:
    """Finding 1a on exact time: the operator drops w1 from `workers` while it
    trains. The hook refuses w1's next beat, so its last sign of life is at most
    a beat after the change, and the job is w2's stale_after_s later."""
    from reconciler.protocol.access import load_access

    clock = FakeClock()
    mem = memory_ledger(clock, [{"name": "a", "seed": 1}], heartbeat_s=HEARTBEAT_S,
                        stale_after_s=STALE_S, max_attempts=3)
    mem.access = load_access(b'workers = ["w1", "w2"]\n')
    rec = Reconciler(mem.port("reconciler"), clock=clock, recheck=None)
    rec.pass_once()
    w1 = fake_worker(mem, clock, tmp_path)
    w1.beater.beat_once()
    w1.step()
    (run,) = FakeRun.runs
    clock.sleep(HEARTBEAT_S / 2)  # the change falls between two beats
    changed_at = clock()
    mem.access = load_access(b'workers = ["w2"]\n')
    until_swept(mem, clock, rec, w1, since=changed_at, tick=0.5, step=True)
    # w1 gave the job up at its first refused beat, saying why, and stopped training
    assert "event=gave-up job=a attempt=1 worker=w1" in worker_log.text
    assert "has no role in access.toml" in worker_log.text
    assert run.stopped is not None and "heartbeat refused" in run.stopped
    w2 = fake_worker(mem, clock, tmp_path, name="w2")
    w2.step()
    state = the_job(mem)
    assert (state.status, state.holder, state.attempt) == (Status.RUNNING, "w2", 2)
    handed_over_after = clock() - changed_at
    assert handed_over_after <= STALE_S + HEARTBEAT_S, handed_over_after
    assert [c.author for c in mem.commits if "sweep" in c.meanings.values()] == ["reconciler"]
