"""Golden scenarios (tests/scenarios/*/): a ledger moment as text, and plan()'s
actions at it, compared line by line. TRAINLEDGER_REGEN=1 rewrites them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ledgerkit import manifest_text
from reconciler.daemon.plan import Action, Observations, View, plan
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.state import JobState
from reconciler.protocol.transitions import Actor, Role, check_transition

ROOT = Path(__file__).resolve().parent.parent / "scenarios"
SCENARIOS = sorted(p for p in ROOT.iterdir() if (p / "ledger.json").is_file())


def load(path: Path) -> tuple[View, Observations, float]:
    doc = json.loads((path / "ledger.json").read_text())
    loaded = load_manifest(manifest_text(doc["jobs"], doc["fleet"]).encode())
    ids = {s.name: s.job_id for s in loaded.specs.values()}
    if doc.get("orphans"):  # jobs that were in an older manifest
        older = load_manifest(manifest_text(doc["orphans"], doc["fleet"]).encode())
        ids |= {s.name: s.job_id for s in older.specs.values()}
    states = {}
    for raw in doc["states"]:
        raw = dict(raw)
        job_id = ids[raw.pop("job", raw["name"])]
        states[job_id] = JobState(job_id=job_id, **raw)
    o = doc["observations"]
    obs = Observations(
        started_at=o["started_at"],
        held_seen={(ids[n], a, s): t for n, a, s, t in o.get("held", [])},
        beat_seen={w: (f"sha-{w}", b["at"]) for w, b in o.get("beats", {}).items()},
        beat_jobs={w: frozenset((ids[n], a) for n, a in b["jobs"])
                   for w, b in o.get("beats", {}).items()},
        pending_seen={ids[n]: t for n, t in o.get("pending_since", {}).items()})
    return View(loaded.specs, loaded.fleet, states), obs, doc["now"]


def line(a: Action) -> str:
    n = a.new
    return (f"{a.meaning} {n.name} {a.change.transition} attempt={n.attempt} lost={n.lost} "
            f"cpu_ok={str(n.cpu_ok).lower()} holder={n.holder or '-'}")


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    view, obs, now = load(path)
    actions = plan(view, obs, now)
    for a in actions:
        check_transition(a.old, a.new, Actor("reconciler", Role.RECONCILER),
                         max_attempts=view.fleet.max_attempts)
    got = "".join(line(a) + "\n" for a in actions)
    expected = path / "expected_actions"
    if os.environ.get("TRAINLEDGER_REGEN"):
        expected.write_text(got)
    assert got == expected.read_text()
