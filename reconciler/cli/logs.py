"""`reconciler logs JOB [--attempt N] [-f]`: a trainer's log from any host.

A finished attempt's whole log (capped at 8 MiB, tail kept) is a bundle in
the store holding `log.txt`, named by the `log` field of the state the worker
wrote when it completed or failed the attempt (a fenced commit). An older
attempt's log is found by walking the state file's history. For a running job
the store has nothing yet: the latest lines come from the holder's heartbeat,
and `-f` follows them until the attempt ends.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from reconciler.cli.jobref import resolve_job
from reconciler.cli.main import add_ledger_arg, state_dir_default
from reconciler.git.ledger import Ledger
from reconciler.protocol.errors import LedgerError, StateError
from reconciler.protocol.state import HELD, JobState, LogRef

HISTORY_LIMIT = 500  # commits of one state file searched for an older attempt's log
FOLLOW_LIMIT_S = 7 * 24 * 3600.0


def find_log(ledger: Ledger, state: JobState, tip: str, attempt: int | None) -> LogRef | None:
    """The log of `attempt` (default: the latest finished one) from the state at
    the tip or, for an older attempt, from the state file's history."""
    if state.log is not None and attempt in (None, state.log.attempt):
        return state.log
    proc = ledger.repo.git("log", "--format=%H", "-n", str(HISTORY_LIMIT), tip, "--",
                           state.path, check=False)
    for commit in proc.stdout.decode().split():
        data = ledger.repo.git("show", f"{commit}:{state.path}", check=False).stdout
        try:
            old = JobState.model_validate_json(data)
        except StateError:
            continue
        if old.log is not None and attempt in (None, old.log.attempt):
            return old.log
    return None


def read_log(store_url: str, ref: LogRef, state_dir: Path) -> bytes:
    """Download the log bundle (sha256 checked while it streams), unpack it safely."""
    from reconciler.store.backends import open_store
    from reconciler.store.download import download
    from reconciler.store.unpack import unpack

    store = open_store(store_url, state_dir)
    with tempfile.TemporaryDirectory(prefix="logs-", dir=state_dir) as tmp:
        bundle = download(store, ref.sha256, ref.size, Path(tmp))
        dest = Path(tmp) / "out"
        unpack(bundle, dest, max_members=4, max_bytes=64 * 1024 * 1024)
        path = dest / "log.txt"
        if not path.is_file():
            raise LedgerError(f"log bundle {ref.sha256[:12]} holds no log.txt")
        return path.read_bytes()


def beat_tail(ledger: Ledger, state: JobState) -> list[str] | None:
    """The holder's heartbeat lines for this attempt; None when it lists none."""
    ledger.fetch(heartbeats=True)
    rec = ledger.heartbeats().get(state.holder or "")
    if rec is None or rec.beat is None:
        return None
    for job in rec.beat.jobs:
        if job.job_id == state.job_id and job.attempt == state.attempt:
            return list(job.tail or ([job.last_line] if job.last_line else []))
    return None


def new_lines(shown: list[str], tail: list[str]) -> list[str]:
    """The lines of `tail` after the longest overlap with the end of `shown`."""
    for k in range(min(len(shown), len(tail)), 0, -1):
        if shown[-k:] == tail[:k]:
            return tail[k:]
    return tail


def cmd_logs(args: argparse.Namespace) -> int:
    from reconciler.cli.status import cache_for

    state_dir = Path(args.state_dir or state_dir_default("logs"))
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ledger = Ledger(args.ledger, cache_for(args.ledger, "logs"), "operator")
    try:
        tip = ledger.fetch()
        if tip is None:
            raise LedgerError(f"{args.ledger}: the ledger has no main branch")
        snap = ledger.snapshot(tip)
        names = {s.job_id: s.name for s in snap.manifest.specs.values()} if snap.manifest else {}
        state = resolve_job(snap.states, names, args.job)
        running = state.status in HELD and args.attempt in (None, state.attempt)
        if running:
            return _running(ledger, state, args, snap.manifest.fleet.heartbeat_s
                            if snap.manifest else 5.0)
        ref = find_log(ledger, state, tip, args.attempt)
        if ref is None:
            which = f"attempt {args.attempt}" if args.attempt else "any finished attempt"
            raise LedgerError(f"job {state.name} ({state.job_id}): no log in the store for "
                              f"{which} (status {state.status.value}, attempt {state.attempt})")
        url = args.store or (snap.manifest.fleet.store if snap.manifest else None)
        if not url:
            raise LedgerError("no store: pass --store or set [fleet] store in the manifest")
        data = read_log(url, ref, state_dir)
    finally:
        ledger.close()
    out = getattr(sys.stdout, "buffer", None)  # bytes as stored; text where stdout has no buffer
    if out is not None:
        out.write(data)
    else:
        sys.stdout.write(data.decode("utf-8", "replace"))
    sys.stdout.flush()
    return 0


def _running(ledger: Ledger, state: JobState, args: argparse.Namespace, every_s: float) -> int:
    shown: list[str] = []
    lines = beat_tail(ledger, state)
    if lines is None and not args.follow:
        print(f"# {state.name} attempt {state.attempt} is {state.status.value} on "
              f"{state.holder}; its heartbeat carries no lines yet", file=sys.stderr)
        return 0
    deadline = time.monotonic() + FOLLOW_LIMIT_S
    while True:
        fresh = new_lines(shown, lines or [])
        if fresh:
            print("\n".join(fresh), flush=True)
            shown = (shown + fresh)[-256:]
        if not args.follow or time.monotonic() > deadline:
            return 0
        time.sleep(every_s)
        tip = ledger.fetch()
        now = ledger.snapshot(tip).states.get(state.job_id)
        if now is None or now.status not in HELD or now.attempt != state.attempt:
            what = now.status.value if now else "gone"
            print(f"# attempt {state.attempt} ended ({what}); its whole log: "
                  f"reconciler logs {state.job_id} --attempt {state.attempt}", file=sys.stderr)
            return 0
        lines = beat_tail(ledger, state)


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="job id, unique id prefix, or name")
    add_ledger_arg(parser)
    parser.add_argument("--attempt", type=int, metavar="N", help="this attempt (default: latest)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="a running job: keep printing its new lines until it ends")
    parser.add_argument("--store", help="store path or ssh:// URL (default: the manifest's)")
    parser.add_argument("--state-dir", help="where the store's ssh socket and temp files live")
    parser.set_defaults(func=cmd_logs)
