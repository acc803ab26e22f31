"""A worker whose results can never land gives its jobs back (issue 19, findings 1
and 4): real worker and reconciler processes, a real ledger with its hook.

A refusal is an answer, not an outage; a lease must not outlive its holder's
ability to write; a broken cache is re-cloned; a worker that cannot beat does
not claim, and a job it had to drop spends budget."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from ledgerkit import LedgerDir, make_ledger, operator_push, start_reconciler, stop
from reconciler.protocol.schema import Status
from workerkit import Fleet, WorkerProc, wait_for

pytestmark = pytest.mark.slow

HEARTBEAT_S, STALE_S = 0.5, 3.0
FLEET = {"heartbeat_s": HEARTBEAT_S, "stale_after_s": STALE_S, "max_attempts": 3}


def one_job(tmp_path: Path, seconds: float) -> tuple[LedgerDir, Fleet]:
    led = make_ledger(tmp_path, jobs=[{"name": "long", "hyper": {"seconds": seconds,
                                                                 "steps": 20}}], fleet=FLEET)
    return led, Fleet(led.url, tmp_path, led.store)


def job(fleet: Fleet):
    return next(iter(fleet.states().values()))


def running_on(fleet: Fleet, worker: WorkerProc) -> None:
    wait_for(lambda: job(fleet).status is Status.RUNNING and job(fleet).holder == worker.name,
             timeout=60, what=f"{worker.name} to run the job")


def operator_access(led: LedgerDir, clone: Path, text: str) -> None:
    operator_push(led, clone, "access.toml", text, "access: roles")


def stops_on_one_sigterm(w: WorkerProc) -> None:
    w.signal(signal.SIGTERM)
    try:
        w.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{w.name} still runs 30 s after one SIGTERM:\n{w.text()}") from None


def test_role_removed_while_running(tmp_path: Path) -> None:
    """The operator drops w1 from `workers` while it trains: the hook refuses its
    beats and its results, so w1 gives the job up at once, saying why, and the
    reconciler hands it to w2 after stale_after_s."""
    led, fleet = one_job(tmp_path, seconds=8)
    operator_access(led, tmp_path / "op", 'workers = ["w1", "w2"]\n')
    rec = start_reconciler(led)
    try:
        w1 = fleet.start_worker("w1")
        running_on(fleet, w1)
        w2 = fleet.start_worker("w2")
        wait_for(lambda: "event=worker-start" in w2.text(), what="w2 to start")
        t0 = time.monotonic()
        operator_access(led, tmp_path / "op", 'workers = ["w2"]\n')
        wait_for(lambda: job(fleet).holder == "w2" or job(fleet).status is Status.COMPLETED,
                 timeout=60, what="the job to move to w2")
        print(f"back with w2 {time.monotonic() - t0:.1f}s after the role change "
              f"(stale_after_s {STALE_S}, heartbeat_s {HEARTBEAT_S})")
        wait_for(lambda: "event=gave-up job=long" in w1.text(), what="w1 to log why")
        assert "has no role in access.toml" in w1.text(), w1.text()
        stops_on_one_sigterm(w1)
        wait_for(lambda: job(fleet).status is Status.COMPLETED, timeout=90,
                 what="w2 to complete the job")
    finally:
        fleet.stop_all()
        stop(rec)
    done = [actor for _, _, _, t, actor in led.transitions() if t == "running->completed"]
    assert done == ["w2"]
    sweep = led.git("log", "-1", "--format=%B", "--grep=sweep", "main")
    assert "no sign of life from w1" in sweep


def test_corrupt_ledger_cache(tmp_path: Path) -> None:
    """Junk over the loose objects of w1's ledger cache: every fetch fails while
    its beats (through their own cache) land. w1 finds the damage, re-clones and
    records its result instead of retrying forever."""
    led, fleet = one_job(tmp_path, seconds=3)
    rec = start_reconciler(led)
    try:
        w1 = fleet.start_worker("w1")
        running_on(fleet, w1)
        loose = [p for p in (w1.state_dir / "ledger.git" / "objects").glob("??/*")
                 if p.is_file()]
        assert loose, "the cache holds no loose objects to damage"
        for path in loose:
            path.chmod(0o644)
            path.write_bytes(b"junk" * 8)
        wait_for(lambda: job(fleet).status is Status.COMPLETED, timeout=60,
                 what="the job to complete")
        assert "event=cache-broken worker=w1" in w1.text() and "action=re-clone" in w1.text()
        stops_on_one_sigterm(w1)
    finally:
        fleet.stop_all()
        stop(rec)
    done = [actor for _, _, _, t, actor in led.transitions() if t == "running->completed"]
    assert done == ["w1"]


def test_beats_failing_stop_claims_and_spend_budget(tmp_path: Path) -> None:
    """Beats that cannot land (here a stale ref lock on the Pi) while claims do:
    the holder self-fences, and its release spends a claim; it claims nothing
    more until a beat lands again, and says why."""
    led, fleet = one_job(tmp_path, seconds=6)
    lock = led.path / "refs" / "heartbeats" / "w1.lock"
    w1 = fleet.start_worker("w1")
    try:
        running_on(fleet, w1)
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text("held\n")
        wait_for(lambda: job(fleet).status is Status.PENDING and job(fleet).lost == 1,
                 timeout=60, what="w1 to release the job, spending one claim")
        wait_for(lambda: "event=claims-paused worker=w1" in w1.text(), what="w1 to say why")
        claims = [t for _, _, _, t, _ in led.transitions() if t == "pending->claimed"]
        assert len(claims) == 1, claims
        assert "heartbeat failing" in w1.text()
        lock.unlink()
        wait_for(lambda: job(fleet).status is Status.COMPLETED, timeout=90,
                 what="w1 to claim again once beats land, and complete")
        assert "event=claims-resumed worker=w1" in w1.text()
    finally:
        fleet.stop_all()
