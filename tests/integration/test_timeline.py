"""The timeline read from a real ledger's history: attempts, hosts, outcomes
(a sweep is a release by someone other than the holder), incremental reads and
the cache."""

from __future__ import annotations

from pathlib import Path

from ledgerkit import make_ledger
from reconciler.cli.timeline import Timeline, read_timeline
from reconciler.git.ledger import Ledger
from reconciler.git.push import Proposal
from reconciler.protocol import trailers
from reconciler.protocol.schema import Artifact
from reconciler.protocol.state import Status


def write(ledger_url: str, root: Path, who: str, job: str, update: dict, label: str) -> None:
    ledger = Ledger(ledger_url, root / f"as-{who}.git", who)

    def build(snap):
        old = next(s for s in snap.states.values() if s.name == job)
        new = old.model_copy(update=update)
        return Proposal.of_states([new], [trailers.Change(
            old.job_id, old.name, new.attempt, f"{old.status.value}->{new.status.value}",
            label)])
    try:
        ledger.write(build)
    finally:
        ledger.close()


def test_attempts_outcomes_and_incremental_reads(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[{"name": "a", "seed": 1}, {"name": "b", "seed": 2}],
                      hooks=False)
    art = Artifact(sha256="0" * 64, size=1)
    write(led.url, tmp_path, "w1", "a", {"status": Status.CLAIMED, "holder": "w1",
                                         "attempt": 1}, "claim")
    write(led.url, tmp_path, "w1", "a", {"status": Status.RUNNING}, "start")
    reader = Ledger(led.url, tmp_path / "reader.git", "reader")
    cache = tmp_path / "timeline.json"
    first = read_timeline(reader.repo, reader.fetch(), cache)
    assert first.attempts[(first.last_by_job().popitem()[0], 1)].outcome == "running"

    # the reconciler sweeps a's attempt 1; w2 claims it again and completes; b fails on w1
    write(led.url, tmp_path, "reconciler", "a", {"status": Status.PENDING, "holder": None,
                                                 "lost": 1}, "sweep")
    write(led.url, tmp_path, "w2", "a", {"status": Status.CLAIMED, "holder": "w2",
                                         "attempt": 2}, "claim")
    write(led.url, tmp_path, "w2", "a", {"status": Status.RUNNING}, "start")
    write(led.url, tmp_path, "w2", "a", {"status": Status.COMPLETED, "holder": None,
                                         "artifact": art}, "complete")
    write(led.url, tmp_path, "w1", "b", {"status": Status.CLAIMED, "holder": "w1",
                                         "attempt": 1}, "claim")
    write(led.url, tmp_path, "w1", "b", {"status": Status.FAILED, "holder": None,
                                         "last_error": "boom"}, "fail")
    tip = reader.fetch()
    later = read_timeline(reader.repo, tip, cache)  # from the cache: only the new commits
    fresh = Timeline().update(reader.repo, tip)  # everything at once
    assert {k: (a.host, a.outcome) for k, a in later.attempts.items()} == \
        {k: (a.host, a.outcome) for k, a in fresh.attempts.items()}
    by = {(a.host, a.attempt): a for a in later.attempts.values()}
    assert by[("w1", 1)].outcome in ("swept", "failed")
    outcomes = sorted(a.outcome for a in later.attempts.values())
    assert outcomes == ["completed", "failed", "swept"]
    swept = next(a for a in later.attempts.values() if a.outcome == "swept")
    assert swept.host == "w1" and swept.ended_by == "reconciler"
    done = next(a for a in later.attempts.values() if a.outcome == "completed")
    assert done.host == "w2" and done.claimed_at <= done.started_at <= done.ended_at
    assert later.hosts() == ["w1", "w2"]
    assert Timeline.load(cache).revision == tip
    (tmp_path / "bad.json").write_text("{not json")
    assert Timeline.load(tmp_path / "bad.json").attempts == {}
    reader.close()
