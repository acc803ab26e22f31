"""P8 (one worker's no-op job cycle vs a bare fetch+commit+push) and P9 (sweep
utilization: K workers x N short jobs, ideal time / wall time).

Both run the real `worker run --exit-when-idle` processes against a real
ledger with its hook. A watcher thread stamps every change of main on the
bench's clock; after the run, every commit between two stamped tips gets the
later tip's stamp, so a tip the watcher skipped still counts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, git, make_ledger, manifest_text, write_capability
from bench.latency import RefWatcher
from bench.rows import Config, RowResult
from bench.stats import Target, summarize

WORKER_TIMEOUT_S = 900.0


def stamp_commits(repo: Path, seen: list[tuple[float, str]]) -> list[tuple[float, str, str]]:
    """(time, transition, job) for every change on main after the first stamped
    tip's parent, each stamped with the first watched tip that contains it."""
    from reconciler.protocol import trailers
    out: list[tuple[float, str, str]] = []
    prev: str | None = None
    for when, sha in seen:
        span = f"{prev}..{sha}" if prev else f"{sha}~1..{sha}"
        raw = git(repo, "log", "--reverse", "--format=%B%x01", span, check=False).stdout.decode()
        for message in raw.split("\x01"):
            for job, _attempt, transition in trailers.changes_of(message):
                out.append((when, transition, job))
        prev = sha
    return out


def _completed(repo: Path, since: str) -> int:
    from reconciler.protocol import trailers
    raw = git(repo, "log", "--format=%B%x01", f"{since}..main").stdout.decode()
    return sum(1 for message in raw.split("\x01")
               for _j, _a, tr in trailers.changes_of(message) if tr.endswith("->completed"))


def cycle_figures(events: list[tuple[float, str, str]], jobs: int) -> dict[str, Any]:
    """From stamped changes: first claim, last completion, and the steady-state
    period between completions (what a job costs once the loop is running)."""
    claims = sorted(t for t, tr, _ in events if tr == "pending->claimed")
    done = sorted(t for t, tr, _ in events if tr.endswith("->completed"))
    if len(done) < jobs or not claims:
        raise RuntimeError(f"only {len(done)} of {jobs} jobs completed")
    period = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else float("nan")
    return {"first_claim": claims[0], "last_complete": done[-1], "cycle_s": period,
            "span_s": done[-1] - claims[0], "completed": len(done), "claims": len(claims),
            "changes_per_job": len(events) / max(len(done), 1)}


def utilization(ideal_s: float, wall_s: float) -> float:
    return ideal_s / wall_s if wall_s > 0 else 0.0


def _bare_cycle(root: Path, reps: int) -> list[float]:
    """The reference: a fetch, a commit built beforehand and its push, on a ledger
    of its own (hook on), `reps` times."""
    from bench.claims import _bare_fetch_push, _prepared_claim
    from reconciler.git.ledger import Ledger

    led = make_ledger(root, jobs=reps + 3, fleet={"heartbeat_s": 30, "stale_after_s": 600})
    ref = Ledger(led.url, root / "refw" / "ledger.git", "refw")
    try:
        _bare_fetch_push(ref, _prepared_claim(ref))  # warm: the clone is not a push
        return [_bare_fetch_push(ref, _prepared_claim(ref)) for _ in range(reps)]
    finally:
        ref.close()


def run_fleet(root: Path, workers: int, jobs: int, seconds: float, slots: int = 1
              ) -> dict[str, Any]:
    """`workers` real worker processes drain `jobs` jobs of `seconds` each. The
    jobs are held back (allowed_hosts, not part of a job's identity) until every
    worker has beaten once, so a slow start-up is not counted as idle fleet;
    `opened` is when the operator's push opening them returned."""
    specs = [{"name": f"job-{i:03d}", "seed": i, "hyper": {"seconds": seconds}}
             for i in range(jobs)]
    fleet = {"heartbeat_s": 5, "stale_after_s": 120}
    led = make_ledger(root, jobs=[{**s, "allowed_hosts": ["gate"]} for s in specs],
                      fleet=fleet)
    env = {**os.environ, "XDG_STATE_HOME": str(root / "state")}
    watcher = RefWatcher(led.path)
    watcher.start()
    procs = []
    try:
        for i in range(workers):
            name = f"w{i}"
            cap = write_capability(root / f"cap-{name}.json", name)
            argv = [sys.executable, "-m", "worker.cli", "run", "--ledger", led.url,
                    "--name", name, "--store", str(led.store), "--state-dir",
                    str(root / name), "--capability", str(cap), "--poll-s", "0.2",
                    "--slots", str(slots)]
            procs.append(subprocess.Popen(argv, cwd=REPO_ROOT, env=env,
                                          stdout=(root / f"{name}.log").open("ab"),
                                          stderr=subprocess.STDOUT))
        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while len(git(led.path, "for-each-ref", "refs/heartbeats/").stdout.splitlines()) \
                < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("the workers did not all start")
            time.sleep(0.05)
        clone = root / "operator"
        git(root, "clone", "-q", led.url, str(clone))
        (clone / "manifest.toml").write_text(manifest_text(specs, fleet))
        git(clone, "commit", "-qam", "open the jobs")
        git(clone, "push", "-q", "origin", "HEAD:main", env={"TRAINLEDGER_IDENTITY": "operator"})
        opened = time.monotonic()
        base = git(led.path, "rev-parse", "main").stdout.decode().strip()
        while _completed(led.path, base) < jobs:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("the workers did not complete every job")
            time.sleep(0.2)
        tip = git(led.path, "rev-parse", "main").stdout.decode().strip()
        seen_by = time.monotonic() + 10  # the watcher stamps the last tip (2 ms polls)
        while not any(sha == tip for _t, sha in watcher.seen) and time.monotonic() < seen_by:
            time.sleep(0.01)
    finally:
        watcher.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    fig = cycle_figures(stamp_commits(led.path, list(watcher.seen)), jobs)
    fig["exit_codes"] = [p.returncode for p in procs]
    fig["opened_to_last_s"] = fig["last_complete"] - opened
    return fig


def run_p8(cfg: Config) -> RowResult:
    row = RowResult("P8", f"one worker, {cfg.p8_jobs} no-op jobs: job cycle vs a bare "
                          "fetch+commit+push")
    with cfg.scratch.dir("p8") as root:
        before = _bare_cycle(root / "ref-before", cfg.p8_reps)
        fig = run_fleet(root / "fleet", 1, cfg.p8_jobs, 0.0)
        after = _bare_cycle(root / "ref-after", cfg.p8_reps)
    bare = summarize(before + after)
    ratio = fig["cycle_s"] / bare["median"]
    row.measured = {"cycle_s": fig["cycle_s"], "span_s": fig["span_s"],
                    "changes_per_job": fig["changes_per_job"], "ratio": ratio}
    row.reference = {"fetch_commit_push_s": bare}
    row.targets = [Target("job cycle / (fetch+commit+push)", 4.0).verdict(ratio)]
    row.notes.append("cycle = time between the first and the last completion over the "
                     "completions between them; the reference runs before and after")
    return row


def run_p9(cfg: Config) -> RowResult:
    n, secs, k = cfg.p9_jobs, cfg.p9_seconds, cfg.p9_workers
    row = RowResult("P9", f"sweep utilization: {k} workers x {n} jobs of {secs:g} s")
    with cfg.scratch.dir("p9") as root:
        for slots in (1, 2):
            fig = run_fleet(root / f"slots-{slots}", k, n, secs, slots)
            ideal = n * secs / (k * slots)
            util = utilization(ideal, fig["opened_to_last_s"])
            row.measured[f"slots={slots}"] = {"wall_s": fig["opened_to_last_s"],
                                              "utilization": util,
                                              "exit_codes": fig["exit_codes"]}
            row.reference[f"slots={slots}"] = {"ideal_s": ideal}
            row.targets.append(Target(f"utilization, {slots} slot(s) per worker", 0.9,
                                      ">=").verdict(util))
    row.notes.append("wall = the operator's push opening the jobs (every worker up and "
                     "beating) to the last completion on main; ideal = jobs x seconds / "
                     "(workers x slots)")
    return row
