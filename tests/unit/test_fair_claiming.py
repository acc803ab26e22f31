"""Fair claiming (worker/fairness.py) on fake time against the in-memory ledger:
a faster rival lands a write just before every claim push of a slower worker,
so without turn-taking the slower one loses every race and never claims."""

from __future__ import annotations

from pathlib import Path

from loopkit import FakeClock, fake_worker, memory_ledger
from reconciler.protocol.audit import trail_mismatches
from reconciler.protocol.state import Status
from worker.fairness import DEFER_MAX_S, TurnTaking

JOBS = [{"name": f"j{i}", "seed": i} for i in range(10)]


def rigged(tmp_path: Path, w2_beats: bool = True):
    """w1 is the fast rival: just before each claim push of w2, w1 records its
    finished job and claims again (a no-op trainer on a quicker host)."""
    clock = FakeClock()
    mem = memory_ledger(clock, JOBS)
    w1 = fake_worker(mem, clock, tmp_path, "w1")
    w2 = fake_worker(mem, clock, tmp_path, "w2")
    w1.beater.beat_once()
    if w2_beats:
        w2.beater.beat_once()

    def rival() -> None:
        if w2.runs:  # only w2's claims race; its results land undisturbed
            return
        for run in list(w1.runs.values()):
            run.finish(0)
        w1.step()

    mem.before_push["w2"] = rival
    return clock, mem, w1, w2


def drive(clock: FakeClock, mem, w1, w2, rounds: int = 60) -> None:
    for _ in range(rounds):
        for run in list(w2.runs.values()):
            run.finish(0)
        w2.step()
        if all(s.status is Status.COMPLETED for s in mem.states().values()):
            return
        clock.t += 1.0
    for worker in (w1, w2):  # the last ones
        for run in list(worker.runs.values()):
            run.finish(0)
        worker.step()


def completed_by(mem) -> dict[str, int]:
    """Completions per worker (the completing commit's author)."""
    for s in mem.states().values():
        assert s.status is Status.COMPLETED, (s.name, s.status)
    out: dict[str, int] = {}
    for author, _name, _attempt, label, _meaning in mem.moves():
        if label == "running->completed":
            out[author] = out.get(author, 0) + 1
    return out


def test_without_a_sign_of_the_rival_the_slow_worker_starves(tmp_path: Path) -> None:
    """The rig is real: when w1 cannot see w2 waiting (no beat), w2 loses every
    race and w1 takes every job."""
    clock, mem, w1, w2 = rigged(tmp_path, w2_beats=False)
    w1.step()
    drive(clock, mem, w1, w2)
    assert completed_by(mem) == {"w1": len(JOBS)}
    assert w1.turns.deferrals == 0


def test_a_worker_that_keeps_losing_gets_its_turn(tmp_path: Path) -> None:
    clock, mem, w1, w2 = rigged(tmp_path)
    w1.step()
    drive(clock, mem, w1, w2)
    share = completed_by(mem)
    assert sum(share.values()) == len(JOBS)
    assert share.get("w2", 0) >= len(JOBS) // 3, share  # one turn in three at least, not none
    assert share.get("w1", 0) >= 1
    assert w1.turns.deferrals >= 1
    claims = [m for m in mem.moves() if m[3] == "pending->claimed"]
    assert len(claims) == len(JOBS)  # every job claimed once: fairness costs no double claim
    for c in mem.commits:
        assert trail_mismatches(c.sha, c.message, c.changes) == [], c.message


def test_turn_taking_rules() -> None:
    t = TurnTaking()
    assert not t.should_yield(True, 0.0, 5.0)  # no streak yet: claim
    t.claimed(True)
    assert not t.should_yield(True, 0.5, 5.0)  # one win: the rival may have won the last
    t.claimed(True)
    assert t.streak == 2
    assert t.should_yield(True, 1.0, 5.0)  # won twice while a rival waited: its turn
    assert t.should_yield(True, 2.9, 5.0)  # still within the pause (at most DEFER_MAX_S)
    assert not t.should_yield(True, 1.0 + DEFER_MAX_S, 5.0)  # its chance passed: claim
    assert t.streak == 0 and t.deferrals == 1
    t.claimed(True)
    assert not t.should_yield(False, 7.0, 5.0) and t.streak == 0  # the rival took a job
    t.claimed(True)
    t.claimed(True)
    assert t.should_yield(True, 8.0, 100.0) and t.defer_until == 8.0 + DEFER_MAX_S
    t.claimed(False)
    assert t.streak == 0 and t.defer_until is None
