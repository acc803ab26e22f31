"""The example trainers as the worker runs them: real subprocesses, a clean
environment, the spec of a template job, real xgboost and torch training.

What must hold: outputs land in $TRAINLEDGER_OUTPUT_DIR, metrics beat chance
(the oracle clearly), models load back, progress lines are printed, and two
runs of the same job give byte-identical files (the store dedupes on that).
Repeat runs go in parallel, which also shows concurrent jobs do not interfere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.protocol.identity import JobSpec, job_id_of
from reconciler.protocol.manifest import load_manifest

TEMPLATE = Path(__file__).resolve().parents[2] / "ledger-template" / "manifest.toml"
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def specs() -> dict[str, JobSpec]:
    return load_manifest(TEMPLATE.read_bytes(), "manifest.toml").by_name()


def job(specs: dict[str, JobSpec], name: str, **hyper: Any) -> JobSpec:
    """A template job, with hyper overrides folded into its identity."""
    spec = specs[name]
    if hyper:
        spec = replace(spec, hyper={**spec.hyper, **hyper})
        spec = replace(spec, job_id=job_id_of(spec))
    return spec


def argv_of(spec: JobSpec, extra: list[str] | None = None) -> list[str]:
    argv = [sys.executable if a == "python" and i == 0 else a for i, a in enumerate(spec.command)]
    for key, value in spec.hyper.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += ["--" + key.replace("_", "-"), text]
    return argv + (extra or [])


def start(spec: JobSpec, root: Path, *, cuda: str = "", extra: list[str] | None = None,
          drop: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], Path]:
    """Start the trainer as the worker would; returns the process and its output dir."""
    root.mkdir(parents=True, exist_ok=True)
    out = root / "out"
    out.mkdir()
    spec_path = root / "spec.json"
    spec_path.write_text(json.dumps(spec.to_json(), sort_keys=True, indent=2) + "\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ["HOME"],
        "TRAINLEDGER_JOB_ID": spec.job_id,
        "TRAINLEDGER_JOB_NAME": spec.name,
        "TRAINLEDGER_ATTEMPT": "1",
        "TRAINLEDGER_OUTPUT_DIR": str(out),
        "TRAINLEDGER_SPEC": str(spec_path),
        "CUDA_VISIBLE_DEVICES": cuda,
    }
    for key in drop:
        env.pop(key)
    proc = subprocess.Popen(argv_of(spec, extra), cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, out


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, stdout, stderr


def run_twice(spec: JobSpec, tmp_path: Path) -> tuple[Path, Path, str]:
    """Two runs of one job side by side; both must succeed."""
    runs = [start(spec, tmp_path / f"run{i}") for i in (1, 2)]
    stdout = ""
    for proc, _out in runs:
        code, stdout, stderr = finish(proc)
        assert code == 0, stderr
    return runs[0][1], runs[1][1], stdout


def files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def check_common(out: Path, stdout: str, spec: JobSpec, model_file: str) -> dict[str, Any]:
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [model_file, "metrics.json", "spec.json"]
    ), "only the outputs, no temporary files"
    progress = [float(line.split(":")[1]) for line in stdout.splitlines()
                if line.startswith("progress: ")]
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == 1.0
    assert json.loads((out / "spec.json").read_text()) == spec.to_json()
    text = (out / "metrics.json").read_text()
    metrics = json.loads(text)
    assert text == json.dumps(metrics, sort_keys=True, indent=2) + "\n"
    assert metrics["model"] == spec.model and metrics["mode"] == spec.mode
    assert 0 < metrics["loss"] < 10
    boot = metrics["accuracy_bootstrap"]
    assert boot["n_resamples"] == spec.n_resamples
    assert boot["p05"] <= metrics["accuracy"] + 0.02 and metrics["accuracy"] <= boot["p95"] + 0.02
    return metrics


def test_gbt_both_modes_deterministic_and_loadable(
    specs: dict[str, JobSpec], tmp_path: Path
) -> None:
    xgb = pytest.importorskip("xgboost")
    np = pytest.importorskip("numpy")
    oracle = job(specs, "gbt-oracle")
    realistic_proc, realistic_out = start(job(specs, "gbt-realistic"), tmp_path / "realistic")
    first, second, stdout = run_twice(oracle, tmp_path / "oracle")
    code, realistic_stdout, stderr = finish(realistic_proc)
    assert code == 0, stderr

    assert files(first) == files(second)
    metrics = check_common(first, stdout, oracle, "model.ubj")
    assert metrics["accuracy"] > metrics["chance"] + 0.15
    realistic = check_common(realistic_out, realistic_stdout, specs["gbt-realistic"], "model.ubj")
    assert metrics["chance"] + 0.05 < realistic["accuracy"] < metrics["accuracy"]

    booster = xgb.Booster(model_file=str(first / "model.ubj"))
    assert booster.num_boosted_rounds() == oracle.hyper["n_estimators"]
    preds = booster.predict(xgb.DMatrix(np.zeros((2, metrics["n_features"]), np.float32)))
    assert preds.shape == (2,) and ((preds >= 0) & (preds <= 1)).all()


def test_mlp_oracle_deterministic_and_loadable(specs: dict[str, JobSpec], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    spec = job(specs, "mlp-oracle")
    first, second, stdout = run_twice(spec, tmp_path)
    assert files(first) == files(second)
    metrics = check_common(first, stdout, spec, "model.pt")
    assert metrics["accuracy"] > metrics["chance"] + 0.15
    assert metrics["device"] == "cpu"

    from worker.examples.nets import MLP

    with zipfile.ZipFile(first / "model.pt") as archive:
        assert archive.testzip() is None, "patched serialization id kept the CRCs right"
    state = torch.load(first / "model.pt", weights_only=True)
    model = MLP(metrics["input_shape"][0], 2, spec.hyper["hidden"], spec.hyper["layers"], 0.0)
    model.load_state_dict(state)
    assert sum(p.numel() for p in model.parameters()) == metrics["n_parameters"]


def test_cnn_tiny_deterministic_and_loadable(specs: dict[str, JobSpec], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    spec = job(specs, "cnn-oracle", channels=4, epochs=3, n_samples=600)
    first, second, stdout = run_twice(spec, tmp_path)
    assert files(first) == files(second)
    metrics = check_common(first, stdout, spec, "model.pt")
    assert metrics["accuracy"] > metrics["chance"] + 0.2
    assert metrics["input_shape"] == [2, 8, 8], "oracle adds the clean picture as a channel"

    from worker.examples.nets import CNN

    model = CNN(2, metrics["n_classes"], 4, 0.0)
    model.load_state_dict(torch.load(first / "model.pt", weights_only=True))


def test_different_seed_gives_different_model(specs: dict[str, JobSpec], tmp_path: Path) -> None:
    base = job(specs, "gbt-oracle", n_estimators=5)
    other = replace(base, seed=1)
    runs = [start(s, tmp_path / f"seed{s.seed}") for s in (base, other)]
    outs = []
    for proc, out in runs:
        code, _, stderr = finish(proc)
        assert code == 0, stderr
        outs.append(out)
    assert (outs[0] / "model.ubj").read_bytes() != (outs[1] / "model.ubj").read_bytes()


@pytest.mark.parametrize("model", ["gbt", "mlp"])
def test_unknown_flag_fails_fast_with_a_message(
    specs: dict[str, JobSpec], tmp_path: Path, model: str
) -> None:
    proc, out = start(job(specs, f"{model}-realistic"), tmp_path, extra=["--bogus-key", "1"])
    code, _, stderr = finish(proc)
    assert code == 2
    assert "unknown hyper flag" in stderr and "--bogus-key" in stderr
    assert list(out.iterdir()) == []


def test_bad_split_recipe_is_a_usage_error(specs: dict[str, JobSpec], tmp_path: Path) -> None:
    spec = replace(job(specs, "gbt-realistic"), split_recipe="kfold:5")
    proc, out = start(spec, tmp_path)
    code, _, stderr = finish(proc)
    assert code == 2 and "split_recipe 'kfold:5'" in stderr
    assert list(out.iterdir()) == []


def test_missing_environment_is_a_usage_error(specs: dict[str, JobSpec], tmp_path: Path) -> None:
    proc, _ = start(job(specs, "gbt-realistic"), tmp_path, drop=("TRAINLEDGER_SPEC",))
    code, _, stderr = finish(proc)
    assert code == 2 and "TRAINLEDGER_SPEC is not set" in stderr


@pytest.mark.gpu
def test_mlp_uses_cuda_when_given_a_device(specs: dict[str, JobSpec], tmp_path: Path) -> None:
    spec = job(specs, "mlp-oracle", epochs=2)
    proc, out = start(spec, tmp_path, cuda="0")
    code, _, stderr = finish(proc)
    assert code == 0, stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["device"] == "cuda"
