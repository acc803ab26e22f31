"""Sizes bounded by construction and names git can use (issue 19, findings 3, 4, 7),
against real parts: a ledger with its hook for beats, real trainer subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest

from ledgerkit import make_ledger, manifest_text
from reconciler.daemon.report import Report
from reconciler.git.ledger import Ledger
from reconciler.protocol.access import load_access
from reconciler.protocol.errors import AccessDenied
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.schema import Capability, Heartbeat
from worker.beat import Beater, Held
from worker.runner import TrainerRun
from workerkit import CPU_CAPABILITY

BAD_NAMES = ["w1.lock", "a..b", "host."]
HOOK_LIMIT = 64 * 1024


def spec(command: list[str]):
    loaded = load_manifest(manifest_text([{"name": "j", "seed": 1}]).encode())
    return replace(next(iter(loaded.specs.values())), command=tuple(command))


# ------------------------------------------------------------------- 4: names


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_refused_by_access_toml(name: str) -> None:
    with pytest.raises(AccessDenied, match="is not a valid name"):
        load_access(f'workers = ["{name}"]\n'.encode())


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_refused_by_enroll(tmp_path: Path, name: str) -> None:
    key = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    led = make_ledger(tmp_path, jobs=1)
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "enroll", name, "--pubkey",
                           f"{key}.pub", "--ledger", str(led.path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and f"{name!r}: not a valid name" in proc.stderr, proc.stderr


def test_worker_name_refused_before_it_claims(tmp_path: Path) -> None:
    """`worker run --name w1.lock` claimed 30 jobs in 30 s: its beats could never land."""
    led = make_ledger(tmp_path, jobs=1)
    cap = tmp_path / "cap.json"
    cap.write_text(json.dumps(CPU_CAPABILITY))
    proc = subprocess.run([sys.executable, "-m", "worker.cli", "run", "--ledger", led.url,
                           "--name", "w1.lock", "--store", str(led.store), "--capability",
                           str(cap), "--state-dir", str(tmp_path / "w"), "--exit-when-idle",
                           "--max-jobs", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stderr
    assert "--name 'w1.lock': not a valid name" in proc.stderr, proc.stderr
    assert "pending->claimed" not in led.git("log", "--format=%B", "main")


# ------------------------------------------------------ 3: the reconciler's report


def test_report_bounded_with_thousands_of_orphans() -> None:
    orphans = [f"{i:016x}" for i in range(3300)]
    workers = {f"w{i}": float(i) for i in range(2000)}
    findings = ["\U0001f600" * 5000 for _ in range(50)]
    report = Report(orphans=orphans, workers=workers, findings=findings,
                    last_error="\U0001f600" * 100_000).as_dict()
    beat = Heartbeat(worker="reconciler", seq=1, sent_at=0.0, report=report)
    size = len(json.dumps(beat.model_dump(mode="json", exclude_none=True), sort_keys=True))
    assert size < 56 * 1024, size
    assert report["orphans_count"] == 3300 and report["workers_count"] == 2000
    assert report["orphans"] == orphans[:len(report["orphans"])]


# ------------------------------------------------------------ 4: a beat's size


def test_beat_of_twelve_slots_printing_long_non_ascii_lines(tmp_path: Path) -> None:
    """Twelve 512-character lines of astral characters are 74 KiB once JSON-escaped:
    the hook refused every beat. The beat must land whatever the trainers print."""
    led = make_ledger(tmp_path, jobs=1)
    ledger = Ledger(led.url, tmp_path / "beat.git", "alpha")
    line = "\U0001f600" * 512
    held = [Held(f"{i:016x}", f"job-{i}", 1, 0.5, line) for i in range(12)]
    beater = Beater(ledger, "alpha", Capability(**CPU_CAPABILITY), 12, lambda: held,
                    lambda *_: None, lambda: 1.0)
    try:
        assert beater.beat_once(), beater.last_error if hasattr(beater, "last_error") else ""
    finally:
        ledger.close()
    size = int(led.git("cat-file", "-s", "refs/heartbeats/alpha"))
    assert size < HOOK_LIMIT
    message = led.git("cat-file", "commit", "refs/heartbeats/alpha").split("\n\n", 2)[-1]
    beat = Heartbeat.model_validate_json(message)
    assert [(j.job_id, j.attempt) for j in beat.jobs] == [(h.job_id, 1) for h in held]


# --------------------------------------------------- 7: a trainer's output in bytes


def run_trainer(tmp_path: Path, code: str) -> TrainerRun:
    run = TrainerRun(spec([sys.executable, "-c", code]), 1, tmp_path / "attempt",
                     tmp_path / "logs" / "j.log", exited=threading.Event())
    run.start(0.0)
    assert run._proc is not None
    run._proc.wait(timeout=120)
    assert run.poll(1.0).returncode == 0
    return run


def test_long_lines_keep_memory_and_log_bounded(tmp_path: Path) -> None:
    """40 lines of 16 MiB took the worker to 740 MiB RSS and a 640 MiB log; here
    6 lines of 4 MiB, measured by the worker's own allocations."""
    code = "import sys\nfor i in range(6): sys.stdout.write('\u00e9' * (2 << 20) + '\\n')\n"
    tracemalloc.start()
    try:
        run = run_trainer(tmp_path, code)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"peak {peak} bytes while reading 24 MiB of output"
    log = run.log_path.read_bytes()
    assert len(log) < 6 * 64 * 1024, len(log)
    assert log.count(b"bytes of this line cut]") == 6
    assert len(run.log_tail(1 << 30).encode()) <= 64 * 1024


def test_log_file_keeps_its_newest_part_under_the_cap(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import worker.logcap

    monkeypatch.setattr(worker.logcap, "LOG_CAP", 256 * 1024)
    code = "for i in range(40000): print(f'line {i:06d} ' + 'x' * 80)\n"
    run = run_trainer(tmp_path, code)
    log = run.log_path.read_bytes()
    assert len(log) <= 256 * 1024 + 4096, len(log)
    assert log.rstrip().endswith(b"line 039999 " + b"x" * 80)
    assert b"older bytes dropped]" in log.splitlines()[0]
