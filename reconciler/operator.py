"""`reconciler cancel JOB` and `reconciler requeue JOB`: operator commits.

The same change made with a plain `git commit` of the state file is accepted
identically; these commands only save the typing and add the trailers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
from collections.abc import Callable

from reconciler import transitions
from reconciler.cli import add_ledger_arg
from reconciler.errors import LedgerError
from reconciler.jobref import resolve_job
from reconciler.ledger import Proposal, Snapshot
from reconciler.state import TERMINAL, JobState
from reconciler.status import cached_ledger


def operator_identity(explicit: str | None = None) -> str:
    """--as, else $TRAINLEDGER_IDENTITY, else `git config trainledger.identity`,
    else "operator" (the hook decides whether that identity may do it)."""
    if explicit:
        return explicit
    if os.environ.get("TRAINLEDGER_IDENTITY"):
        return os.environ["TRAINLEDGER_IDENTITY"]
    proc = subprocess.run(["git", "config", "--get", "trainledger.identity"],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() or "operator"


def cancelled(state: JobState) -> transitions.Step:
    if state.status in TERMINAL:
        raise LedgerError(f"job {state.name} ({state.job_id}) is already {state.status.value}")
    return transitions.cancel(state, "cancelled by the operator")


def requeued(state: JobState) -> transitions.Step:
    if state.status not in TERMINAL:
        raise LedgerError(f"job {state.name} ({state.job_id}) is {state.status.value}: only "
                          "failed, cancelled or completed jobs are requeued")
    return transitions.requeue(state)


def operate(url: str, job: str, change: Callable[[JobState], transitions.Step], meaning: str,
            identity: str) -> JobState:
    result: list[JobState] = []

    def build(snap: Snapshot) -> Proposal:
        names = {i: s.name for i, s in (snap.manifest.specs.items() if snap.manifest else [])}
        old = resolve_job(snap.states, names, job)
        if meaning == "requeue" and snap.manifest is not None:
            spec = snap.manifest.specs.get(old.job_id)
            if spec is None:
                raise LedgerError(f"job {old.name} ({old.job_id}) is no longer in the manifest: "
                                  "no worker could run it (add it back first)")
            if spec.cancel:
                raise LedgerError(f"job {old.name} has cancel = true in the manifest; remove "
                                  "it there first, or the reconciler cancels it again")
        step = change(old)
        result[:] = [step.new]
        return Proposal.of_steps([step])

    with cached_ledger(url, f"operator-{identity}", identity) as ledger:
        ledger.write(build)
    return result[0]


def cmd_operate(args: argparse.Namespace) -> int:
    change = cancelled if args.command == "cancel" else requeued
    new = operate(args.ledger, args.job, change, args.command, operator_identity(args.as_))
    held = " (its worker stops it on its next heartbeat)" if args.command == "cancel" else ""
    print(f"{args.command}: {new.name} ({new.job_id}) is now {new.status.value}{held}")
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job id, unique id prefix, or name")
    add_ledger_arg(parser)
    parser.add_argument("--as", dest="as_", metavar="NAME", help="operator identity")
    parser.set_defaults(func=cmd_operate)



