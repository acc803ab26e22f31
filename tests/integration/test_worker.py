"""The worker against a real bare ledger (hooks installed), with real trainer subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ledgerkit import make_ledger, manifest_text
from reconciler.git.ledger import Ledger
from reconciler.git.push import Proposal
from reconciler.protocol import trailers
from reconciler.protocol.schema import TERMINAL, Status
from workerkit import CPU_CAPABILITY, Fleet, pid_alive, wait_for

pytestmark = pytest.mark.slow


def fleet_of(tmp_path: Path, jobs, **fleet) -> Fleet:
    ledger = make_ledger(tmp_path, jobs=jobs, fleet=fleet or None)
    return Fleet(ledger.url, tmp_path, ledger.store)


def all_terminal(fleet: Fleet):
    states = fleet.states()
    return states if states and all(s.status in TERMINAL for s in states.values()) else None


def operator_write(fleet: Fleet, job_name: str, change) -> None:
    ledger = Ledger(fleet.url, fleet.root / "operator.git", "operator")

    def build(snap):
        state = next(s for s in snap.states.values() if s.name == job_name)
        new, label, meaning = change(state)
        return Proposal.of_states(
            [new], [trailers.Change(state.job_id, state.name, state.attempt, label, meaning)])

    ledger.write(build)
    ledger.close()


def test_two_workers_complete_twenty_jobs_exactly_once(tmp_path: Path) -> None:
    # Given 20 quick jobs, held back (allowed_hosts is not part of a job's identity)
    # until both workers are up, so a slow start cannot leave one of them idle
    specs = [{"name": f"job-{i:02d}", "seed": i, "hyper": {"seconds": 0.3}} for i in range(20)]
    fleet = fleet_of(tmp_path, [{**s, "allowed_hosts": ["gate"]} for s in specs])
    a = fleet.start_worker("alpha")
    b = fleet.start_worker("beta")
    try:
        wait_for(lambda: len(git_refs(fleet.url, "refs/heartbeats/")) == 2,
                 what="both workers' first heartbeat")
        # When the operator opens the jobs to everyone
        push_manifest(fleet.url, tmp_path / "op", manifest_text(specs))
        wait_for(lambda: all(s.status is Status.COMPLETED for s in fleet.states().values()),
                 timeout=180, every=0.5, what="every job to complete")
    finally:
        a.stop()
        b.stop()
    assert a.proc.returncode == 0 and b.proc.returncode == 0, a.text() + b.text()
    # Then every job completed exactly once, and both workers trained some
    states = fleet.states()
    assert len(states) == 20
    assert all(s.status is Status.COMPLETED for s in states.values()), states
    history = make_ledger_history(fleet)
    completions = Counter(job for _, job, _, t, _ in history if t == "running->completed")
    assert set(completions.values()) == {1} and len(completions) == 20
    claimers = Counter(actor for _, _, _, t, actor in history if t == "pending->claimed")
    assert claimers["alpha"] > 0 and claimers["beta"] > 0, claimers
    for state in states.values():
        bundle = fleet.store / "sha256" / state.artifact.sha256[:2] / \
            f"{state.artifact.sha256}.tar.zst"
        assert bundle.stat().st_size == state.artifact.size


def git_refs(url: str, prefix: str) -> list[str]:
    out = subprocess.run(["git", "-C", url, "for-each-ref", "--format=%(refname)", prefix],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def push_manifest(url: str, clone: Path, text: str) -> None:
    """An operator's plain `git commit` + `git push` of the manifest."""
    subprocess.run(["git", "clone", "-q", url, str(clone)], check=True)
    (clone / "manifest.toml").write_text(text)
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", "open the jobs"], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True,
                   env={**os.environ, "TRAINLEDGER_IDENTITY": "operator"})


def make_ledger_history(fleet: Fleet):
    from ledgerkit import LedgerDir

    return LedgerDir(fleet.url, Path(fleet.url), fleet.store, fleet.root).transitions()


def test_operator_cancel_stops_the_running_trainer(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, [{"name": "long", "hyper": {"seconds": 120}}],
                     heartbeat_s=0.3, stale_after_s=5)
    w = fleet.start_worker("alpha")
    try:
        wait_for(lambda: any(s.status is Status.RUNNING for s in fleet.states().values()),
                 what="the job to run")
        pid = wait_for(lambda: w.trainer_pids(), what="the trainer pid")[0]
        assert pid_alive(pid)
        # When the operator cancels it by a commit
        operator_write(fleet, "long", lambda s: (
            s.model_copy(update={"status": Status.CANCELLED, "holder": None}),
            "running->cancelled", "cancel"))
        # Then the trainer is gone within a few beats, and the job stays cancelled
        wait_for(lambda: not pid_alive(pid), timeout=10, what="the trainer to stop")
        wait_for(lambda: "event=revoked" in w.text(), timeout=10, what="the revoke event")
        state = next(iter(fleet.states().values()))
        assert state.status is Status.CANCELLED and state.artifact is None
    finally:
        w.stop()
    assert next(iter(fleet.states().values())).status is Status.CANCELLED


def test_sigterm_releases_the_job_and_another_worker_completes_it(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, [{"name": "slow", "hyper": {"seconds": 6}}])
    a = fleet.start_worker("alpha")
    wait_for(lambda: any(s.status is Status.RUNNING for s in fleet.states().values()),
             what="alpha to run the job")
    pid = wait_for(lambda: a.trainer_pids(), what="trainer pid")[0]
    # When alpha gets SIGTERM
    a.signal(signal.SIGTERM)
    assert a.wait(60) == 0, a.text()
    # Then the job is pending again with its budget unchanged, and the trainer is gone
    state = next(iter(fleet.states().values()))
    assert state.status is Status.PENDING and state.lost == 0 and state.attempt == 1
    assert not pid_alive(pid)
    # And another worker completes it
    b = fleet.start_worker("beta", "--exit-when-idle")
    assert b.wait(120) == 0, b.text()
    state = next(iter(fleet.states().values()))
    assert state.status is Status.COMPLETED and state.attempt == 2


def test_trainer_exit_code_fails_the_job_with_the_log_tail(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, [{"name": "broken", "hyper": {"exit_code": 3}}])
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(60) == 0, w.text()
    state = next(iter(fleet.states().values()))
    assert state.status is Status.FAILED
    assert "exit 3" in state.last_error
    assert "failing on purpose with 3" in state.last_error  # the log tail


def test_identical_outputs_give_one_bundle(tmp_path: Path) -> None:
    # Two jobs whose outputs are identical (they differ only in --seconds)
    fleet = fleet_of(tmp_path, [{"name": "a", "seed": 7, "hyper": {"seconds": 0.1}},
                                {"name": "b", "seed": 7, "hyper": {"seconds": 0.2}}])
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(60) == 0, w.text()
    states = list(fleet.states().values())
    assert {s.status for s in states} == {Status.COMPLETED}
    assert states[0].artifact == states[1].artifact
    # one artifact bundle, plus the attempts' log bundles (identical logs: one)
    logs = {s.log.sha256 for s in states if s.log}
    assert len(list((fleet.store / "sha256").rglob("*.tar.zst"))) == 1 + len(logs)


def test_explain_says_why_a_cpu_host_may_not_take_cuda_jobs(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, [{"name": "needs-gpu", "require_cuda": True, "seed": 1},
                                {"name": "likes-gpu", "prefer_cuda": True, "seed": 2},
                                {"name": "anywhere", "seed": 3}])
    cap = tmp_path / "cap.json"
    cap.write_text(json.dumps(CPU_CAPABILITY))
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "explain", "--ledger", fleet.url, "--name", "cpu1",
         "--capability", str(cap), "--state-dir", str(tmp_path / "explain"), "--json"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)["jobs"]}
    assert json.loads(proc.stdout)["worker"] == "cpu1"
    assert rows["anywhere"]["eligible"] is True and rows["anywhere"]["reasons"] == []
    assert rows["needs-gpu"]["eligible"] is False
    assert any("CUDA" in r for r in rows["needs-gpu"]["reasons"])
    assert rows["likes-gpu"]["eligible"] is False
    assert any("prefer_cuda" in r for r in rows["likes-gpu"]["reasons"])


def test_capability_json_has_the_contract_keys() -> None:
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "capability", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cap = json.loads(proc.stdout)
    for key in ("hostname", "cpu_cores", "ram_total_gib", "ram_available_gib", "cuda_available",
                "cuda_devices", "torch_version", "xgboost_version", "os", "arch",
                "trainledger_version"):
        assert key in cap


def test_worker_sigkill_takes_its_trainer_with_it(tmp_path: Path) -> None:
    fleet = fleet_of(tmp_path, [{"name": "orphan", "hyper": {"seconds": 120}}])
    w = fleet.start_worker("alpha")
    pid = wait_for(lambda: w.trainer_pids(), what="the trainer pid")[0]
    w.signal(signal.SIGKILL)
    w.wait(10)
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the trainer to die with its worker")

