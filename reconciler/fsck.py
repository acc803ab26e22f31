"""`reconciler fsck`: bundles, history and the repository, checked.

- every completed job's bundle exists and re-hashes to its name; unreferenced
  bundles and leftover store temp files are listed;
- `git fsck` of a local ledger; stale `refs/**.lock` files (after a power loss
  they block pushes) are reported, and removed with `--fix` once old enough;
- `--history` replays main from the first commit: every commit is re-judged
  with the hook's own rules (actor from its author), and the invariants of
  RELIABILITY.md's check C are counted: one holder at a time, attempts rising
  by one per claim, at most one accepted completion per claim.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from reconciler.cli import add_ledger_arg, state_dir_default
from reconciler.errors import LedgerError
from reconciler.gitrepo import GitRepo
from reconciler.ledger import CACHED_MAIN, Ledger
from reconciler.sshconn import is_ssh
from reconciler.state import Status
from reconciler.status import cache_for
from reconciler.store import LocalStore, open_store
from reconciler.transitions import Actor
from reconciler.validate import ZERO, author_of, context_at, diff_tree

LOCK_AGE_S = 60.0


def check_bundles(ledger: Ledger, store_url: str | None, state_dir: Path) -> dict[str, Any]:
    snap = ledger.snapshot()
    url = store_url or (snap.manifest.fleet.store if snap.manifest else None)
    if not url:
        return {"skipped": "no store: pass --store or set [fleet] store"}
    store = open_store(url, state_dir)
    missing, corrupt, referenced = [], [], set()
    for state in snap.states.values():
        if state.status is Status.COMPLETED and state.artifact:
            sha = state.artifact.sha256
            referenced.add(sha)
            if not store.has(sha):
                missing.append({"job": state.name, "sha256": sha})
            elif not store.verify(sha):
                corrupt.append({"job": state.name, "sha256": sha})
    out: dict[str, Any] = {"store": url, "referenced": len(referenced), "missing": missing,
                           "corrupt": corrupt}
    if isinstance(store, LocalStore):
        out["unreferenced"] = sorted(set(store.iter_shas()) - referenced)
        base = store.root / "sha256"
        out["temp_files"] = sorted(str(p) for p in base.glob("*/.put-*")) if base.is_dir() else []
    return out


def check_repo(path: Path, fix: bool, now: float) -> dict[str, Any]:
    proc = GitRepo(path).git("fsck", "--no-progress", "--no-dangling", check=False,
                             timeout=3600)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    problems = [ln for ln in text.splitlines() if "missing" in ln or "mismatch" in ln
                or ln.startswith("error")]
    locks = []
    for lock in [*path.glob("refs/**/*.lock"), *path.glob("*.lock")]:
        age = now - lock.stat().st_mtime
        removed = fix and age > LOCK_AGE_S
        if removed:
            lock.unlink()
        locks.append({"path": str(lock), "age_s": round(age, 1), "removed": removed})
    return {"git_fsck_ok": proc.returncode == 0 and not problems, "git_fsck": problems,
            "locks": locks}


def replay_history(repo: GitRepo, rev: str) -> dict[str, Any]:
    """Re-judge every commit on main and count the delivery invariants."""
    from reconciler.validate import Refused, check_commit

    commits = repo.git("rev-list", "--reverse", "--topo-order", rev).stdout.decode().split()
    findings: list[str] = []
    completions: dict[tuple[str, int], int] = defaultdict(int)
    claims: dict[str, list[int]] = defaultdict(list)
    ctx = context_at(repo, None)
    for commit in commits:
        author, parents = author_of(repo, commit)
        parent = parents[0] if parents else None
        if len(parents) > 1:
            findings.append(f"commit {commit[:12]}: merge commit on main")
        if parent is not None:
            ctx = context_at(repo, parent)
        role = ctx.access.role_of(author)
        if parent is not None and role is not None:
            try:
                check_commit(repo, ctx, Actor(author, role), commit, parent)
            except Refused as exc:
                findings.append(str(exc))
        for d in diff_tree(repo, parent, commit):
            if not d.path.startswith("state/") or d.new_sha == ZERO:
                continue
            _count(repo, d, commit, claims, completions)
    for (job, attempt), n in completions.items():
        if n > 1:
            findings.append(f"job {job} attempt {attempt}: {n} accepted completions")
    for job, attempts in claims.items():
        for prev, cur in itertools.pairwise(attempts):
            if cur != prev + 1:
                findings.append(f"job {job}: attempt {prev} followed by attempt {cur}")
    return {"commits": len(commits), "findings": findings,
            "completions": sum(completions.values()), "claims": sum(map(len, claims.values()))}


def _count(repo: GitRepo, d, commit: str, claims, completions) -> None:
    from reconciler.state import parse_state

    job_id = d.path.rsplit("/", 1)[-1].removesuffix(".json")
    blobs = repo.read_objects([s for s in (d.old_sha, d.new_sha) if s != ZERO])
    new = parse_state((blobs.get(d.new_sha) or ("", b""))[1], job_id)
    old = parse_state((blobs.get(d.old_sha) or ("", b""))[1], job_id) \
        if d.old_sha != ZERO else None
    if isinstance(new, str) or isinstance(old, str):
        return
    if new.status is Status.CLAIMED and (old is None or old.status is not Status.CLAIMED):
        claims[job_id].append(new.attempt)
    if new.status is Status.COMPLETED and (old is None or old.status is not Status.COMPLETED):
        completions[(job_id, new.attempt)] += 1


def fsck(url: str, store_url: str | None, fix: bool, with_history: bool) -> dict[str, Any]:
    state_dir = state_dir_default("fsck")
    ledger = Ledger(url, cache_for(url, "fsck"), "fsck")
    try:
        tip = ledger.fetch()
        if tip is None:
            raise LedgerError(f"{url}: no main branch")
        report: dict[str, Any] = {"revision": tip,
                                  "bundles": check_bundles(ledger, store_url, state_dir)}
        path = Path(url.removeprefix("file://"))
        if not is_ssh(url) and (path / "HEAD").exists():
            report["repository"] = check_repo(path, fix, time.time())
        if with_history:
            report["history"] = replay_history(ledger.repo, CACHED_MAIN)
    finally:
        ledger.close()
    report["ok"] = _ok(report)
    return report


def _ok(report: dict[str, Any]) -> bool:
    bundles = report["bundles"]
    repo = report.get("repository", {})
    return (not bundles.get("missing") and not bundles.get("corrupt")
            and repo.get("git_fsck_ok", True)
            and not [lk for lk in repo.get("locks", []) if not lk["removed"]]
            and not report.get("history", {}).get("findings"))


def cmd_fsck(args: argparse.Namespace) -> int:
    report = fsck(args.ledger, args.store, args.fix, args.history)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        b = report["bundles"]
        print(f"bundles: {b.get('skipped') or str(b['referenced']) + ' referenced'}; "
              f"missing {len(b.get('missing', []))}, corrupt {len(b.get('corrupt', []))}, "
              f"unreferenced {len(b.get('unreferenced', []))}")
        for item in b.get("missing", []) + b.get("corrupt", []):
            print(f"  {item['job']}: {item['sha256']}")
        repo = report.get("repository")
        if repo:
            print(f"git fsck: {'ok' if repo['git_fsck_ok'] else 'PROBLEMS'}")
            for line in repo["git_fsck"]:
                print(f"  {line}")
            for lock in repo["locks"]:
                state = "removed" if lock["removed"] else "left (use --fix when no push runs)"
                print(f"stale lock {lock['path']} ({lock['age_s']:.0f}s old): {state}")
        hist = report.get("history")
        if hist:
            print(f"history: {hist['commits']} commits, {hist['claims']} claims, "
                  f"{hist['completions']} completions, {len(hist['findings'])} findings")
            for finding in hist["findings"]:
                print(f"  {finding}")
        print("ok" if report["ok"] else "NOT OK")
    return 0 if report["ok"] else 1


def configure_parser(name: str, parser: argparse.ArgumentParser) -> None:
    add_ledger_arg(parser)
    parser.add_argument("--store", help="store path or ssh:// URL (default: the manifest's)")
    parser.add_argument("--fix", action="store_true",
                        help=f"remove ref locks older than {LOCK_AGE_S:.0f}s")
    parser.add_argument("--history", action="store_true", help="replay and re-judge main")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_fsck)
