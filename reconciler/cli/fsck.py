"""`reconciler fsck`: bundles, history and the repository, checked.

- every completed job's bundle, and every checkpoint a state records, exists
  and re-hashes to its name; unreferenced bundles (a job's last log bundle
  counts as referenced; older attempts' logs are named only in history) and
  leftover store temp files are listed; checkpoints no state references any
  more are removed with `--fix` once an hour old;
- `git fsck` of a local ledger; stale `refs/**.lock` files (after a power loss
  they block pushes) are reported, and removed with `--fix` once older than a
  minute and open in no process;
- `--history` replays main from the first commit: every commit is re-judged
  with the hook's own rules (actor from its author), and the invariants of
  check C (docs/failure-model.md) are checked: one holder at a time, attempts rising
  by one per claim and never falling, at most one accepted completion per run
  (between requeues), the Ledger-Actor trailer naming the author.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.cli.checkpoints import recorded_checkpoints
from reconciler.cli.main import add_ledger_arg, state_dir_default
from reconciler.cli.status import cache_for
from reconciler.git.ledger import CACHED_MAIN, Ledger
from reconciler.git.plumbing import DIFF_TREE_ARGS, parse_commit, parse_diff_stream
from reconciler.git.repo import GitRepo
from reconciler.git.sshconn import is_ssh
from reconciler.protocol import trailers
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.state import HELD, TERMINAL, Status, parse_state
from reconciler.rules.recheck import Rechecker
from reconciler.rules.validate import OPERATOR_FILES, STATE_RE, ZERO, Context, Diff, context_at
from reconciler.store.backends import open_store
from reconciler.store.local import LocalStore

TEMP_AGE_S = 3600.0  # a store temp file untouched this long is a dead put
LOCK_AGE_S = 60.0


def check_bundles(ledger: Ledger, store_url: str | None, state_dir: Path, fix: bool = False,
                  now: float = 0.0) -> dict[str, Any]:
    snap = ledger.snapshot()
    from reconciler.protocol.storeurl import resolve

    manifest_store = snap.manifest.fleet.store if snap.manifest else None
    if not store_url and not manifest_store:
        return {"skipped": "no store: pass --store or set [fleet] store"}
    url = resolve(store_url, manifest_store, ledger.url)
    store = open_store(url, state_dir)
    missing, corrupt, referenced = [], [], set()
    for state in snap.states.values():
        bundles = []
        if state.status is Status.COMPLETED and state.artifact:
            bundles.append(("artifact", state.artifact.sha256))
        if state.checkpoint is not None:
            bundles.append(("checkpoint", state.checkpoint.sha256))
        for kind, sha in bundles:
            referenced.add(sha)
            if not store.has(sha):
                missing.append({"job": state.name, "sha256": sha, "kind": kind})
            elif not store.verify(sha):
                corrupt.append({"job": state.name, "sha256": sha, "kind": kind})
        if state.log is not None:  # the last finished attempt's log bundle
            referenced.add(state.log.sha256)
    out: dict[str, Any] = {"store": url, "referenced": len(referenced), "missing": missing,
                           "corrupt": corrupt}
    if isinstance(store, LocalStore):
        unreferenced = set(store.iter_shas()) - referenced
        stale = sorted(unreferenced & recorded_checkpoints(ledger.repo, CACHED_MAIN))
        gone = [sha for sha in stale if fix and _older_than(store.path(sha), now, TEMP_AGE_S)
                and _unlink(store.path(sha))]
        out["stale_checkpoints"] = [sha for sha in stale if sha not in gone]
        out["stale_checkpoints_removed"] = gone
        out["unreferenced"] = sorted(unreferenced - set(gone))
        base = store.root / "sha256"
        temps = sorted(base.glob("*/.put-*")) if base.is_dir() else []
        # a put that died (worker killed mid-write) leaves its temp file; one still
        # being written is younger than TEMP_AGE_S, since every write touches it
        removed = [p for p in temps if fix and _older_than(p, now, TEMP_AGE_S) and _unlink(p)]
        out["temp_files"] = [str(p) for p in temps if p not in removed]
        out["temp_files_removed"] = [str(p) for p in removed]
    return out


def _older_than(path: Path, now: float, age_s: float) -> bool:
    try:
        return now - path.lstat().st_mtime > age_s
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def lock_holders(path: Path) -> list[int] | None:
    """Pids that have `path` open (Linux /proc, the processes this user may
    inspect: the ledger's own user runs everything); None when unknowable here."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = str(path.absolute())
    pids = []
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == target for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:
            continue  # gone, or another user's process
    return pids


def check_locks(path: Path, fix: bool, now: float) -> list[dict[str, Any]]:
    """`*.lock` files under refs/ (and the repo's top level, e.g. packed-refs.lock).
    After a crash they block every push to that ref; --fix removes one only when
    it is older than LOCK_AGE_S and no process has it open."""
    locks = []
    for lock in sorted({*path.glob("refs/**/*.lock"), *path.glob("*.lock")}):
        try:
            age = now - lock.stat().st_mtime
        except FileNotFoundError:
            continue  # a live push finished meanwhile
        holders = lock_holders(lock)
        removable = age > LOCK_AGE_S and holders == []
        if fix and removable:
            lock.unlink(missing_ok=True)
        why = ("held by pid " + ", ".join(map(str, holders)) if holders
               else "holders unknown on this OS" if holders is None
               else f"younger than {LOCK_AGE_S:.0f}s" if age <= LOCK_AGE_S else "")
        locks.append({"path": str(lock), "age_s": round(age, 1), "holders": holders,
                      "removed": fix and removable, "kept_because": why or None})
    return locks


def check_repo(path: Path, fix: bool, now: float) -> dict[str, Any]:
    proc = GitRepo(path).git("fsck", "--no-progress", "--no-dangling", check=False,
                             timeout=3600)
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    problems = [ln for ln in text.splitlines() if "missing" in ln or "mismatch" in ln
                or ln.startswith("error")]
    return {"git_fsck_ok": proc.returncode == 0 and not problems, "git_fsck": problems,
            "locks": check_locks(path, fix, now)}


@dataclass
class _Job:
    """One job's course through history, for the invariants of check C."""

    claims: list[int] = field(default_factory=list)
    completions: int = 0  # accepted completions since the last requeue


@dataclass
class Replay:
    """Check C (docs/failure-model.md) over main's history: every commit re-judged with
    the hook's rules (recheck.py; the actor is the author), plus the delivery
    invariants counted per job across commits."""

    repo: GitRepo
    findings: list[str] = field(default_factory=list)
    jobs: dict[str, _Job] = field(default_factory=lambda: defaultdict(_Job))
    claims: int = 0
    completions: int = 0

    def run(self, rev: str) -> dict[str, Any]:
        judge = Rechecker(self.repo)
        ctx: Context | None = None
        commits = 0
        for commit, diffs in all_diffs(self.repo, rev):
            commits += 1
            author, parents, message = _commit_of(self.repo, commit)
            if parents and ctx is None:
                ctx = context_at(self.repo, parents[0])
            finding = judge.judge(commit, ctx=ctx, diffs=diffs)
            if finding is not None:
                self.findings.append(finding.message)
            actors = trailers.parse(message).get(trailers.ACTOR, [])
            if actors and actors[-1] != author:
                self.findings.append(f"commit {commit[:12]}: trailer {trailers.ACTOR} "
                                     f"{actors[-1]!r} but author {author!r}")
            if finding is not None or any(d.path in OPERATOR_FILES for d in diffs):
                ctx = None  # the next commit is judged as of this one: read it afresh
            for d in diffs:
                if STATE_RE.match(d.path) and d.new_sha != ZERO:
                    self._track(d, commit)
        return {"commits": commits, "findings": self.findings,
                "completions": self.completions, "claims": self.claims}

    def _track(self, d: Diff, commit: str) -> None:
        job_id = d.path.rsplit("/", 1)[-1].removesuffix(".json")
        blobs = self.repo.read_objects([s for s in (d.old_sha, d.new_sha) if s != ZERO])
        new = parse_state((blobs.get(d.new_sha) or ("", b""))[1], job_id)
        old = parse_state((blobs.get(d.old_sha) or ("", b""))[1], job_id) \
            if d.old_sha != ZERO else None
        if isinstance(new, str) or isinstance(old, str):
            return  # an unreadable state file: the re-judge has reported it
        job, where = self.jobs[job_id], f"commit {commit[:12]}: job {new.name} ({job_id})"
        before = old.attempt if old else 0
        if new.attempt < before:
            self.findings.append(f"{where}: attempt went down ({before} -> {new.attempt})")
        if new.status in HELD and old is not None and old.status in HELD \
                and new.holder != old.holder:
            self.findings.append(f"{where}: double holder: {new.holder} took attempt "
                                 f"{new.attempt} while {old.holder} held attempt {old.attempt}")
        if new.status is Status.CLAIMED and (old is None or old.status is not Status.CLAIMED):
            self.claims += 1
            if new.attempt != before + 1:
                self.findings.append(f"{where}: claim with attempt {new.attempt} after "
                                     f"{before} (skipped or reused)")
            job.claims.append(new.attempt)
        if new.status is Status.PENDING and old is not None and old.status in TERMINAL:
            job.completions = 0  # a requeue: the operator asked for another run
        if new.status is Status.COMPLETED and (old is None or old.status is not Status.COMPLETED):
            self.completions += 1
            job.completions += 1
            if job.completions > 1:
                self.findings.append(f"{where}: {job.completions} accepted completions "
                                     "without a requeue")


def all_diffs(repo: GitRepo, rev: str) -> Iterator[tuple[str, list[Diff]]]:
    """(commit, its diff against its first parent), oldest first, from one
    `git diff-tree --stdin` (a process per commit took 20 ms each)."""
    commits = repo.git("rev-list", "--reverse", "--topo-order", rev, timeout=3600).stdout
    raw = repo.git(*DIFF_TREE_ARGS, "--stdin", "--always", "--root", input=commits,
                   timeout=3600).stdout
    yield from parse_diff_stream(raw)


def _commit_of(repo: GitRepo, commit: str) -> tuple[str, list[str], str]:
    """Author name, parents and message, in one read."""
    found = repo.read_objects([commit])[commit]
    parsed = parse_commit(found[1] if found else b"")
    return parsed.author, parsed.parents, parsed.message


def replay_history(repo: GitRepo, rev: str) -> dict[str, Any]:
    """Re-judge every commit on main and count the delivery invariants."""
    return Replay(repo).run(rev)


def fsck(url: str, store_url: str | None, fix: bool, with_history: bool) -> dict[str, Any]:
    state_dir = state_dir_default("fsck")
    ledger = Ledger(url, cache_for(url, "fsck"), "fsck")
    try:
        tip = ledger.fetch()
        if tip is None:
            raise LedgerError(f"{url}: no main branch")
        report: dict[str, Any] = {"revision": tip,
                                  "bundles": check_bundles(ledger, store_url, state_dir, fix,
                                                           time.time())}
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
        for sha in b.get("stale_checkpoints_removed", []):
            print(f"checkpoint {sha[:12]} no state references: removed")
        for sha in b.get("stale_checkpoints", []):
            print(f"checkpoint {sha[:12]} no state references: left (--fix removes it once "
                  f"{TEMP_AGE_S / 3600:.0f} h old)")
        for temp in b.get("temp_files_removed", []):
            print(f"store temp file {temp}: removed")
        for temp in b.get("temp_files", []):
            print(f"store temp file {temp}: left (an unfinished put; --fix removes it once "
                  f"{TEMP_AGE_S / 3600:.0f} h old)")
        repo = report.get("repository")
        if repo:
            print(f"git fsck: {'ok' if repo['git_fsck_ok'] else 'PROBLEMS'}")
            for line in repo["git_fsck"]:
                print(f"  {line}")
            for lock in repo["locks"]:
                state = "removed" if lock["removed"] else \
                    f"left ({lock['kept_because'] or 'use --fix to remove it'})"
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
                        help=f"remove ref locks older than {LOCK_AGE_S:.0f}s, and store "
                        f"temp files and checkpoints no state references untouched for "
                        f"{TEMP_AGE_S / 3600:.0f} h")
    parser.add_argument("--history", action="store_true", help="replay and re-judge main")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_fsck)
