"""Pipelines against a real ledger (hooks installed), real workers and real
trainer subprocesses: retries, per-job timeouts, `after` with the upstream's
artifact in $TRAINLEDGER_INPUTS, and what status and `worker explain` say
about a job waiting on, or blocked by, its upstream. Every commit's trailers
are checked against the state change it made."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from auditkit import assert_trailers_match
from ledgerkit import LedgerDir, make_ledger
from reconciler.protocol.schema import Status
from reconciler.store.unpack import unpack
from workerkit import CPU_CAPABILITY, Fleet, wait_for

pytestmark = pytest.mark.slow


def fleet_of(tmp_path: Path, jobs, extra: str = "", **fleet) -> tuple[Fleet, LedgerDir]:
    ledger = make_ledger(tmp_path, jobs=jobs, fleet=fleet or None, extra=extra)
    return Fleet(ledger.url, tmp_path, ledger.store), ledger


def by_name(fleet: Fleet):
    return {s.name: s for s in fleet.states().values()}


def unpacked(fleet: Fleet, sha256: str, dest: Path) -> Path:
    unpack(fleet.store / "sha256" / sha256[:2] / f"{sha256}.tar.zst", dest)
    return dest


def test_a_trainer_failing_its_first_run_is_retried_and_completes(tmp_path: Path) -> None:
    fleet, ledger = fleet_of(tmp_path, [{"name": "flaky", "retries": 1,
                                         "hyper": {"fail_attempts": 1}}])
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    state = by_name(fleet)["flaky"]
    assert state.status is Status.COMPLETED and state.attempt == 2 and state.failures == 1
    assert state.lost == 0  # a trainer failure spends no claim of max_attempts
    text = w.text()
    assert "event=trainer-failed job=flaky attempt=1" in text
    assert "event=retry job=flaky attempt=1 failures=1/1" in text
    assert "event=complete job=flaky attempt=2" in text
    logs = sorted((w.state_dir / "logs").glob("flaky-*.log"))
    assert [p.name.rsplit("-", 1)[1] for p in logs] == ["1.log", "2.log"]
    assert "failing attempt 1 on purpose" in logs[0].read_text()
    assert "quick: done" in logs[1].read_text()
    moves = [(a, t) for _, _, a, t, _ in ledger.transitions() if t != "new->pending"]
    assert moves == [(1, "pending->claimed"), (1, "claimed->running"), (1, "running->pending"),
                     (2, "pending->claimed"), (2, "claimed->running"),
                     (2, "running->completed")]
    assert_trailers_match(ledger.path)
    report = fsck(fleet, "--history")
    assert report["ok"] and report["history"]["findings"] == [], report


def test_with_no_retries_left_the_job_fails_showing_failures(tmp_path: Path) -> None:
    fleet, ledger = fleet_of(tmp_path, [{"name": "doomed", "retries": 1,
                                         "hyper": {"fail_attempts": 5}}])
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    state = by_name(fleet)["doomed"]
    assert state.status is Status.FAILED and state.failures == 2 and state.attempt == 2
    assert "failing attempt 2 on purpose" in state.last_error
    doc = json.loads(subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "status", "--ledger", fleet.url, "--json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    row = next(j for j in doc["jobs"] if j["name"] == "doomed")
    assert (row["failures"], row["retries"]) == (2, 1) and "exit 4" in row["last_error"]
    assert_trailers_match(ledger.path)


def test_a_timeout_fails_the_job_even_when_the_trainer_exits_0(tmp_path: Path) -> None:
    fleet, ledger = fleet_of(tmp_path, [{"name": "slowpoke", "timeout_s": 2,
                                         "hyper": {"seconds": 60, "term_exit": 0}}])
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    state = by_name(fleet)["slowpoke"]
    assert state.status is Status.FAILED, state
    assert "timeout after 2s (exit 0)" in state.last_error
    assert "SIGTERM, exiting 0" in state.last_error  # the log tail: it did exit 0
    assert_trailers_match(ledger.path)


def test_after_runs_downstream_on_upstream_artifact_and_says_blocked(tmp_path: Path) -> None:
    jobs = [{"name": "down", "seed": 2, "after": ["up"]},
            {"name": "up", "seed": 1, "hyper": {"seconds": 1.0}},
            {"name": "bad", "seed": 3, "hyper": {"exit_code": 3}},
            {"name": "stuck", "seed": 4, "after": ["bad"]}]
    fleet, ledger = fleet_of(tmp_path, jobs)
    cap = tmp_path / "cap.json"
    cap.write_text(json.dumps(CPU_CAPABILITY))

    def explain() -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "worker.cli", "explain", "--ledger", fleet.url, "--name",
             "cpu1", "--capability", str(cap), "--state-dir", str(tmp_path / "explain"),
             "--json"], capture_output=True, text=True, timeout=60, check=True)
        return {r["name"]: r for r in json.loads(out.stdout)["jobs"]}

    before = explain()
    assert before["down"]["eligible"] is False
    assert before["down"]["reasons"] == ["waiting for upstream 'up' (pending)"]
    assert before["up"]["eligible"] is True
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    states = by_name(fleet)
    assert states["down"].status is Status.COMPLETED and states["up"].status is Status.COMPLETED
    assert states["bad"].status is Status.FAILED and states["stuck"].status is Status.PENDING
    # the downstream was claimed only after the upstream's completion commit
    history = ledger.transitions()
    up_id, down_id = states["up"].job_id, states["down"].job_id
    done_at = next(i for i, (_, j, _, t, _) in enumerate(history)
                   if j == up_id and t == "running->completed")
    claims = [i for i, (_, j, _, t, _) in enumerate(history)
              if j == down_id and t == "pending->claimed"]
    assert claims and min(claims) > done_at
    # and its outputs prove it read the upstream's artifact from TRAINLEDGER_INPUTS
    up_dir = unpacked(fleet, states["up"].artifact.sha256, tmp_path / "up")
    down_dir = unpacked(fleet, states["down"].artifact.sha256, tmp_path / "down")
    expected = hashlib.sha256((up_dir / "weights.bin").read_bytes()).hexdigest()
    assert json.loads((down_dir / "inputs.json").read_text()) == {"up": expected}
    assert "event=inputs job=down attempt=1 upstream=up" in w.text()
    # a failed upstream blocks its downstream, in explain and in status
    assert explain()["stuck"]["reasons"] == [
        "blocked: upstream 'bad' failed (requeue it to run this job)"]
    doc = json.loads(subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "status", "--ledger", fleet.url, "--json"],
        capture_output=True, text=True, timeout=60, check=True).stdout)
    row = next(j for j in doc["jobs"] if j["name"] == "stuck")
    assert row["after"] == ["bad"] and row["upstream"][0].startswith("blocked: upstream 'bad'")
    assert any(u["name"] == "stuck" and u["reasons"][0].startswith("blocked")
               for u in doc["unschedulable"])
    assert_trailers_match(ledger.path)


def fsck(fleet: Fleet, *extra: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "reconciler.cli", "fsck", "--ledger", fleet.url,
                          "--store", str(fleet.store), "--json", *extra],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout, out.stderr
    return json.loads(out.stdout)


def test_a_graceful_release_records_the_checkpoint_the_next_attempt_resumes_from(
        tmp_path: Path) -> None:
    fleet, ledger = fleet_of(tmp_path, [{"name": "long", "hyper": {"seconds": 12, "steps": 40}}],
                             checkpoint_every_s=0)
    a = fleet.start_worker("alpha")
    log = a.state_dir / "logs"
    wait_for(lambda: any("progress: 0.10" in p.read_text() for p in log.glob("long-*.log")),
             timeout=120, what="alpha's trainer to pass step 4")
    a.signal(signal.SIGTERM)
    assert a.wait(60) == 0, a.text()
    state = by_name(fleet)["long"]
    assert state.status is Status.PENDING and state.lost == 0
    assert state.checkpoint is not None and state.checkpoint.attempt == 1
    saved = state.checkpoint.sha256
    assert fsck(fleet)["bundles"]["missing"] == []  # the checkpoint is in the store
    b = fleet.start_worker("beta", "--exit-when-idle")
    assert b.wait(120) == 0, b.text()
    state = by_name(fleet)["long"]
    assert state.status is Status.COMPLETED and state.checkpoint is None
    trainer_log = next((b.state_dir / "logs").glob("long-*-2.log")).read_text()
    step = int(trainer_log.split("quick: resumed at step ")[1].split()[0])
    assert step >= 4 and "(checkpoint of attempt 1)" in trainer_log
    assert f"event=resume job=long attempt=2 checkpoint_attempt=1 sha256={saved}" in b.text()
    assert not (b.state_dir / "checkpoints" / state.job_id).exists()
    # the completed job no longer references it: fsck lists it, --fix removes it once old
    report = fsck(fleet)["bundles"]
    assert report["stale_checkpoints"] == [saved]
    bundle = fleet.store / "sha256" / saved[:2] / f"{saved}.tar.zst"
    os.utime(bundle, (time.time() - 7200, time.time() - 7200))
    fixed = fsck(fleet, "--fix")["bundles"]
    assert fixed["stale_checkpoints_removed"] == [saved] and not bundle.exists()
    assert state.artifact.sha256 not in fixed["stale_checkpoints_removed"]
    assert (fleet.store / "sha256" / state.artifact.sha256[:2]
            / f"{state.artifact.sha256}.tar.zst").exists()
    assert_trailers_match(ledger.path)


def test_a_corrupt_upstream_artifact_is_refused_and_spends_claims(tmp_path: Path) -> None:
    fleet, ledger = fleet_of(tmp_path, [{"name": "up", "seed": 1},
                                        {"name": "down", "seed": 2, "after": ["up"]}])
    first = fleet.start_worker("alpha", "--max-jobs", "1")
    assert first.wait(120) == 0, first.text()
    up = by_name(fleet)["up"]
    assert up.status is Status.COMPLETED
    bundle = fleet.store / "sha256" / up.artifact.sha256[:2] / f"{up.artifact.sha256}.tar.zst"
    os.chmod(bundle, 0o644)
    bundle.write_bytes(b"x" * up.artifact.size)  # same size: only the sha256 can tell
    w = fleet.start_worker("beta", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    down = by_name(fleet)["down"]
    # never started: each claim gave the job back, spending one of max_attempts (3);
    # the last one spends the budget and fails the job, as a sweep's would (lost 3)
    assert down.status is Status.FAILED and down.lost == 3 and down.attempt == 3
    assert down.last_error.startswith("inputs could not be unpacked on beta: upstream job 'up'")
    assert "does not re-hash to its name" in down.last_error
    assert "event=start job=down" not in w.text()
    assert_trailers_match(ledger.path)


def test_status_selects_a_sweeps_points(tmp_path: Path, capsys) -> None:
    """`status --sweep NAME` lists exactly that sweep's points, each row naming it."""
    from reconciler.cli.main import main

    sweep = ('\n[[sweeps]]\nname = "lr-grid"\nmodel = "quick"\n'
             'grid = { lr = [0.1, 0.2, 0.3] }\nseed = [0, 1]\n')
    led = make_ledger(tmp_path, 2, extra=sweep)
    assert main(["run", "--ledger", led.url, "--once"]) == 0
    capsys.readouterr()
    assert main(["status", "--ledger", led.url, "--sweep", "lr-*", "--json"]) == 0
    jobs = json.loads(capsys.readouterr().out)["jobs"]
    assert len(jobs) == 6 and {j["sweep"] for j in jobs} == {"lr-grid"}
    assert main(["status", "--ledger", led.url, "--json"]) == 0
    every = json.loads(capsys.readouterr().out)["jobs"]
    assert len(every) == 8 and sum(j["sweep"] is None for j in every) == 2
