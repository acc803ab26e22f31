"""`[[sweeps]]` and `after` at load time: the grid's product, point identity equal
to a hand-written job, stable names, the size limit, unknown names and cycles
refused naming the jobs, and upstream identity in a downstream job's id."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import manifest_text
from reconciler.protocol.errors import ManifestError
from reconciler.protocol.manifest import load_manifest

FILE = "fleet/manifest.toml"
SWEEP = """
[[sweeps]]
name = "q-lr"
model = "quick"
grid = { lr = [0.001, 0.01, 0.1], size = [64, 128] }
hyper = { steps = 3 }
priority = 5
"""


def load(text: str):
    return load_manifest(text.encode(), filename=FILE)


def errors(text: str) -> str:
    with pytest.raises(ManifestError) as err:
        load(text)
    return str(err.value)


def test_a_3x2_sweep_gives_6_jobs_whose_hyper_is_the_grids_product() -> None:
    loaded = load(manifest_text([], extra=SWEEP))
    assert len(loaded.specs) == 6 and len(loaded.sweeps["q-lr"]) == 6
    grid = {(s.hyper["lr"], s.hyper["size"]) for s in loaded.specs.values()}
    assert grid == set(itertools.product([0.001, 0.01, 0.1], [64, 128]))
    assert all(s.hyper["steps"] == 3 and s.priority == 5 and s.sweep == "q-lr"
               for s in loaded.specs.values())
    names = sorted(s.name for s in loaded.specs.values())
    assert "q-lr-lr0.01-size64" in names and len(set(names)) == 6


def test_a_hand_written_job_equal_to_a_point_has_its_id() -> None:
    sweep_only = load(manifest_text([], extra=SWEEP))
    point = next(s for s in sweep_only.specs.values() if s.name == "q-lr-lr0.1-size128")
    by_hand = load(manifest_text([{"name": "by-hand", "hyper": {"steps": 3, "lr": 0.1,
                                                                "size": 128}}]))
    assert list(by_hand.specs) == [point.job_id]
    # and both in one manifest are the same artifact: refused, naming both
    both = errors(manifest_text([{"name": "by-hand", "hyper": {"steps": 3, "lr": 0.1,
                                                               "size": 128}}], extra=SWEEP))
    assert "job 'q-lr-lr0.1-size128' (sweeps[0] 'q-lr')" in both
    assert "same identity" in both and "job 'by-hand' (jobs[0])" in both


def test_point_names_do_not_change_when_the_grid_grows() -> None:
    small = load(manifest_text([], extra=SWEEP))
    grown = load(manifest_text([], extra=SWEEP.replace("0.1]", "0.1, 0.3]")))
    before = {s.name: s.job_id for s in small.specs.values()}
    after = {s.name: s.job_id for s in grown.specs.values()}
    assert len(after) == 8 and all(after[name] == jid for name, jid in before.items())


def test_a_seed_list_expands_and_names_the_seed() -> None:
    loaded = load(manifest_text([], extra=SWEEP + "seed = [0, 1, 2]\n"))
    assert len(loaded.specs) == 18
    assert any(s.name == "q-lr-lr0.01-size64-seed2" and s.seed == 2
               for s in loaded.specs.values())


def test_a_sweep_over_10000_points_is_refused() -> None:
    big = SWEEP.replace("[0.001, 0.01, 0.1]", str(list(range(101))))
    big = big.replace("[64, 128]", str(list(range(100))))
    text = errors(manifest_text([], extra=big))
    assert text == f"{FILE}: sweep 'q-lr' (sweeps[0]): 10100 points, over the 10000-point " \
        "limit of one sweep"


def test_a_bad_hyper_key_in_a_sweep_is_said_once() -> None:
    text = errors(manifest_text([], extra=SWEEP.replace("size = [", "nope = [")))
    assert text.count("'hyper.nope'") == 1 and "sweep 'q-lr' (sweeps[0])" in text


def test_a_long_point_name_is_the_sweep_name_and_a_digest() -> None:
    extra = SWEEP.replace("size = [64, 128]", 'steps = ["' + "x" * 70 + '"]') \
        .replace("hyper = { steps = 3 }", "")
    names = [s.name for s in load(manifest_text([], extra=extra)).specs.values()]
    assert all(n.startswith("q-lr-") and len(n) <= 64 for n in names) and len(set(names)) == 3


# ------------------------------------------------------------------------ after

def with_after(*jobs: dict) -> str:
    return manifest_text(list(jobs), extra=SWEEP)


def test_after_a_sweep_waits_for_every_point_and_its_id_includes_theirs() -> None:
    loaded = load(with_after({"name": "eval", "seed": 9, "after": ["q-lr"]}))
    ev = loaded.by_name()["eval"]
    assert set(ev.after) == set(loaded.sweeps["q-lr"]) and len(ev.after_names) == 6
    alone = load(manifest_text([{"name": "eval", "seed": 9}]))
    assert ev.job_id != next(iter(alone.specs))  # upstream identity is part of it
    # retraining the upstream with new hyper makes a new downstream job
    changed = load(manifest_text([{"name": "eval", "seed": 9, "after": ["q-lr"]}],
                                 extra=SWEEP.replace("steps = 3", "steps = 4")))
    assert changed.by_name()["eval"].job_id != ev.job_id
    assert loaded.downstream[loaded.sweeps["q-lr"][0]] == (ev.job_id,)


def test_a_job_without_after_keeps_its_id() -> None:
    from reconciler.protocol.identity import job_id_of

    spec = next(iter(load(manifest_text([{"name": "a", "seed": 1}])).specs.values()))
    assert spec.job_id == job_id_of({"model": "quick", "mode": None, "hyper": {},
                                     "split_recipe": None, "train_hosts": None, "seed": 1})


def test_an_unknown_after_name_is_refused_naming_the_job() -> None:
    text = errors(with_after({"name": "eval", "after": ["q-lr", "nowhere"]}))
    assert text == f"{FILE}: job 'eval' (jobs[0]): field 'after': no job or sweep named 'nowhere'"


def test_a_cycle_is_refused_naming_its_jobs() -> None:
    text = errors(manifest_text([{"name": "a", "seed": 1, "after": ["b"]},
                                 {"name": "b", "seed": 2, "after": ["c"]},
                                 {"name": "c", "seed": 3, "after": ["a"]},
                                 {"name": "d", "seed": 4, "after": ["a"]}]))
    assert text == f"{FILE}: field 'after': a cycle: a -> b -> c -> a (each runs only " \
        "after the next, so none would ever run)"
    assert "cycle: a -> a" in errors(manifest_text([{"name": "a", "after": ["a"]}]))


def test_validate_prints_jobs_per_sweep_and_refuses_a_cycle(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(with_after({"name": "eval", "after": ["q-lr"]}))
    run = [sys.executable, "-m", "reconciler.cli", "validate"]
    out = subprocess.run([*run, str(good)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{good}: ok (7 jobs)", "  sweep q-lr: 6 jobs"]
    as_json = json.loads(subprocess.run([*run, str(good), "--json"], capture_output=True,
                                        text=True, timeout=60).stdout)
    assert as_json["sweeps"] == {"q-lr": 6} and as_json["jobs"] == 7
    bad = tmp_path / "bad.toml"
    bad.write_text(manifest_text([{"name": "a", "seed": 1, "after": ["b"]},
                                  {"name": "b", "seed": 2, "after": ["a"]}]))
    out = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cycle: a -> b -> a" in out.stderr
    bad.write_text(manifest_text([{"name": "a", "after": ["ghost"]}]))
    out = subprocess.run([*run, str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "job 'a' (jobs[0]): field 'after': no job or sweep named " \
        "'ghost'" in out.stderr


def test_job_and_defaults_timeout_and_retries_win_over_the_trainers() -> None:
    text = manifest_text([{"name": "a"}, {"name": "b", "seed": 1, "timeout_s": 3,
                                          "retries": 0}])
    text = text.replace('hyper = ["seconds"', 'timeout_s = 100\nhyper = ["seconds"', 1) \
        .replace("[fleet]", "[defaults]\ntimeout_s = 7\nretries = 2\n\n[fleet]", 1)
    specs = load(text).by_name()
    assert (specs["a"].timeout_s, specs["a"].retries) == (7, 2)
    assert (specs["b"].timeout_s, specs["b"].retries) == (3, 0)
    plain = load(manifest_text([{"name": "c"}]).replace(
        'hyper = ["seconds"', 'timeout_s = 100\nhyper = ["seconds"', 1)).by_name()["c"]
    assert (plain.timeout_s, plain.retries) == (100, 0)
