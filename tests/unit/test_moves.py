"""Every move constructor of transitions.py builds a change the table accepts,
with the label derived from the two states and the meaning the table gives it;
and the store-failure budget follows the sweep's rule (budget_spent)."""

from __future__ import annotations

import pytest

from reconciler.protocol import transitions as t
from reconciler.protocol.state import Artifact, JobState, Status
from reconciler.protocol.transitions import Actor, Move, Role, check_transition

JOB = "0123456789abcdef"
W1 = Actor("w1", Role.WORKER)
OP = Actor("alice", Role.OPERATOR)
REC = Actor("reconciler", Role.RECONCILER)
MAX = 3
ART = Artifact(sha256="a" * 64, size=10)


def pending(**kw) -> JobState:
    return JobState(job_id=JOB, name="gbt-small", status=Status.PENDING, **kw)


def claimed(lost: int = 0) -> JobState:
    return t.claim(pending(attempt=1, lost=lost), "w1").new


def running(lost: int = 0) -> JobState:
    return t.start(claimed(lost)).new


CASES = [
    ("create", lambda: t.create(JOB, "gbt-small"), REC, "new->pending"),
    ("claim", lambda: t.claim(pending(attempt=1), "w1"), W1, "pending->claimed"),
    ("start", lambda: t.start(claimed()), W1, "claimed->running"),
    ("complete", lambda: t.complete(running(), ART), W1, "running->completed"),
    ("fail", lambda: t.fail(running(), "exit 1"), W1, "running->failed"),
    ("fail claimed", lambda: t.fail(claimed(), "no start"), W1, "claimed->failed"),
    ("release", lambda: t.release(running(), "stopping"), W1, "running->pending"),
    ("release spent", lambda: t.release(claimed(), "x", spend=True), W1, "claimed->pending"),
    ("give back", lambda: t.give_back(running(), "store", MAX), W1, "running->pending"),
    ("give back last", lambda: t.give_back(running(MAX - 1), "store", MAX), W1,
     "running->failed"),
    ("sweep", lambda: t.sweep(running(), MAX, "silent"), REC, "running->pending"),
    ("sweep last", lambda: t.sweep(claimed(MAX - 1), MAX, "silent"), REC, "claimed->failed"),
    ("cancel op", lambda: t.cancel(running(), "by hand"), OP, "running->cancelled"),
    ("cancel rec", lambda: t.cancel(pending(), "cancel = true"), REC, "pending->cancelled"),
    ("requeue", lambda: t.requeue(t.complete(running(), ART).new), OP, "completed->pending"),
    ("open", lambda: t.open_to_cpu(pending()), REC, "pending->pending"),
    ("rename", lambda: t.rename(running(), "gbt-renamed"), REC, "running->running"),
    ("retry", lambda: t.retry(running(), "exit 4"), W1, "running->pending"),
    ("fail trainer", lambda: t.fail_trainer(running(), "exit 4"), W1, "running->failed"),
    ("checkpoint", lambda: t.record_checkpoint(running(), "c" * 64, 7), W1,
     "running->running"),
    ("import", lambda: t.import_result(pending(), ART), OP, "pending->completed"),
    ("release with checkpoint", lambda: t.release(running(), "stopping", checkpoint=ART), W1,
     "running->pending"),
]


@pytest.mark.parametrize(("name", "make", "actor", "label"), CASES, ids=[c[0] for c in CASES])
def test_every_move_is_legal_and_labelled_by_its_states(name, make, actor, label) -> None:
    step = make()
    assert step.label == label
    verdict = check_transition(step.old, step.new, actor, max_attempts=MAX)
    assert verdict.label == step.label
    assert verdict.meaning == step.move.value
    change = step.change
    assert (change.job_id, change.attempt, change.transition, change.meaning) == \
        (JOB, step.new.attempt, label, step.move.value)


def test_every_move_has_a_constructor() -> None:
    """A new Move needs its constructor (issue 15 adds retry, checkpoint, block)."""
    built = {make().move for _, make, _, _ in CASES} | {Move.RESTORE}
    assert built == set(Move)


def test_the_store_failure_spends_budget_like_a_sweep() -> None:
    for lost in range(MAX):
        store, swept = t.give_back(running(lost), "store", MAX), t.sweep(running(lost), MAX, "s")
        assert (store.new.status, store.new.lost) == (swept.new.status, swept.new.lost)
        assert store.new.lost == lost + 1
        assert (store.move is Move.FAIL) == (store.new.status is Status.FAILED)
        assert store.move in (Move.FAIL, Move.RELEASE)


def test_a_restore_goes_back_to_the_legal_state_and_says_so() -> None:
    legal, illegal = running(), running().model_copy(update={"holder": "w2"})
    step = t.restore(illegal, legal)
    assert (step.old, step.new, step.move, step.label) == \
        (illegal, legal, Move.RESTORE, "running->running")
