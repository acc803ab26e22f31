"""The reconciler daemon against a real bare ledger, with real workers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ledgerkit import LedgerDir, make_ledger, manifest_text, start_reconciler, stop
from reconciler.cli.main import main
from reconciler.protocol.state import Status
from workerkit import Fleet, wait_for

pytestmark = pytest.mark.slow
FAST = {"heartbeat_s": 0.3, "stale_after_s": 2.5, "max_attempts": 3, "prefer_cuda_grace_s": 1}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, check: bool = True) -> Result:
    """`reconciler ARGS` in this process (a fresh interpreter per call made the
    polling loops slow); `run` goes through `cli_proc` (it installs signal handlers)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    result = Result(code, out.getvalue(), err.getvalue())
    if check:
        assert code == 0, result.stderr
    return result


def cli_proc(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def status(led: LedgerDir) -> dict:
    return json.loads(cli("status", "--ledger", led.url, "--json").stdout)


def forge(led: LedgerDir, who: str, change, job: str | None = None) -> None:
    """Commit `change(old_state) -> new_state` for `job` (default: the first job)
    as `who`, through the ledger layer."""
    from reconciler.git.ledger import Ledger
    from reconciler.git.push import Proposal
    from reconciler.protocol import trailers

    ledger = Ledger(led.url, led.root / f"forge-{who}.git", who)

    def build(snap):
        old = next(s for s in snap.states.values() if job in (None, s.name))
        new = change(old)
        return Proposal.of_states([new], [trailers.Change(
            old.job_id, old.name, new.attempt, f"{old.status.value}->{new.status.value}",
            "forged")])

    try:
        ledger.write(build)
    finally:
        ledger.close()


def claim_by(worker: str):
    def change(old):
        return old.model_copy(update={"status": Status.CLAIMED, "holder": worker,
                                      "attempt": old.attempt + 1})
    return change


def operator_commit(led: LedgerDir, clone: Path, text: str) -> None:
    """A plain `git commit` + `git push` of the manifest, as an operator does it."""
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    (clone / "manifest.toml").write_text(text)
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", "edit manifest"], check=True)
    subprocess.run(["git", "-C", str(clone), "pull", "-q", "--rebase"], check=True)
    env = {**os.environ, "TRAINLEDGER_IDENTITY": "operator"}
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


def test_once_creates_new_jobs_and_applies_a_manifest_cancel(tmp_path: Path) -> None:
    # Given a job claimed by a worker, when the operator cancels it in the manifest
    # and adds another job, then one reconciler pass makes one commit for both.
    jobs = [{"name": "one", "seed": 1}]
    led = make_ledger(tmp_path, jobs=jobs, fleet=FAST)
    forge(led, "alpha", claim_by("alpha"))
    operator_commit(led, tmp_path / "clone", manifest_text(
        [{"name": "one", "seed": 1, "cancel": True}, {"name": "two", "seed": 2}], FAST))
    cli_proc("run", "--once", "--ledger", led.url, "--state-dir", str(tmp_path / "rec"))
    jobs_now = {j["name"]: j for j in status(led)["jobs"]}
    assert jobs_now["one"]["status"] == "cancelled" and jobs_now["one"]["holder"] is None
    assert jobs_now["two"]["status"] == "pending" and jobs_now["two"]["attempt"] == 0
    last = [t for t in led.transitions() if t[4] == "reconciler"][-2:]
    assert [(t[3]) for t in last] == ["claimed->cancelled", "new->pending"]
    assert last[0][0] == last[1][0]  # one commit
    body = led.git("log", "-1", "--format=%B", "main")
    assert "one: cancel = true in the manifest" in body
    # nothing left to do: a second pass writes nothing
    head = led.git("rev-parse", "main")
    cli_proc("run", "--once", "--ledger", led.url, "--state-dir", str(tmp_path / "rec"))
    assert led.git("rev-parse", "main") == head


def test_a_claim_with_no_heartbeat_is_swept_after_stale_after_s(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "one", "seed": 1}], fleet=FAST)
    rec = start_reconciler(led)
    try:
        wait_for(lambda: status(led)["reconciler"], what="the first pass")
        forge(led, "ghost", claim_by("ghost"))
        claimed_at = time.monotonic()
        wait_for(lambda: status(led)["jobs"][0]["status"] == "pending", timeout=30,
                 what="the sweep")
        assert time.monotonic() - claimed_at >= FAST["stale_after_s"]  # never early
    finally:
        stop(rec)
    trail = [(t[3], t[4]) for t in led.transitions()[1:]]
    assert trail == [("pending->claimed", "ghost"), ("claimed->pending", "reconciler")]
    sweep = led.git("log", "-1", "--format=%B", "main")
    assert "swept: no sign of life from ghost" in sweep and "1 of 3 claims lost" in sweep
    job = status(led)["jobs"][0]
    assert job["lost"] == 1 and job["attempt"] == 1 and "ghost" in job["last_error"]


def test_a_push_wakes_the_daemon_without_waiting_for_its_tick(tmp_path: Path) -> None:
    jobs = [{"name": "one", "seed": 1}]
    led = make_ledger(tmp_path, jobs=jobs, fleet=FAST)
    # systemd's notify socket: READY, WATCHDOG pings while it waits, STOPPING
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(30)
    rec = start_reconciler(led, "--tick-s", "120", env={
        "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "400000"})
    try:
        assert sock.recv(64) == b"READY=1"
        wait_for(lambda: status(led)["reconciler"], what="the first pass")
        operator_commit(led, tmp_path / "clone",
                        manifest_text([*jobs, {"name": "two", "seed": 2}], FAST))
        # the tick is two minutes away: only the watch on refs/ can explain this
        wait_for(lambda: len(status(led)["jobs"]) == 2, timeout=15, every=0.2,
                 what="the watchdog-triggered pass")
        assert sock.recv(64) == b"WATCHDOG=1"
    finally:
        stop(rec)
    messages = []
    with contextlib.suppress(TimeoutError):
        sock.settimeout(0.5)
        while True:
            messages.append(sock.recv(64))
    sock.close()
    assert messages[-1] == b"STOPPING=1"


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
        # the reconciler keeps acting on the last valid manifest: a silent claim is swept
        forge(led, "ghost", claim_by("ghost"))
        wait_for(lambda: status(led)["jobs"][0]["lost"] == 1, timeout=30,
                 what="a sweep under the broken manifest")
        # and the fleet keeps working
        w = Fleet(led.url, tmp_path, led.store).start_worker("alpha", "--exit-when-idle")
        assert w.wait(60) == 0, w.text()
        # and the fix is picked up at once: the new job gets its state
        operator_commit(led, clone, good)
        wait_for(lambda: len(status(led)["jobs"]) == 2, what="the new job's state")
        doc = status(led)
        assert doc["manifest_error"] is None
        report = wait_for(lambda: (r := status(led)["reconciler"]["report"])
                          and r["manifest_error"] is None and r, what="the report to clear")
        assert report["applied_revision"] == report["attempted_revision"]
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
    assert set(doc) >= {"revision", "manifest_error", "jobs", "workers", "counts",
                        "unschedulable", "reconciler"}
    assert doc["revision"] == led.git("rev-parse", "main").strip()
    assert doc["manifest_error"] is None and doc["reconciler"] is None
    jobs = {j["name"]: j for j in doc["jobs"]}
    for job in jobs.values():
        assert set(job) >= {"job_id", "name", "model", "status", "attempt", "holder",
                            "artifact", "last_error"}
    assert jobs["x"]["status"] == "completed" and set(jobs["x"]["artifact"]) == {"sha256", "size"}
    assert jobs["x"]["model"] == "quick" and jobs["x"]["attempt"] == 1
    assert doc["counts"]["completed"] == 1 and doc["counts"]["pending"] == 1
    assert [w["name"] for w in doc["workers"]] == ["alpha"]
    assert set(doc["workers"][0]) >= {"name", "last_seen_s", "jobs", "cpu_cores",
                                      "ram_total_gib", "gpus"}
    assert isinstance(doc["workers"][0]["last_seen_s"], float)
    assert doc["unschedulable"] == [{"job_id": jobs["gpu"]["job_id"], "name": "gpu",
                                     "reasons": ["no worker with CUDA"]}]
    text = cli("status", "--ledger", str(mirror)).stdout
    assert "gpu: no worker with CUDA" in text and "reconciler: never seen" in text


def test_cancel_and_requeue_commands(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}, {"name": "y", "seed": 2}],
                      fleet=FAST)
    out = cli("cancel", "x", "--ledger", led.url).stdout
    assert "cancelled" in out
    again = cli("cancel", "x", "--ledger", led.url, check=False)
    assert again.returncode == 1 and "already cancelled" in again.stderr
    job_id = status(led)["jobs"][0]["job_id"]
    cli("requeue", job_id[:6], "--ledger", led.url)  # a unique id prefix
    assert status(led)["jobs"][0]["status"] == "pending"
    refused = cli("cancel", "x", "--ledger", led.url, "--as", "alpha", check=False)
    assert refused.returncode == 1 and "refused" in refused.stderr
    unknown = cli("cancel", "nope", "--ledger", led.url, check=False)
    assert unknown.returncode == 1 and "no job matches 'nope'" in unknown.stderr
    log = json.loads(cli("log", "x", "--ledger", led.url, "--json").stdout)
    assert [r["transition"] for r in log][:2] == ["cancelled->pending", "pending->cancelled"]
    assert [r["actor"] for r in log][:2] == ["operator", "operator"]
    show = json.loads(cli("show", "x", "--ledger", led.url, "--json").stdout)
    assert show["state"]["status"] == "pending" and show["spec"]["name"] == "x"
    assert show["history"][0]["transition"] == "cancelled->pending"
    trailers = led.git("log", "-2", "--format=%(trailers:key=Ledger-Transition,valueonly)",
                       "main").split()
    assert trailers == ["cancelled->pending", "pending->cancelled"]
    # a job dropped from the manifest is not requeued: no worker could run it
    cli("cancel", "y", "--ledger", led.url)
    operator_commit(led, tmp_path / "clone", manifest_text([{"name": "x", "seed": 1}], FAST))
    orphan = cli("requeue", "y", "--ledger", led.url, check=False)
    assert orphan.returncode == 1 and "no longer in the manifest" in orphan.stderr


def test_an_illegal_commit_on_a_hookless_ledger_is_reported_and_undone(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}], fleet=FAST, hooks=False)
    rec = start_reconciler(led)
    try:
        wait_for(lambda: status(led)["reconciler"], what="the first pass")
        # a worker marks a job it never claimed as completed: no hook stops it here
        forge(led, "mallory", lambda old: old.model_copy(update={
            "status": Status.COMPLETED, "artifact": {"sha256": "f" * 64, "size": 1}}))
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


def test_workers_with_skewed_clocks_are_neither_swept_early_nor_kept_late(
        tmp_path: Path) -> None:
    """Two workers run in-process with every timestamp they write (commit dates,
    heartbeat sent_at) 5 h ahead and 5 h behind; the reconciler judges on its own
    clock, so neither is swept while it trains, and neither's silence is excused."""
    import random
    import threading

    from reconciler.git.ledger import Ledger
    from reconciler.protocol.schema import Capability
    from reconciler.store.local import LocalStore
    from worker.daemon import Worker, WorkerConfig
    from workerkit import CPU_CAPABILITY

    skews = {"ahead": 5, "behind": -5}
    led = make_ledger(tmp_path, jobs=[
        {"name": f"long-{w}", "seed": i, "allowed_hosts": [w], "hyper": {"seconds": 5}}
        for i, w in enumerate(skews)], fleet=FAST)
    fleet = Fleet(led.url, tmp_path, led.store)

    def worker(name: str) -> Worker:
        def clock() -> float:
            return time.time() + skews[name] * 3600

        return Worker(
            WorkerConfig(name=name, state_dir=tmp_path / name, poll_s=0.2, exit_when_idle=True),
            Ledger(led.url, tmp_path / name / "ledger.git", name, clock=clock),
            Ledger(led.url, tmp_path / name / "beat.git", name, clock=clock),
            lambda _m: LocalStore(led.store), Capability(**CPU_CAPABILITY), random.Random(1))

    rec = start_reconciler(led)
    try:
        threads = [threading.Thread(target=worker(name).run) for name in skews]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
            assert not t.is_alive()
        # not swept early: one attempt each, completed, while their clocks were off
        for state in fleet.states().values():
            assert state.status is Status.COMPLETED, state
            assert state.attempt == 1 and state.lost == 0
        stamps = [int(t) for t in led.git("log", "--format=%ct", "main").split()]
        for skew_h in skews.values():
            assert any(abs(t - (time.time() + skew_h * 3600)) < 120 for t in stamps)
        # not kept alive late: their (future or past) last beats hold no new claim
        for name in skews:
            cli("requeue", f"long-{name}", "--ledger", led.url)
            forge(led, name, claim_by(name), job=f"long-{name}")
        wait_for(lambda: all(s.status is Status.PENDING for s in fleet.states().values()),
                 timeout=FAST["stale_after_s"] * 8, what="the sweep of the silent claims")
    finally:
        stop(rec)
