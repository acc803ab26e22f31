"""`reconciler validate` on bad manifests: exit 1, one message naming file, job and field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import manifest_text

GOOD = manifest_text([{"name": "alpha", "seed": 1, "hyper": {"lr": 0.1}}])


@pytest.mark.parametrize(("name", "mutate", "expected"), [
    ("misspelt-field", lambda t: t.replace('name = "alpha"', 'name = "alpha"\nseeed = 3'),
     ["job 'alpha'", "jobs[0]", "seeed"]),
    ("misspelt-hyper", lambda t: t.replace("lr = 0.1", "lrr = 0.1"),
     ["job 'alpha'", "lrr", "hyper"]),
    ("string-command", lambda t: t.replace("command = [", 'command = "python x" #['),
     ["trainers", "quick", "command"]),
    ("negative-ram", lambda t: t.replace('name = "alpha"', 'name = "alpha"\nmin_ram_gib = -4'),
     ["job 'alpha'", "min_ram_gib"]),
    ("toml-syntax", lambda t: t.replace('name = "alpha"', 'name = "alpha'),
     ["line", "column"]),
])
def test_validate_names_file_job_and_field(tmp_path: Path, name: str, mutate, expected) -> None:
    path = tmp_path / f"{name}.toml"
    path.write_text(mutate(GOOD))
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    message = proc.stderr
    assert str(path) in message
    for word in expected:
        assert word in message, message


def test_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(GOOD)
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok (1 jobs)" in proc.stdout


def test_schema_command_matches_the_docs(repo_root: Path) -> None:
    for which in ("manifest", "state", "capability"):
        proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "schema", which],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0
        assert proc.stdout == (repo_root / "docs" / f"{which}.schema.json").read_text()
