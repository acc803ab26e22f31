"""audit.py: trailers held against the state changes of a commit."""

from __future__ import annotations

from reconciler.protocol import trailers
from reconciler.protocol import transitions as t
from reconciler.protocol.audit import is_restore, trail_mismatches
from reconciler.protocol.state import JobState, Status

A, B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def pending(job: str) -> JobState:
    return JobState(job_id=job, name=f"job-{job[0]}", status=Status.PENDING)


def message(*steps: t.Step, kind: str | None = None) -> str:
    changes = [s.change for s in steps]
    return trailers.render(trailers.subject_for(changes, "w1"), changes, "w1", kind=kind)


def test_trailers_built_from_the_moves_match() -> None:
    a, b = t.claim(pending(A), "w1"), t.claim(pending(B), "w1")
    assert trail_mismatches("c" * 40, message(a, b), {A: (a.old, a.new), B: (b.old, b.new)}) \
        == []


def test_a_wrong_label_a_missing_job_and_an_extra_job_are_each_named() -> None:
    claim = t.claim(pending(A), "w1")
    give_back = t.give_back(t.start(claim.new).new, "store failed", 1)
    forged = trailers.render("x", [trailers.Change(A, "job-a", 1, "running->pending",
                                                   "release")], "w1")
    (line,) = trail_mismatches("c" * 40, forged, {A: (give_back.old, give_back.new)})
    assert "trailers say running->pending at attempt 1" in line
    assert "the state file running->failed at attempt 1" in line
    lines = trail_mismatches("c" * 40, message(claim), {B: (None, pending(B))})
    assert any(f"job-b ({B}) changed new->pending" in ln for ln in lines), lines
    assert any(f"job {A} pending->claimed" in ln and "does not change" in ln
               for ln in lines), lines


def test_a_commit_without_ledger_trailers_claims_nothing() -> None:
    step = t.claim(pending(A), "w1")
    assert trail_mismatches("c" * 40, "by hand\n", {A: (step.old, step.new)}) == []


def test_restores_are_known_by_their_kind_and_on_old_ledgers_by_subject() -> None:
    step = t.restore(t.claim(pending(A), "w2").new, pending(A))
    assert is_restore(message(step, kind=trailers.RESTORE))
    assert is_restore("restore job-a by reconciler (attempt 1)\n")  # before Ledger-Kind
    assert not is_restore(message(step, kind=trailers.MOVES))
