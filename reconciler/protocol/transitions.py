"""The state machine as a table, and the one function that judges a change.

`check_transition(old, new, actor, max_attempts=...)` is called by the
pre-receive hook for every state file a pushed commit touches, and by the
reconciler when it re-checks history, so both enforce exactly the same rules.

The attempt is the fencing token: a worker's transition is legal only while the
state still names that worker and that attempt.

Every writer builds its changes with the move constructors at the end of this
module (`claim(state, worker)`, `sweep(state, max_attempts, reason)`, ...): each
returns a `Step`, the new state with its audit record, whose label is derived
from the two states and whose meaning is a `Move`. To add a move, add it to
`Move`, give it a constructor next to the others and a row in `TABLE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from reconciler.protocol import trailers
from reconciler.protocol.errors import IllegalTransition
from reconciler.protocol.state import HELD, Artifact, Checkpoint, JobState, LogRef, Status

P, C, R = Status.PENDING, Status.CLAIMED, Status.RUNNING
DONE, FAIL, CANC = Status.COMPLETED, Status.FAILED, Status.CANCELLED


class Move(StrEnum):
    """What a change means; the `meaning` of its Ledger-Transition group."""

    CREATE = "create"
    CLAIM = "claim"
    START = "start"
    COMPLETE = "complete"
    FAIL = "fail"
    RELEASE = "release"
    SWEEP = "sweep"
    CANCEL = "cancel"
    REQUEUE = "requeue"
    OPEN = "open"  # a prefer_cuda job opened to CPU workers
    RESTORE = "restore"  # the reconciler undoes an illegal commit
    RENAME = "rename"
    RETRY = "retry"  # a trainer failure with retries left: back to pending
    CHECKPOINT = "checkpoint"  # the running attempt recorded its checkpoint
    IMPORT = "import"  # reconciler import-seed: the seed fleet's verified result


def budget_spent(lost: int, max_attempts: int) -> bool:
    """The one budget rule: a job whose lost claims reach max_attempts fails
    (a sweep's and a worker's store failure alike)."""
    return lost >= max_attempts


class Role(StrEnum):
    OPERATOR = "operator"
    WORKER = "worker"
    RECONCILER = "reconciler"


@dataclass(frozen=True)
class Actor:
    name: str
    role: Role

    def __str__(self) -> str:
        return self.name if self.name == self.role.value else f"{self.name} ({self.role.value})"


Budget = Callable[[], int]  # max_attempts, read only by a sweep's check
Check = Callable[[JobState, JobState, Actor, Budget], str | None]  # None = legal, else the rule


def _same(old: JobState, new: JobState, *fields: str) -> str | None:
    for f in fields:
        if getattr(old, f) != getattr(new, f):
            return f"{f} may not change ({getattr(old, f)!r} -> {getattr(new, f)!r})"
    return None


RESULT = ("metrics", "metrics_error", "log")  # written only by a worker's complete or fail


def _fenced(old: JobState, new: JobState, actor: Actor) -> str | None:
    if old.holder != actor.name:
        return f"held by {old.holder} (attempt {old.attempt}), not {actor.name}"
    if new.attempt != old.attempt:
        return f"stale attempt {new.attempt}: the ledger holds attempt {old.attempt}"
    return None


def _claim(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    if new.attempt != old.attempt + 1:
        return f"a claim must raise the attempt by one ({old.attempt} -> {old.attempt + 1})"
    if new.holder != actor.name:
        return f"a worker claims only for itself (holder {new.holder}, pusher {actor.name})"
    return _same(old, new, "lost", "cpu_ok", "failures", "checkpoint", *RESULT)


def _start(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    return _fenced(old, new, actor) or _same(old, new, "holder", "lost", "cpu_ok", *RESULT)


def _finish(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    rule = _fenced(old, new, actor) or _same(old, new, "lost", "cpu_ok")
    if rule is None and new.failures not in (old.failures, old.failures + 1):
        rule = f"a failure counts once (failures {old.failures} -> {new.failures})"
    return rule or _own_checkpoint(old, new)


def _own_checkpoint(old: JobState, new: JobState) -> str | None:
    """A worker may record only a checkpoint its own attempt saved."""
    if new.checkpoint != old.checkpoint and new.checkpoint is not None \
            and new.checkpoint.attempt != old.attempt:
        return (f"a checkpoint is recorded by the attempt that saved it "
                f"(checkpoint attempt {new.checkpoint.attempt}, attempt {old.attempt})")
    return None


def _fail(old: JobState, new: JobState, actor: Actor, budget: Budget) -> str | None:
    """A worker's failure keeps the budget, or spends the last claim (its store
    failed on the last attempt the budget allows: `give_back`); a trainer's
    failure counts once in `failures`."""
    rule = _fenced(old, new, actor) or _same(old, new, "cpu_ok")
    if rule is None and new.lost == old.lost + 1:
        if not budget_spent(new.lost, max_attempts := budget()):
            rule = f"budget not spent ({new.lost} of {max_attempts}): release to pending"
    elif rule is None and new.lost != old.lost:
        rule = f"a failure keeps the budget or spends one claim (lost {old.lost} -> {new.lost})"
    if rule is None and new.failures not in (old.failures, old.failures + 1):
        rule = f"a failure counts once (failures {old.failures} -> {new.failures})"
    return rule or _own_checkpoint(old, new)


def _release(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    rule = _fenced(old, new, actor) or _same(old, new, "cpu_ok", "failures")
    if rule is None and new.lost not in (old.lost, old.lost + 1):
        rule = f"a release keeps the budget or spends one claim (lost {old.lost} -> {new.lost})"
    return rule or _own_checkpoint(old, new)


def _retry(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    """A trainer failure with retries left: back to pending, counted in `failures`
    (the retry budget is the manifest's, which the worker reads; `lost` is untouched)."""
    rule = _fenced(old, new, actor) or _same(old, new, "cpu_ok", "lost")
    if rule is None and new.failures != old.failures + 1:
        rule = f"a retry counts one failure (failures {old.failures} -> {old.failures + 1})"
    if rule is None and not new.last_error:
        rule = "a retry says why the trainer failed (last_error)"
    return rule or _own_checkpoint(old, new)


def _checkpoint(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    """The holder records a checkpoint of its running attempt; nothing else changes."""
    rule = _fenced(old, new, actor) or _same(
        old, new, "holder", "lost", "cpu_ok", "failures", "artifact", "last_error")
    if rule is None and (new.checkpoint is None or new.checkpoint == old.checkpoint):
        rule = "a checkpoint move records a new checkpoint"
    return rule or _own_checkpoint(old, new)


def _sweep_pending(old: JobState, new: JobState, _actor: Actor, budget: Budget) -> str | None:
    rule = _same(old, new, "attempt", "cpu_ok")
    if rule is None and new.lost != old.lost + 1:
        rule = f"a sweep spends one claim (lost {old.lost} -> {old.lost + 1}, not {new.lost})"
    if rule is None and budget_spent(new.lost, max_attempts := budget()):
        rule = f"budget spent ({new.lost} of {max_attempts} claims lost): sweep to failed"
    return rule


def _sweep_failed(old: JobState, new: JobState, _actor: Actor, budget: Budget) -> str | None:
    rule = _same(old, new, "attempt", "cpu_ok")
    if rule is None and new.lost != old.lost + 1:
        rule = f"a sweep spends one claim (lost {old.lost} -> {old.lost + 1}, not {new.lost})"
    if rule is None and not budget_spent(new.lost, max_attempts := budget()):
        rule = f"budget not spent ({new.lost} of {max_attempts}): sweep to pending"
    return rule


def _cancel(old: JobState, new: JobState, _actor: Actor, _max: Budget) -> str | None:
    return _same(old, new, "attempt", "lost", "cpu_ok")


def _requeue(old: JobState, new: JobState, _actor: Actor, _max: Budget) -> str | None:
    rule = _same(old, new, "attempt")
    if rule is None and new.lost != 0:
        rule = "a requeue resets the budget (lost must be 0)"
    if rule is None and new.failures not in (0, old.failures):
        rule = f"a requeue resets the retries or keeps them (failures {old.failures} -> " \
            f"{new.failures})"
    return rule


def _import(old: JobState, new: JobState, _actor: Actor, _max: Budget) -> str | None:
    """`reconciler import-seed`: a result the seed fleet trained, its bundle
    already verified into the store, so the job is never trained again."""
    if new.artifact is None:
        return "an import names the imported bundle (artifact)"
    return _same(old, new, "attempt", "lost", "cpu_ok", "holder")


def _open_grace(old: JobState, new: JobState, _actor: Actor, _max: Budget) -> str | None:
    rule = _same(old, new, "attempt", "lost", "holder", "artifact")
    if rule is None and old.cpu_ok == new.cpu_ok and old.last_error == new.last_error:
        rule = "no change"
    return rule


W, OP, REC = Role.WORKER, Role.OPERATOR, Role.RECONCILER

# (from, to) -> [(role, check, meaning)]; anything not listed is illegal.
TABLE: dict[tuple[Status, Status], list[tuple[Role, Check, str]]] = {
    (P, C): [(W, _claim, "claim")],
    (C, R): [(W, _start, "start")],
    (R, DONE): [(W, _finish, "complete")],
    (C, FAIL): [(W, _fail, "fail"), (REC, _sweep_failed, "sweep")],
    (R, FAIL): [(W, _fail, "fail"), (REC, _sweep_failed, "sweep")],
    (C, P): [(W, _retry, "retry"), (W, _release, "release"), (REC, _sweep_pending, "sweep")],
    (R, P): [(W, _retry, "retry"), (W, _release, "release"), (REC, _sweep_pending, "sweep")],
    (R, R): [(W, _checkpoint, "checkpoint")],
    (P, CANC): [(OP, _cancel, "cancel"), (REC, _cancel, "cancel")],
    (C, CANC): [(OP, _cancel, "cancel"), (REC, _cancel, "cancel")],
    (R, CANC): [(OP, _cancel, "cancel"), (REC, _cancel, "cancel")],
    (FAIL, P): [(OP, _requeue, "requeue")],
    (CANC, P): [(OP, _requeue, "requeue")],
    (DONE, P): [(OP, _requeue, "requeue")],
    (P, P): [(REC, _open_grace, "open")],
    (P, DONE): [(OP, _import, "import")],
}


@dataclass(frozen=True)
class Verdict:
    label: str  # "pending->claimed"
    meaning: str  # "claim"


def check_transition(
    old: JobState | None, new: JobState | None, actor: Actor, *, max_attempts: int | Budget
) -> Verdict:
    """Judge one state file change; raise `IllegalTransition` naming job, attempt,
    holder and the rule that was broken. `max_attempts` may be given as a callable:
    only a sweep reads it, so the hook loads the manifest for nothing else."""
    budget: Budget = max_attempts if callable(max_attempts) else (lambda: max_attempts)
    if new is None:
        job = old.job_id if old else "?"
        _deny(old, f"job {job}: state files are never deleted", actor, "delete")
        raise AssertionError  # unreachable; _deny raises
    if old is None:
        return _check_create(new, actor)
    if old.job_id != new.job_id:
        _deny(old, f"job_id may not change ({old.job_id} -> {new.job_id})", actor, "?")
    label = f"{old.status.value}->{new.status.value}"
    rows = TABLE.get((old.status, new.status), [])
    if old.status == new.status and old.model_copy(update={"name": new.name}) == new:
        if actor.role is Role.RECONCILER:
            return Verdict(label, "rename")
        _deny(old, "only the reconciler rewrites a state without a transition", actor, label)
    if old.name != new.name:  # a move changes only its own fields; renames go alone
        _deny(old, f"name may not change in a move ({old.name!r} -> {new.name!r}): only "
              "the reconciler renames, in a commit without a transition", actor, label)
    allowed_roles = sorted({r.value for r, _, _ in rows})
    reasons = []
    for role, check, meaning in rows:
        if role is not actor.role:
            continue
        rule = check(old, new, actor, budget)
        if rule is None:
            return Verdict(label, meaning)
        reasons.append(f"{meaning}: {rule}")
    if not rows:
        reasons.append("not a transition of the state machine")
    elif not reasons:
        reasons.append(f"only {' or '.join(allowed_roles)} may make it")
    _deny(old, "; ".join(reasons), actor, label)
    raise AssertionError  # unreachable


def _check_create(new: JobState, actor: Actor) -> Verdict:
    if actor.role is not Role.RECONCILER:
        raise IllegalTransition(
            f"job {new.name} ({new.job_id}): only the reconciler creates state files "
            f"(pusher {actor})",
            job_id=new.job_id, attempt=new.attempt, holder=new.holder, label="new->pending",
        )
    fresh = JobState(job_id=new.job_id, name=new.name, status=Status.PENDING)
    if new.model_copy(update={"cpu_ok": False}) != fresh:
        raise IllegalTransition(
            f"job {new.name} ({new.job_id}): a new job starts pending with attempt 0, "
            "no holder, no budget spent and no artifact",
            job_id=new.job_id, attempt=new.attempt, holder=new.holder, label="new->pending",
        )
    return Verdict("new->pending", "create")


def _deny(old: JobState | None, rule: str, actor: Actor, label: str) -> None:
    if old is None:
        raise IllegalTransition(rule, label=label)
    held = f", held by {old.holder}" if old.status in HELD else ""
    raise IllegalTransition(
        f"job {old.name} ({old.job_id}) attempt {old.attempt}{held}: "
        f"{label} by {actor} refused: {rule}",
        job_id=old.job_id, attempt=old.attempt, holder=old.holder, label=label,
    )


# ------------------------------------------------------------------- moves


@dataclass(frozen=True)
class Step:
    """One move of one job: the state before (None for a new job), the state
    after, and what it means. The trailer label is derived, never typed."""

    old: JobState | None
    new: JobState
    move: Move

    @property
    def label(self) -> str:
        return label_of(self.old, self.new)

    @property
    def change(self) -> trailers.Change:
        return trailers.Change(self.new.job_id, self.new.name, self.new.attempt, self.label,
                               self.move.value)


def label_of(old: JobState | None, new: JobState) -> str:
    """The Ledger-Transition value of a change: "running->pending", "new->pending"."""
    return f"{old.status.value if old else 'new'}->{new.status.value}"


def create(job_id: str, name: str) -> Step:
    return Step(None, JobState(job_id=job_id, name=name, status=Status.PENDING), Move.CREATE)


def claim(state: JobState, worker: str) -> Step:
    return Step(state, state.model_copy(update={
        "status": Status.CLAIMED, "attempt": state.attempt + 1, "holder": worker,
        "last_error": None}), Move.CLAIM)


def start(state: JobState) -> Step:
    return Step(state, state.model_copy(update={"status": Status.RUNNING}), Move.START)


def complete(state: JobState, artifact: Artifact, *, metrics: dict | None = None,
             metrics_error: str | None = None, log: LogRef | None = None) -> Step:
    """The attempt's result: its bundle, its metrics.json (or why it was ignored)
    and its log; the checkpoint is dropped (a completed job keeps none)."""
    return Step(state, state.model_copy(update={
        "status": Status.COMPLETED, "holder": None, "artifact": artifact, "last_error": None,
        "checkpoint": None, "metrics": metrics, "metrics_error": metrics_error, "log": log}),
        Move.COMPLETE)


def fail(state: JobState, error: str, *, log: LogRef | None = None) -> Step:
    return Step(state, state.model_copy(update={
        "status": Status.FAILED, "holder": None, "last_error": error, **_failed_result(log)}),
        Move.FAIL)


def _failed_result(log: LogRef | None) -> dict[str, object]:
    """A failed attempt leaves no metrics; its log, if stored, is named."""
    return {"metrics": None, "metrics_error": None, "log": log}


def release(state: JobState, why: str, *, spend: bool = False,
            checkpoint: Artifact | None = None) -> Step:
    """The worker gives the job back: uncounted (shutdown, self-fence) or
    spending one claim; a graceful release records the checkpoint it just saved."""
    update: dict[str, object] = {"status": Status.PENDING, "holder": None,
                                 "lost": state.lost + (1 if spend else 0), "last_error": why}
    if checkpoint is not None:
        update["checkpoint"] = Checkpoint(sha256=checkpoint.sha256, size=checkpoint.size,
                                          attempt=state.attempt)
    return Step(state, state.model_copy(update=update), Move.RELEASE)


def give_back(state: JobState, error: str, max_attempts: int) -> Step:
    """A held job the worker could not finish for a reason outside the trainer
    (its store failed): one claim spent, as a sweep spends one; a release while
    budget is left, a failure once it is spent (the same `budget_spent` rule)."""
    lost = state.lost + 1
    if budget_spent(lost, max_attempts):
        return Step(state, state.model_copy(update={
            "status": Status.FAILED, "holder": None, "lost": lost, "last_error": error}),
            Move.FAIL)
    return release(state, error, spend=True)


def sweep(state: JobState, max_attempts: int, reason: str) -> Step:
    lost = state.lost + 1
    status = Status.FAILED if budget_spent(lost, max_attempts) else Status.PENDING
    return Step(state, state.model_copy(update={
        "status": status, "holder": None, "lost": lost, "last_error": reason}), Move.SWEEP)


def cancel(state: JobState, reason: str) -> Step:
    return Step(state, state.model_copy(update={
        "status": Status.CANCELLED, "holder": None, "last_error": reason}), Move.CANCEL)


def requeue(state: JobState) -> Step:
    return Step(state, state.model_copy(update={
        "status": Status.PENDING, "holder": None, "lost": 0, "artifact": None,
        "last_error": None, "failures": 0}), Move.REQUEUE)


def open_to_cpu(state: JobState) -> Step:
    return Step(state, state.model_copy(update={"cpu_ok": True}), Move.OPEN)


def rename(state: JobState, name: str) -> Step:
    return Step(state, state.model_copy(update={"name": name}), Move.RENAME)


def restore(illegal: JobState, legal: JobState) -> Step:
    """Back to the last legal state: not a transition of the table (the commit
    carries `Ledger-Kind: restore` instead, see trailers.py)."""
    return Step(illegal, legal, Move.RESTORE)


def retry(state: JobState, error: str, *, log: LogRef | None = None) -> Step:
    """A held job whose trainer failed with retries left: pending again, one more failure."""
    return Step(state, state.model_copy(update={
        "status": Status.PENDING, "holder": None, "failures": state.failures + 1,
        "last_error": error, **_failed_result(log)}), Move.RETRY)


def fail_trainer(state: JobState, error: str, *, log: LogRef | None = None) -> Step:
    """A held job whose trainer failed with no retries left."""
    return Step(state, state.model_copy(update={
        "status": Status.FAILED, "holder": None, "failures": state.failures + 1,
        "last_error": error, **_failed_result(log)}), Move.FAIL)


def record_checkpoint(state: JobState, sha256: str, size: int) -> Step:
    """The running attempt saved its checkpoint dir into the store."""
    return Step(state, state.model_copy(update={
        "checkpoint": Checkpoint(sha256=sha256, size=size, attempt=state.attempt)}),
        Move.CHECKPOINT)


def import_result(state: JobState, artifact: Artifact) -> Step:
    """A pending job the seed fleet already trained: completed with its bundle,
    verified into the store (`reconciler import-seed`), so it is never trained again."""
    return Step(state, state.model_copy(update={
        "status": Status.COMPLETED, "artifact": artifact, "last_error": None}), Move.IMPORT)
