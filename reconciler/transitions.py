"""The state machine as a table, and the one function that judges a change.

`check_transition(old, new, actor, max_attempts=...)` is called by the
pre-receive hook for every state file a pushed commit touches, and by the
reconciler when it re-checks history, so both enforce exactly the same rules.

The attempt is the fencing token: a worker's transition is legal only while the
state still names that worker and that attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from reconciler.errors import IllegalTransition
from reconciler.state import HELD, JobState, Status

P, C, R = Status.PENDING, Status.CLAIMED, Status.RUNNING
DONE, FAIL, CANC = Status.COMPLETED, Status.FAILED, Status.CANCELLED


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
    return _same(old, new, "lost", "cpu_ok")


def _start(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    return _fenced(old, new, actor) or _same(old, new, "holder", "lost", "cpu_ok")


def _finish(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    return _fenced(old, new, actor) or _same(old, new, "lost", "cpu_ok")


def _release(old: JobState, new: JobState, actor: Actor, _max: Budget) -> str | None:
    rule = _fenced(old, new, actor) or _same(old, new, "cpu_ok")
    if rule is None and new.lost not in (old.lost, old.lost + 1):
        rule = f"a release keeps the budget or spends one claim (lost {old.lost} -> {new.lost})"
    return rule


def _sweep_pending(old: JobState, new: JobState, _actor: Actor, budget: Budget) -> str | None:
    rule = _same(old, new, "attempt", "cpu_ok")
    if rule is None and new.lost != old.lost + 1:
        rule = f"a sweep spends one claim (lost {old.lost} -> {old.lost + 1}, not {new.lost})"
    if rule is None and new.lost >= (max_attempts := budget()):
        rule = f"budget spent ({new.lost} of {max_attempts} claims lost): sweep to failed"
    return rule


def _sweep_failed(old: JobState, new: JobState, _actor: Actor, budget: Budget) -> str | None:
    rule = _same(old, new, "attempt", "cpu_ok")
    if rule is None and new.lost != old.lost + 1:
        rule = f"a sweep spends one claim (lost {old.lost} -> {old.lost + 1}, not {new.lost})"
    if rule is None and new.lost < (max_attempts := budget()):
        rule = f"budget not spent ({new.lost} of {max_attempts}): sweep to pending"
    return rule


def _cancel(old: JobState, new: JobState, _actor: Actor, _max: Budget) -> str | None:
    return _same(old, new, "attempt", "lost", "cpu_ok")


def _requeue(old: JobState, new: JobState, _actor: Actor, _max: Budget) -> str | None:
    rule = _same(old, new, "attempt")
    if rule is None and new.lost != 0:
        rule = "a requeue resets the budget (lost must be 0)"
    return rule


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
    (C, FAIL): [(W, _finish, "fail"), (REC, _sweep_failed, "sweep")],
    (R, FAIL): [(W, _finish, "fail"), (REC, _sweep_failed, "sweep")],
    (C, P): [(W, _release, "release"), (REC, _sweep_pending, "sweep")],
    (R, P): [(W, _release, "release"), (REC, _sweep_pending, "sweep")],
    (P, CANC): [(OP, _cancel, "cancel"), (REC, _cancel, "cancel")],
    (C, CANC): [(OP, _cancel, "cancel"), (REC, _cancel, "cancel")],
    (R, CANC): [(OP, _cancel, "cancel"), (REC, _cancel, "cancel")],
    (FAIL, P): [(OP, _requeue, "requeue")],
    (CANC, P): [(OP, _requeue, "requeue")],
    (DONE, P): [(OP, _requeue, "requeue")],
    (P, P): [(REC, _open_grace, "open")],
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
