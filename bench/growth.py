"""P5: what the ledger costs on disk per job life, and what heartbeats add.

Job lives are built with the product's own commit writer (Ledger.commit: the
same trees, state JSON and trailers a worker pushes) and pushed in one go; a
simulated day of heartbeats is written as the exact commits
Ledger.push_heartbeat makes, each loose object dated to its simulated beat, so
housekeeping's expiry sees a real day. Nothing here waits a day.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

from bench.common import CPU_CAPABILITY, git, make_ledger
from bench.rows import Config, RowResult
from bench.stats import Target

WORKERS = tuple(f"w{i:02d}" for i in range(20))


def object_bytes(repo: Path) -> dict[str, int]:
    """Packed and loose object bytes (apparent sizes, as `count-objects -v`)."""
    out = git(repo, "count-objects", "-v").stdout.decode()
    kv = {k: int(v) for k, v in (ln.split(": ") for ln in out.splitlines())}
    return {"packed": kv["size-pack"] * 1024, "loose": kv["size"] * 1024,
            "loose_count": kv["count"], "packs": kv["packs"],
            "total": (kv["size-pack"] + kv["size"] + kv.get("size-garbage", 0)) * 1024}


def housekeeping(repo: Path) -> str:
    """The reconciler's housekeeping if it has one, else what the ledger's config
    asks of `git gc` (gc.pruneExpire from reconciler init)."""
    try:
        from reconciler import housekeeping as hk  # type: ignore[attr-defined]

        hk.run(repo)
        return "reconciler.housekeeping.run"
    except (ImportError, AttributeError):
        git(repo, "gc", "--quiet")
        expire = git(repo, "config", "gc.pruneExpire", check=False).stdout.decode().strip()
        return f"git gc (gc.pruneExpire={expire or 'default'})"


def build_lives(url: str, cache: Path, jobs: int) -> tuple[str, int]:
    """claim, start, complete for every job, one commit each, by rotating workers."""
    from reconciler.git.ledger import Ledger
    from reconciler.git.push import Proposal
    from reconciler.protocol import trailers
    from reconciler.protocol.schema import Artifact, Status

    ledger = Ledger(url, cache, WORKERS[0])
    tip = ledger.fetch()
    assert tip
    snap = ledger.snapshot(tip)
    count = 0
    for n, state in enumerate(sorted(snap.states.values(), key=lambda s: s.name)):
        worker = WORKERS[n % len(WORKERS)]
        ledger.identity, ledger.email = worker, f"{worker}@trainledger"
        digest = hashlib.sha256(state.job_id.encode()).hexdigest()
        steps = [
            ({"status": Status.CLAIMED, "attempt": 1, "holder": worker}, "pending->claimed",
             "claim"),
            ({"status": Status.RUNNING}, "claimed->running", "start"),
            ({"status": Status.COMPLETED, "holder": None,
              "artifact": Artifact(sha256=digest, size=5 << 20)}, "running->completed",
             "complete"),
        ]
        for update, label, meaning in steps:
            state = state.model_copy(update=update)
            change = trailers.Change(state.job_id, state.name, state.attempt, label, meaning)
            tip = ledger.commit(tip, Proposal.of_states([state], [change]))
            count += 1
    proc = ledger.repo.git("push", "--quiet", url, f"{tip}:refs/heads/main", check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"P5 push failed: {proc.stderr.decode(errors='replace')}")
    ledger.close()
    return tip, count


def heartbeat_day(repo_dir: Path, hours: float, heartbeat_s: float = 30.0) -> int:
    """Every beat of 20 workers over `hours`, as push_heartbeat writes them,
    straight into the ledger's object store; loose files dated to their beat."""
    from reconciler.git.repo import EMPTY_TREE, GitRepo, Signature
    from reconciler.protocol.schema import Capability, Heartbeat, HeldJob

    repo = GitRepo(repo_dir)
    now = time.time()
    beats = int(hours * 3600 / heartbeat_s)
    caps = {w: Capability.model_validate({**CPU_CAPABILITY, "hostname": w}) for w in WORKERS}
    last: dict[str, str] = {}
    written = 0
    for i in range(beats):
        when = now - (beats - i) * heartbeat_s
        for w in WORKERS:
            beat = Heartbeat(worker=w, seq=i, sent_at=when, slots=1, capability=caps[w],
                             jobs=[HeldJob(job_id="0123456789abcdef", attempt=1,
                                           progress=(i % 100) / 100)])
            message = json.dumps(beat.model_dump(mode="json", exclude_none=True),
                                 sort_keys=True)
            sha = repo.write_commit(EMPTY_TREE, [], Signature(w, f"{w}@trainledger", when),
                                    f"heartbeat {w}\n\n{message}")
            loose = repo_dir / "objects" / sha[:2] / sha[2:]
            os.utime(loose, (when, when))
            last[w] = sha
            written += 1
    for w, sha in last.items():
        repo.update_ref(f"refs/heartbeats/{w}", sha)
    repo.close()
    return written


def main_commits(repo: Path) -> int:
    return int(git(repo, "rev-list", "--count", "main").stdout.decode())


def run_p5(cfg: Config) -> RowResult:
    row = RowResult("P5", f"ledger growth: {cfg.p5_jobs} job lives after gc; 20 workers' "
                          f"heartbeats for {cfg.p5_hours:g} simulated hours at 30 s")
    with cfg.scratch.dir("p5") as root:
        led = make_ledger(root, jobs=cfg.p5_jobs, hooks=False,
                          fleet={"heartbeat_s": 30, "stale_after_s": 600})
        git(led.path, "gc", "--quiet", "--prune=now")
        base = object_bytes(led.path)
        _tip, commits = build_lives(led.url, root / "cache.git", cfg.p5_jobs)
        git(led.path, "gc", "--quiet", "--prune=now")
        lived = object_bytes(led.path)
        per_job = (lived["packed"] - base["packed"]) / cfg.p5_jobs
        before_main = main_commits(led.path)
        start = time.perf_counter()
        beats = heartbeat_day(led.path, cfg.p5_hours)
        written_s = time.perf_counter() - start
        raw = object_bytes(led.path)
        how = housekeeping(led.path)
        after = object_bytes(led.path)
        after_main = main_commits(led.path)
        loose_left = subprocess.run(["git", "-C", str(led.path), "count-objects"],
                                    capture_output=True, text=True).stdout.strip()
    packed_growth = (after["packed"] - lived["packed"]) / lived["packed"]
    total_growth = (after["total"] - lived["total"]) / lived["total"]
    row.measured = {
        "bytes_per_job_life": per_job, "commits_per_job_life": commits / cfg.p5_jobs,
        "with_lives": lived, "heartbeats_written": beats, "heartbeat_write_s": written_s,
        "before_housekeeping": raw, "after_housekeeping": after, "housekeeping": how,
        "main_commits_added_by_heartbeats": after_main - before_main,
        "packed_growth": packed_growth, "total_growth_incl_loose": total_growth,
        "loose_after": loose_left,
    }
    row.reference = {"pending_only": base, "without_heartbeats": lived}
    row.targets = [
        Target("bytes per job life after gc", 2048, "<=", " B").verdict(per_job),
        Target("heartbeat commits on main", 0, "==").verdict(after_main - before_main),
        Target("heartbeats' growth of the packed size after housekeeping", 0.10).verdict(
            packed_growth),
    ]
    row.notes.append(f"housekeeping: {how}; total growth including loose objects left to "
                     f"expire: {total_growth:.1%}")
    return row
