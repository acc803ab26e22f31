"""Every (from, to) pair of statuses for every role: legal exactly where TABLE says,
with the fencing rules, and refusals that name job, attempt, holder and rule."""

from __future__ import annotations

import itertools

import pytest

from reconciler.errors import IllegalTransition
from reconciler.state import HELD, JobState, Status
from reconciler.transitions import TABLE, Actor, Role, check_transition

JOB = "0123456789abcdef"
W = Actor("w1", Role.WORKER)
OTHER = Actor("w2", Role.WORKER)
OP = Actor("operator", Role.OPERATOR)
REC = Actor("reconciler", Role.RECONCILER)
MAX = 3
ART = {"sha256": "a" * 64, "size": 10}


def state(status: Status, attempt: int = 2, holder: str | None = "w1", lost: int = 0,
          **kw) -> JobState:
    held = status in HELD
    return JobState(job_id=JOB, name="job", status=status, attempt=attempt,
                    holder=holder if held else None, lost=lost,
                    artifact=ART if status is Status.COMPLETED else None, **kw)


def natural(old: Status, new: Status, actor: Actor) -> tuple[JobState, JobState]:
    """The most plausible legal-looking change of this kind by this actor."""
    o = state(old)
    update: dict = {"status": new}
    if new in HELD:
        update["holder"] = actor.name if actor.role is Role.WORKER else "w1"
    else:
        update["holder"] = None
    if old is Status.PENDING and new is Status.CLAIMED:
        o = state(old, attempt=1)
        update["attempt"] = 2
    if new is Status.COMPLETED:
        update["artifact"] = ART
    elif old is Status.COMPLETED:
        update["artifact"] = None
    if actor.role is Role.RECONCILER and old in HELD and new in (Status.PENDING, Status.FAILED):
        update["lost"] = o.lost + 1
        if new is Status.FAILED:
            o = state(old, lost=MAX - 1)
            update["lost"] = MAX
    if old is new is Status.PENDING:
        update["cpu_ok"] = True
    return o, o.model_copy(update=update)


PAIRS = list(itertools.product(Status, Status))


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{a.value}->{b.value}" for a, b in PAIRS])
@pytest.mark.parametrize("actor", [W, OP, REC], ids=lambda a: a.role.value)
def test_every_pair_for_every_role(old: Status, new: Status, actor: Actor) -> None:
    allowed = {role for role, _, _ in TABLE.get((old, new), [])}
    if old is new:
        allowed.add(Role.RECONCILER)  # a rewrite without a transition (a rename) is its own
    before, after = natural(old, new, actor)
    if actor.role in allowed:
        verdict = check_transition(before, after, actor, max_attempts=MAX)
        assert verdict.label == f"{old.value}->{new.value}"
    else:
        with pytest.raises(IllegalTransition) as err:
            check_transition(before, after, actor, max_attempts=MAX)
        assert "job job (0123456789abcdef)" in str(err.value)


def test_fencing_another_workers_job_is_refused_naming_holder_and_attempt() -> None:
    old = state(Status.RUNNING)
    new = old.model_copy(update={"status": Status.COMPLETED, "holder": None, "artifact": ART})
    with pytest.raises(IllegalTransition) as err:
        check_transition(old, new, OTHER, max_attempts=MAX)
    text = str(err.value)
    assert "attempt 2" in text and "held by w1" in text and "not w2" in text
    assert err.value.job_id == JOB and err.value.attempt == 2 and err.value.holder == "w1"


@pytest.mark.parametrize("attempt", [1, 3])
def test_stale_or_future_attempt_is_refused(attempt: int) -> None:
    old = state(Status.RUNNING)
    new = old.model_copy(update={"status": Status.FAILED, "holder": None, "attempt": attempt})
    with pytest.raises(IllegalTransition, match="attempt"):
        check_transition(old, new, W, max_attempts=MAX)


@pytest.mark.parametrize("attempt", [1, 3, 4])
def test_a_claim_raises_the_attempt_by_exactly_one(attempt: int) -> None:
    old = state(Status.PENDING, attempt=1)
    new = old.model_copy(update={"status": Status.CLAIMED, "holder": "w1", "attempt": attempt})
    if attempt == 2:
        return
    with pytest.raises(IllegalTransition, match="raise the attempt by one"):
        check_transition(old, new, W, max_attempts=MAX)


def test_sweep_boundary_pending_then_failed() -> None:
    below = state(Status.RUNNING, lost=MAX - 2)
    to_pending = below.model_copy(update={"status": Status.PENDING, "holder": None,
                                          "lost": MAX - 1})
    assert check_transition(below, to_pending, REC, max_attempts=MAX).meaning == "sweep"
    at = state(Status.RUNNING, lost=MAX - 1)
    wrong = at.model_copy(update={"status": Status.PENDING, "holder": None, "lost": MAX})
    with pytest.raises(IllegalTransition, match="budget spent"):
        check_transition(at, wrong, REC, max_attempts=MAX)


def test_requeue_resets_the_budget_and_keeps_the_attempt() -> None:
    old = state(Status.FAILED, attempt=3, lost=MAX)
    ok = old.model_copy(update={"status": Status.PENDING, "lost": 0})
    assert check_transition(old, ok, OP, max_attempts=MAX).meaning == "requeue"
    for bad in ({"lost": 1}, {"attempt": 0}):
        with pytest.raises(IllegalTransition):
            check_transition(old, ok.model_copy(update=bad), OP, max_attempts=MAX)


def test_only_the_reconciler_creates_fresh_pending_state() -> None:
    fresh = JobState(job_id=JOB, name="job", status=Status.PENDING)
    assert check_transition(None, fresh, REC, max_attempts=MAX).label == "new->pending"
    for actor in (W, OP):
        with pytest.raises(IllegalTransition, match="only the reconciler"):
            check_transition(None, fresh, actor, max_attempts=MAX)
    with pytest.raises(IllegalTransition):
        check_transition(None, fresh.model_copy(update={"attempt": 5}), REC, max_attempts=MAX)
    with pytest.raises(IllegalTransition, match="never deleted"):
        check_transition(fresh, None, REC, max_attempts=MAX)
