"""Revoking a host by deleting its `authorized_keys` line (issue 19, finding 2).

sshd reads the file only when a connection authenticates, and the worker's
ControlMaster connection, used several times a second, never idled out: a
revoked host went on claiming and completing. The master is now renewed every
period (min(10 s, heartbeat_s)), so the documented revocation stops the host's
writes within two heartbeats, and the reconciler sweeps what it held."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ledgerkit import make_ledger
from reconciler.protocol.schema import Status
from workerkit import Fleet, wait_for

if TYPE_CHECKING:
    from conftest import SshServer

pytestmark = pytest.mark.ssh

HEARTBEAT_S, STALE_S = 1.0, 4.0


def commit_times(ledger_path: Path, rev: str, author: str) -> list[int]:
    out = subprocess.run(["git", "-C", str(ledger_path), "log", "--format=%an %ct", rev],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [int(line.split()[1]) for line in out if line.split()[:1] == [author]]


def test_deleting_the_key_line_stops_writes_within_two_heartbeats(
        sshd: SshServer, tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "long", "hyper": {"seconds": 60, "steps": 60}}],
                      fleet={"heartbeat_s": HEARTBEAT_S, "stale_after_s": STALE_S})
    alpha = sshd.enroll("alpha", led.path, led.store)
    blob = Path(f"{alpha.key}.pub").read_text().split()[1]
    rec_log = (tmp_path / "reconciler.log").open("ab")
    rec = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "run", "--ledger", led.url,
                            "--state-dir", str(tmp_path / "rec")], stdout=rec_log,
                           stderr=subprocess.STDOUT)
    fleet = Fleet(sshd.url(led.path), tmp_path, led.store)
    reader = Fleet(led.url, tmp_path, led.store)  # the test reads the Pi's ledger locally
    try:
        w = fleet.start_worker("alpha", "--store", sshd.url(led.store), env=alpha.env)

        def job():
            return next(iter(reader.states(tmp_path / "reader.git").values()))
        wait_for(lambda: job().status is Status.RUNNING, timeout=90, what="alpha to run")
        wait_for(lambda: commit_times(led.path, "refs/heartbeats/alpha", "alpha"),
                 what="alpha's first beat")
        # When the operator deletes alpha's line (and nothing else)
        keys = sshd.authorized_keys.read_text().splitlines(keepends=True)
        kept = [line for line in keys if blob not in line]
        assert len(kept) == len(keys) - 1
        revoked_at = time.time()
        sshd.authorized_keys.write_text("".join(kept))
        # Then the reconciler sweeps the job: alpha's beats stopped landing
        wait_for(lambda: job().status is not Status.RUNNING, timeout=60,
                 what="the held job to be swept")
        assert w.proc.poll() is None, w.text()
        sweep = led.git("log", "-1", "--format=%B", "--grep=sweep", "main")
        assert "no sign of life from alpha" in sweep
        # and nothing alpha made after two heartbeats landed (commit times are whole
        # seconds of alpha's own clock, the test's clock: one more second of rounding)
        cutoff = revoked_at + 2 * HEARTBEAT_S + 1
        late = [t for ref in ("refs/heartbeats/alpha", "main")
                for t in commit_times(led.path, ref, "alpha") if t > cutoff]
        assert late == [], f"alpha wrote {len(late)} commit(s) after {cutoff - revoked_at:.0f}s"
    finally:
        fleet.stop_all()
        rec.terminate()
        rec.wait(30)
