"""The reconciler daemon against a real bare ledger, with real workers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import LedgerDir, make_ledger, manifest_text
from reconciler.state import Status
from workerkit import Fleet, wait_for

pytestmark = pytest.mark.slow
FAST = {"heartbeat_s": 0.3, "stale_after_s": 2.5, "max_attempts": 3, "prefer_cuda_grace_s": 1}


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def start_reconciler(led: LedgerDir) -> subprocess.Popen:
    log = (led.root / "reconciler.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "reconciler.cli", "run", "--ledger", led.url,
                             "--state-dir", str(led.root / "rec")], stdout=log,
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def status(led: LedgerDir) -> dict:
    return json.loads(cli("status", "--ledger", led.url, "--json").stdout)


def operator_commit(led: LedgerDir, clone: Path, text: str) -> None:
    """A plain `git commit` + `git push` of the manifest, as an operator does it."""
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    (clone / "manifest.toml").write_text(text)
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", "edit manifest"], check=True)
    subprocess.run(["git", "-C", str(clone), "pull", "-q", "--rebase"], check=True)
    env = {**__import__("os").environ, "TRAINLEDGER_IDENTITY": "operator"}
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True,
                   env=env)


def test_sigkilled_worker_is_swept_and_another_completes_the_job(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "long", "hyper": {"seconds": 4}}], fleet=FAST)
    fleet = Fleet(led.url, tmp_path, led.store)
    rec = start_reconciler(led)
    try:
        a = fleet.start_worker("alpha")
        wait_for(lambda: any(s.status is Status.RUNNING for s in fleet.states().values()),
                 what="alpha to run the job")
        a.signal(signal.SIGKILL)
        a.wait(10)
        wait_for(lambda: next(iter(fleet.states().values())).status is Status.PENDING,
                 timeout=30, what="the sweep")
        b = fleet.start_worker("beta", "--exit-when-idle")
        assert b.wait(60) == 0, b.text()
    finally:
        stop(rec)
    state = next(iter(fleet.states().values()))
    assert state.status is Status.COMPLETED and state.attempt == 2 and state.lost == 1
    trail = [(t, actor) for _, _, _, t, actor in led.transitions()[1:]]
    assert trail == [("pending->claimed", "alpha"), ("claimed->running", "alpha"),
                     ("running->pending", "reconciler"), ("pending->claimed", "beta"),
                     ("claimed->running", "beta"), ("running->completed", "beta")]
    sweep = led.git("log", "-1", "--format=%B", "--grep=sweep", "main")
    assert "no sign of life from alpha" in sweep


def test_broken_manifest_is_reported_and_the_fleet_keeps_working(tmp_path: Path) -> None:
    # A ledger hosted where hooks cannot run: the reconciler is the only guard.
    jobs = [{"name": "one", "seed": 1}]
    led = make_ledger(tmp_path, jobs=jobs, fleet=FAST, hooks=False)
    rec = start_reconciler(led)
    clone = tmp_path / "clone"
    try:
        good = manifest_text([*jobs, {"name": "two", "seed": 2}], FAST)
        operator_commit(led, clone, good.replace("[[jobs]]", "[[jobz]]", 1))
        doc = wait_for(lambda: (d := status(led))["manifest_error"] and d, what="the error")
        assert "jobz" in doc["manifest_error"]
        rep = wait_for(lambda: ((status(led)["reconciler"] or {}).get("report") or {})
                       .get("manifest_error_commit"), what="the report")
        assert rep == led.git("rev-parse", "main").strip()
        # the fleet keeps working on the last valid manifest
        w = Fleet(led.url, tmp_path, led.store).start_worker("alpha", "--exit-when-idle")
        assert w.wait(60) == 0, w.text()
        # and the fix is picked up at once: the new job gets its state
        operator_commit(led, clone, good)
        wait_for(lambda: len(status(led)["jobs"]) == 2, what="the new job's state")
        assert status(led)["manifest_error"] is None
    finally:
        stop(rec)


def test_status_json_contract_from_a_fresh_clone_without_daemon(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1},
                                      {"name": "gpu", "seed": 2, "require_cuda": True}],
                      fleet=FAST)
    w = Fleet(led.url, tmp_path, led.store).start_worker("alpha", "--exit-when-idle")
    assert w.wait(60) == 0
    mirror = tmp_path / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--mirror", led.url, str(mirror)], check=True)
    doc = json.loads(cli("status", "--ledger", str(mirror), "--json").stdout)
    assert set(doc) >= {"revision", "manifest_error", "jobs", "workers"}
    jobs = {j["name"]: j for j in doc["jobs"]}
    for job in jobs.values():
        assert set(job) >= {"job_id", "name", "model", "status", "attempt", "holder",
                            "artifact", "last_error"}
    assert jobs["x"]["status"] == "completed" and set(jobs["x"]["artifact"]) == {"sha256", "size"}
    assert [w["name"] for w in doc["workers"]] == ["alpha"]
    assert set(doc["workers"][0]) >= {"name", "last_seen_s", "jobs"}
    assert doc["unschedulable"][0]["reasons"] == ["no worker with CUDA"]


def test_cancel_and_requeue_commands(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}], fleet=FAST)
    out = cli("cancel", "x", "--ledger", led.url).stdout
    assert "cancelled" in out
    again = cli("cancel", "x", "--ledger", led.url, check=False)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    cli("requeue", "x", "--ledger", led.url)
    assert status(led)["jobs"][0]["status"] == "pending"
    refused = cli("cancel", "x", "--ledger", led.url, "--as", "alpha", check=False)
    assert refused.returncode == 1 and "refused" in refused.stderr
    log = json.loads(cli("log", "x", "--ledger", led.url, "--json").stdout)
    assert [r["transition"] for r in log][:2] == ["cancelled->pending", "pending->cancelled"]
    assert cli("fsck", "--ledger", led.url, "--history").returncode == 0


def test_an_illegal_commit_on_a_hookless_ledger_is_reported_and_undone(tmp_path: Path) -> None:
    from reconciler import trailers
    from reconciler.ledger import Ledger, Proposal

    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}], fleet=FAST, hooks=False)
    rec = start_reconciler(led)
    try:
        wait_for(lambda: status(led)["reconciler"], what="the first pass")
        # a worker marks a job it never claimed as completed: no hook stops it here
        rogue = Ledger(led.url, tmp_path / "rogue.git", "mallory")

        def forge(snap):
            old = next(iter(snap.states.values()))
            new = old.model_copy(update={"status": Status.COMPLETED,
                                         "artifact": {"sha256": "f" * 64, "size": 1}})
            return Proposal.of_states([new], [trailers.Change(
                old.job_id, old.name, 0, "pending->completed", "complete")])

        rogue.write(forge)
        rogue.close()
        doc = wait_for(lambda: (d := status(led)) and d["jobs"][0]["status"] == "pending" and d,
                       timeout=30, what="the restore")
        report = wait_for(lambda: (status(led)["reconciler"]["report"] or {}).get("findings"),
                          what="the finding in the report")
        assert "pending->completed by mallory" in report[-1]
        assert doc["jobs"][0]["artifact"] is None
    finally:
        stop(rec)
    restore = led.git("log", "-1", "--format=%B", "main")
    assert "restore" in restore and "illegal commit" in restore


@pytest.mark.parametrize("skew_h", [5, -5])
def test_a_worker_with_a_skewed_clock_is_neither_swept_early_nor_kept_late(
        tmp_path: Path, skew_h: int) -> None:
    """The worker runs in-process with every timestamp it writes (commit dates,
    heartbeat sent_at) hours off; the reconciler judges on its own clock."""
    import random
    import threading
    import time

    from reconciler.ledger import Ledger
    from reconciler.schema import Capability
    from reconciler.store import LocalStore
    from worker.daemon import Worker, WorkerConfig
    from workerkit import CPU_CAPABILITY

    led = make_ledger(tmp_path, jobs=[{"name": "long", "hyper": {"seconds": 7}}], fleet=FAST)
    fleet = Fleet(led.url, tmp_path, led.store)

    def skewed() -> float:
        return time.time() + skew_h * 3600

    rec = start_reconciler(led)
    try:
        worker = Worker(
            WorkerConfig(name="skewed", state_dir=tmp_path / "w", poll_s=0.2,
                         exit_when_idle=True),
            Ledger(led.url, tmp_path / "w" / "ledger.git", "skewed", clock=skewed),
            Ledger(led.url, tmp_path / "w" / "beat.git", "skewed", clock=skewed),
            lambda _m: LocalStore(led.store), Capability(**CPU_CAPABILITY), random.Random(1))
        thread = threading.Thread(target=worker.run)
        thread.start()
        thread.join(timeout=90)
        assert not thread.is_alive()
        # not swept early: one attempt, completed, while its timestamps were hours off
        state = next(iter(fleet.states().values()))
        assert state.status is Status.COMPLETED and state.attempt == 1 and state.lost == 0
        stamp = int(led.git("log", "-1", "--format=%ct", "main"))
        assert abs(stamp - (time.time() + skew_h * 3600)) < 120
        # not kept alive late: its (future or past) last beat does not hold a new claim
        requeue = cli("requeue", "long", "--ledger", led.url)
        assert requeue.returncode == 0
        forged = Ledger(led.url, tmp_path / "forge.git", "skewed", clock=skewed)
        from reconciler import trailers
        from reconciler.ledger import Proposal

        def claim(snap):
            old = next(iter(snap.states.values()))
            new = old.model_copy(update={"status": Status.CLAIMED, "holder": "skewed",
                                         "attempt": old.attempt + 1})
            return Proposal.of_states([new], [trailers.Change(
                old.job_id, old.name, new.attempt, "pending->claimed", "claim")])

        forged.write(claim)
        forged.close()
        wait_for(lambda: next(iter(fleet.states().values())).status is Status.PENDING,
                 timeout=FAST["stale_after_s"] * 8, what="the sweep of the silent claim")
    finally:
        stop(rec)
