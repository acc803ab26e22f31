"""Rows of the bad-input matrix (tests/BAD_INPUTS.md) that had no test of their own
(tests/BAD_INPUTS.md maps every row). Real ledgers from `reconciler init`,
hooks installed, plain `git push` from a real clone."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ledgerkit import make_ledger

MAX_INPUT = 16 << 20  # receive.maxInputSize that `reconciler init` sets


def test_a_huge_blob_is_stopped_by_receive_max_input_size(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=1)
    assert led.git("config", "--get", "receive.maxInputSize").strip() == str(MAX_INPUT)
    clone = tmp_path / "clone"
    env = {**os.environ, "TRAINLEDGER_IDENTITY": "operator",
           "GIT_AUTHOR_NAME": "operator", "GIT_COMMITTER_NAME": "operator"}

    def git(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True,
                              env=env, check=check)

    subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True, env=env,
                   capture_output=True)
    # incompressible, so the pack itself is over the cap
    (clone / "huge.bin").write_bytes(os.urandom(MAX_INPUT + (1 << 20)))
    git("add", "huge.bin")
    git("commit", "-q", "-m", "a huge blob")
    blob = git("rev-parse", "HEAD:huge.bin").stdout.strip()
    before = led.git("rev-parse", "main").strip()

    proc = git("push", "origin", "HEAD:refs/heads/main", check=False)

    assert proc.returncode != 0, proc.stderr
    # git itself refuses the pack, before the hook ever sees it
    assert "pack exceeds maximum allowed size" in proc.stderr, proc.stderr
    assert "trainledger: refused:" not in proc.stderr
    assert led.git("rev-parse", "main").strip() == before
    gone = subprocess.run(["git", "-C", str(led.path), "cat-file", "-e", blob],
                          capture_output=True)
    assert gone.returncode != 0
