"""`worker run | capability | explain`: argparse, `main(argv) -> int`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli.main import add_examples, add_ledger_arg, dispatch, state_dir_default
from reconciler.cli.util import (
    EXIT_CODES,
    add_common_top,
    common_parent,
    positive_float,
    positive_int,
    version,
)
from reconciler.protocol.errors import LedgerError

if TYPE_CHECKING:  # pydantic costs ~120 ms: `worker --help` does not load it
    from reconciler.protocol.schema import Capability


def _capability(args: argparse.Namespace) -> Capability:
    from worker.capability import detect_capability, load_capability

    return load_capability(args.capability) if args.capability else detect_capability()


def _resources(args: argparse.Namespace, cap: Capability):
    """Fresh figures: the --capability file read again (tests change it), else
    RAM and nvidia-smi read again (worker/resources.py)."""
    from worker.capability import load_capability, refresh_capability
    from worker.resources import Resources

    if args.capability:
        return Resources(cap, lambda _old: load_capability(args.capability))
    return Resources(cap, refresh_capability)


def pass_env_patterns(args: argparse.Namespace) -> tuple[str, ...]:
    """--pass-env globs, plus TRAINLEDGER_PASS_ENV (space or comma separated) from
    the unit's environment file."""
    extra = os.environ.get("TRAINLEDGER_PASS_ENV", "").replace(",", " ").split()
    return tuple(args.pass_env or []) + tuple(extra)


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
    from reconciler.git.ledger import Ledger
    from reconciler.protocol.names import name_problem

    if (problem := name_problem(args.name)) is not None:
        raise LedgerError(f"--name {args.name!r}: {problem} (it names the worker's "
                          "heartbeat ref, refs/heartbeats/<name>)")

    state_dir = Path(args.state_dir or state_dir_default(f"worker-{args.name}"))
    state_dir.mkdir(parents=True, exist_ok=True)
    main = Ledger(args.ledger, state_dir / "ledger.git", args.name)
    return state_dir, main


def _held_reservations(ledger, snap, name: str) -> list:
    """What the jobs this worker holds reserve, on the devices its last heartbeat
    says they run on: `explain` judges as the running worker would."""
    from worker.resources import Reservation

    ledger.fetch(heartbeats=True)
    rec = ledger.heartbeats().get(name)
    devices = {j.job_id: j.device for j in rec.beat.jobs} if rec and rec.beat else {}
    specs = snap.manifest.specs
    out = []
    for job_id, state in snap.states.items():
        spec = specs.get(job_id)
        if state.holder == name and spec is not None:
            device = devices.get(job_id)
            out.append(Reservation(device, spec.min_vram_gib if device is not None else 0.0,
                                   spec.min_ram_gib))
    return out


def judged_figures(cap: Capability) -> dict:
    return {"ram_available_gib": cap.ram_available_gib, "ram_total_gib": cap.ram_total_gib,
            "gpus": [{"index": d.index, "name": d.name, "vram_free_gib": d.vram_free_gib,
                      "vram_total_gib": d.vram_total_gib} for d in cap.cuda_devices]}


def cmd_explain(args: argparse.Namespace) -> int:
    from reconciler.protocol.eligibility import explain
    from worker.resources import judged

    _state_dir, ledger = _ledgers(args)
    snap = ledger.snapshot(ledger.fetch())
    if snap.manifest is None:
        raise LedgerError(f"the ledger's manifest is invalid: {snap.manifest_error}")
    cap = judged(_capability(args), _held_reservations(ledger, snap, args.name))
    rows = explain(snap.manifest, snap.states, args.name, cap)
    figures = judged_figures(cap)
    if args.json:
        print(json.dumps({"worker": args.name, "revision": snap.revision, "jobs": rows,
                          "judged_by": figures}, indent=2, sort_keys=True))
        return 0
    gpus = ", ".join(f"cuda:{g['index']} {g['vram_free_gib']:g}/{g['vram_total_gib']:g} GiB free"
                     for g in figures["gpus"]) or "no CUDA device"
    print(f"judged by: RAM {figures['ram_available_gib']:g}/{figures['ram_total_gib']:g} GiB "
          f"available, {gpus} (less what this worker's running jobs reserve)")
    if not rows:
        print("no pending jobs")
    for row in rows:
        verdict = "eligible" if row["eligible"] else "not eligible: " + "; ".join(row["reasons"])
        print(f"{row['name']:<32} {row['job_id'][:8]}  {verdict}")
    return 0


WSL2_HINT = ("a worker cannot run natively on Windows (trainers need the Linux process "
             "model: process groups, PR_SET_PDEATHSIG); run it inside WSL2, where CUDA "
             "works too: scripts/install-worker-windows.ps1 sets that up (docs/operators.md, "
             "'Windows hosts')")


def cmd_run(args: argparse.Namespace) -> int:
    if sys.platform == "win32":  # refuse at start-up, not at the first claim with a job held
        raise LedgerError(WSL2_HINT)
    from reconciler.git.ledger import Ledger
    from reconciler.store.backends import open_store
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
        from reconciler.protocol.storeurl import describe_store, resolve

        url = resolve(args.store, loaded.fleet.store, args.ledger)
        store = open_store(url, state_dir)
        # through the log, so --log-format json keeps one object a line
        logging.getLogger("trainledger.worker").info(
            "event=store worker=%s artifacts go to %s", args.name, describe_store(store))
        return store

    config = WorkerConfig(name=args.name, state_dir=state_dir, poll_s=args.poll_s,
                          slots=args.slots, exit_when_idle=args.exit_when_idle,
                          max_jobs=args.max_jobs, pass_env=pass_env_patterns(args))
    worker = Worker(config, ledger, beat_ledger, store_factory, _resources(args, cap))
    worker.install_signal_handlers()
    logging.getLogger("trainledger").info(
        "event=worker-start worker=%s ledger=%s state_dir=%s pid=%s", args.name, args.ledger,
        state_dir, os.getpid())
    return worker.run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worker", description="trainledger worker",
                                     epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_top(parser, version())
    common = common_parent()
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help_text, description=help_text, parents=[common],
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        add_examples("worker", name, child)
        return child

    run = add("run", "claim and train jobs until stopped")
    add_ledger_arg(run)
    run.add_argument("--name", default=socket.gethostname().split(".")[0],
                     help="this worker's name (default: hostname)")
    run.add_argument("--store", help="store path, ssh://host/path or host:/path (default: the "
                     "manifest's, a path on the ledger's host)")
    run.add_argument("--capability", type=Path, help="JSON capability instead of detection")
    run.add_argument("--exit-when-idle", action="store_true",
                     help="exit 0 once nothing is eligible and nothing is running")
    run.add_argument("--poll-s", type=positive_float, default=2.0,
                     help="seconds between polls")
    run.add_argument("--slots", type=positive_int, default=1, help="jobs run at once")
    run.add_argument("--max-jobs", type=positive_int, help="exit after claiming this many jobs")
    run.add_argument("--state-dir", type=Path, help="cache, logs and outputs")
    run.add_argument("--pass-env", action="append", metavar="PATTERN",
                     help="pass this worker's variables matching the glob to trainers "
                          "(repeatable; also $TRAINLEDGER_PASS_ENV); the way for secrets")
    run.set_defaults(func=cmd_run)

    cap = add("capability", "what this host can run")
    cap.add_argument("--json", action="store_true")
    cap.add_argument("--capability", type=Path, help="read this JSON instead of detecting")
    cap.set_defaults(func=cmd_capability)

    exp = add("explain", "for every pending job: may this host take it, why not")
    add_ledger_arg(exp)
    exp.add_argument("--name", default=socket.gethostname().split(".")[0])
    exp.add_argument("--capability", type=Path)
    exp.add_argument("--state-dir", type=Path)
    exp.add_argument("--json", action="store_true")
    exp.set_defaults(func=cmd_explain)

    from reconciler.cli.completion import configure

    comp = add("completion", "print a bash or zsh completion script")
    configure(comp, "worker")
    comp.set_defaults(func=cmd_completion)
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    from reconciler.cli.completion import script

    print(script(args.full_parser(), args.shell), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
