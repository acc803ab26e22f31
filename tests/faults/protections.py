"""Which protection each fault row catches: remove it, watch the row fail.

    .venv/bin/python tests/faults/protections.py [ROW | ROW#N ...]

For each mutation below: a `git worktree` of HEAD in a temp dir, one exact
edit applied there (it must match once), and the row run in that tree with
PYTHONPATH on it, so the workers, the reconciler and the ledger's hooks
(init.py writes the tree's path into them) all run the mutated code. A row
that still passes with its protection gone is printed as NOT CAUGHT and the
exit status is 1. The results are in tests/faults/PROTECTIONS.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Mutation:
    row: str
    protection: str
    path: str
    old: str
    new: str
    also: tuple[tuple[str, str, str], ...] = ()  # more (path, old, new) edits


MUTATIONS = [
    Mutation("worker_crash_loop", "the reconciler sweeps a claim silent for stale_after_s",
             "reconciler/plan.py",
             "    if state.status not in HELD:\n"
             "        return None, None\n    last = obs.last_sign(state)",
             "    if True:\n        return None, None\n    last = obs.last_sign(state)"),
    Mutation("worker_crash_loop", "a trainer dies with its worker (PR_SET_PDEATHSIG)",
             "worker/runner.py", "            preexec_fn=_set_pdeathsig,\n",
             "            preexec_fn=None,\n"),
    Mutation("trainer_crash", "a dead trainer fails its job with the log's tail",
             "worker/daemon.py",
             '+ f"\\nlog tail:\\n{run.log_tail()}")',
             ')'),
    Mutation("stale_worker_returns", "the hook's fence: a worker writes only as holder, at "
             "the ledger's attempt", "reconciler/transitions.py",
             "def _fenced(old: JobState, new: JobState, actor: Actor) -> str | None:\n",
             "def _fenced(old: JobState, new: JobState, actor: Actor) -> str | None:\n"
             "    return None\n"),
    Mutation("stale_worker_returns", "the old holder stops its trainer when it wakes: "
             "revoked by its beat's news, or self-fenced by its own silent clock (either "
             "suffices, so both are removed)", "worker/beat.py",
             "why = revocation(snap.states.get(h.job_id), self.worker, h.attempt)",
             "why = None",
             also=(("worker/daemon.py", "if self.runs and self._lease().lease_lost("
                    "self.clock() - self.beater.last_ok):", "if False:"),)),
    Mutation("partition", "a holder without a beat for 2/3 stale_after_s stops its trainer "
             "(self-fence)", "worker/daemon.py",
             "if self.runs and self._lease().lease_lost(self.clock() - self.beater.last_ok):",
             "if False:"),
    Mutation("ambiguous_push", "a push of unknown result is checked against the ledger "
             "(`landed`) before anything is retried", "reconciler/ledger.py",
             "                    if self.landed(sha):", "                    if False:"),
    Mutation("claim_storm", "a claim is a compare-and-swap on main (no forced push, "
             "receive.denyNonFastForwards)", "reconciler/ledger.py",
             '        else:\n            args.append(f"{sha}:{ref}")',
             '        else:\n            args.append(f"+{sha}:{ref}")',
             also=(("reconciler/init.py", '"receive.denyNonFastForwards": "true"',
                    '"receive.denyNonFastForwards": "false"'),
                   ("reconciler/validate.py", "    if old is not None and not "
                    "repo.is_ancestor(old, new):", "    if False:"))),
    Mutation("reconciler_crash_loop", "a restarted reconciler gives every claim a full "
             "stale_after_s from its own start: no sweep before it has been up that long, "
             "and a claim's first sighting counts as a sign of life (either suffices, so "
             "both are removed)", "reconciler/plan.py",
             "        seen = self.held_seen.get((state.job_id, state.attempt, "
             "state.status.value))",
             "        seen = self.held_seen.get((state.job_id, state.attempt, "
             "state.status.value))\n        seen = None if seen is None else seen - 3600",
             also=(("reconciler/lease.py",
                    "        return max(last_sign, started_at) + self.stale_after_s",
                    "        return last_sign + self.stale_after_s"),)),
    Mutation("clock_skew", "liveness is judged on the reconciler's clock, never on a "
             "worker's timestamps", "reconciler/observe.py",
             "            obs.beat_seen[worker] = (record.sha, now)",
             "            obs.beat_seen[worker] = (record.sha, now + (record.beat.sent_at - "
             "__import__('time').time() if record.beat else 0))"),
    Mutation("server_kill_mid_push", "`reconciler fsck --fix` removes a dead push's ref lock",
             "reconciler/fsck.py", "            lock.unlink(missing_ok=True)",
             "            pass"),
    Mutation("store_disk_full", "a failed store write removes its temp file",
             "reconciler/store.py",
             "        except BaseException:\n            with contextlib.suppress(OSError):\n"
             "                os.unlink(name, dir_fd=dfd)\n            raise",
             "        except BaseException:\n            raise"),
    Mutation("same_bundle_twice", "each put stages under its own temp name, then renames",
             "reconciler/store.py",
             'name = f".put-{os.getpid()}-{secrets.token_hex(6)}.tmp"',
             'name = ".put-shared.tmp"'),
    Mutation("operator_during_load", "a worker stops a job cancelled on main at its next "
             "beat", "worker/beat.py",
             "why = revocation(snap.states.get(h.job_id), self.worker, h.attempt)",
             "why = None"),
]


def run(m: Mutation, base: Path) -> tuple[bool, str, float]:
    """(the row failed, its first failure line, seconds)."""
    tree = base / f"{m.row}-{abs(hash(m.protection)) % 10**6}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree),
                    "HEAD"], check=True)
    try:
        for rel, old, new in ((m.path, m.old, m.new), *m.also):
            path = tree / rel
            text = path.read_text()
            if text.count(old) != 1:
                raise SystemExit(f"{rel}: the protection's code is not there once: {old!r}")
            path.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": f"{tree}:{tree / 'tests'}"}
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "pytest", "tests/faults", "-q", "-x",
                               "-p", "no:cacheprovider", "-k", f"test_{m.row}"],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=900)
        took = time.monotonic() - t0
        out = proc.stdout + proc.stderr
        lines = [ln for ln in out.splitlines() if ln.startswith("E ")] or out.splitlines()[-1:]
        return proc.returncode != 0, (lines[0] if lines else "")[:300], took
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                       check=False)


def main(rows: list[str]) -> int:
    # ROW runs every mutation of that row, ROW#N only its N-th (from 1)
    counts: dict[str, int] = {}
    chosen = []
    for m in MUTATIONS:
        counts[m.row] = counts.get(m.row, 0) + 1
        if not rows or m.row in rows or f"{m.row}#{counts[m.row]}" in rows:
            chosen.append(m)
    missed = 0
    with tempfile.TemporaryDirectory(prefix="protections-") as tmp:
        for m in chosen:
            failed, why, took = run(m, Path(tmp))
            missed += not failed
            verdict = "caught" if failed else "NOT CAUGHT"
            print(f"{m.row:<24} {verdict:<10} {took:5.0f}s  removed: {m.protection}\n"
                  f"{'':<24} {why}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
