"""A worker's lease on each job is counted from the last sign of life the
reconciler can have seen: a beat renews only the jobs it listed, from when it was
sent (the reconciler's sighting is never earlier)."""

from __future__ import annotations

from pathlib import Path

from ledgerkit import make_ledger
from reconciler.ledger import Ledger
from worker.beat import Beater, Held
from workerkit import CPU_CAPABILITY

J1, J2 = "00000000000000a1", "00000000000000a2"


def test_a_beat_renews_only_the_jobs_it_listed_from_when_it_was_sent(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, 2)
    ticks = iter(range(100, 10_000))
    listed: list[Held] = []
    beater = Beater(Ledger(led.url, tmp_path / "cache-w1", "w1"), "w1", CPU_CAPABILITY, 1,
                    held=lambda: list(listed), on_revoked=lambda *_: None,
                    interval=lambda: 1.0, clock=lambda: float(next(ticks)))
    job = Held(J1, "job-01", 1, None, None)

    assert beater.beat_once()
    assert beater.renewed == {}  # a beat that listed nothing renews nothing

    listed.append(job)
    before = next(ticks)
    assert beater.beat_once()
    sent = beater.renewed[(J1, 1)]
    assert before < sent < next(ticks), "renewed from the send, not from the landing"

    # a failed beat renews nothing and keeps what the last good one renewed
    beater.ledger = Ledger(str(tmp_path / "gone.git"), tmp_path / "cache-gone", "w1")
    listed.append(Held(J2, "job-02", 1, None, None))
    assert not beater.beat_once()
    assert beater.renewed == {(J1, 1): sent}

    # a job no longer listed drops out
    beater.ledger = Ledger(led.url, tmp_path / "cache-w1", "w1")
    listed[:] = [Held(J2, "job-02", 1, None, None)]
    assert beater.beat_once()
    assert set(beater.renewed) == {(J2, 1)}
