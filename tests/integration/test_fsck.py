"""`reconciler fsck`: bundles, ref locks and the history replay (check C)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import time
from pathlib import Path

from ledgerkit import LedgerDir, make_ledger
from reconciler.cli.fsck import fsck
from reconciler.git.ledger import Ledger
from reconciler.git.push import Proposal
from reconciler.protocol import trailers
from reconciler.protocol.state import Status
from reconciler.store.local import LocalStore

OLD = time.time() - 3600


def commit_as(led: LedgerDir, who: str, change, job: str = "x") -> None:
    """One state change of `job` as `who`, through the ledger layer (the hook,
    when installed, judges it with `who` as the pusher)."""
    ledger = Ledger(led.url, led.root / f"as-{who}.git", who)

    def build(snap) -> Proposal:
        old = next(s for s in snap.states.values() if s.name == job)
        new = change(old)
        return Proposal.of_states([new], [trailers.Change(
            old.job_id, old.name, new.attempt, f"{old.status.value}->{new.status.value}", "x")])

    try:
        ledger.write(build)
    finally:
        ledger.close()


def to(status: Status, **kw: object):
    return lambda old: old.model_copy(update={"status": status, **kw})


def claim(worker: str, skip: int = 0):
    return lambda old: old.model_copy(update={"status": Status.CLAIMED, "holder": worker,
                                              "attempt": old.attempt + 1 + skip})


def complete_with(led: LedgerDir, data: bytes, worker: str = "alpha", job: str = "x") -> str:
    sha = hashlib.sha256(data).hexdigest()
    LocalStore(led.store).put(sha, io.BytesIO(data))
    commit_as(led, worker, claim(worker), job)
    commit_as(led, worker, to(Status.RUNNING), job)
    commit_as(led, worker, to(Status.COMPLETED, holder=None,
                              artifact={"sha256": sha, "size": len(data)}),
              job)
    return sha


def test_a_clean_ledger_is_ok_and_bad_bundles_are_named(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}, {"name": "y", "seed": 2}])
    sha_x = complete_with(led, b"bundle of x")
    report = fsck(led.url, str(led.store), fix=False, with_history=True)
    assert report["ok"], report
    assert report["history"] == {"commits": 4, "findings": [], "claims": 1, "completions": 1}
    assert report["bundles"]["referenced"] == 1 and report["bundles"]["unreferenced"] == []
    # a bundle that no longer re-hashes, one that is gone, one nobody references
    sha_y = complete_with(led, b"bundle of y", job="y")
    LocalStore(led.store).put(hashlib.sha256(b"orphan").hexdigest(), io.BytesIO(b"orphan"))
    path_x = LocalStore(led.store).path(sha_x)
    os.chmod(path_x, 0o644)
    path_x.write_bytes(b"bit rot")
    LocalStore(led.store).path(sha_y).unlink()
    report = fsck(led.url, str(led.store), fix=False, with_history=False)
    assert not report["ok"]
    assert report["bundles"]["corrupt"] == [{"job": "x", "sha256": sha_x, "kind": "artifact"}]
    assert report["bundles"]["missing"] == [{"job": "y", "sha256": sha_y, "kind": "artifact"}]
    assert report["bundles"]["unreferenced"] == [hashlib.sha256(b"orphan").hexdigest()]


def test_stale_ref_locks_are_removed_only_when_old_and_unheld(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=1)
    old, young, held = (led.path / "refs" / "heads" / f"{n}.lock" for n in ("a", "b", "c"))
    for lock in (old, young, held):
        lock.write_text("0" * 40 + "\n")
    os.utime(old, (OLD, OLD))
    os.utime(held, (OLD, OLD))
    with held.open() as _fd:  # this process holds it, as a push in progress would
        report = fsck(led.url, None, fix=True, with_history=False)
    locks = {Path(lk["path"]).name: lk for lk in report["repository"]["locks"]}
    assert locks["a.lock"]["removed"] and not old.exists()
    assert not locks["b.lock"]["removed"] and "younger" in locks["b.lock"]["kept_because"]
    assert not locks["c.lock"]["removed"] and locks["c.lock"]["holders"] == [os.getpid()]
    assert young.exists() and held.exists() and not report["ok"]


def test_dead_puts_temp_files_are_reported_and_removed_only_when_old(tmp_path: Path) -> None:
    """A worker killed mid-put leaves its temp file in the store: fsck names it,
    and --fix removes it once nothing has written to it for an hour."""
    led = make_ledger(tmp_path, jobs=1)
    tmp = led.store / "sha256" / ".tmp"
    tmp.mkdir(parents=True)
    dead, live = tmp / ".put-1-aaaaaa.tmp", tmp / ".put-2-bbbbbb.tmp"
    dead.write_bytes(b"half a bundle")
    live.write_bytes(b"a bundle being written")
    os.utime(dead, (OLD - 600, OLD - 600))  # over an hour untouched
    report = fsck(led.url, str(led.store), fix=False, with_history=False)
    assert report["bundles"]["temp_files"] == [str(dead), str(live)]
    assert report["bundles"]["temp_files_removed"] == [] and dead.exists()
    report = fsck(led.url, str(led.store), fix=True, with_history=False)
    assert report["bundles"]["temp_files_removed"] == [str(dead)] and not dead.exists()
    assert report["bundles"]["temp_files"] == [str(live)] and live.exists()


def test_history_replay_reports_what_a_missing_hook_let_through(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "x", "seed": 1}, {"name": "y", "seed": 2}],
                      hooks=False)
    commit_as(led, "alpha", claim("alpha"))
    commit_as(led, "beta", lambda old: old.model_copy(update={"holder": "beta"}))  # double
    commit_as(led, "gamma", claim("gamma", skip=1), job="y")  # attempt 0 -> 2
    # a commit whose trailer names another actor than its author
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    with (clone / "manifest.toml").open("a") as f:
        f.write("# a comment\n")
    subprocess.run(["git", "-C", str(clone), "commit", "-qam",
                    "comment\n\nLedger-Actor: reconciler"], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True)
    findings = fsck(led.url, None, fix=False, with_history=True)["history"]["findings"]
    text = "\n".join(findings)
    assert "double holder: beta took attempt 1 while alpha held attempt 1" in text
    assert "claimed->claimed by beta (worker) refused" in text  # the hook's rule, re-judged
    assert "claim with attempt 2 after 0 (skipped or reused)" in text
    assert "trailer Ledger-Actor 'reconciler' but author 'operator'" in text
    assert all(isinstance(f, str) for f in findings)

