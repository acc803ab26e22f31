"""The moves pipelines add to the state machine: retry (a trainer failure with
retries left), checkpoint (the holder records a saved checkpoint), and what
claim, complete, release and requeue must do with `failures` and `checkpoint`.
Each is judged by the same `check_transition` the hook runs."""

from __future__ import annotations

import json

import pytest

from reconciler.protocol.errors import IllegalTransition, StateError
from reconciler.protocol.state import Checkpoint, JobState, Status
from reconciler.protocol.transitions import (
    Actor,
    Role,
    check_transition,
    fail_trainer,
    record_checkpoint,
    retry,
)

JOB = "0123456789abcdef"
W1, W2 = Actor("w1", Role.WORKER), Actor("w2", Role.WORKER)
OP = Actor("alice", Role.OPERATOR)
CK = {"sha256": "c" * 64, "size": 7}


def running(**kw) -> JobState:
    return JobState(job_id=JOB, name="mlp", status=Status.RUNNING, attempt=3, holder="w1", **kw)


def judge(old: JobState, new: JobState, actor: Actor = W1) -> str:
    return check_transition(old, new, actor, max_attempts=3).meaning


def test_retry_is_the_holders_move_counting_one_failure() -> None:
    old = running(failures=1)
    step = retry(old, "trainer exit 4")
    new, change = step.new, step.change
    assert (new.status, new.holder, new.failures, new.lost) == (Status.PENDING, None, 2, 0)
    assert (change.transition, change.meaning, change.attempt) == ("running->pending", "retry", 3)
    assert judge(old, new) == "retry"
    with pytest.raises(IllegalTransition, match=r"retry: held by w1 \(attempt 3\), not w2"):
        judge(old, new, W2)


def test_a_release_may_not_count_a_failure_and_a_retry_counts_exactly_one() -> None:
    old = running()
    twice = old.model_copy(update={"status": Status.PENDING, "holder": None, "failures": 2,
                                   "last_error": "x"})
    with pytest.raises(IllegalTransition, match=r"retry: a retry counts one failure"):
        judge(old, twice)
    silent = retry(old, "").new
    with pytest.raises(IllegalTransition, match="a retry says why"):
        judge(old, silent)


def test_failing_with_no_retries_left_counts_the_failure() -> None:
    old = running(failures=1)
    step = fail_trainer(old, "timeout after 2s (exit 0)")
    new, change = step.new, step.change
    assert new.status is Status.FAILED and new.failures == 2 and change.meaning == "fail"
    assert judge(old, new) == "fail"
    jump = new.model_copy(update={"failures": 5})
    with pytest.raises(IllegalTransition, match="a failure counts once"):
        judge(old, jump)


def test_checkpoint_records_the_holders_own_attempt_and_nothing_else() -> None:
    old = running()
    step = record_checkpoint(old, CK["sha256"], CK["size"])
    new, change = step.new, step.change
    assert new.checkpoint == Checkpoint(CK["sha256"], CK["size"], 3)
    assert (change.transition, change.meaning) == ("running->running", "checkpoint")
    assert judge(old, new) == "checkpoint"
    with pytest.raises(IllegalTransition, match="not w2"):
        judge(old, new, W2)
    foreign = old.model_copy(update={"checkpoint": Checkpoint(CK["sha256"], 7, 2)})
    with pytest.raises(IllegalTransition, match="recorded by the attempt that saved it"):
        judge(old, foreign)
    with pytest.raises(IllegalTransition, match="may not change"):
        judge(old, new.model_copy(update={"lost": 1}))
    with pytest.raises(IllegalTransition, match="last_error may not change"):
        judge(new, new.model_copy(update={"last_error": "x"}))


def test_a_claim_carries_failures_and_checkpoint_unchanged() -> None:
    old = JobState(job_id=JOB, name="mlp", status=Status.PENDING, attempt=3, failures=1,
                   checkpoint=Checkpoint(CK["sha256"], 7, 3))
    claim = old.model_copy(update={"status": Status.CLAIMED, "attempt": 4, "holder": "w1"})
    assert judge(old, claim) == "claim"
    for update in ({"failures": 0}, {"checkpoint": None}):
        with pytest.raises(IllegalTransition, match="may not change"):
            judge(old, claim.model_copy(update=update))


def test_a_completed_state_holds_no_checkpoint() -> None:
    with pytest.raises(StateError, match="a completed job keeps no checkpoint"):
        JobState(job_id=JOB, name="mlp", status=Status.COMPLETED, attempt=3,
                 artifact={"sha256": "a" * 64, "size": 1}, checkpoint=CK | {"attempt": 3})


def test_a_graceful_release_may_record_its_own_checkpoint() -> None:
    old = running()
    new = old.model_copy(update={"status": Status.PENDING, "holder": None, "last_error": "bye",
                                 "checkpoint": Checkpoint(CK["sha256"], 7, 3)})
    assert judge(old, new) == "release"


@pytest.mark.parametrize(("failures", "legal"), [(0, True), (2, True), (1, False)])
def test_a_requeue_resets_or_keeps_failures(failures: int, legal: bool) -> None:
    old = JobState(job_id=JOB, name="mlp", status=Status.FAILED, attempt=3, failures=2,
                   last_error="x")
    new = old.model_copy(update={"status": Status.PENDING, "failures": failures})
    if legal:
        assert judge(old, new, OP) == "requeue"
    else:
        with pytest.raises(IllegalTransition, match="resets the retries or keeps them"):
            judge(old, new, OP)


def test_old_state_files_without_the_new_fields_still_parse() -> None:
    state = JobState.model_validate_json(
        json.dumps({"job_id": JOB, "name": "mlp", "status": "pending"}))
    assert state.failures == 0 and state.checkpoint is None
    with pytest.raises(StateError, match="checkpoint"):
        JobState.model_validate_json(json.dumps({
            "job_id": JOB, "name": "mlp", "status": "pending",
            "checkpoint": {"sha256": "zz", "size": 1, "attempt": 1}}))
