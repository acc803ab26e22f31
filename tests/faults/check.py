"""Check C of RELIABILITY.md, run after every fault row."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ledgerkit import LedgerDir
from reconciler.fsck import fsck
from reconciler.ledger import Ledger
from reconciler.state import TERMINAL, JobState, Status
from workerkit import wait_for


def states(led: LedgerDir) -> dict[str, JobState]:
    ledger = Ledger(led.url, led.root / "check.git", "check")
    try:
        return ledger.snapshot(ledger.fetch()).states
    finally:
        ledger.close()


def check_c(led: LedgerDir, *, max_attempts: int, deadline_s: float = 120.0) -> dict:
    """(a) all terminal by a deadline; (b) one ->completed per job, attempts +1 per
    claim; (c) every transition legal for its actor (fsck --history); (d) bundles
    exist and re-hash; (e) git fsck clean; (f) no ref locks or store temp files;
    (g) failed only with the budget spent or a trainer error. Returns fsck's report."""
    final = wait_for(lambda: (s := states(led)) and all(x.status in TERMINAL
                                                         for x in s.values()) and s,
                     timeout=deadline_s, every=0.5, what="every job to be terminal (C.a)")
    completions: dict[tuple[str, int], int] = defaultdict(int)
    claims: dict[str, list[int]] = defaultdict(list)
    for _, job, attempt, transition, _ in led.transitions():
        if transition.endswith("->completed"):
            completions[(job, attempt)] += 1
        if transition == "pending->claimed":
            claims[job].append(attempt)
    assert all(n == 1 for n in completions.values()), f"C.b: {dict(completions)}"
    for job_id, state in final.items():
        if state.status is Status.COMPLETED:
            assert completions[(job_id, state.attempt)] == 1, f"C.b: {state.name}"
        assert claims[job_id] == list(range(1, len(claims[job_id]) + 1)), \
            f"C.b: {state.name} attempts {claims[job_id]}"
        if state.status is Status.FAILED:
            assert state.lost >= max_attempts or "trainer" in (state.last_error or "") \
                or "store failed" in (state.last_error or ""), f"C.g: {state}"
    report = fsck(led.url, str(led.store), fix=False, with_history=True)
    assert report["history"]["findings"] == [], f"C.c: {report['history']['findings']}"
    assert not report["bundles"]["missing"] and not report["bundles"]["corrupt"], \
        f"C.d: {report['bundles']}"
    assert report["repository"]["git_fsck_ok"], f"C.e: {report['repository']}"
    assert report["repository"]["locks"] == [], f"C.f: {report['repository']['locks']}"
    assert list(Path(led.store).glob("sha256/*/.put-*")) == [], "C.f: store temp files left"
    hist = report["history"]
    print(f"check C ok: {len(final)} jobs terminal, {hist['commits']} commits, "
          f"{hist['claims']} claims, {hist['completions']} completions, 0 findings, "
          f"{report['bundles']['referenced']} bundles verified, git fsck clean, no locks")
    return report
