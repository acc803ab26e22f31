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
    test: str = "tests/faults"  # where test_<row> lives (a file, for rows outside the matrix)


MUTATIONS = [
    Mutation("worker_crash_loop", "the reconciler sweeps a claim silent for stale_after_s",
             "reconciler/daemon/plan.py",
             "    if state.status not in HELD:\n"
             "        return None, None\n    last = obs.last_sign(state)",
             "    if True:\n        return None, None\n    last = obs.last_sign(state)"),
    Mutation("worker_crash_loop", "a trainer dies with its worker (PR_SET_PDEATHSIG)",
             "worker/runner.py", "            preexec_fn=_set_pdeathsig,\n",
             "            preexec_fn=None,\n"),
    Mutation("trainer_crash", "a dead trainer fails its job with the log's tail",
             "worker/results.py",
             '+ f"\\nlog tail:\\n{run.log_tail()}", trainer=True)',
             ', trainer=True)'),
    Mutation("stale_worker_returns", "the hook's fence: a worker writes only as holder, at "
             "the ledger's attempt", "reconciler/protocol/transitions.py",
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
             "(`landed`) before anything is retried", "reconciler/git/ledger.py",
             "                    if self.landed(sha):", "                    if False:"),
    Mutation("claim_storm", "a claim is a compare-and-swap on main (no forced push, "
             "receive.denyNonFastForwards)", "reconciler/git/ledger.py",
             '        else:\n            args.append(f"{sha}:{ref}")',
             '        else:\n            args.append(f"+{sha}:{ref}")',
             also=(("reconciler/rules/init.py", '"receive.denyNonFastForwards": "true"',
                    '"receive.denyNonFastForwards": "false"'),
                   ("reconciler/rules/validate.py", "    if old is not None and not "
                    "repo.is_ancestor(old, new):", "    if False:"))),
    Mutation("reconciler_crash_loop", "a restarted reconciler gives every claim a full "
             "stale_after_s from its own start: no sweep before it has been up that long, "
             "and a claim's first sighting counts as a sign of life (either suffices, so "
             "both are removed)", "reconciler/daemon/plan.py",
             "        seen = self.held_seen.get((state.job_id, state.attempt, "
             "state.status.value))",
             "        seen = self.held_seen.get((state.job_id, state.attempt, "
             "state.status.value))\n        seen = None if seen is None else seen - 3600",
             also=(("reconciler/protocol/lease.py",
                    "        return max(last_sign, started_at) + self.stale_after_s",
                    "        return last_sign + self.stale_after_s"),)),
    Mutation("clock_skew", "liveness is judged on the reconciler's clock, never on a "
             "worker's timestamps", "reconciler/daemon/observe.py",
             "            obs.beat_seen[worker] = (record.sha, now)",
             "            obs.beat_seen[worker] = (record.sha, now + (record.beat.sent_at - "
             "__import__('time').time() if record.beat else 0))"),
    Mutation("server_kill_mid_push", "`reconciler fsck --fix` removes a dead push's ref lock",
             "reconciler/cli/fsck.py", "            lock.unlink(missing_ok=True)",
             "            pass"),
    Mutation("store_disk_full", "a failed store write removes its temp file",
             "reconciler/store/local.py",
             "        except BaseException:\n            with contextlib.suppress(OSError):\n"
             "                os.unlink(name, dir_fd=dfd)\n            raise",
             "        except BaseException:\n            raise"),
    Mutation("same_bundle_twice", "each put stages under its own temp name, then renames",
             "reconciler/store/local.py",
             'name = f".put-{os.getpid()}-{secrets.token_hex(6)}.tmp"',
             'name = ".put-shared.tmp"'),
    Mutation("operator_during_load", "a worker stops a job cancelled on main at its next "
             "beat", "worker/beat.py",
             "why = revocation(snap.states.get(h.job_id), self.worker, h.attempt)",
             "why = None"),
]

# Issue 19 (reliability round 2): each row is a test outside the fault matrix.
HOOK2 = "tests/integration/test_hook_round2.py"
REFUSALS = "tests/integration/test_worker_refusals.py"
BOUNDS = "tests/unit/test_bounds.py"
MUTATIONS += [
    Mutation("role_removed_while_running", "a lease ends with its holder's right to write: the "
             "hook refuses a role-less identity's beats, and a worker gives a job up when the "
             "hook refuses its write (either suffices, so both are removed)",
             "reconciler/hook.py", "    check_beat_role(ref, pusher, access)\n", "",
             also=(("worker/writes.py", "            if why is not None:\n"
                    "                self._give_up(", "            if False:\n"
                    "                self._give_up("),), test=REFUSALS),
    Mutation("corrupt_ledger_cache", "a failed write while beats land checks the cache and "
             "re-clones it when damaged", "worker/writes.py",
             "            if self._repair_cache(what, exc):", "            if False:",
             test=REFUSALS),
    Mutation("a_cache_that_stays_damaged_hands_the_job_over", "a cache damaged again after "
             "a re-clone is given up at once, saying why", "worker/writes.py",
             "        if hopeless:\n", "        if False:\n",
             test="tests/unit/test_handover.py"),
    Mutation("a_worker_whose_role_is_removed_loses_the_job_within_stale_after_s_and_a_beat",
             "a worker whose beat the hook refuses gives up what it holds at once",
             "worker/daemon.py", "        if self.runs and refused:\n", "        if False:\n",
             test="tests/unit/test_handover.py"),
    Mutation("beats_failing_stop_claims_and_spend_budget", "a self-fenced release spends "
             "one claim", "worker/daemon.py",
             '"released: lease lost")},\n                              count=True)',
             '"released: lease lost")},\n                              count=False)',
             test=REFUSALS),
    Mutation("beats_failing_stop_claims_and_spend_budget", "no claim while beats fail",
             "worker/claims.py", "or self._claims_paused():", "or False:", test=REFUSALS),
    Mutation("deleting_the_key_line_stops_writes_within_two_heartbeats", "the ssh master is "
             "renewed every period, so a deleted key stops authenticating",
             "reconciler/git/sshconn.py",
             "    period = f'\"$(( $(date +%s) / {_period(rotate_s)} ))\"'",
             "    period = '0'", test="tests/ssh/test_revocation.py"),
    Mutation("heartbeat_annotated_tag", "the hook checks the pushed object's own type and size, "
             "not the commit a tag peels to", "reconciler/hook.py",
             "= read_two(new, f\"{MAIN}:access.toml\"",
             "= read_two(new + \"^{commit}\", f\"{MAIN}:access.toml\"",
             test=HOOK2),
    Mutation("heartbeat_without_a_role", "a role-less identity may not beat",
             "reconciler/hook.py", "    check_beat_role(ref, pusher, access)\n", "", test=HOOK2),
    Mutation("pusher_name_not_a_ref_component", "the hook refuses a pusher whose name is not "
             "a ref component", "reconciler/hook.py",
             "    if (problem := name_problem(identity)) is not None:\n        raise Refusal("
             'f"pusher identity', "    if False:\n        raise Refusal(f\"pusher identity",
             test=HOOK2),
    Mutation("manifest_host_not_a_ref_component", "a manifest host must be a ref component",
             "reconciler/protocol/schema.py",
             "            if (problem := name_problem(name)) is not None:",
             "            if (problem := None) is not None:", test=HOOK2),
    Mutation("operator_authors_as_a_worker_with_workers_unset", "with `workers` unset an "
             "operator authors only as itself or under a name no identity can have",
             "reconciler/rules/validate.py",
             "    if access.workers is None and is_valid_name(author):",
             "    if False:", test=HOOK2),
    Mutation("state_name_changed_in_a_claim", "a move may not change a job's name",
             "reconciler/protocol/transitions.py", "    if old.name != new.name:  # a move",
             "    if False:  # a move", test=HOOK2),
    Mutation("state_trailing_newline_in_a_pattern", "patterns are matched whole (fullmatch)",
             "reconciler/protocol/state.py", 'not re.fullmatch(schema["pattern"], value)',
             'not re.match(schema["pattern"], value)', test=HOOK2),
    Mutation("state_utf16", "state files are UTF-8 only", "reconciler/protocol/state.py",
             'text = data.decode("utf-8") if isinstance(data, bytes) else data',
             'text = (data.decode("utf-16") if data[:2] in (b"\\xff\\xfe", b"\\xfe\\xff") '
             'else data.decode("utf-8")) if isinstance(data, bytes) else data', test=HOOK2),
    Mutation("state_duplicate_keys", "no duplicate keys in a state file",
             "reconciler/protocol/state.py",
             "object_pairs_hook=_no_duplicates", "object_pairs_hook=dict",
             test=HOOK2),
    Mutation("report_bounded_with_thousands_of_orphans", "the reconciler's report is counts "
             "plus capped samples", "reconciler/daemon/report.py",
             "        return bounded_report(dict(self.__dict__))",
             "        return dict(self.__dict__)", test=BOUNDS),
    Mutation("beat_of_twelve_slots_printing_long_non_ascii_lines", "a beat is cut to its byte "
             "budget: lines by JSON bytes, then dropped (both layers removed)",
             "worker/beatcap.py",
             "    per_line = min(LINE_MAX, LINES_BUDGET // max(1, len(held)))",
             "    per_line = 1 << 30",
             also=(("worker/beatcap.py", "def beat_size(beat: Heartbeat) -> int:\n    return ",
                    "def beat_size(beat: Heartbeat) -> int:\n    return 0 and "),), test=BOUNDS),
    Mutation("names_refused_by_access_toml", "access.toml names must be ref components",
             "reconciler/protocol/access.py",
             "if not NAME_RE.fullmatch(name) or name_problem(name):",
             "if not NAME_RE.match(name):", test=BOUNDS),
    Mutation("names_refused_by_enroll", "enroll refuses names that are not ref components",
             "reconciler/cli/enroll.py", "if not NAME_RE.fullmatch(name) or name_problem(name):",
             "if not NAME_RE.match(name):", test=BOUNDS),
    Mutation("worker_name_refused_before_it_claims", "`worker run --name` must be a ref "
             "component", "worker/cli.py",
             "if (problem := name_problem(args.name)) is not None:", "if (problem := None):",
             test=BOUNDS),
    Mutation("long_lines_keep_memory_and_log_bounded", "a trainer's lines are kept to "
             "LINE_CAP bytes, when a line ends and while it runs on (since 16's line "
             "reader, either suffices, so both are removed)", "worker/logcap.py",
             "        line = line[:self.cap]\n", "        line = line\n",
             also=(("worker/logcap.py", "            rest = rest[:self.cap]\n",
                    "            pass\n"),), test=BOUNDS),
    Mutation("log_file_keeps_its_newest_part_under_the_cap", "the log file keeps its newest "
             "half past LOG_CAP", "worker/logcap.py",
             "        if self._size > self.cap:\n            self._cut()",
             "        if False:\n            self._cut()", test=BOUNDS),
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
        proc = subprocess.run([sys.executable, "-m", "pytest", m.test, "-q", "-x",
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
