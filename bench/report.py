"""The printed table and docs/performance.md, both from results.json.

`python -m bench.report [RESULTS]` regenerates docs/performance.md without
re-running anything. What was changed in the product, and why a target still
misses, is written here by hand (CHANGES, MISS_REASONS): the figures around it
come from the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT
from bench.stats import fmt, fmt_seconds, fmt_spread

DOCS = REPO_ROOT / "docs" / "performance.md"
RESULTS = REPO_ROOT / "bench" / "results.json"

CHANGES = """\
Each change is its own commit, small, with the figure that motivated it.

- **Manifest loading** (`reconciler/protocol/manifest.py`, `reconciler/protocol/identity.py`): every
  job was resolved twice (once for the cross-checks, once for the specs), and each
  resolve built its frozen `JobSpec` twice (`dataclasses.replace` to set the id).
  One resolve per job, id first: a 100,000-job manifest loads in 5.3 s instead of
  8.3 s (tomllib is 2.2 s of what is left).
- **Manifest size cap** 1 MiB -> 16 MiB (= `receive.maxInputSize`): a 100,000-job
  manifest is about 12.9 MB and the schema allows 200,000 jobs, so the old
  cap refused the very ledgers P4 is about. A cap is still enforced.
- **The hook parsed the whole manifest on every push to main**
  (`reconciler/rules/validate.py`), though only a reconciler sweep reads anything from
  it (`max_attempts`). It is now parsed lazily: a claim on a 10,000-job ledger no
  longer pays ~0.6 s for it.
- **The hook read the budget for every reconciler push** (`reconciler/rules/validate.py`):
  `max_attempts` lives in the manifest, whose schema imports pydantic (~0.2 s),
  but only a sweep (held -> pending/failed) is judged by it. Creating a job's
  state now costs the hook ~20 ms instead of ~210 ms, which shows in P3's
  reconciler reaction.
- **The saved parse carried the schema's job models** (`reconciler/git/ledger.py`):
  `reconciler status` unpickled 100,000 pydantic `Job` objects it never reads
  (only loading the manifest does): ~0.9 s of the 100,000-job status.
- **A push that has already lost its race skips validation**
  (`reconciler/hook.py`): if main no longer holds the pushed `<old>`, git's ref
  update (a compare-and-swap on `<old>`) must refuse it and main only moves
  forward, so judging it only burned the Pi's CPU while the winner waited. Nothing
  unvalidated can land.
- **Lost-race backoff in units of what a push costs** (`reconciler/git/ledger.py`):
  full jitter over 0.05 s x 2^n capped at 2 s kept ~30 of 32 racers pushing at
  once and collapsed to 0.24 claims/s with 17.6 lost races per claim; the unit is
  now an average of measured push times (clamped to 0.05-0.5 s), capped at 10 s.
- **Snapshots read only what changed** (`reconciler/git/ledger.py`): every poll and
  claim listed the whole tree (`git ls-tree -r`) and walked it in Python. The
  ledger now keeps main's tree classified and moves it with `git diff-tree`,
  parsing only new blobs; its parse cache drops superseded versions.
- **The worker re-judged every job on every poll** (`worker/claims.py`): it asked
  `eligibility.reasons()` of all jobs in the manifest (~8 us each), so a poll of
  a 100,000-job ledger took 0.67 s and a claim there 4x as long as at 10,000.
  Verdicts were first memoised per job, which still walked every job on every
  poll (~0.2 s at 100,000) and sorted every eligible one in `pick()` (~0.1 s).
  Now the worker keeps its eligible set across polls (`EligibleJobs`, priority
  tiers with O(1) add, remove and random draw) and re-judges only the jobs whose
  state file changed, which the snapshot reports from the `git diff-tree` it
  already runs (`Snapshot.base`/`changed`): a claim is O(changes), not O(jobs).
- **Bundles go straight into a local store** (`reconciler/store/{backends,local}.py`): `pack_into`
  bundled to a temp file and `put()` a copy, so every byte was written, read,
  hashed and fsynced twice. `LocalStore.pack` writes once, hashing as it streams,
  fsyncs and renames. 4 MiB zstd jobs (`reconciler/store/bundle.py`) keep the
  multi-threaded compressor's peak RSS growth near 30 MiB instead of ~70 MiB, and
  the tar stream copies and writes in 1 MiB records instead of 16 KiB copies cut
  into 10 KiB records (100 compressor calls and buffer re-slices per MiB).
  Hashing and writing the compressed stream now run on a thread of their own
  (`HashingWriter`, at most 8 MiB queued), overlapping compression instead of
  following it: 261 -> 314 MB/s on this machine, quiet. The bundle's pages
  then sat dirty until the final fsync (background writeback starts at 10% of
  RAM, 2.4 GB here), so the whole bundle went to disk after compression; the
  store now starts writeback every 32 MiB as it writes and drops the window
  before from the page cache (`reconciler/store/writeback.py`, `posix_fadvise`
  DONTNEED): 387 -> 553 MB/s in one A/B run on 1 GiB, and the fsync at the end
  costs about nothing (measured by skipping it: the same time within noise).
- **The reconciler never idled** (`reconciler/daemon/loop.py`): watchdog >= 5 reports
  inotify opens and closes-without-write, so every git process reading the
  ledger, its own fetch included, woke another pass (~45 s of CPU per idle
  minute). It now wakes on writes only, and not on heartbeat refs (liveness is
  judged on the tick).

Not changed here but measured by it, landed by other engineers during this work:
the pre-receive hook starting in ~80 ms instead of ~300 ms (a pydantic-free
`reconciler/protocol/state.py`), which shows in P1-P3; `reconciler status` restoring the
parse it saved last time (`Ledger.save_parsed/load_parsed`), which shows in P4's
status figures; the reconciler's pure plan and deadline-driven sleep, which show
in P7.
"""

CONDITIONS = """\
**Conditions of this run.** A quiet machine: nothing else ran, and the
1-minute load average stayed near 1-2 except during P2's K=16 and K=32 races
(up to 6.4 on 2 cores; P2 records it per race). An earlier full run on
2026-11-22 ran beside other suites at load 10-20 and took 918 s; its ratios
agreed within the spreads for P1, P5 and P7, while the figures that depend on
CPU left over (P2 at K=32, P4 status, P6) were worse there.
"""


# Why a target misses, by target prefix; shown only when it does miss.
STARTUP = """\
## Command start-up (measured by hand, not by `make bench`)

Issue 17 made every subcommand import only its own module: `reconciler --help`
and `--version` import no subcommand, and `worker --help` no longer imports
pydantic. Median of 11 runs of `.venv/bin/python -m ...` on the 2-core
development machine at load average ~9 (7 engineers' test runs beside it), the
old code (main before the change) and the new measured back to back:

| command | before | after |
|---|---|---|
| `reconciler --help` | 0.92 s | 0.16 s |
| `worker --help` | 0.65 s | 0.17 s |
| `reconciler status --help` | 0.56 s | 0.46 s |
| `reconciler status` of an 11-job ledger (warm cache) | 0.40 s | 0.27 s |

On a quiet machine the old `reconciler --help` took 0.55 s. `status` now also
reads the timeline of main's history (claim, start and end times): the first
call reads all of it, later calls only the commits since
(`reconciler/cli/timeline.py`, cached beside the status cache).
"""

MISS_REASONS: dict[str, str] = {
    "throughput K=": (
        "All 32 claimer processes and the 'Pi' (receive-pack and the hook for every "
        "push) share 2 cores here (the load average reaches ~6-7 in the K=32 race "
        "against ~2 at K=4), and a claim is a compare-and-swap on one ref, so one "
        "push wins per round. Lost races per claim stay low (see the row), so this is "
        "CPU sharing, not contention collapse: before the backoff and hook changes "
        "the ratio was 0.08 (0.24 claims/s, 17.6 lost races per claim). In a fleet "
        "the claimers are other machines and spend minutes training between claims"),
    "p99 claim latency": (
        "By Little's law a closed loop of K claimers waits K/X per claim on average "
        "when the ledger serves X claims/s, whatever the backoff: 32 claimers at "
        "~6.5 claims/s wait ~5 s on average, so a p99 under 2 s would need ~16+ "
        "claims/s, a push through receive-pack and the hook in under 60 ms on this "
        "machine (it takes ~105 ms alone, K=1, and the K=32 race shares 2 cores "
        "with the server). The p99 shown is the window's length, and it shows a "
        "capture effect: with a no-op trainer a winner asks again at once while a "
        "loser's backoff grows (up to 10 s), so a few claimers win most rounds and "
        "some never claim within the window (open waits of the whole 35 s at K=16 "
        "and K=32; at K=4 the p99 was 0.28 s in the run of 2026-12-01, while an "
        "earlier run saw one open wait there too). Nothing is lost or claimed twice. "
        "In a fleet a winner leaves the race to train, so in a claim storm the "
        "contention falls with every win; fairer backoff under a saturated ledger "
        "is open work"),
    "status at": (
        "`reconciler status` is a fresh process each time. With the parse cache it "
        "restores its last parse and reads only what changed, but it still starts "
        "Python, imports the reconciler, fetches, unpickles the parsed states and "
        "manifest (a 100,000-job parse is tens of MB of objects) and reads every "
        "heartbeat; under this run's load that is ~1 s at 10,000 jobs and ~6 s at "
        "100,000. The first run after a change of the manifest parses it whole "
        "(tomllib alone is ~2.2 s at 100,000 jobs)."),
    "reconcile pass at": (
        "Timed as `reconciler run --once`, a fresh process that fetches, parses "
        "every state and the manifest, plans over every job and pushes its beat; "
        "the daemon's own passes reuse its parsed tree and pay only for what "
        "changed (P7)."),
    "claim time": (
        "The worker's own part of a claim is now O(changes): it keeps its eligible "
        "set across polls and re-judges only the jobs whose state changed (the poll "
        "is ~11 ms at 10,000 and ~16 ms at 100,000). What still grows is git's: "
        "receive-pack's connectivity check (`rev-list --objects --not --all`) marks "
        "every tree and blob of the old tip uninteresting, ~0.18 s per push at "
        "100,000 jobs (GIT_TRACE2_PERF), and git 2.39 has no setting to skip it"),
    "pack throughput": (
        "What is left is CPU, not the disk: the final fsync now costs about nothing "
        "(early writeback), and skipping it changes nothing measurable. The reference "
        "zstd already keeps both cores busy (~2 CPU-seconds per GiB here); the pack "
        "must also hash the compressed bytes (~0.65 s per GiB at 1.6 GB/s, SHA-NI), "
        "copy them into the page cache and frame the tar in Python, on the same two "
        "cores. That sum bounds the ratio near 0.7 on 2 cores; with a spare core for "
        "the hash thread (a 4-core host) the same code is not bound by it"),
    "CPU per idle minute": (
        "An idle reconciler still runs a pass per tick (at most heartbeat_s): fetch, "
        "read the new heartbeats, push its own beat."),
    "median commit-to-claim": (
        "The chain is: watchdog wakes the reconciler, it creates the state with a "
        "push (~0.5 s with the hook), then the idle worker notices on its next poll "
        "(0.5 s on average at --poll-s 1) and pushes its claim (~0.2 s)."),
    "heartbeats' growth": (
        "Amended heartbeats are loose objects until housekeeping expires them "
        "(gc.pruneExpire=1.hour.ago)."),
    "peak RSS growth": "See the row: the growth is the compressor's buffers.",
    "job cycle /": (
        "A job's life is still three pushes to main (claim, start, complete) plus the "
        "trainer's start and the bundle, one after the other; folding the start into "
        "the claim and overlapping the bundle and result push with the next claim is "
        "the open part of issue 18"),
    "utilization,": (
        "Each job pays the serial claim-start-complete chain on a 2-core machine that "
        "also hosts the ledger; with 3 s jobs that chain is a large fraction of a job"),
    "smallest claimer share": (
        "With a no-op trainer a winner asks again at once; see the p99 reason above"),
}


def _target_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for row in results["rows"]:
        if row.get("error"):
            out.append((row["id"], "(row failed)", row["error"].splitlines()[0][:90], "ERROR",
                        "-"))
            continue
        for t in row["targets"]:
            out.append((row["id"], t["target"], fmt(t["measured"]),
                        "pass" if t["pass"] else "MISS", _of_target(t)))
    return out


def _of_target(t: dict[str, Any]) -> str:
    """measured / limit, e.g. '1.02x' for 1.02 s against 1 s ('-' for '== 0')."""
    try:
        limit = float(t["target"].rsplit(" ", 2)[-2] if t["target"].endswith(
            (" s", " B", " MiB")) else t["target"].rsplit(" ", 1)[-1])
        return f"{float(t['measured']) / limit:.2f}x" if limit else "-"
    except (TypeError, ValueError):
        return "-"


def table(results: dict[str, Any]) -> str:
    """The console table: one line per target."""
    rows = _target_rows(results)
    width = max((len(r[1]) for r in rows), default=10)
    lines = [f"{'row':<4} {'target':<{width}} {'measured':>12}  verdict", "-" * (width + 28)]
    lines += [f"{r[0]:<4} {r[1]:<{width}} {r[2]:>12}  {r[3]}" for r in rows]
    lines += ["", *(f"{row['id']}: {line}" for row in results["rows"]
                    for line in highlights(row))]
    return "\n".join(lines)


def highlights(row: dict[str, Any]) -> list[str]:
    """The figures of a row next to their reference, in words."""
    m, r = row.get("measured", {}), row.get("reference", {})
    if row.get("error"):
        return [f"error: {row['error']}"]
    try:
        return _HIGHLIGHTS[row["id"]](m, r)
    except (KeyError, TypeError, ValueError):
        return []


def _p1(m: dict, r: dict) -> list[str]:
    return [f"{name}: claim {fmt_spread(p['claim_s'])} vs bare fetch+push "
            f"{fmt_spread(r[name]['fetch_push_s'])}; ratio of medians "
            f"{fmt(p['ratio_of_medians'])}, paired ratios {fmt_spread(p['paired_ratio'], False)}"
            for name, p in m.items()]


def _p2(m: dict, r: dict) -> list[str]:
    out = []
    for key, fig in m.items():
        if not key.startswith("K="):
            continue
        ref = r[key]
        out.append(
            f"{key}: {fmt(fig['claims_per_s'])} claims/s, {fmt(fig['retries_per_claim'])} "
            f"retries/claim, latency p50 {fmt_seconds(fig['latency_s']['median'])} p99 "
            f"{fmt_seconds(fig['latency_s']['p99'])}, double claims {fig['double_claims']}"
            f"/{fig['ledger_double_claims']} | SQLite {fmt(ref['claims_per_s'])} claims/s, "
            f"p99 {fmt_seconds(ref['latency_s']['p99'])}, double {ref['double_claims']}; "
            f"SQLite/ledger {fmt(fig.get('sqlite_ratio'))}x; smallest share "
            f"{fmt(fig.get('smallest_share'))} of fair; load average "
            f"{fig['loadavg_1min'][0]:.1f} -> {fig['loadavg_1min'][1]:.1f}")
    return out


def _p3(m: dict, r: dict) -> list[str]:
    return [f"commit-to-claim {fmt_spread(m['commit_to_claim_s'])}; reconciler reaction "
            f"{fmt_spread(m['reconciler_reaction_s'])}; operator push "
            f"{fmt_spread(m['operator_push_s'])} | Flux >= {fmt(r['flux_min_interval_s'])} s, "
            f"Argo {r['argo_poll_s'][0]:g}-{r['argo_poll_s'][1]:g} s"]


def _p4(m: dict, r: dict) -> list[str]:
    out = []
    for key, fig in m.items():
        if not isinstance(fig, dict) or "status_s" not in fig:
            continue
        ref = r[key]
        out.append(
            f"{int(key):,} jobs: status {fmt_spread(fig['status_s'])} (first "
            f"{fmt_seconds(fig['status_first_s'])}), pass {fmt_spread(fig['pass_s'])} (first "
            f"{fmt_seconds(fig['pass_first_s'])}), poll {fmt_spread(fig['poll_s'])} (first "
            f"{fmt_seconds(fig['poll_first_s'])}), claim {fmt_spread(fig['claim_s'])} | "
            f"SQLite status {fmt_seconds(ref['status']['median'])}, poll "
            f"{fmt_seconds(ref['poll']['median'])}, claim {fmt_seconds(ref['claim']['median'])}")
    out.append(f"claim time ratio big/small {fmt(m.get('claim_ratio_big_over_small'))}")
    return out


def _p5(m: dict, r: dict) -> list[str]:
    return [f"{fmt(m['bytes_per_job_life'])} B per job life ({fmt(m['commits_per_job_life'])} "
            f"commits) after gc; {m['heartbeats_written']} heartbeats -> packed "
            f"{m['with_lives']['packed']} -> {m['after_housekeeping']['packed']} B "
            f"({m['packed_growth']:.1%}); loose left to expire: {m['loose_after']}; "
            f"main commits added: {m['main_commits_added_by_heartbeats']}"]


def _p6(m: dict, r: dict) -> list[str]:
    growth = m.get("peak_rss_growth_bytes")
    small = m.get("peak_rss_growth_at_one_eighth_size")
    return [f"pack {fmt(m['pack_mb_s']['median'])} MB/s ({fmt_spread(m['pack_s'])}) vs zstd-3 "
            f"MT {fmt(r['zstd3_mt_mb_s']['median'])} MB/s and sha256 "
            f"{fmt(r['sha256_mb_s']['median'])} MB/s; peak RSS growth "
            f"{fmt(growth / 2**20 if growth is not None else None)} MiB (at 1/8 the size: "
            f"{fmt(small / 2**20 if small is not None else None)} MiB)"]


def _p7(m: dict, r: dict) -> list[str]:
    return [f"RSS median {fmt(m['rss_mib']['median'])} MiB, max {fmt(m['rss_mib']['max'])} "
            f"MiB (with git children {fmt(m['rss_incl_git_children_mib']['max'])} MiB); CPU "
            f"{fmt(m['cpu_s_per_idle_minute'])} s per idle minute; "
            f"{m['heartbeats_during_window']} beats in the window"]


def _p8(m: dict, r: dict) -> list[str]:
    return [f"job cycle {fmt_seconds(m['cycle_s'])} vs bare fetch+commit+push "
            f"{fmt_spread(r['fetch_commit_push_s'])}: {fmt(m['ratio'])}x; "
            f"{fmt(m['changes_per_job'])} recorded changes per job (before issue 18: "
            f"6.5-6.9x, 3 pushes per job)"]


def _p9(m: dict, r: dict) -> list[str]:
    return [f"{key}: wall {fmt_seconds(fig['wall_s'])} vs ideal "
            f"{fmt_seconds(r[key]['ideal_s'])}: utilization {fmt(fig['utilization'])} "
            f"(before issue 18, 1 slot: 0.47-0.65)" for key, fig in m.items()]


_HIGHLIGHTS = {"P1": _p1, "P2": _p2, "P3": _p3, "P4": _p4, "P5": _p5, "P6": _p6, "P7": _p7,
               "P8": _p8, "P9": _p9}


def render_docs(results: dict[str, Any]) -> str:
    mach = results["machine"]
    lines = [
        "# Performance",
        "",
        "Generated by `make bench` (`python -m bench`) from `bench/results.json`; "
        "regenerate with `python -m bench.report`. Every figure is a median of several "
        "runs with its spread, measured side by side with its reference in the same run.",
        "",
        "## Machine",
        "",
        f"- CPU: {mach['cpu']} ({mach['cores']} cores), RAM {mach['ram_gib']} GiB, "
        f"{mach['os']}",
        f"- git {mach['git']}, Python {mach['python']}, SQLite {mach['sqlite']}, "
        f"zstandard {mach['zstandard']}",
        f"- command: `{results['command']}` ({'quick' if results['quick'] else 'full'} mode), "
        f"{results['seconds']:.0f} s wall, {results['finished']}",
        "",
        "## Targets",
        "",
        "| row | target | measured | measured / target | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {a} | {b} | {c} | {e} | {'pass' if d == 'pass' else '**' + d + '**'} |"
              for a, b, c, d, e in _target_rows(results)]
    lines += ["", CONDITIONS, "## Rows", ""]
    for row in results["rows"]:
        lines += [f"### {row['id']}: {row['title']}", ""]
        lines += [f"- {h}" for h in highlights(row)]
        lines += [f"- note: {n}" for n in row.get("notes", [])]
        lines.append(f"- row wall time: {row.get('seconds', 0):.0f} s")
        lines.append("")
    lines += ["## What was changed to meet the targets", "", CHANGES, STARTUP]
    misses = [(row["id"], t) for row in results["rows"] for t in row.get("targets", [])
              if not t["pass"]]
    lines += ["## Targets that still miss", ""]
    if not misses:
        lines.append("None.")
    for rid, t in misses:
        reason = next((v for k, v in MISS_REASONS.items() if t["target"].startswith(k)),
                      "see the row's figures above")
        lines.append(f"- {rid} `{t['target']}`: measured {fmt(t['measured'])}. "
                     f"{reason.rstrip('.')}.")
    errors = [row for row in results["rows"] if row.get("error")]
    for row in errors:
        lines.append(f"- {row['id']} did not run to the end: `{row['error'].splitlines()[0]}`")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    path = Path(args[0]) if args else RESULTS
    results = json.loads(path.read_text())
    DOCS.write_text(render_docs(results))
    print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
