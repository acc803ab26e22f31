"""Checkpoint and resume end to end: a torch example trainer whose worker is
SIGKILLed mid-run is swept by the reconciler, resumes on another worker from
the last checkpoint the ledger recorded, completes, and ends with the same
model bytes as a run that was never interrupted. Real ledger with hooks, real
reconciler and worker processes, real torch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from auditkit import assert_trailers_match
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.schema import Status
from reconciler.rules.init import init_ledger
from reconciler.store.unpack import unpack
from workerkit import Fleet, pid_alive, wait_for

pytestmark = pytest.mark.slow
PACED = Path(__file__).resolve().parents[1] / "trainers" / "paced_mlp.py"
HYPER = {"epochs": 6, "n_samples": 400, "hidden": 16}


def manifest(pause_after: int) -> str:
    argv = json.dumps([sys.executable, str(PACED), "--pause-after", str(pause_after)])
    hyper = ", ".join(f"{k} = {v}" for k, v in HYPER.items())
    return f"""schema_version = 1
name = "resume"

[fleet]
heartbeat_s = 0.5
stale_after_s = 4
max_attempts = 3
checkpoint_every_s = 0.2

[trainers.mlp]
command = {argv}
hyper = {json.dumps(list(HYPER))}

[[jobs]]
name = "mlp-resume"
model = "mlp"
seed = 5
hyper = {{ {hyper} }}
"""


def bundle(store: Path, sha256: str) -> Path:
    return store / "sha256" / sha256[:2] / f"{sha256}.tar.zst"


def recorded_epoch(fleet: Fleet, scratch: Path) -> int | None:
    """The epoch in the checkpoint the ledger records now (read from the store)."""
    state = next(iter(fleet.states().values()))
    if state.checkpoint is None:
        return None
    dest = scratch / f"{state.checkpoint.sha256}-{len(list(scratch.iterdir()))}"
    unpack(bundle(fleet.store, state.checkpoint.sha256), dest)
    return json.loads((dest / "checkpoint.json").read_text())["epoch"]


def uninterrupted_model(text: str, root: Path) -> bytes:
    """The same job run straight through, outside any worker."""
    spec = next(iter(load_manifest(text.encode()).specs.values()))
    out = root / "out"
    out.mkdir(parents=True)
    (root / "spec.json").write_text(json.dumps(spec.to_json()))
    argv = [sys.executable, "-m", "worker.examples.mlp"]
    for key, value in HYPER.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"], "CUDA_VISIBLE_DEVICES": "",
           "TRAINLEDGER_OUTPUT_DIR": str(out), "TRAINLEDGER_SPEC": str(root / "spec.json"),
           "TRAINLEDGER_JOB_ID": spec.job_id, "TRAINLEDGER_ATTEMPT": "1"}
    proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return (out / "model.pt").read_bytes()


def test_a_sigkilled_workers_job_resumes_elsewhere_with_identical_model(tmp_path: Path) -> None:
    text = manifest(pause_after=3)
    template = tmp_path / "template"
    template.mkdir()
    (template / "manifest.toml").write_text(text)
    ledger, store = tmp_path / "ledger.git", tmp_path / "store"
    init_ledger(ledger, template=template, store=store)
    fleet = Fleet(str(ledger), tmp_path, store)
    log = (tmp_path / "reconciler.log").open("ab")
    rec = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "run", "--ledger",
                            str(ledger), "--state-dir", str(tmp_path / "rec")],
                           stdout=log, stderr=subprocess.STDOUT)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    a = fleet.start_worker("alpha")
    b = None
    try:
        # alpha's trainer is held after epoch 3; wait until that checkpoint is recorded
        wait_for(lambda: recorded_epoch(fleet, scratch) == 3, timeout=180, every=0.3,
                 what="the epoch-3 checkpoint in the ledger")
        trainer = a.trainer_pids()[0]
        a.signal(signal.SIGKILL)
        a.wait(30)
        wait_for(lambda: not pid_alive(trainer), timeout=30, what="alpha's trainer to die")
        # the reconciler sweeps alpha's claim; beta resumes from the recorded checkpoint
        b = fleet.start_worker("beta")
        done = wait_for(lambda: next(iter(fleet.states().values())).status is Status.COMPLETED,
                        timeout=240, every=0.3, what="the job to complete on beta")
        assert done
    finally:
        for w in (a, b):
            if w is not None:
                w.stop()
        rec.send_signal(signal.SIGTERM)
        rec.wait(timeout=60)
    state = next(iter(fleet.states().values()))
    assert state.attempt == 2 and state.lost == 1 and state.checkpoint is None
    assert "event=resume job=mlp-resume attempt=2 checkpoint_attempt=1" in b.text()
    trainer_log = next((b.state_dir / "logs").glob("mlp-resume-*-2.log")).read_text()
    assert "resuming from epoch 3 of 6 (checkpoint saved by attempt 1)" in trainer_log
    assert "paused" not in trainer_log
    # the resumed job's model is byte-identical to an uninterrupted run's
    out = tmp_path / "artifact"
    unpack(bundle(store, state.artifact.sha256), out)
    assert (out / "model.pt").read_bytes() == uninterrupted_model(text, tmp_path / "straight")
    assert_trailers_match(ledger)
