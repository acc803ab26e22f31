"""Real workers train one xgboost and one torch job from the template's trainers;
the bundles hold a loadable model and metrics, and a retrain gives the same sha256."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import make_ledger
from reconciler.protocol.state import Status
from workerkit import Fleet

pytestmark = pytest.mark.slow


def jobs() -> list[dict]:
    return [
        {"model": "gbt", "name": "gbt-small", "mode": "oracle", "seed": 3,
         "hyper": {"n_estimators": 20, "max_depth": 3}},
        {"model": "mlp", "name": "mlp-small", "mode": "oracle", "seed": 3,
         "hyper": {"epochs": 3, "hidden": 16}},
    ]


def extra_trainers() -> str:
    return (
        '\n[trainers.gbt]\ncommand = ["python", "-m", "worker.examples.gbt"]\n'
        'hyper = ["n_estimators", "max_depth"]\n'
        '\n[trainers.mlp]\ncommand = ["python", "-m", "worker.examples.mlp"]\n'
        'hyper = ["epochs", "hidden"]\n'
    )


def train(root: Path) -> dict[str, str]:
    led = make_ledger(root, jobs=jobs(), extra=extra_trainers())
    fleet = Fleet(led.url, root, led.store)
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(300) == 0, w.text()
    states = {s.name: s for s in fleet.states().values()}
    assert {s.status for s in states.values()} == {Status.COMPLETED}, states
    (root / "fetched").mkdir()
    for name in states:
        dest = root / "fetched" / name
        proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "fetch-artifact", name,
                               str(dest), "--ledger", led.url, "--store", str(led.store)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    return {name: s.artifact.sha256 for name, s in states.items()}


def test_real_training_through_workers_is_deterministic(tmp_path: Path) -> None:
    first = train(tmp_path / "one")
    fetched = tmp_path / "one" / "fetched"
    metrics = json.loads((fetched / "gbt-small" / "metrics.json").read_text())
    assert metrics  # accuracy and loss of the held-out split
    import xgboost

    booster = xgboost.Booster()
    model = next(p for p in (fetched / "gbt-small").iterdir() if p.name.startswith("model"))
    booster.load_model(str(model))
    import torch

    state = torch.load(fetched / "mlp-small" / "model.pt", weights_only=True)
    assert state and all(isinstance(t, torch.Tensor) for t in state.values())
    assert json.loads((fetched / "mlp-small" / "metrics.json").read_text())
    # the example trainers' metrics are in the ledger: `reconciler results` ranks them
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "results", "--ledger",
                           str(tmp_path / "one" / "ledger.git"), "--json", "--sort", "accuracy",
                           "--desc"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert {r["name"] for r in rows} == {"gbt-small", "mlp-small"}
    assert rows[0]["metrics"]["accuracy"] >= rows[1]["metrics"]["accuracy"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["gbt-small"]["hyper"] == {"n_estimators": 20, "max_depth": 3}
    for name, row in by_name.items():
        written = json.loads((fetched / name / "metrics.json").read_text())
        assert row["metrics"]["accuracy"] == written["accuracy"]
        assert row["metrics"]["loss"] == written["loss"]
    # a second, independent fleet trains the same jobs to the same bundles
    assert train(tmp_path / "two") == first
