"""`reconciler install-hooks` puts a pre-commit hook in an operator's clone that
refuses a commit whose staged manifest does not validate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ledgerkit import make_ledger


def git(clone: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True,
                          check=check)


def test_pre_commit_refuses_a_bad_manifest_and_accepts_a_good_one(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=2)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "install-hooks", str(clone)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    manifest = clone / "manifest.toml"
    good = manifest.read_text()
    manifest.write_text(good.replace('name = "job-000"', 'name = "job-000"\nprioritty = 3'))
    git(clone, "add", "manifest.toml")
    refused = git(clone, "commit", "-m", "typo", check=False)
    assert refused.returncode != 0
    assert "prioritty" in refused.stderr and "job-000" in refused.stderr
    assert git(clone, "rev-list", "--count", "HEAD").stdout.strip() == "1"
    manifest.write_text(good.replace('name = "job-000"', 'name = "job-000"\npriority = 3'))
    git(clone, "add", "manifest.toml")
    assert git(clone, "commit", "-m", "raise priority", check=False).returncode == 0
