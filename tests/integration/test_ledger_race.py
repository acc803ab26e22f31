"""16 processes race to claim 50 jobs through the ledger layer on one real bare repo."""

from __future__ import annotations

import multiprocessing as mp
import random
from collections import Counter
from pathlib import Path

import pytest

from ledgerkit import make_ledger

pytestmark = pytest.mark.slow

RACERS, JOBS = 16, 50


def racer(url: str, root: str, name: str, barrier, results) -> None:
    """Claim one random pending job per write until none is left; report what
    happened: claims, lost races, and any error (there must be none)."""
    from reconciler import trailers
    from reconciler.ledger import Ledger, Proposal
    from reconciler.state import Status

    ledger = Ledger(url, Path(root) / f"cache-{name}", name, rng=random.Random(name))
    claims, lost, errors = 0, 0, []

    def build(snap):
        pending = [s for s in snap.states.values() if s.status is Status.PENDING]
        if not pending:
            return None
        old = random.choice(pending)
        new = old.model_copy(update={"status": Status.CLAIMED, "attempt": old.attempt + 1,
                                     "holder": name})
        return Proposal.of_states([new], [trailers.Change(
            old.job_id, old.name, new.attempt, "pending->claimed", "claim")])

    barrier.wait()
    try:
        while True:
            outcome = ledger.write(build, max_tries=500, deadline_s=240)
            lost += outcome.lost_races
            if outcome.commit is None:
                break
            claims += 1
    except Exception as exc:  # recorded, then asserted on: a loser must only lose races
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        ledger.close()
    results.put((name, claims, lost, errors))


def test_sixteen_racers_claim_fifty_jobs_exactly_once(tmp_path: Path) -> None:
    # Given a real ledger with the pre-receive hook installed and 50 pending jobs
    led = make_ledger(tmp_path, jobs=JOBS)
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(RACERS), ctx.Queue()
    # When 16 processes race, starting together
    procs = [ctx.Process(target=racer, args=(led.url, str(tmp_path), f"w{i:02d}", barrier,
                                             results)) for i in range(RACERS)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    # Then nobody saw anything but lost races
    assert [r for r in reports if r[3]] == []
    assert sum(r[1] for r in reports) == JOBS
    assert sum(r[2] for r in reports) > 0, "16 racers on 50 jobs never collided?"
    # And git log's trailers show every job claimed exactly once, at attempt 1,
    # by the racer that reported it
    claims = [(job, attempt, actor) for _, job, attempt, t, actor in led.transitions()
              if t == "pending->claimed"]
    assert len(claims) == JOBS
    assert Counter(job for job, _, _ in claims) == Counter({j: 1 for j, _, _ in claims})
    assert {attempt for _, attempt, _ in claims} == {1}
    by_actor = Counter(actor for _, _, actor in claims)
    assert by_actor == Counter({name: n for name, n, _, _ in reports if n})
