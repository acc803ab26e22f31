"""A worker started natively on Windows refuses at start-up and points to WSL2,
instead of crashing on its first claim with the job held."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker.cli import main


def test_native_windows_worker_refuses_before_touching_the_ledger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "platform", "win32")
    state = tmp_path / "state"
    code = main(["run", "--ledger", str(tmp_path / "no-ledger.git"), "--name", "winbox",
                 "--state-dir", str(state)])
    err = capsys.readouterr().err
    assert code == 1
    assert "WSL2" in err and "install-worker-windows.ps1" in err
    assert not state.exists(), "it refused only after creating its state"
