"""`worker run | capability | explain`: argparse, `main(argv) -> int`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path

from reconciler.cli import add_ledger_arg, dispatch, state_dir_default
from reconciler.errors import LedgerError
from reconciler.schema import Capability


def _capability(args: argparse.Namespace) -> Capability:
    from worker.capability import detect_capability, load_capability

    return load_capability(args.capability) if args.capability else detect_capability()


def cmd_capability(args: argparse.Namespace) -> int:
    from worker.capability import capability_json, self_test

    cap = _capability(args)
    if args.json:
        print(capability_json(cap), end="")
    else:
        gpus = ", ".join(f"cuda:{d.index} {d.name} {d.vram_free_gib:.1f}/{d.vram_total_gib:.1f} "
                         "GiB free" for d in cap.cuda_devices) or "none"
        print(f"host {cap.hostname}: {cap.cpu_cores} cores, RAM {cap.ram_available_gib:.1f}/"
              f"{cap.ram_total_gib:.1f} GiB available, CUDA: {gpus}; torch "
              f"{cap.torch_version or '-'}, xgboost {cap.xgboost_version or '-'}; "
              f"{cap.os} {cap.arch}; trainledger {cap.trainledger_version}")
    problems = self_test(cap)
    for problem in problems:
        print(f"self-test: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _ledgers(args: argparse.Namespace):
    from reconciler.ledger import Ledger
    from reconciler.names import name_problem

    if (problem := name_problem(args.name)) is not None:
        raise LedgerError(f"--name {args.name!r}: {problem} (it names the worker's "
                          "heartbeat ref, refs/heartbeats/<name>)")

    state_dir = Path(args.state_dir or state_dir_default(f"worker-{args.name}"))
    state_dir.mkdir(parents=True, exist_ok=True)
    main = Ledger(args.ledger, state_dir / "ledger.git", args.name)
    return state_dir, main


def cmd_explain(args: argparse.Namespace) -> int:
    from reconciler.eligibility import explain

    cap = _capability(args)
    _state_dir, ledger = _ledgers(args)
    snap = ledger.snapshot(ledger.fetch())
    if snap.manifest is None:
        raise LedgerError(f"the ledger's manifest is invalid: {snap.manifest_error}")
    rows = explain(snap.manifest, snap.states, args.name, cap)
    if args.json:
        print(json.dumps({"worker": args.name, "revision": snap.revision, "jobs": rows},
                         indent=2, sort_keys=True))
        return 0
    if not rows:
        print("no pending jobs")
    for row in rows:
        verdict = "eligible" if row["eligible"] else "not eligible: " + "; ".join(row["reasons"])
        print(f"{row['name']:<32} {row['job_id'][:8]}  {verdict}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from reconciler.ledger import Ledger
    from reconciler.store import open_store
    from worker.beatcap import MAX_SLOTS
    from worker.capability import self_test
    from worker.daemon import Worker, WorkerConfig

    if not 1 <= args.slots <= MAX_SLOTS:
        raise LedgerError(f"--slots {args.slots}: must be 1..{MAX_SLOTS} (every held job is "
                          "listed in the heartbeat, whose size is bounded)")
    cap = _capability(args)
    problems = self_test(cap)
    if problems:
        raise LedgerError("capability self-test failed: " + "; ".join(problems))
    state_dir, ledger = _ledgers(args)
    beat_ledger = Ledger(args.ledger, state_dir / "beat.git", args.name)

    def store_factory(loaded):
        url = args.store or loaded.fleet.store
        if not url:
            raise LedgerError("no store: pass --store or set [fleet] store in the manifest")
        return open_store(url, state_dir)

    config = WorkerConfig(name=args.name, state_dir=state_dir, poll_s=args.poll_s,
                          slots=args.slots, exit_when_idle=args.exit_when_idle,
                          max_jobs=args.max_jobs)
    worker = Worker(config, ledger, beat_ledger, store_factory, cap)
    worker.install_signal_handlers()
    logging.getLogger("trainledger").info(
        "event=worker-start worker=%s ledger=%s state_dir=%s pid=%s", args.name, args.ledger,
        state_dir, os.getpid())
    return worker.run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", description="trainledger worker")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="claim and train jobs until stopped")
    add_ledger_arg(run)
    run.add_argument("--name", default=socket.gethostname().split(".")[0],
                     help="this worker's name (default: hostname)")
    run.add_argument("--store", help="store path or ssh:// URL (default: the manifest's)")
    run.add_argument("--capability", type=Path, help="JSON capability instead of detection")
    run.add_argument("--exit-when-idle", action="store_true",
                     help="exit 0 once nothing is eligible and nothing is running")
    run.add_argument("--poll-s", type=float, default=2.0, help="seconds between polls")
    run.add_argument("--slots", type=int, default=1, help="jobs run at once")
    run.add_argument("--max-jobs", type=int, help="exit after claiming this many jobs")
    run.add_argument("--state-dir", type=Path, help="cache, logs and outputs")
    run.set_defaults(func=cmd_run)

    cap = sub.add_parser("capability", help="what this host can run")
    cap.add_argument("--json", action="store_true")
    cap.add_argument("--capability", type=Path, help="read this JSON instead of detecting")
    cap.set_defaults(func=cmd_capability)

    exp = sub.add_parser("explain", help="for every pending job: may this host take it, why not")
    add_ledger_arg(exp)
    exp.add_argument("--name", default=socket.gethostname().split(".")[0])
    exp.add_argument("--capability", type=Path)
    exp.add_argument("--state-dir", type=Path)
    exp.add_argument("--json", action="store_true")
    exp.set_defaults(func=cmd_explain)
    return parser


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
