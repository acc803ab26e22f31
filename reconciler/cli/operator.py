"""`reconciler cancel JOB` and `reconciler requeue JOB`: operator commits.

The same change made with a plain `git commit` of the state file is accepted
identically; these commands only save the typing and add the trailers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from reconciler.cli.jobref import resolve_job
from reconciler.cli.main import add_ledger_arg
from reconciler.cli.status import cached_ledger
from reconciler.git.push import Proposal
from reconciler.git.snapshot import Snapshot
from reconciler.protocol import transitions
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.state import TERMINAL, JobState


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


def _check_requeue(snap: Snapshot, old: JobState) -> None:
    if snap.manifest is None:
        return
    spec = snap.manifest.specs.get(old.job_id)
    if spec is None:
        raise LedgerError(f"job {old.name} ({old.job_id}) is no longer in the manifest: "
                          "no worker could run it (add it back first)")
    if spec.cancel:
        raise LedgerError(f"job {old.name} has cancel = true in the manifest; remove "
                          "it there first, or the reconciler cancels it again")


def choose(snap: Snapshot, targets: list[str], args: argparse.Namespace | None,
           repo: Any = None) -> tuple[list[JobState], list[JobState]]:
    """(named, selected): the jobs named exactly (an id, id prefix or name: an
    unknown one is an error) and those matched by a glob or the selectors.
    Selectors narrow named jobs too: `cancel job-1 --status running`."""
    from fnmatch import fnmatchcase

    from reconciler.cli.selectors import has_selector, is_glob, row_matches

    specs = snap.manifest.specs if snap.manifest else {}
    names = {i: s.name for i, s in specs.items()}
    last_host: dict[str, str | None] = {}
    if args is not None and args.worker and repo is not None:
        from reconciler.cli.timeline import read_timeline

        last_host = {j: a.host for j, a in read_timeline(repo, snap.revision)
                     .last_by_job().items()}

    def row(state: JobState) -> dict[str, Any]:
        spec = specs.get(state.job_id)
        return {"job_id": state.job_id, "name": state.name, "status": state.status.value,
                "holder": state.holder, "model": spec.model if spec else None,
                "sweep": spec.sweep if spec else None, "last_host": last_host.get(state.job_id)}

    selecting = args is not None and has_selector(args)
    keep = (lambda st: row_matches(row(st), args)) if selecting else (lambda st: True)
    named: dict[str, JobState] = {}
    globbed: dict[str, JobState] = {}
    for text in targets:
        if is_glob(text):
            for state in snap.states.values():
                if fnmatchcase(state.name, text) and keep(state):
                    globbed[state.job_id] = state
        else:
            state = resolve_job(snap.states, names, text)
            if keep(state):
                named[state.job_id] = state
    if not targets and selecting:
        globbed = {j: s for j, s in snap.states.items() if keep(s)}
    order = {job_id: i for i, job_id in enumerate(specs)}

    def ordered(found: dict[str, JobState]) -> list[JobState]:
        return sorted(found.values(), key=lambda s: (order.get(s.job_id, 1 << 30), s.job_id))
    return ordered(named), ordered({j: s for j, s in globbed.items() if j not in named})


def plan_changes(snap: Snapshot, targets: list[str], args: argparse.Namespace | None,
                 change: Callable[[JobState], transitions.Step], meaning: str, repo: Any = None
                 ) -> tuple[list[tuple[JobState, transitions.Step]], list[tuple[JobState, str]]]:
    """(old, step) for every job to change, and (job, why) for the jobs a glob or
    selector matched that this change does not apply to (already cancelled...).
    A job named exactly that cannot change is an error, as with one job."""
    named, selected = choose(snap, targets, args, repo)
    out, skipped = [], []
    for old in named:
        if meaning == "requeue":
            _check_requeue(snap, old)
        out.append((old, change(old)))
    for old in selected:
        try:
            if meaning == "requeue":
                _check_requeue(snap, old)
            out.append((old, change(old)))
        except LedgerError as exc:
            skipped.append((old, str(exc)))
    return out, skipped


def operate(url: str, job: str, change: Callable[[JobState], transitions.Step], meaning: str,
            identity: str) -> JobState:
    """One job, named exactly: its new state."""
    news, _ = operate_many(url, [job], change, meaning, identity)
    return news[0]


def operate_many(url: str, targets: list[str], change: Callable[[JobState], transitions.Step],
                 meaning: str, identity: str, args: argparse.Namespace | None = None,
                 dry_run: bool = False) -> tuple[list[JobState], list[tuple[JobState, str]]]:
    """Change the jobs named and/or selected in one operator commit: (the new
    states in manifest order, the matched jobs skipped and why). `dry_run`
    reads and decides, writes nothing."""
    result: list[JobState] = []
    skipped: list[tuple[JobState, str]] = []

    def build(snap: Snapshot) -> Proposal | None:
        pairs, skip = plan_changes(snap, targets, args, change, meaning, ledger.repo)
        result[:] = [step.new for _, step in pairs]
        skipped[:] = skip
        if not pairs or dry_run:
            return None
        return Proposal.of_steps([step for _, step in pairs])

    with cached_ledger(url, f"operator-{identity}", identity) as ledger:
        if dry_run:
            ledger.fetch()
            build(ledger.snapshot())
        else:
            ledger.write(build)
    return result, skipped


def cmd_operate(args: argparse.Namespace) -> int:
    from reconciler.cli.selectors import has_selector

    if not args.jobs and not has_selector(args):
        raise LedgerError("name one or more jobs (ids, names or globs), or select them with "
                          "--status, --worker, --model or --sweep")
    change = cancelled if args.command == "cancel" else requeued
    news, skipped = operate_many(args.ledger, args.jobs, change, args.command,
                                 operator_identity(args.as_), args=args, dry_run=args.dry_run)
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "command": args.command,
                          "jobs": [{"job_id": n.job_id, "name": n.name,
                                    "status": n.status.value} for n in news],
                          "skipped": [{"job_id": s.job_id, "name": s.name, "reason": why}
                                      for s, why in skipped]}, indent=2))
        return 0
    held = " (its worker stops it on its next heartbeat)" if args.command == "cancel" else ""
    for new in news:
        if args.dry_run:
            print(f"would {args.command}: {new.name} ({new.job_id}) -> {new.status.value}")
        else:
            print(f"{args.command}: {new.name} ({new.job_id}) is now {new.status.value}{held}")
    for state, why in skipped:
        print(f"skipped {state.name} ({state.job_id}): {why}", file=sys.stderr)
    if not news:
        print(f"{args.command}: no job matched" + (" that can be changed" if skipped else ""),
              file=sys.stderr)
    elif args.dry_run:
        print(f"dry run: {len(news)} job(s) would change; nothing was written")
    return 0


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    from reconciler.cli.selectors import add_selector_args

    parser.add_argument("jobs", nargs="*", metavar="JOB",
                        help="job id, unique id prefix, name, or a name glob ('sweep-*')")
    add_ledger_arg(parser)
    parser.add_argument("--as", dest="as_", metavar="NAME", help="operator identity")
    parser.add_argument("--dry-run", action="store_true",
                        help="show what would change, write nothing")
    parser.add_argument("--json", action="store_true",
                        help="{dry_run, command, jobs, skipped}")
    add_selector_args(parser)
    parser.set_defaults(func=cmd_operate)
