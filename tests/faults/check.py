"""Check C of docs/failure-model.md, run after every fault row.

Two independent readings of the same ledger: this module replays `main` itself
(state files and trailers, commit by commit, without the product's transition
table), and `reconciler fsck --history --json` replays it with the hook's own
rules. Both must be clean. The direct replay is what still sees a broken rule
when a protection in the product is switched off (tests/faults/PROTECTIONS.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.git.repo import GitRepo
from reconciler.protocol import trailers
from reconciler.protocol.state import HELD, TERMINAL, JobState, Status, parse_state
from workerkit import wait_for

ROLES = {"reconciler": "reconciler", "operator": "operator"}  # anyone else is a worker
ZERO = "0" * 40


def load_factor() -> float:
    """How much slower than an idle machine this one is now (1.0 when idle, at
    most 10): bounds on how *late* something may happen are stretched by it.
    Bounds on how *early* something may happen never are."""
    return min(10.0, max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1)))


def slack(seconds: float) -> float:
    return seconds * load_factor()


@dataclass
class Replay:
    commits: int = 0
    claims: Counter = field(default_factory=Counter)  # job -> claims
    completions: Counter = field(default_factory=Counter)  # (job, attempt) -> completions
    requeued_done: Counter = field(default_factory=Counter)  # job -> requeues of completed
    sweeps: list[tuple[str, int, str]] = field(default_factory=list)  # (job, attempt, holder)
    claimers: dict[tuple[str, int], str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _git(path: Path, *args: str, text: bool = True) -> str | bytes:
    return subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True,
                          text=text).stdout


def replay_main(path: Path) -> Replay:
    """Walk main oldest first; judge every state change by its actor (C.b, C.c)."""
    out = Replay()
    log = _git(path, "log", "--reverse", "--first-parent", "--format=%H %P%x00%an%x00%B%x01",
               "main")
    commits = []
    for record in log.split("\x01"):
        if record.strip():
            head, author, message = record.strip().split("\x00", 2)
            sha, *parents = head.split()
            commits.append((sha, parents, author, message,
                            list(_state_diffs(path, parents[0] if parents else None, sha))))
    repo = GitRepo(path)
    try:
        blobs = repo.read_objects([b for *_, diffs in commits for _, o, n in diffs
                                   for b in (o, n) if b != ZERO])
    finally:
        repo.close()

    def state(sha: str, job_id: str) -> JobState | None:
        if sha == ZERO:
            return None
        found = blobs.get(sha)
        parsed = parse_state(found[1] if found else b"", job_id)
        if isinstance(parsed, str):
            raise AssertionError(f"C.c: unreadable state on main: {parsed}")
        return parsed

    for sha, parents, author, message, diffs in commits:
        out.commits += 1
        if len(parents) > 1:
            out.problems.append(f"{sha[:12]}: merge commit on main")
        actor = trailers.parse(message).get(trailers.ACTOR, [author])[-1]
        if actor != author:
            out.problems.append(f"{sha[:12]}: author {author!r} but Ledger-Actor {actor!r}")
        told = {job: (attempt, label) for job, attempt, label in trailers.changes_of(message)}
        for job_id, old_sha, new_sha in diffs:
            old, new = state(old_sha, job_id), state(new_sha, job_id)
            where = f"{sha[:12]} {new.name if new else job_id}"
            if new is None:
                out.problems.append(f"{where}: state file deleted")
                continue
            label = f"{old.status.value if old else 'new'}->{new.status.value}"
            if told.get(job_id) != (new.attempt, label):
                out.problems.append(f"{where}: trailers say {told.get(job_id)}, the state file "
                                    f"says {(new.attempt, label)}")
            problem = _judge(out, ROLES.get(actor, "worker"), actor, job_id, old, new)
            if problem:
                out.problems.append(f"{where}: {label} by {actor}: {problem}")
    return out


def _state_diffs(path: Path, parent: str | None, sha: str):
    args = ["diff-tree", "-r", "-z", "--no-renames", "--no-commit-id"]
    raw = _git(path, *args, *([parent, sha] if parent else ["--root", sha]), text=False)
    parts = raw.split(b"\0")
    for meta, name in zip(parts[0::2], parts[1::2], strict=False):
        p = name.decode()
        if meta.startswith(b":") and p.startswith("state/"):
            _om, _nm, old_sha, new_sha, _st = meta[1:].decode().split(" ")
            yield p.rsplit("/", 1)[1].removesuffix(".json"), old_sha, new_sha


def _judge(out: Replay, role: str, actor: str, job: str, old: JobState | None,
           new: JobState) -> str | None:
    """The fencing rules, written out again (not transitions.TABLE)."""
    if old is None:
        return None if role == "reconciler" and new.status is Status.PENDING \
            and new.attempt == 0 else "only the reconciler creates a job, pending at attempt 0"
    if new.attempt < old.attempt:
        return f"attempt fell {old.attempt} -> {new.attempt}"
    if role == "worker":
        if new.status is Status.CLAIMED and old.status is not Status.CLAIMED:
            out.claims[job] += 1
            out.claimers[(job, new.attempt)] = actor
            if old.status is not Status.PENDING:
                return f"claimed a {old.status.value} job (attempt {old.attempt}, " \
                       f"holder {old.holder})"
            if new.attempt != old.attempt + 1:
                return f"claim attempt {new.attempt} after {old.attempt} (must rise by 1)"
            if new.holder != actor:
                return f"claimed for {new.holder}"
            return None
        # every other worker write is fenced by (holder, attempt) of the prior state
        if old.status not in HELD or old.holder != actor or new.attempt != old.attempt:
            return (f"not the holder at that attempt: the ledger had {old.status.value} "
                    f"attempt {old.attempt} held by {old.holder}, the write names attempt "
                    f"{new.attempt}")
        if new.status is Status.COMPLETED:
            out.completions[(job, new.attempt)] += 1
        return None
    if new.attempt != old.attempt:
        return f"{role} changed the attempt {old.attempt} -> {new.attempt}"
    if role == "reconciler" and old.status in HELD and new.status in (Status.PENDING,
                                                                      Status.FAILED):
        out.sweeps.append((job, old.attempt, old.holder or "?"))
    if role == "operator" and old.status is Status.COMPLETED and new.status is Status.PENDING:
        out.requeued_done[job] += 1
    if new.status is Status.COMPLETED:
        return "only the holder completes a job"
    return None


# ------------------------------------------------------------------ check C


@dataclass
class Report:
    """What check C found: kept for the invariant report at the end of a run."""

    row: str
    seed: int
    jobs: int
    statuses: dict[str, int]
    commits: int
    claims: int
    completions: int
    sweeps: int
    bundles: int
    fsck_findings: int
    seconds: float = 0.0
    scale: float = 1.0
    ok: bool = True
    notes: list[str] = field(default_factory=list)


REPORTS: list[Report] = []


def fsck_json(ledger: Path, store: Path, *extra: str) -> dict:
    """`reconciler fsck --history --json` as an operator on the Pi would run it."""
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "fsck", "--ledger",
                           str(ledger), "--store", str(store), "--history", "--json", *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip(), f"reconciler fsck printed nothing: {proc.stderr}"
    report = json.loads(proc.stdout)
    assert proc.returncode == (0 if report["ok"] else 1), proc.stderr
    return report


def check_c(rig, *, row: str, seed: int, deadline_s: float | None = None,
            failed_ok: set[str] = frozenset()) -> Report:
    """(a) every job terminal by a deadline; (b) one ->completed per claim and
    job, attempts +1 per claim; (c) every transition's (worker, attempt) matches
    the prior state; (d) bundles exist and re-hash; (e) git fsck clean; (f) no
    ref locks, no store temp files; (g) failed only with the budget spent or a
    trainer error. `failed_ok`: job names the row failed on purpose."""
    t0 = time.monotonic()
    if deadline_s is None:
        deadline_s = slack(90.0)
    led, max_attempts = rig.led, rig.settings["max_attempts"]

    def all_terminal():
        states = rig.states()
        return states if all(s.status in TERMINAL for s in states.values()) else None

    try:
        final = wait_for(all_terminal, timeout=deadline_s, every=0.25,
                         what="every job to be terminal (C.a)")
    except AssertionError:
        stuck = {s.name: (s.status.value, s.attempt, s.holder) for s in rig.states().values()
                 if s.status not in TERMINAL}
        raise AssertionError(f"C.a: not terminal after {deadline_s}s: {stuck}") from None

    # the row is over: stop the fleet, so nothing is mid-push while (f) looks for locks
    rig.stop_processes()
    replay = replay_main(led.path)
    assert replay.problems == [], "C.c: " + "\n".join(replay.problems)
    for (job, attempt), n in replay.completions.items():
        assert n == 1, f"C.b: job {job} attempt {attempt} completed {n} times"
    for job_id, state in final.items():
        done = sum(n for (j, _), n in replay.completions.items() if j == job_id)
        limit = 1 + replay.requeued_done[job_id]
        assert done <= limit, f"C.b: {state.name} completed {done} times ({limit} allowed)"
        if state.status is Status.COMPLETED:
            assert replay.completions[(job_id, state.attempt)] == 1, \
                f"C.b: {state.name} is completed at attempt {state.attempt} with no such commit"
        assert replay.claims[job_id] == state.attempt, \
            f"C.b: {state.name}: {replay.claims[job_id]} claims but attempt {state.attempt}"
        if state.status is Status.FAILED:
            error = state.last_error or ""
            assert (state.name in failed_ok or state.lost >= max_attempts
                    or error.startswith(("trainer ", "swept: "))
                    or (error.startswith("store failed") and state.lost + 1 >= max_attempts)), \
                f"C.g: {state.name} failed with budget left: lost {state.lost}, {error!r}"
            if error.startswith("swept: "):
                assert state.lost >= max_attempts, f"C.g: {state}"

    bundles = 0
    for state in final.values():
        if state.status is Status.COMPLETED:
            assert state.artifact is not None
            sha = state.artifact.sha256
            path = led.store / "sha256" / sha[:2] / f"{sha}.tar.zst"
            assert path.is_file() and not path.is_symlink(), f"C.d: {state.name}: no {path}"
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == sha, f"C.d: {path} does not re-hash"
            assert len(data) == state.artifact.size, f"C.d: {path} size {len(data)}"
            bundles += 1

    fsck = subprocess.run(["git", "-C", str(led.path), "fsck", "--no-progress", "--no-dangling"],
                          capture_output=True, text=True, timeout=300)
    text = fsck.stdout + fsck.stderr
    assert fsck.returncode == 0 and "missing" not in text and "mismatch" not in text, \
        f"C.e: git fsck: {text}"

    locks = [str(p) for p in [*led.path.glob("refs/**/*.lock"), *led.path.glob("*.lock")]]
    assert locks == [], f"C.f: ref locks left: {locks}"
    temps = [str(p) for p in (led.store / "sha256").rglob(".*") if p.is_file()]
    assert temps == [], f"C.f: store temp files left: {temps}"

    product = fsck_json(led.path, led.store)
    assert product["history"]["findings"] == [], f"C.c (fsck): {product['history']['findings']}"
    assert not product["bundles"]["missing"] and not product["bundles"]["corrupt"], \
        f"C.d (fsck): {product['bundles']}"
    assert product["bundles"].get("temp_files", []) == [], f"C.f (fsck): {product['bundles']}"
    assert product["repository"]["git_fsck_ok"], f"C.e (fsck): {product['repository']}"
    assert product["repository"]["locks"] == [], f"C.f (fsck): {product['repository']}"
    assert product["ok"], product
    completions = sum(replay.completions.values())
    assert product["history"]["completions"] == completions, \
        f"fsck counts {product['history']['completions']} completions, the replay {completions}"

    report = Report(row=row, seed=seed, jobs=len(final),
                    statuses=dict(Counter(s.status.value for s in final.values())),
                    commits=replay.commits, claims=sum(replay.claims.values()),
                    completions=completions, sweeps=len(replay.sweeps), bundles=bundles,
                    fsck_findings=len(product["history"]["findings"]),
                    seconds=round(time.monotonic() - t0, 1), scale=rig.scale)
    live_swept = sorted({h for _, _, h in replay.sweeps} - rig.disrupted)
    if live_swept:
        # not a C failure (a loaded machine can starve a beat past stale_after_s),
        # but worth seeing in the report
        report.notes.append(f"swept workers the row did not hurt: {live_swept}")
    REPORTS.append(report)
    return report

