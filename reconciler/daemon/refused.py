"""Actions the ledger's hook refused: reported, then left out of later passes.

One refused action must never wedge the reconciler (a pass's actions are one
commit, so a single bad one would fail every pass). A refused action is
remembered with the state it was planned on and skipped while the job stays in
that state; once the job moves on, the reconciler may plan for it again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from reconciler.daemon.plan import Action

log = logging.getLogger("trainledger.reconciler")
KEEP = 20  # refusals kept in the report


def key_of(action: Action) -> tuple[str, str, str]:
    old = action.old.to_json() if action.old is not None else ""
    return action.new.job_id, action.meaning, old


class Refusals:
    def __init__(self) -> None:
        self.keys: dict[tuple[str, str, str], str] = {}
        self.recent: list[dict[str, Any]] = []  # newest last, for the report

    def allowed(self, actions: Iterable[Action]) -> list[Action]:
        return [a for a in actions if key_of(a) not in self.keys]

    def add(self, action: Action, tip: str | None, commit: str | None, rule: str) -> None:
        lines = [ln.strip() for ln in (rule or "").splitlines() if ln.strip()]
        rule = next((ln for ln in lines if "refused:" in ln), lines[0] if lines else "refused")
        self.keys[key_of(action)] = rule
        entry = {"job": action.new.name, "job_id": action.new.job_id, "action": action.meaning,
                 "transition": action.change.transition, "tip": tip, "commit": commit,
                 "rule": rule, "at": time.time()}
        self.recent = [*self.recent, entry][-KEEP:]
        log.warning("event=action-refused job=%s action=%s transition=%s tip=%s commit=%s "
                    "rule=%r", action.new.name, action.meaning, action.change.transition,
                    (tip or "")[:12], (commit or "")[:12], rule)

    def prune(self, states: dict[str, Any]) -> None:
        """Forget refusals of jobs that moved on: a new state is a new plan."""
        for key in list(self.keys):
            job_id, _meaning, old = key
            state = states.get(job_id)
            if (state.to_json() if state is not None else "") != old:
                del self.keys[key]
