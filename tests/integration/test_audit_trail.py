"""The audit trail matches the state changes it describes: a real worker whose
store always fails spends the job's budget and fails it with trailers that say
so, and `reconciler fsck --history` reports a hand-forged trailer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import LedgerDir, make_ledger, manifest_text
from reconciler.cli.fsck import fsck
from reconciler.protocol import trailers
from reconciler.protocol.state import Status
from reconciler.rules.init import init_ledger
from workerkit import CPU_CAPABILITY, Fleet

pytestmark = pytest.mark.slow


def test_a_store_that_always_fails_spends_the_budget_and_the_trailers_say_so(
        tmp_path: Path) -> None:
    # Given [fleet] store is a regular file and max_attempts = 2
    store = tmp_path / "not-a-store"
    store.write_text("a regular file\n")
    template = tmp_path / "template"
    template.mkdir()
    (template / "manifest.toml").write_text(manifest_text(
        [{"name": "doomed", "seed": 1, "hyper": {"seconds": 0.1}}],
        {"max_attempts": 2, "store": str(store)}))
    url = tmp_path / "ledger.git"
    init_ledger(url, template=template)  # keeps the template's store
    # When a worker (no --store: the manifest's) runs until idle
    state_dir = tmp_path / "w1"
    state_dir.mkdir()
    cap = state_dir / "capability.json"
    cap.write_text(json.dumps({**CPU_CAPABILITY, "hostname": "w1"}))
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "run", "--ledger", str(url), "--name", "w1",
         "--state-dir", str(state_dir), "--capability", str(cap), "--poll-s", "0.2",
         "--exit-when-idle"], capture_output=True, text=True, timeout=240, env=os.environ)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Then the job failed on its second claim, its error names the store
    states = Fleet(str(url), tmp_path, store).states()
    (state,) = states.values()
    assert (state.status, state.attempt, state.lost) == (Status.FAILED, 2, 2), state
    assert state.last_error.startswith("store failed on w1:"), state.last_error
    assert str(store) in state.last_error, state.last_error
    # and every commit's trailers match the state files it changed
    history = LedgerDir(str(url), url, store, tmp_path).transitions()
    assert [(a, t, m) for _, _, a, t, m in history] == [
        (0, "new->pending", "reconciler"),
        (1, "pending->claimed", "w1"), (1, "claimed->running", "w1"),
        (1, "running->pending", "w1"),
        (2, "pending->claimed", "w1"), (2, "claimed->running", "w1"),
        (2, "running->failed", "w1"),
    ]
    report = fsck(str(url), None, fix=False, with_history=True)
    assert report["history"]["findings"] == [], report["history"]


def test_fsck_history_reports_a_hand_forged_trailer(tmp_path: Path) -> None:
    # Given a legal claim whose commit an operator typed by hand, with a trailer
    # that lies about the transition (keys in odd case, no space after the colon)
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}], hooks=False)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    (path,) = clone.glob("state/*/*.json")
    doc = json.loads(path.read_text())
    doc.update(status="claimed", attempt=1, holder="w1")
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    job = doc["job_id"]
    message = (f"claim x\n\nledger-job:{job}\nLEDGER-ATTEMPT: 1\n"
               "ledger-transition :  running->completed\nLedger-Actor: w1\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "w1", "GIT_AUTHOR_EMAIL": "w1@x",
           "GIT_COMMITTER_NAME": "w1", "GIT_COMMITTER_EMAIL": "w1@x"}
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", message], check=True, env=env)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True)
    # git itself reads those trailers, and so do we
    parsed = subprocess.run(["git", "-C", str(clone), "log", "-1", "--format=%(trailers)"],
                            capture_output=True, text=True, check=True).stdout
    assert "running->completed" in parsed
    assert trailers.changes_of(message) == [(job, 1, "running->completed")]
    # When fsck replays history, Then it names the commit, the job and both labels
    report = fsck(led.url, None, fix=False, with_history=True)
    findings = report["history"]["findings"]
    assert len(findings) == 1, findings
    assert "trailers say running->completed at attempt 1" in findings[0]
    assert "the state file pending->claimed at attempt 1" in findings[0]
    assert not report["ok"]
