"""The systemd units the install scripts write pass `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def render(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"%{key}%", value)
    assert "%" not in text.replace("%%", ""), "a placeholder was left unrendered"
    return text


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed here")
@pytest.mark.parametrize("unit", ["trainledger-worker", "trainledger-reconciler"])
def test_units_verify(unit: str, repo_root: Path, tmp_path: Path) -> None:
    venv_bin = tmp_path / "prefix" / "bin"
    venv_bin.mkdir(parents=True)
    for exe in ("worker", "reconciler"):
        (venv_bin / exe).write_text("#!/bin/sh\nexit 0\n")
        (venv_bin / exe).chmod(0o755)
    text = render(repo_root / "scripts" / "systemd" / f"{unit}.service.in", {
        "NAME": "desktop", "BIN": str(venv_bin), "USER": "root", "SLOTS": "2",
        "LEDGER": "ssh://pi/srv/ledger.git", "STORE_ARG": "--store ssh://pi/srv/store",
        "STATE_DIR": str(tmp_path / "state"), "GIT_SSH_COMMAND": "ssh -i /k",
    })
    path = tmp_path / f"{unit}.service"
    path.write_text(text)
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True,
                          text=True, timeout=60)
    # verify exits 0 even for unparseable lines, so any complaint about our file fails
    problems = [ln for ln in proc.stderr.splitlines() if str(path) in ln]
    assert proc.returncode == 0 and not problems, proc.stderr
    assert "Type=notify" in text and "Restart=always" in text and "WatchdogSec=" in text


def test_install_worker_requires_a_ledger(repo_root: Path) -> None:
    proc = subprocess.run(["bash", str(repo_root / "scripts" / "install-worker.sh")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "--ledger URL is required" in proc.stderr
