"""A claimer process for P1/P2: the real worker claim path with a no-op
trainer, or the SQLite reference, claiming until nothing is left.

`python -m bench.claimer git|sqlite ...` waits for a go-file so that all K
processes start racing at once (their import time is not measured), then
claims in a closed loop, journalling each attempt's start and each claim,
until nothing is left or the bench ends its window. The SQLite side
imports nothing but the standard library, so it starts as fast as it can.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any


def wait_for_go(ready: Path, go: Path, timeout_s: float = 300.0) -> None:
    ready.write_text("ready")
    deadline = time.monotonic() + timeout_s
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no go-file {go} after {timeout_s}s")
        time.sleep(0.002)


def make_claim_worker(url: str, name: str, state_dir: Path, seed: int | None = None) -> Any:
    """A `worker.daemon.Worker` whose trainer is a no-op: `_maybe_claim()` runs
    the product's own fetch, pick, commit and push; the claimed job is only
    recorded (no trainer, no claimed->running push)."""
    from bench.common import CPU_CAPABILITY
    from reconciler.git.ledger import Ledger
    from reconciler.protocol.schema import Capability
    from worker.daemon import Worker, WorkerConfig

    class ClaimOnlyWorker(Worker):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.claims: list[tuple[str, int]] = []
            self.last_lost = 0

        def _start(self, spec: Any, attempt: int, device: int | None = None) -> None:
            self.claims.append((spec.job_id, attempt))

        def _commit_start(self, keys: list[tuple[str, int]]) -> None:
            return None

        def _write(self, build: Any, what: str) -> Any:
            outcome = super()._write(build, what)
            self.last_lost = outcome.lost_races if outcome is not None else -1
            return outcome

    state_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(url, state_dir / "ledger.git", name)
    beat = Ledger(url, state_dir / "beat.git", name)
    config = WorkerConfig(name=name, state_dir=state_dir, poll_s=1.0)
    cap = Capability.model_validate({**CPU_CAPABILITY, "hostname": name})
    rng = random.Random(seed) if seed is not None else None
    return ClaimOnlyWorker(config, ledger, beat, lambda _m: None, cap, rng=rng)


class Journal:
    """One JSON line per event, flushed at once: the bench may kill a claimer at
    the end of its window, and an unfinished claim still has a start."""

    def __init__(self, path: Path) -> None:
        self._f = path.open("a")

    def write(self, **record: Any) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()


def run_git(args: argparse.Namespace) -> None:
    worker = make_claim_worker(args.ledger, args.name, Path(args.dir))
    worker.ledger.fetch()  # the clone: a worker's cache exists long before a race
    journal = Journal(Path(args.out))
    wait_for_go(Path(args.ready), Path(args.go))
    while True:
        before = len(worker.claims)
        t0 = time.time()
        journal.write(event="begin", start=t0)
        idle = worker._maybe_claim()
        t1 = time.time()
        for job_id, attempt in worker.claims[before:]:
            journal.write(event="claim", job=job_id, attempt=attempt, start=t0, end=t1,
                          lost=worker.last_lost)
        if len(worker.claims) == before:
            journal.write(event="none", start=t0, end=t1, idle=idle)
            if idle:
                break


def create_sqlite_queue(path: Path, job_ids: list[str]) -> None:
    """The reference queue: one table, WAL, the same jobs."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT, priority INTEGER, "
               "status TEXT, attempt INTEGER, holder TEXT, state TEXT)")
    db.execute("CREATE INDEX jobs_status ON jobs (status, priority)")
    db.executemany("INSERT INTO jobs VALUES (?, ?, 0, 'pending', 0, NULL, NULL)",
                   [(j, f"job-{i:03d}") for i, j in enumerate(job_ids)])
    db.commit()
    db.close()


CLAIM_SQL = ("UPDATE jobs SET status='claimed', holder=?, attempt=attempt+1 "
             "WHERE id = (SELECT id FROM jobs WHERE status='pending' "
             "ORDER BY priority DESC LIMIT 1) AND status='pending' RETURNING id, attempt")


def sqlite_claim(db: sqlite3.Connection, name: str) -> tuple[str, int] | None:
    """One atomic claim: BEGIN IMMEDIATE takes the write lock first, so the
    sub-select and the update see the same committed state."""
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute(CLAIM_SQL, (name,)).fetchone()
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return (row[0], row[1]) if row else None


def run_sqlite(args: argparse.Namespace) -> None:
    db = sqlite3.connect(args.ledger, timeout=60, isolation_level=None)
    db.execute("PRAGMA busy_timeout=60000")
    journal = Journal(Path(args.out))
    wait_for_go(Path(args.ready), Path(args.go))
    while True:
        t0 = time.time()
        row = sqlite_claim(db, args.name)
        t1 = time.time()
        if row is None:
            break
        journal.write(event="claim", job=row[0], attempt=row[1], start=t0, end=t1, lost=0)
    db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.claimer")
    parser.add_argument("kind", choices=["git", "sqlite"])
    parser.add_argument("--ledger", required=True, help="ledger URL or SQLite file")
    parser.add_argument("--name", required=True)
    parser.add_argument("--dir", required=True, help="state dir of this claimer")
    parser.add_argument("--ready", required=True)
    parser.add_argument("--go", required=True)
    parser.add_argument("--out", required=True, help="JSON lines, one per event")
    args = parser.parse_args(argv)
    if args.kind == "git":
        run_git(args)
    else:
        run_sqlite(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
