"""P4: status, one reconcile pass, one worker poll and one claim on 10k and
100k-job ledgers (seeded with fast-import), vs reading the same states from
SQLite.

`reconciler status` and `reconciler run --once` are timed as the CLI an
operator or a timer runs: a process each time, with a state dir kept between
runs (the first run, which clones, is reported apart). The poll and the claim
are timed inside one long-lived worker, as a worker lives: the first poll
clones and parses everything and is reported apart too.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.claimer import make_claim_worker, sqlite_claim
from bench.common import REPO_ROOT
from bench.rows import Config, RowResult
from bench.seed import seed_ledger
from bench.stats import Target, ratio_of_medians, summarize

IDLE_HOST = '\n[hosts.idle]\ndeny_jobs = ["*"]\n'


def cli(args: list[str], state_home: Path, timeout: float = 300) -> tuple[float, str]:
    env = {**os.environ, "XDG_STATE_HOME": str(state_home)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"reconciler {' '.join(args[:1])}: exit {proc.returncode}: "
                           f"{proc.stderr.strip()[-1500:]}")
    return elapsed, proc.stdout


def sqlite_mirror(path: Path, states: dict[str, Any]) -> sqlite3.Connection:
    """The same states as rows: the reference a database-backed queue would read."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT, priority INTEGER, "
               "status TEXT, attempt INTEGER, holder TEXT, state TEXT)")
    db.execute("CREATE INDEX jobs_status ON jobs (status, priority)")
    db.execute("BEGIN")
    db.executemany("INSERT INTO jobs VALUES (?, ?, 0, ?, ?, ?, ?)",
                   [(s.job_id, s.name, s.status.value, s.attempt, s.holder, s.to_json())
                    for s in states.values()])
    db.execute("COMMIT")
    return db


def sqlite_reads(db: sqlite3.Connection, reps: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"status": [], "poll": [], "claim": []}
    for _ in range(reps):
        t = time.perf_counter()
        rows = db.execute("SELECT id, name, status, attempt, holder, state FROM jobs").fetchall()
        _parsed = [json.loads(r[5]) for r in rows]
        out["status"].append(time.perf_counter() - t)
        t = time.perf_counter()
        db.execute("SELECT id FROM jobs WHERE status='pending' ORDER BY priority DESC "
                   "LIMIT 16").fetchall()
        out["poll"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sqlite_claim(db, "sqlite-worker")
        out["claim"].append(time.perf_counter() - t)
    return out


def measure_size(cfg: Config, root: Path, jobs: int) -> dict[str, Any]:
    seeded = seed_ledger(root, jobs, history_cap=cfg.p4_history_cap, extra=IDLE_HOST)
    fig: dict[str, Any] = {"jobs": jobs, "seed_commits": seeded.commits,
                           "seed_s": seeded.seconds}
    state_home = root / "state"
    first, status = cli(["status", "--ledger", seeded.url, "--json"], state_home)
    fig["status_first_s"] = first
    fig["status_jobs_seen"] = len(json.loads(status).get("jobs", []))
    times = [cli(["status", "--ledger", seeded.url, "--json"], state_home)[0]
             for _ in range(cfg.p4_reps)]
    fig["status_s"] = summarize(times)
    first, _ = cli(["run", "--ledger", seeded.url, "--once"], state_home)
    fig["pass_first_s"] = first
    fig["pass_s"] = summarize([cli(["run", "--ledger", seeded.url, "--once"], state_home)[0]
                               for _ in range(cfg.p4_reps)])
    poller = make_claim_worker(seeded.url, "idle", root / "w-idle", seed=1)
    t = time.perf_counter()
    poller._maybe_claim()
    fig["poll_first_s"] = time.perf_counter() - t
    polls = []
    for _ in range(max(5, cfg.p4_reps * 2)):
        t = time.perf_counter()
        idle = poller._maybe_claim()
        polls.append(time.perf_counter() - t)
        if not idle or poller.claims:
            raise RuntimeError("P4: the idle worker claimed a job (deny_jobs not honoured)")
    fig["poll_s"] = summarize(polls)
    claimer = make_claim_worker(seeded.url, "claimer", root / "w-claimer", seed=2)
    t = time.perf_counter()
    claimer._maybe_claim()
    fig["claim_first_s"] = time.perf_counter() - t
    claims = []
    for _ in range(max(5, cfg.p4_reps * 2)):
        before = len(claimer.claims)
        t = time.perf_counter()
        claimer._maybe_claim()
        claims.append(time.perf_counter() - t)
        if len(claimer.claims) != before + 1:
            raise RuntimeError("P4: the worker did not claim")
    fig["claim_s"] = summarize(claims)
    states = claimer.ledger.snapshot().states
    poller.ledger.close()
    claimer.ledger.close()
    db = sqlite_mirror(root / "mirror.sqlite", states)
    ref = sqlite_reads(db, max(5, cfg.p4_reps * 2))
    db.close()
    sql = {k: summarize(v) for k, v in ref.items()}
    return {"ledger": fig, "sqlite": sql, "raw_claims": claims}


def run_p4(cfg: Config) -> RowResult:
    small, big = cfg.p4_sizes
    row = RowResult("P4", f"ledgers of {small:,} and {big:,} jobs: status, reconcile pass, "
                          "worker poll, claim vs SQLite")
    results = {}
    for jobs in (small, big):
        with cfg.scratch.dir(f"p4-{jobs}") as root:
            results[jobs] = measure_size(cfg, root, jobs)
    for jobs, res in results.items():
        row.measured[f"{jobs}"] = res["ledger"]
        row.reference[f"{jobs}"] = res["sqlite"]
        for what in ("status", "poll", "claim"):
            res["ledger"][f"{what}_vs_sqlite"] = (
                res["ledger"][f"{what}_s"]["median"] / max(res["sqlite"][what]["median"], 1e-9))
    s, b = row.measured[f"{small}"], row.measured[f"{big}"]
    claim_ratio = ratio_of_medians(results[big]["raw_claims"], results[small]["raw_claims"])
    row.measured["claim_ratio_big_over_small"] = claim_ratio
    row.targets = [
        Target(f"status at {small:,}", 1.0, "<=", " s").verdict(s["status_s"]["median"]),
        Target(f"reconcile pass at {small:,}", 1.0, "<=", " s").verdict(s["pass_s"]["median"]),
        Target(f"worker poll at {small:,}", 0.3, "<=", " s").verdict(s["poll_s"]["median"]),
        Target(f"status at {big:,}", 5.0, "<=", " s").verdict(b["status_s"]["median"]),
        Target(f"claim time {big:,} / {small:,}", 1.5).verdict(claim_ratio),
    ]
    if cfg.quick:
        row.notes.append("quick mode: smaller ledgers than the targets name; see the full run")
    row.notes.append("status and pass are CLI processes with a kept state dir (first, cloning "
                     "run reported apart); poll and claim run in one long-lived worker")
    return row
