"""The trainer's argv, environment and progress lines (pure helpers of worker/runner.py)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ledgerkit import manifest_text
from reconciler.protocol.manifest import load_manifest
from worker.runner import parse_progress, trainer_argv, trainer_env, visible_device


def spec(**hyper):
    loaded = load_manifest(manifest_text([{"name": "j", "seed": 1, "hyper": hyper}]).encode())
    return next(iter(loaded.specs.values()))


def test_argv_is_the_command_plus_hyper_flags_with_dashes() -> None:
    s = replace(spec(exit_code=3, lr=0.5), command=("python", "-m", "x"))
    assert trainer_argv(s) == [sys.executable, "-m", "x", "--exit-code", "3", "--lr", "0.5"]


def test_env_is_clean_and_names_the_job(tmp_path: Path) -> None:
    s = spec()
    env = trainer_env(s, 4, tmp_path / "out", tmp_path / "spec.json", None,
                      base={"PATH": "/bin", "SECRET_TOKEN": "x", "CUDA_VISIBLE_DEVICES": "1"})
    assert "SECRET_TOKEN" not in env and env["PATH"] == "/bin"
    assert env["TRAINLEDGER_JOB_ID"] == s.job_id and env["TRAINLEDGER_ATTEMPT"] == "4"
    assert env["TRAINLEDGER_OUTPUT_DIR"] == str(tmp_path / "out")
    assert env["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.parametrize(("device", "parent", "expected"), [
    (None, "2,3", ""), (0, "2,3", "2"), (1, "2, 3", "3"), (1, None, "1"), (5, "0", "5"),
])
def test_device_maps_through_the_workers_own_visible_devices(device, parent, expected) -> None:
    assert visible_device(device, parent) == expected


@pytest.mark.parametrize(("line", "value"), [
    ("progress: 0.42", 0.42), ("progress: 42%", 0.42), ("  progress:1", 1.0),
    ("progress: 7", 1.0), ("loss: 0.3", None), ("progress: nan", None),
])
def test_progress_lines(line: str, value: float | None) -> None:
    assert parse_progress(line) == value
