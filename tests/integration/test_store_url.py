"""The store a worker uses: one manifest setting for every host, and an
scp-style `--store host:path` that is ssh, never a local directory `./host:`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import make_ledger
from workerkit import CPU_CAPABILITY, Fleet, wait_for

pytestmark = pytest.mark.slow
FAST = {"heartbeat_s": 0.3, "stale_after_s": 5, "max_attempts": 3}


def start(tmp_path: Path, url: str, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    cwd = tmp_path / f"cwd-{name}"
    cwd.mkdir()
    cap = tmp_path / f"{name}.json"
    cap.write_text(json.dumps({**CPU_CAPABILITY, "hostname": name}))
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run", "--ledger", url,
                             "--name", name, "--state-dir", str(tmp_path / f"state-{name}"),
                             "--capability", str(cap), "--poll-s", "0.2", *extra],
                            cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    return proc, cwd


def test_scp_style_store_is_ssh_and_never_a_local_dir(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}], fleet=FAST)
    fleet = Fleet(led.url, tmp_path, led.store)
    proc, cwd = start(tmp_path, led.url, "w1", "--store", "nohost.invalid:/srv/store",
                      "--max-jobs", "1")
    try:
        state = wait_for(lambda: (s := next(iter(fleet.states().values())))
                         and s.last_error and s, timeout=120, what="the store failure")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    log = (tmp_path / "w1.log").read_text()
    assert "artifacts go to ssh://nohost.invalid/srv/store (over ssh)" in log
    assert "nohost.invalid" in state.last_error and state.status.value in ("pending", "failed")
    assert list(cwd.iterdir()) == [], "the worker wrote into its working directory"
    assert not list(tmp_path.rglob("nohost.invalid:*"))


def test_the_manifests_store_is_beside_the_ledger_for_every_host(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}], fleet=FAST)
    assert 'store = "store"' in led.git("show", "main:manifest.toml")
    proc, cwd = start(tmp_path, led.url, "w2", "--exit-when-idle")
    assert proc.wait(timeout=120) == 0
    log = (tmp_path / "w2.log").read_text()
    assert f"artifacts go to {led.store} on this host" in log
    state = next(iter(Fleet(led.url, tmp_path, led.store).states().values()))
    assert state.status.value == "completed" and state.artifact is not None
    sha = state.artifact.sha256
    assert (led.store / "sha256" / sha[:2] / f"{sha}.tar.zst").is_file()
    assert list(cwd.iterdir()) == []
