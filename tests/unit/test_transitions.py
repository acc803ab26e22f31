"""The state machine, table-driven: every (from, to) pair of the six statuses for
each of the three roles, legal exactly where docs/architecture.md's diagram and "who may
write what" say; the fencing rules (holder and attempt); the sweep budget at the
max_attempts boundary; requeue; creation; and refusals that name the job, the
attempt, the holder and the rule."""

from __future__ import annotations

import itertools

import pytest

from reconciler.protocol.errors import IllegalTransition
from reconciler.protocol.state import HELD, JobState, Status
from reconciler.protocol.transitions import TABLE, Actor, Role, check_transition

P, C, R = Status.PENDING, Status.CLAIMED, Status.RUNNING
DONE, FAIL, CANC = Status.COMPLETED, Status.FAILED, Status.CANCELLED
JOB = "0123456789abcdef"
W1 = Actor("w1", Role.WORKER)
W2 = Actor("w2", Role.WORKER)
OP = Actor("alice", Role.OPERATOR)
REC = Actor("reconciler", Role.RECONCILER)
ACTORS = {Role.WORKER: W1, Role.OPERATOR: OP, Role.RECONCILER: REC}
MAX = 3
ART = {"sha256": "a" * 64, "size": 10}

# The contract, written out independently of TABLE: (from, to) -> roles.
LEGAL: dict[tuple[Status, Status], set[Role]] = {
    (P, C): {Role.WORKER},  # claim
    (C, R): {Role.WORKER},  # start
    (R, DONE): {Role.WORKER},  # complete
    (C, FAIL): {Role.WORKER, Role.RECONCILER},  # trainer failed / sweep, budget spent
    (R, FAIL): {Role.WORKER, Role.RECONCILER},
    (C, P): {Role.WORKER, Role.RECONCILER},  # release / sweep
    (R, P): {Role.WORKER, Role.RECONCILER},
    (P, CANC): {Role.OPERATOR, Role.RECONCILER},  # cancel (the reconciler applies cancel = true)
    (C, CANC): {Role.OPERATOR, Role.RECONCILER},
    (R, CANC): {Role.OPERATOR, Role.RECONCILER},
    (FAIL, P): {Role.OPERATOR},  # requeue
    (CANC, P): {Role.OPERATOR},
    (DONE, P): {Role.OPERATOR},
    (P, P): {Role.RECONCILER},  # prefer_cuda grace opens (cpu_ok)
    (R, R): {Role.WORKER},  # the holder records a checkpoint
    (P, DONE): {Role.OPERATOR},  # import-seed: the seed fleet's verified result
}


def st(status: Status, attempt: int = 2, holder: str = "w1", lost: int = 0, **kw) -> JobState:
    return JobState(job_id=JOB, name="gbt-small", status=status, attempt=attempt,
                    holder=holder if status in HELD else None, lost=lost,
                    artifact=ART if status is DONE else None, **kw)


def to(old: JobState, status: Status, **update) -> JobState:
    """`old` moved to `status`, keeping what the rules keep unless told otherwise."""
    base: dict = {"status": status}
    if status not in HELD:
        base["holder"] = None
    if status is DONE:
        base["artifact"] = ART
    elif old.status is DONE:
        base["artifact"] = None
    return old.model_copy(update={**base, **update})


def natural(old_status: Status, new_status: Status, actor: Actor) -> tuple[JobState, JobState]:
    """The change a well-behaved `actor` would make, were it allowed to make it."""
    old = st(old_status, attempt=1 if old_status is P else 2)
    update: dict = {}
    if old_status is P and new_status is C:
        update = {"attempt": 2, "holder": actor.name}
    elif new_status in HELD:
        update = {"holder": actor.name if actor.role is Role.WORKER else "w1"}
    if actor.role is Role.RECONCILER and old_status in HELD and new_status in (P, FAIL):
        if new_status is FAIL:
            old = st(old_status, lost=MAX - 1)
        update = {"lost": old.lost + 1}
    if old_status in (FAIL, CANC, DONE) and new_status is P:
        old = st(old_status, lost=1)
        update = {"lost": 0}
    if old_status is new_status:  # pending: the grace opens; else no transition at all
        update = {"cpu_ok": True} if old_status is P else {"last_error": "rewritten"}
        if old_status is R and actor.role is Role.WORKER:  # running: a checkpoint
            old = st(R, holder=actor.name)
            update = {"checkpoint": {"sha256": "c" * 64, "size": 5, "attempt": old.attempt}}
    return old, to(old, new_status, **update)


PAIRS = list(itertools.product(Status, Status))


def test_the_table_is_the_contract() -> None:
    assert {k: {role for role, _, _ in rows} for k, rows in TABLE.items()} == LEGAL


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_every_pair_for_every_role(old: Status, new: Status, role: Role) -> None:
    actor = ACTORS[role]
    before, after = natural(old, new, actor)
    if role in LEGAL.get((old, new), set()):
        verdict = check_transition(before, after, actor, max_attempts=MAX)
        assert verdict.label == f"{old}->{new}"
        return
    with pytest.raises(IllegalTransition) as err:
        check_transition(before, after, actor, max_attempts=MAX)
    text = str(err.value)
    assert f"job gbt-small ({JOB}) attempt {before.attempt}" in text
    assert f"{old}->{new} by {actor}" in text
    if before.status in HELD:
        assert "held by w1" in text
    rule = text.split(" refused: ", 1)[1]
    if (old, new) in LEGAL:
        assert rule == f"only {' or '.join(sorted(r.value for r in LEGAL[(old, new)]))} may make it"
    else:
        assert rule == "not a transition of the state machine"
    assert (err.value.job_id, err.value.attempt, err.value.holder) == (
        JOB, before.attempt, before.holder)


@pytest.mark.parametrize("status", list(Status), ids=str)
def test_a_rename_is_the_reconcilers_alone(status: Status) -> None:
    old = st(status)
    renamed = old.model_copy(update={"name": "gbt-renamed"})
    assert check_transition(old, renamed, REC, max_attempts=MAX).meaning == "rename"
    for actor in (W1, OP):
        with pytest.raises(IllegalTransition, match="only the reconciler rewrites"):
            check_transition(old, renamed, actor, max_attempts=MAX)


# ---------------------------------------------------------------------- fencing

FENCED = [(C, R, "start"), (R, DONE, "complete"), (C, FAIL, "fail"), (R, FAIL, "fail"),
          (C, P, "release"), (R, P, "release")]
FENCED_IDS = [f"{m}:{a}->{b}" for a, b, m in FENCED]


@pytest.mark.parametrize(("old_status", "new_status", "meaning"), FENCED, ids=FENCED_IDS)
def test_the_holder_may_and_another_worker_may_not(old_status: Status, new_status: Status,
                                                   meaning: str) -> None:
    old = st(old_status, attempt=4)
    new = to(old, new_status)
    assert check_transition(old, new, W1, max_attempts=MAX).meaning == meaning
    with pytest.raises(IllegalTransition) as err:
        check_transition(old, new, W2, max_attempts=MAX)
    text = str(err.value)
    assert text.startswith(f"job gbt-small ({JOB}) attempt 4, held by w1: ")
    assert f"{meaning}: held by w1 (attempt 4), not w2" in text
    assert (err.value.job_id, err.value.attempt, err.value.holder) == (JOB, 4, "w1")


@pytest.mark.parametrize(("old_status", "new_status", "meaning"), FENCED, ids=FENCED_IDS)
@pytest.mark.parametrize("attempt", [3, 5, 1], ids=["stale", "skipped", "reduced-by-3"])
def test_a_fenced_change_must_name_the_held_attempt(old_status: Status, new_status: Status,
                                                    meaning: str, attempt: int) -> None:
    old = st(old_status, attempt=4)
    with pytest.raises(IllegalTransition) as err:
        check_transition(old, to(old, new_status, attempt=attempt), W1, max_attempts=MAX)
    assert f"{meaning}: stale attempt {attempt}: the ledger holds attempt 4" in str(err.value)
    assert err.value.attempt == 4


@pytest.mark.parametrize("attempt", [1, 3, 4, 7])
def test_a_claim_raises_the_attempt_by_exactly_one(attempt: int) -> None:
    old = st(P, attempt=1)
    new = to(old, C, attempt=attempt, holder="w1")
    if attempt == 2:
        assert check_transition(old, new, W1, max_attempts=MAX).meaning == "claim"
    else:
        with pytest.raises(IllegalTransition, match=r"raise the attempt by one \(1 -> 2\)"):
            check_transition(old, new, W1, max_attempts=MAX)


def test_the_first_claim_is_attempt_one() -> None:
    old = st(P, attempt=0)
    assert check_transition(old, to(old, C, attempt=1, holder="w1"), W1, max_attempts=MAX)


def test_a_worker_claims_only_for_itself() -> None:
    old = st(P, attempt=0)
    with pytest.raises(IllegalTransition, match=r"claims only for itself \(holder w2, pusher w1\)"):
        check_transition(old, to(old, C, attempt=1, holder="w2"), W1, max_attempts=MAX)


@pytest.mark.parametrize("update", [{"lost": 1}, {"cpu_ok": True}])
def test_a_claim_keeps_budget_and_grace(update: dict) -> None:
    old = st(P, attempt=0)
    with pytest.raises(IllegalTransition, match="may not change"):
        check_transition(old, to(old, C, attempt=1, holder="w1", **update), W1,
                         max_attempts=MAX)


@pytest.mark.parametrize(("new_lost", "legal"), [(0, True), (1, True), (2, False)])
def test_a_release_keeps_the_budget_or_spends_one_claim(new_lost: int, legal: bool) -> None:
    old = st(R, lost=0)
    new = to(old, P, lost=new_lost)
    if legal:
        assert check_transition(old, new, W1, max_attempts=MAX).meaning == "release"
    else:
        with pytest.raises(IllegalTransition, match="keeps the budget or spends one"):
            check_transition(old, new, W1, max_attempts=MAX)


def test_a_worker_failing_its_job_spends_no_budget() -> None:
    old = st(R, lost=1)
    assert check_transition(old, to(old, FAIL, last_error="exit 1"), W1, max_attempts=MAX)
    with pytest.raises(IllegalTransition, match="budget not spent"):
        check_transition(old, to(old, FAIL, lost=2), W1, max_attempts=MAX)
    with pytest.raises(IllegalTransition, match="keeps the budget or spends one claim"):
        check_transition(old, to(old, FAIL, lost=3), W1, max_attempts=MAX)


def test_a_worker_may_fail_a_job_spending_its_last_claim() -> None:
    """A store failure on the last claim the budget allows (transitions.give_back):
    the same rule as a sweep's, so the job fails with lost == max_attempts."""
    old = st(R, lost=MAX - 1)
    verdict = check_transition(old, to(old, FAIL, lost=MAX), W1, max_attempts=MAX)
    assert (verdict.label, verdict.meaning) == ("running->failed", "fail")


# ------------------------------------------------------------------------ sweeps


@pytest.mark.parametrize("max_attempts", [1, 3, 5])
@pytest.mark.parametrize("held", [C, R], ids=str)
def test_sweep_goes_to_pending_until_the_budget_is_spent(max_attempts: int, held: Status
                                                         ) -> None:
    for lost in range(max_attempts):
        old = st(held, lost=lost)
        spent = lost + 1 == max_attempts
        right, wrong = (FAIL, P) if spent else (P, FAIL)
        verdict = check_transition(old, to(old, right, lost=lost + 1), REC,
                                   max_attempts=max_attempts)
        assert (verdict.meaning, verdict.label) == ("sweep", f"{held}->{right}")
        rule = "budget spent" if spent else "budget not spent"
        with pytest.raises(IllegalTransition, match=rule):
            check_transition(old, to(old, wrong, lost=lost + 1), REC, max_attempts=max_attempts)


def test_only_a_sweep_reads_the_budget() -> None:
    """The hook passes the budget lazily: reading it loads the manifest (pydantic,
    ~0.2 s), which no claim, start, completion, create or cancel should pay for."""
    reads: list[int] = []

    def budget() -> int:
        reads.append(MAX)
        return MAX

    old = st(P, attempt=1, lost=0)
    check_transition(old, to(old, C, attempt=2, holder="w1"), W1, max_attempts=budget)
    held = st(R)
    check_transition(held, to(held, DONE), W1, max_attempts=budget)
    check_transition(held, to(held, CANC), OP, max_attempts=budget)
    check_transition(None, JobState(job_id=JOB, name="gbt-small", status=P, attempt=0), REC,
                     max_attempts=budget)
    assert reads == []
    check_transition(held, to(held, P, lost=1), REC, max_attempts=budget)
    spent = st(R, lost=MAX - 1)
    check_transition(spent, to(spent, FAIL, lost=MAX), REC, max_attempts=budget)
    assert reads == [MAX, MAX]


@pytest.mark.parametrize("new_lost", [0, 2])
def test_a_sweep_spends_exactly_one_claim(new_lost: int) -> None:
    old = st(R, lost=0)
    with pytest.raises(IllegalTransition, match=r"a sweep spends one claim \(lost 0 -> 1, not"):
        check_transition(old, to(old, P, lost=new_lost), REC, max_attempts=MAX)


@pytest.mark.parametrize("new_status", [P, FAIL, CANC], ids=str)
def test_the_reconciler_never_changes_the_attempt(new_status: Status) -> None:
    old = st(R, lost=MAX - 1 if new_status is FAIL else 0)
    lost = old.lost + (new_status is not CANC)
    with pytest.raises(IllegalTransition, match=r"attempt may not change \(2 -> 3\)"):
        check_transition(old, to(old, new_status, attempt=3, lost=lost), REC, max_attempts=MAX)


# ---------------------------------------------------------------- cancel, requeue


@pytest.mark.parametrize("old_status", [P, C, R], ids=str)
@pytest.mark.parametrize("actor", [OP, REC], ids=lambda a: a.role.value)
def test_cancel_reaches_any_live_job_and_keeps_attempt_and_budget(old_status: Status,
                                                                  actor: Actor) -> None:
    old = st(old_status, lost=1)
    assert check_transition(old, to(old, CANC), actor, max_attempts=MAX).meaning == "cancel"
    for bad in ({"attempt": 3}, {"lost": 0}):
        with pytest.raises(IllegalTransition, match="may not change"):
            check_transition(old, to(old, CANC, **bad), actor, max_attempts=MAX)


@pytest.mark.parametrize("old_status", [FAIL, CANC, DONE], ids=str)
def test_requeue_resets_lost_and_keeps_the_attempt(old_status: Status) -> None:
    old = st(old_status, attempt=5, lost=MAX)
    new = to(old, P, lost=0)
    verdict = check_transition(old, new, OP, max_attempts=MAX)
    assert (verdict.meaning, new.attempt) == ("requeue", 5)
    with pytest.raises(IllegalTransition, match="resets the budget"):
        check_transition(old, to(old, P, lost=1), OP, max_attempts=MAX)
    for attempt in (0, 4, 6):
        with pytest.raises(IllegalTransition, match=r"attempt may not change \(5 -> "):
            check_transition(old, to(old, P, lost=0, attempt=attempt), OP, max_attempts=MAX)
    for actor in (W1, REC):
        with pytest.raises(IllegalTransition, match="only operator may make it"):
            check_transition(old, new, actor, max_attempts=MAX)


def test_the_grace_opening_must_change_something_and_nothing_else() -> None:
    old = st(P, attempt=1, lost=1)
    assert check_transition(old, to(old, P, cpu_ok=True), REC, max_attempts=MAX).meaning \
        == "open"
    with pytest.raises(IllegalTransition, match="may not change"):
        check_transition(old, to(old, P, cpu_ok=True, attempt=2), REC, max_attempts=MAX)
    with pytest.raises(IllegalTransition, match="may not change"):
        check_transition(old, to(old, P, cpu_ok=True, lost=0), REC, max_attempts=MAX)


# ------------------------------------------------------- creation and deletion


def test_only_the_reconciler_creates_a_fresh_pending_state() -> None:
    fresh = JobState(job_id=JOB, name="gbt-small", status=P)
    verdict = check_transition(None, fresh, REC, max_attempts=MAX)
    assert (verdict.label, verdict.meaning) == ("new->pending", "create")
    assert check_transition(None, fresh.model_copy(update={"cpu_ok": True}), REC,
                            max_attempts=MAX)
    for actor in (W1, OP):
        with pytest.raises(IllegalTransition) as err:
            check_transition(None, fresh, actor, max_attempts=MAX)
        assert f"job gbt-small ({JOB}): only the reconciler creates state files" in str(err.value)
        assert str(actor) in str(err.value)


@pytest.mark.parametrize("new", [
    JobState(job_id=JOB, name="j", status=P, attempt=1),
    JobState(job_id=JOB, name="j", status=P, lost=1),
    JobState(job_id=JOB, name="j", status=P, last_error="x"),
    JobState(job_id=JOB, name="j", status=C, attempt=1, holder="w1"),
    JobState(job_id=JOB, name="j", status=DONE, attempt=1, artifact=ART),
    JobState(job_id=JOB, name="j", status=CANC),
], ids=["attempt", "lost", "last_error", "claimed", "completed", "cancelled"])
def test_a_new_job_starts_pending_with_nothing_spent(new: JobState) -> None:
    with pytest.raises(IllegalTransition, match="a new job starts pending with attempt 0"):
        check_transition(None, new, REC, max_attempts=MAX)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.value)
def test_state_files_are_never_deleted(role: Role) -> None:
    with pytest.raises(IllegalTransition, match="state files are never deleted") as err:
        check_transition(st(DONE), None, ACTORS[role], max_attempts=MAX)
    assert err.value.job_id == JOB and err.value.label == "delete"


def test_the_job_id_never_changes() -> None:
    old = st(R)
    other = JobState(job_id="fedcba9876543210", name="gbt-small", status=R, attempt=2,
                     holder="w1")
    with pytest.raises(IllegalTransition, match="job_id may not change"):
        check_transition(old, other, W1, max_attempts=MAX)


def test_a_refusal_of_several_rules_names_each() -> None:
    """A sweep to pending by a worker that does not hold the job: both the
    release and the sweep rules are for other actors or break, and one line says so."""
    old = st(R, attempt=3, holder="w1", lost=MAX - 1)
    with pytest.raises(IllegalTransition) as err:
        check_transition(old, to(old, P, lost=MAX), W2, max_attempts=MAX)
    text = str(err.value)
    assert "\n" not in text
    assert text == (f"job gbt-small ({JOB}) attempt 3, held by w1: running->pending by "
                    "w2 (worker) refused: retry: held by w1 (attempt 3), not w2; "
                    "release: held by w1 (attempt 3), not w2")
