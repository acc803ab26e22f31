"""`reconciler import-seed`: the seed fleet's SQLite queue and artifact tree,
built here, brought into a real hooked ledger; a second run changes nothing."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import make_ledger
from reconciler.cli.seed import seed_job_id
from reconciler.store.bundle import pack
from reconciler.store.local import LocalStore
from workerkit import Fleet

pytestmark = pytest.mark.slow
SEED_HOST = ["elliott-thinkpad"]


def job(name: str, seed: int, mode: str = "realistic") -> dict:
    return {"name": name, "mode": mode, "seed": seed, "hyper": {"lr": 0.1, "steps": 3},
            "split_recipe": "host", "train_hosts": SEED_HOST}


def seed_spec(seed: int, mode: str = "realistic", **extra) -> dict:
    # the seed's defaults: split_recipe, train_hosts (and mode) left out on purpose
    spec = {"model": "quick", "hyper": {"steps": 3, "lr": 0.1}, "seed": seed, **extra}
    if mode != "realistic":
        spec["mode"] = mode
    return spec


def make_bundle(tmp: Path, artifacts: Path, spec: dict, text: str) -> str:
    src = tmp / f"out-{text}"
    src.mkdir()
    (src / "metrics.json").write_text(json.dumps({"trained_by": "seed", "tag": text}))
    raw = tmp / f"{text}.tar.zst"
    with raw.open("wb") as out:
        pack(src, out)
    sha = hashlib.sha256(raw.read_bytes()).hexdigest()
    dest = artifacts / f"quick_{spec.get('mode', 'realistic')}" / sha
    dest.mkdir(parents=True)
    raw.rename(dest / "bundle.tar.zst")
    with (artifacts / "index.jsonl").open("a") as index:
        index.write(json.dumps({"artifact_id": sha, "model": "quick"}) + "\n")
    return sha


def seed_db(path: Path, rows: list[tuple[str, dict, str, str | None]]) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE jobs(job_id TEXT PRIMARY KEY, name, spec_json, status, "
                "claimed_by, claimed_at, heartbeat_at, completed_at, attempts, last_error, "
                "artifact_id, created_at, updated_at)")
    for i, (name, spec, status, sha) in enumerate(rows):
        con.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (seed_job_id(spec), name, json.dumps(spec), status, "elliott-thinkpad",
                     None, None, None, 1, "boom" if status == "failed" else None, sha, i, i))
    con.commit()
    con.close()


def run_import(db: Path, artifacts: Path, url: str, state: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "import-seed", str(db),
                           str(artifacts), "--ledger", url, "--state-dir", str(state),
                           "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_import_seed_brings_completed_work_in_once(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[job("a", 1), job("b", 2), job("c", 3), job("d", 4),
                                      job("e", 5, "oracle")])
    artifacts = tmp_path / "seed-artifacts"
    artifacts.mkdir()
    sha_a = make_bundle(tmp_path, artifacts, seed_spec(1), "a")
    sha_e = make_bundle(tmp_path, artifacts, seed_spec(5, "oracle"), "e")
    sha_bad = make_bundle(tmp_path, artifacts, seed_spec(4), "d")
    bad = artifacts / "quick_realistic" / sha_bad / "bundle.tar.zst"
    bad.write_bytes(bad.read_bytes()[:-1] + b"\0")  # bit rot: must not be imported
    db = tmp_path / "queue.sqlite"
    seed_db(db, [
        ("a", seed_spec(1, priority=5), "completed", sha_a),
        ("b", seed_spec(2), "failed", None),
        ("c", seed_spec(3), "pending", None),
        ("d", seed_spec(4), "completed", sha_bad),
        ("e", seed_spec(5, "oracle"), "completed", sha_e),
        ("gone", seed_spec(99), "completed", sha_a),  # no such job in the manifest
    ])
    tip_before = led.git("rev-parse", "main").strip()

    first = run_import(db, artifacts, led.url, tmp_path / "imp")

    states = {s.name: s for s in Fleet(led.url, tmp_path, led.store).states().values()}
    assert {n: s.status.value for n, s in states.items()} == {
        "a": "completed", "b": "pending", "c": "pending", "d": "pending", "e": "completed"}
    assert states["a"].artifact.sha256 == sha_a and states["e"].artifact.sha256 == sha_e
    store = LocalStore(led.store)
    assert store.verify(sha_a) and store.verify(sha_e) and not store.has(sha_bad)
    assert sorted(r["name"] for r in first["imported"]) == ["a", "e"]
    assert sorted(r["name"] for r in first["pending"]) == ["b", "c"]
    why = {r["name"]: r["reason"] for r in first["unmatched"]}
    assert set(why) == {"d", "gone"}
    assert "re-hashes" in why["d"] and "no job in the manifest" in why["gone"]
    # one operator commit, with the import trailers, on top of the old tip
    assert led.git("rev-parse", "main~1").strip() == tip_before
    assert sorted((t[3], t[4]) for t in led.transitions()[-2:]) == \
        [("pending->completed", "operator")] * 2

    tip = led.git("rev-parse", "main").strip()
    second = run_import(db, artifacts, led.url, tmp_path / "imp2")
    assert led.git("rev-parse", "main").strip() == tip, "a second run wrote a commit"
    assert second["imported"] == [] and second["commit"] is None
    assert sorted(r["job"] for r in second["already"]) == ["a", "e"]

    out = tmp_path / "fetched"
    fetch = subprocess.run([sys.executable, "-m", "reconciler.cli", "fetch-artifact", "a",
                            str(out), "--ledger", led.url, "--state-dir", str(tmp_path / "f")],
                           capture_output=True, text=True, timeout=120)
    assert fetch.returncode == 0, fetch.stderr
    assert json.loads((out / "metrics.json").read_text())["tag"] == "a"


def test_a_seed_database_that_is_not_one_is_a_clear_error(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=[job("a", 1)])
    db = tmp_path / "not-a-queue.sqlite"
    sqlite3.connect(db).execute("CREATE TABLE other(x)").connection.close()
    (tmp_path / "art").mkdir()
    proc = subprocess.run([sys.executable, "-m", "reconciler.cli", "import-seed", str(db),
                           str(tmp_path / "art"), "--ledger", led.url], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and f"{db}: not the seed fleet's queue" in proc.stderr
