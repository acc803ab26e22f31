"""The guide's hardening (hook in a root-owned core.hooksPath) never wedges the
reconciler: a hand-made operator commit the hook accepted is kept, and one
action the hook refuses is reported without blocking the others."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import LedgerDir, make_ledger, manifest_text
from reconciler.daemon.loop import Reconciler, recheck_needed
from reconciler.git.ledger import Ledger
from reconciler.protocol.state import Status
from reconciler.rules.hookpath import server_hooks_dir
from reconciler.rules.recheck import Rechecker
from workerkit import wait_for

pytestmark = pytest.mark.slow
FAST = {"heartbeat_s": 0.3, "stale_after_s": 2.5, "max_attempts": 3, "prefer_cuda_grace_s": 1}
JOBS = [{"name": "x", "seed": 1}, {"name": "y", "seed": 2}]


def git(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def move_hook(led: LedgerDir, hooks: Path, setting: str) -> None:
    """§1 of the guide: the hook goes to its own directory, the ledger's copy is removed."""
    hooks.mkdir(parents=True, exist_ok=True)
    shutil.copy2(led.path / "hooks" / "pre-receive", hooks / "pre-receive")
    git("-C", str(led.path), "config", "core.hooksPath", setting)
    (led.path / "hooks" / "pre-receive").unlink()


def status(led: LedgerDir) -> dict:
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "status", "--ledger", led.url,
                           "--json"], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(proc.stdout)


def report(led: LedgerDir) -> dict:
    return (status(led).get("reconciler") or {}).get("report") or {}


def hand_cancel(led: LedgerDir, clone: Path, job: str) -> None:
    """§5 by hand: status -> cancelled, committed under a personal name with no role,
    pushed with the operator's identity."""
    if not clone.exists():
        git("clone", "-q", led.url, str(clone))
    git("-C", str(clone), "pull", "-q", "--rebase")
    path = next(p for p in (clone / "state").rglob("*.json")
                if json.loads(p.read_text())["name"] == job)
    state = json.loads(path.read_text())
    state["status"] = "cancelled"
    path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    person = {"GIT_AUTHOR_NAME": "Alice Smith", "GIT_AUTHOR_EMAIL": "alice@example.org",
              "GIT_COMMITTER_NAME": "Alice Smith", "GIT_COMMITTER_EMAIL": "alice@example.org"}
    message = (f"cancel {job} by alice (attempt 0)\n\nLedger-Job: {state['job_id']}\n"
               "Ledger-Attempt: 0\nLedger-Transition: pending->cancelled\nLedger-Actor: alice\n")
    git("-C", str(clone), "commit", "-qam", message, env=person)
    git("-C", str(clone), "push", "-q", "origin", "HEAD:main",
        env={"TRAINLEDGER_IDENTITY": "operator"})


def add_job(led: LedgerDir, clone: Path, jobs: list[dict]) -> None:
    git("-C", str(clone), "pull", "-q", "--rebase")
    (clone / "manifest.toml").write_text(manifest_text(jobs, FAST))
    git("-C", str(clone), "commit", "-qam", "manifest: one more job",
        env={"GIT_AUTHOR_NAME": "Alice Smith", "GIT_AUTHOR_EMAIL": "alice@example.org"})
    git("-C", str(clone), "push", "-q", "origin", "HEAD:main",
        env={"TRAINLEDGER_IDENTITY": "operator"})


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_the_hook_is_found_where_git_runs_it(tmp_path: Path, where: str) -> None:
    led = make_ledger(tmp_path, jobs=JOBS, fleet=FAST)
    assert not recheck_needed(led.url)
    hooks = tmp_path / "etc-hooks" if where == "absolute" else led.path / "server-hooks"
    move_hook(led, hooks, str(hooks) if where == "absolute" else "server-hooks")
    assert server_hooks_dir(led.path) == hooks
    assert not recheck_needed(led.url), "the moved hook was not found: re-checking turned on"
    (hooks / "pre-receive").unlink()
    assert recheck_needed(led.url)


def test_a_hand_made_cancel_under_a_personal_name_is_kept(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=JOBS, fleet=FAST)
    move_hook(led, tmp_path / "etc" / "trainledger" / "hooks",
              str(tmp_path / "etc" / "trainledger" / "hooks"))
    log = (tmp_path / "reconciler.log").open("ab")
    rec = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "run", "--ledger", led.url,
                            "--state-dir", str(tmp_path / "rec"), "--tick-s", "0.3"],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: report(led).get("passes"), what="the first pass")
        clone = tmp_path / "alice"
        hand_cancel(led, clone, "x")
        cancelled = git("-C", str(led.path), "rev-parse", "main").strip()
        # a later operator commit is still applied: the reconciler creates the new job
        add_job(led, clone, [*JOBS, {"name": "z", "seed": 3}])
        doc = wait_for(lambda: (d := status(led)) and {j["name"] for j in d["jobs"]} ==
                       {"x", "y", "z"} and d, timeout=60, what="the new job's state file")
        first = report(led)["passes"]
        after = wait_for(lambda: (r := report(led)) and r["passes"] > first and r,
                         timeout=60, what="more passes")
    finally:
        rec.send_signal(signal.SIGTERM)
        assert rec.wait(timeout=30) == 0
    jobs = {j["name"]: j["status"] for j in doc["jobs"]}
    assert jobs == {"x": "cancelled", "y": "pending", "z": "pending"}
    assert not after.get("last_error") and not after.get("findings") \
        and not after.get("refused"), after
    subjects = git("-C", str(led.path), "log", "--format=%s", f"{cancelled}..main")
    assert "restore" not in subjects
    assert git("-C", str(led.path), "log", "-1", "--format=%an", cancelled).strip() \
        == "Alice Smith"


def test_a_refused_action_is_reported_and_the_others_still_go(tmp_path: Path) -> None:
    """A reconciler that (wrongly) re-checks a hooked ledger plans to restore the
    hand-made cancel; the hook refuses the restore: it is reported with its rule,
    dropped, and the pass still writes its other actions."""
    led = make_ledger(tmp_path, jobs=JOBS, fleet=FAST)
    ledger = Ledger(led.url, tmp_path / "rec.git", "reconciler")
    try:
        reconciler = Reconciler(ledger)
        reconciler.recheck = Rechecker(ledger.repo)  # as for a remote ledger: judge authors
        reconciler.pass_once()
        clone = tmp_path / "alice"
        hand_cancel(led, clone, "x")
        add_job(led, clone, [*JOBS, {"name": "z", "seed": 3}])
        reconciler.pass_once()  # the restore is refused; the create is written
        reconciler.pass_once()
        states = {s.name: s.status for s in ledger.snapshot(ledger.fetch()).states.values()}
        refused = reconciler.report.refused
    finally:
        ledger.close()
    assert states == {"x": Status.CANCELLED, "y": Status.PENDING, "z": Status.PENDING}
    assert [(r["job"], r["action"]) for r in refused] == [("x", "restore")]
    assert "refused" in refused[0]["rule"] and refused[0]["tip"]
    assert reconciler.report.last_error is None and reconciler.report.passes == 3
    assert "restore" not in git("-C", str(led.path), "log", "--format=%s", "main")


def test_install_hooks_server_rewrites_the_hook_where_git_runs_it(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=JOBS, fleet=FAST)
    hooks = tmp_path / "etc-hooks"
    move_hook(led, hooks, str(hooks))
    (hooks / "pre-receive").write_text("#!/bin/sh\n# an old installation's hook\nexit 1\n")
    cli = [sys.executable, "-m", "reconciler.cli", "install-hooks", "--server", str(led.path)]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"installed {hooks / 'pre-receive'}"
    text = (hooks / "pre-receive").read_text()
    assert text.startswith(f"#!{os.path.abspath(sys.executable)} -IS") and "reconciler.hook" in text
    assert not (led.path / "hooks" / "pre-receive").exists()
    # the rewritten hook judges pushes: a worker may not cancel
    clone = tmp_path / "w"
    git("clone", "-q", led.url, str(clone))
    path = next((clone / "state").rglob("*.json"))
    path.write_text(path.read_text().replace('"pending"', '"cancelled"'))
    git("-C", str(clone), "commit", "-qam", "cancel", env={"GIT_AUTHOR_NAME": "w1"})
    push = subprocess.run(["git", "-C", str(clone), "push", "origin", "HEAD:main"],
                          capture_output=True, text=True,
                          env={**os.environ, "TRAINLEDGER_IDENTITY": "w1"})
    assert push.returncode != 0 and "trainledger: refused" in push.stderr, push.stderr
    git("-C", str(led.path), "config", "core.hooksPath", str(tmp_path / "missing"))
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "does not exist" in proc.stderr
