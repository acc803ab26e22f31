"""P1 (one claim vs the physical limit) and P2 (K claimers vs a SQLite queue)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.claimer import create_sqlite_queue, make_claim_worker
from bench.common import REPO_ROOT, make_ledger
from bench.rows import Config, RowResult
from bench.stats import Target, paired_ratios, ratio_of_medians, summarize

# ---------------------------------------------------------------------- P1


def _prepared_claim(ledger: Any) -> str:
    """A valid claim commit on the current tip, built without timing it."""
    from reconciler.git.push import Proposal
    from reconciler.protocol import trailers
    from reconciler.protocol.schema import Status

    tip = ledger.fetch()
    snap = ledger.snapshot(tip)
    state = next(s for s in sorted(snap.states.values(), key=lambda s: s.job_id, reverse=True)
                 if s.status is Status.PENDING)
    new = state.model_copy(update={"status": Status.CLAIMED, "attempt": state.attempt + 1,
                                   "holder": ledger.identity})
    change = trailers.Change(new.job_id, new.name, new.attempt, "pending->claimed", "claim")
    return ledger.commit(tip, Proposal.of_states([new], [change]))


def _bare_fetch_push(ledger: Any, sha: str) -> float:
    """The physical limit: one `git fetch` and one `git push` of a ready commit."""
    start = time.perf_counter()
    ledger.repo.git("fetch", "--quiet", ledger.url, "+refs/heads/main:refs/remotes/ref/main")
    proc = ledger.repo.git("push", "--quiet", ledger.url, f"{sha}:refs/heads/main", check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"reference push failed: {proc.stderr.decode(errors='replace')}")
    return elapsed


def _pair(url: str, root: Path, reps: int, envs: tuple[str | None, str | None] = (None, None)
          ) -> tuple[list[float], list[float]]:
    """(real claims, bare fetch+push) interleaved, so noise hits both alike.
    `envs` are the GIT_SSH_COMMANDs of the worker and of the reference pusher."""
    from reconciler.git.ledger import Ledger

    def with_ssh(command: str | None, make: Any) -> Any:
        old = os.environ.get("GIT_SSH_COMMAND")
        if command:
            os.environ["GIT_SSH_COMMAND"] = command
        try:
            return make()
        finally:
            if old is None:
                os.environ.pop("GIT_SSH_COMMAND", None)
            else:
                os.environ["GIT_SSH_COMMAND"] = old

    worker = with_ssh(envs[0], lambda: make_claim_worker(url, "claimer", root / "w-claimer",
                                                         seed=1))
    ref = with_ssh(envs[1], lambda: Ledger(url, root / "w-refw" / "ledger.git", "refw"))
    try:
        for _ in range(2):  # warm both: the clone and the first parse are not a claim
            worker._maybe_claim()
            _bare_fetch_push(ref, _prepared_claim(ref))
        real, bare = [], []
        for _ in range(reps):
            sha = _prepared_claim(ref)
            bare.append(_bare_fetch_push(ref, sha))
            before = len(worker.claims)
            start = time.perf_counter()
            worker._maybe_claim()
            real.append(time.perf_counter() - start)
            if len(worker.claims) != before + 1:
                raise RuntimeError("P1: the worker did not claim")
    finally:
        worker.ledger.close()
        ref.close()
    return real, bare


def run_p1(cfg: Config) -> RowResult:
    from bench.sshd import sshd

    row = RowResult("P1", "one claim through the real worker code (hooks on): path and ssh "
                          "with connection reuse")
    fleet = {"heartbeat_s": 30, "stale_after_s": 600}
    with cfg.scratch.dir("p1") as root:
        led = make_ledger(root / "path", jobs=3 * cfg.p1_reps + 6, fleet=fleet)
        runs = {"path": _pair(led.url, root / "path", cfg.p1_reps)}
        with sshd(root / "sshd") as server:
            if server is None:
                row.notes.append("ssh: not measured (no /usr/sbin/sshd on this machine)")
            else:
                led = make_ledger(root / "ssh", jobs=3 * cfg.p1_reps + 6, fleet=fleet)
                envs = (server.enroll("claimer", led.path, led.store),
                        server.enroll("refw", led.path, led.store))
                runs["ssh"] = _pair(server.url(led.path), root / "ssh", cfg.p1_reps, envs)
    for name, (real, bare) in runs.items():
        ratio = ratio_of_medians(real, bare)
        row.measured[name] = {"claim_s": summarize(real),
                              "paired_ratio": summarize(paired_ratios(real, bare)),
                              "ratio_of_medians": ratio}
        row.reference[name] = {"fetch_push_s": summarize(bare)}
        row.targets.append(
            Target(f"claim / (fetch+push) median ratio, {name}", 2.0).verdict(ratio))
    return row


# ---------------------------------------------------------------------- P2


def race(kind: str, target: str, k: int, root: Path, window_s: float) -> dict[str, Any]:
    """K claimer processes race for `window_s` (or until nothing is left)."""
    root.mkdir(parents=True, exist_ok=True)
    go = root / "go"
    procs, outs, readies = [], [], []
    for i in range(k):
        out, ready = root / f"c{i}.jsonl", root / f"c{i}.ready"
        argv = [sys.executable, "-m", "bench.claimer", kind, "--ledger", target,
                "--name", f"c{i:02d}", "--dir", str(root / f"c{i}"), "--ready", str(ready),
                "--go", str(go), "--out", str(out)]
        procs.append(subprocess.Popen(argv, cwd=REPO_ROOT))
        outs.append(out)
        readies.append(ready)
    limit = time.monotonic() + 300
    while not all(r.exists() for r in readies):
        if time.monotonic() > limit or any(p.poll() not in (None, 0) for p in procs):
            for p in procs:
                p.kill()
            raise RuntimeError(f"P2 {kind} K={k}: claimers did not start")
        time.sleep(0.01)
    load_before = os.getloadavg()[0]
    t_go = time.time()
    go.write_text("go")
    end = time.monotonic() + window_s
    while time.monotonic() < end and any(p.poll() is None for p in procs):
        time.sleep(0.05)
    t_end = time.time()
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    events = [{**json.loads(line), "claimer": i} for i, out in enumerate(outs) if out.exists()
              for line in out.read_text().splitlines() if line.strip()]
    return {"t_go": t_go, "t_end": t_end, "events": events, "window_s": window_s,
            "finished": all(p.returncode == 0 for p in procs), "claimers": k,
            "loadavg_1min": (load_before, os.getloadavg()[0])}


def race_figures(result: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Claims/s over the race; latency of every claim, plus the waits still open
    when the window closed (as lower bounds: a starved claimer counts)."""
    claims = [e for e in result["events"] if e["event"] == "claim"]
    per_job = Counter(e["job"] for e in claims)
    doubles = sum(1 for c in per_job.values() if c > 1)
    end = max((e["end"] for e in claims), default=result["t_go"]) \
        if result["finished"] else result["t_end"]
    duration = end - result["t_go"]
    lat = [e["end"] - e["start"] for e in claims]
    done_starts = {e["start"] for e in result["events"] if e["event"] in ("claim", "none")}
    open_waits = [result["t_end"] - e["start"] for e in result["events"]
                  if e["event"] == "begin" and e["start"] not in done_starts]
    lost = [max(0, e["lost"]) for e in claims]
    return {"smallest_share": smallest_share(claims, result.get("claimers", 1)),
        "claims": len(claims), "unclaimed": jobs - len(per_job), "double_claims": doubles,
        "seconds": duration, "claims_per_s": len(claims) / duration if duration > 0 else 0.0,
        "retries_per_claim": sum(lost) / len(lost) if lost else 0.0,
        "latency_s": summarize(lat + open_waits), "open_waits_at_end": len(open_waits),
        "ran_to_completion": result["finished"], "loadavg_1min": result["loadavg_1min"],
    }


def smallest_share(claims: list[dict[str, Any]], claimers: int) -> float:
    """The fewest claims any claimer got, over its fair share (claims / claimers):
    1.0 is perfectly even, 0.0 means one claimer got nothing (starved)."""
    if not claims or claimers <= 0:
        return 0.0
    per = Counter(e.get("claimer", 0) for e in claims)
    fewest = min(per.get(i, 0) for i in range(claimers))
    return fewest / (len(claims) / claimers)


def ledger_double_claims(path: Path) -> int:
    """Jobs the ledger's own history shows claimed more than once (no releases here)."""
    from reconciler.protocol import trailers
    raw = subprocess.run(["git", "-C", str(path), "log", "--format=%B%x01", "main"],
                         capture_output=True, text=True, check=True).stdout
    claims: Counter[str] = Counter()
    for message in raw.split("\x01"):
        for job, _attempt, transition in trailers.changes_of(message):
            if transition == "pending->claimed":
                claims[job] += 1
    return sum(1 for c in claims.values() if c > 1)


def run_p2(cfg: Config) -> RowResult:
    row = RowResult("P2", f"K claimers racing for {cfg.p2_jobs} jobs (no-op trainer) "
                          "vs a SQLite WAL queue")
    window = cfg.p2_window_s
    with cfg.scratch.dir("p2") as root:
        for k in cfg.p2_ks:
            # the fleet's default timings: a worker's push timeout follows stale_after_s
            led = make_ledger(root / f"git-{k}", jobs=cfg.p2_jobs,
                              fleet={"heartbeat_s": 30, "stale_after_s": 600})
            fig = race_figures(race("git", led.url, k, root / f"race-git-{k}", window),
                               cfg.p2_jobs)
            fig["ledger_double_claims"] = ledger_double_claims(led.path)
            row.measured[f"K={k}"] = fig
            from reconciler.git.ledger import Ledger

            reader = Ledger(led.url, root / f"reader-{k}.git", "reader")
            ids = list(reader.snapshot(reader.fetch()).states)
            reader.close()
            db = root / f"queue-{k}.sqlite"
            create_sqlite_queue(db, ids)
            ref = race_figures(race("sqlite", str(db), k, root / f"race-sql-{k}", window),
                               cfg.p2_jobs)
            row.reference[f"K={k}"] = ref
            if fig["claims_per_s"]:
                row.measured[f"K={k}"]["sqlite_ratio"] = ref["claims_per_s"] / fig["claims_per_s"]
    kmax, kmid = max(cfg.p2_ks), 4 if 4 in cfg.p2_ks else min(cfg.p2_ks)
    doubles = sum(m["double_claims"] + m["ledger_double_claims"] for m in row.measured.values())
    doubles += sum(r["double_claims"] for r in row.reference.values())
    unclaimed = sum(m["unclaimed"] for m in row.measured.values())
    collapse = row.measured[f"K={kmax}"]["claims_per_s"] / max(
        row.measured[f"K={kmid}"]["claims_per_s"], 1e-9)
    p99 = row.measured[f"K={kmax}"]["latency_s"].get("p99")
    row.measured["collapse_ratio"] = collapse
    row.targets = [
        Target("double claims (all K, ledger history and claimers)", 0, "==").verdict(doubles),
        Target(f"throughput K={kmax} / K={kmid}", 0.9, ">=").verdict(collapse),
        Target(f"p99 claim latency K={kmax}", 2.0, "<=", " s").verdict(p99),
        Target("smallest claimer share / fair share, worst K", 0.5, ">=").verdict(
            min(m["smallest_share"] for k, m in row.measured.items() if k.startswith("K="))),
    ]
    if unclaimed:
        row.notes.append(f"each race runs for at most {window:g} s; {unclaimed} jobs in all "
                         "were still pending when windows closed (throughput is claims over "
                         "the window; waits still open at its end count in the latency)")
    row.notes.append("SQLite ratio = SQLite claims/s over ledger claims/s at the same K; the "
                     "ledger trades per-claim speed for no server and a git audit trail")
    return row
