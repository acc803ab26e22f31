"""Smoke test of the bench's pure helpers and one tiny row. Benchmarks are not
tests: nothing here asserts a timing, only that the bench computes and reports
what it claims to."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import report, stats  # noqa: E402
from bench.claimer import create_sqlite_queue, sqlite_claim  # noqa: E402
from bench.common import Scratch  # noqa: E402
from bench.rows import Config, RowResult  # noqa: E402
from bench.seed import canonical_matches, seed_ledger  # noqa: E402


def test_percentiles_and_summary() -> None:
    data = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert stats.percentile(data, 50) == 3.0
    assert stats.percentile(data, 0) == 1.0
    assert stats.percentile(data, 100) == 5.0
    assert stats.percentile(data, 25) == 2.0
    assert math.isnan(stats.percentile([], 50))
    s = stats.summarize(data)
    assert (s["n"], s["median"], s["min"], s["max"]) == (5, 3.0, 1.0, 5.0)
    assert stats.summarize([])["n"] == 0


def test_ratios_and_targets() -> None:
    assert stats.paired_ratios([2.0, 3.0], [1.0, 0.0]) == [2.0]
    assert stats.ratio_of_medians([4.0, 2.0, 6.0], [2.0, 2.0, 2.0]) == 2.0
    assert stats.Target("x", 2.0).check(2.0)
    assert not stats.Target("x", 2.0).check(2.1)
    assert stats.Target("x", 0.7, ">=").check(0.7)
    assert stats.Target("x", 0, "==").check(0)
    assert not stats.Target("x", 1.0).check(math.nan)
    assert not stats.Target("x", 1.0).check(None)
    v = stats.Target("status", 1.0, "<=", " s").verdict(0.5)
    assert v == {"target": "status <= 1 s", "measured": 0.5, "pass": True}


def test_formatting() -> None:
    assert stats.fmt_seconds(0.0412) == "41.2 ms"
    assert stats.fmt_seconds(1.5) == "1.50 s"
    assert stats.fmt(None) == "n/a"
    assert stats.fmt(1234.0) == "1234"
    assert "n=3" in stats.fmt_spread(stats.summarize([0.1, 0.2, 0.3]))


def test_seed_writes_canonical_state_json() -> None:
    assert canonical_matches()


def test_seeded_ledger_reads_back(tmp_path: Path) -> None:
    from reconciler.git.ledger import Ledger
    from reconciler.protocol.schema import Status

    seeded = seed_ledger(tmp_path, 60, done_fraction=0.5, running=4, batches=3)
    ledger = Ledger(seeded.url, tmp_path / "cache.git", "reader")
    snap = ledger.snapshot(ledger.fetch())
    ledger.close()
    assert snap.manifest_error is None and not snap.state_errors and not snap.stray_paths
    assert set(snap.states) == set(seeded.job_ids)
    by_status = {s: sum(1 for x in snap.states.values() if x.status is s) for s in Status}
    assert by_status[Status.RUNNING] == 4
    assert by_status[Status.COMPLETED] + by_status[Status.FAILED] == 30
    for job, holder in seeded.running.items():
        assert snap.states[job].holder == holder
    assert (tmp_path / "ledger.git" / "hooks" / "pre-receive").exists()


def test_sqlite_queue_claims_each_job_once(tmp_path: Path) -> None:
    import sqlite3

    create_sqlite_queue(tmp_path / "q.sqlite", [f"{i:016x}" for i in range(20)])
    db = sqlite3.connect(tmp_path / "q.sqlite", isolation_level=None)
    got = []
    while (row := sqlite_claim(db, "w")) is not None:
        got.append(row[0])
    assert sorted(got) == [f"{i:016x}" for i in range(20)]


def test_tiny_growth_row(tmp_path: Path) -> None:
    from bench.growth import run_p5

    cfg = Config.for_mode(True, Scratch(tmp_path))
    cfg.p5_jobs, cfg.p5_hours = 6, 0.05
    row = run_p5(cfg)
    assert row.error is None
    assert row.measured["main_commits_added_by_heartbeats"] == 0
    assert row.measured["commits_per_job_life"] == 3
    assert row.measured["bytes_per_job_life"] > 0
    assert len(row.targets) == 3


def test_report_renders_every_row_and_misses() -> None:
    ok = RowResult("P1", "one claim", measured={"path": {
        "claim_s": stats.summarize([0.1, 0.12]), "paired_ratio": stats.summarize([1.2, 1.3]),
        "ratio_of_medians": 1.25}}, reference={"path": {"fetch_push_s": stats.summarize(
            [0.08, 0.09])}}, targets=[stats.Target("ratio", 2.0).verdict(1.25)])
    miss = RowResult("P7", "idle", targets=[stats.Target("CPU per idle minute", 2.0, "<=",
                                                         " s").verdict(3.0)])
    broken = RowResult("P3", "latency", error="RuntimeError: no daemon\ntrace")
    results = {"command": "python -m bench", "quick": False, "seconds": 1.0,
               "finished": "now", "machine": {"cpu": "x", "cores": 2, "ram_gib": 1,
                                              "os": "Linux", "git": "2.39", "python": "3.11",
                                              "sqlite": "3", "zstandard": "0.25"},
               "rows": [ok.to_json(), miss.to_json(), broken.to_json()]}
    text = report.render_docs(results)
    assert "| P1 | ratio <= 2 | 1.25 | 0.62x | pass |" in text
    assert "**MISS**" in text and "per tick" in text
    assert "P3 did not run to the end" in text
    assert "MISS" in report.table(results)


@pytest.mark.parametrize("quick", [True, False])
def test_modes_keep_every_row(quick: bool, tmp_path: Path) -> None:
    cfg = Config.for_mode(quick, Scratch(tmp_path))
    assert cfg.p2_ks == (1, 4, 16, 32)
    assert len(cfg.p4_sizes) == 2


def test_cycle_figures_and_utilization() -> None:
    from bench.cycle import cycle_figures, utilization

    events = [(0.0, "pending->claimed", "a"), (0.1, "claimed->running", "a"),
              (0.5, "running->completed", "a"), (0.6, "pending->claimed", "b"),
              (1.5, "running->completed", "b"), (2.5, "running->completed", "c")]
    fig = cycle_figures(events, 3)
    assert fig["cycle_s"] == 1.0 and fig["span_s"] == 2.5 and fig["completed"] == 3
    assert fig["changes_per_job"] == 2.0
    with pytest.raises(RuntimeError, match="only 3 of 4"):
        cycle_figures(events, 4)
    assert utilization(30.0, 40.0) == 0.75
    assert utilization(30.0, 0.0) == 0.0


def test_smallest_share_sees_a_starved_claimer() -> None:
    from bench.claims import smallest_share

    even = [{"claimer": i % 4} for i in range(40)]
    assert smallest_share(even, 4) == 1.0
    starved = [{"claimer": i % 3} for i in range(30)]  # claimer 3 never won
    assert smallest_share(starved, 4) == 0.0
    assert smallest_share([], 4) == 0.0


def test_p8_p9_registered_with_quick_sizes() -> None:
    from bench.__main__ import _rows

    assert {"P8", "P9"} <= set(_rows())
    quick = Config.for_mode(True, Scratch(Path("/nonexistent")))
    full = Config.for_mode(False, Scratch(Path("/nonexistent")))
    assert (full.p9_workers, full.p9_jobs, full.p9_seconds) == (4, 40, 3.0)
    assert quick.p8_jobs < full.p8_jobs and quick.p9_jobs < full.p9_jobs
    row = RowResult("P9", "t", measured={"slots=1": {"wall_s": 40.0, "utilization": 0.75,
                                                    "exit_codes": [0]}},
                    reference={"slots=1": {"ideal_s": 30.0}})
    assert "utilization 0.75" in " ".join(report.highlights(row.to_json()))
