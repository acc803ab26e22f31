"""A job's id: 16 hex chars of sha256 over what defines the trained artifact
(model, mode, hyper, split_recipe, train_hosts, seed), after [defaults]; never
over scheduling fields, the name or the trainer's command (docs/architecture.md)."""

from __future__ import annotations

import hashlib
import re

import pytest

from ledgerkit import manifest_text
from reconciler.protocol.identity import IDENTITY_FIELDS, job_id_of
from reconciler.protocol.manifest import load_manifest

BASE = {"name": "alpha", "model": "quick", "mode": "realistic", "seed": 7,
        "split_recipe": "80/20", "train_hosts": ["pi", "desktop"],
        "hyper": {"lr": 0.1, "size": 64}}
SECOND_TRAINER = '\n[trainers.other]\ncommand = ["python", "other.py"]\nhyper = ["lr", "size"]\n'


def job_id(job: dict, extra: str = "", **kw: object) -> str:
    loaded = load_manifest(manifest_text([job], extra=extra, **kw).encode())
    (spec,) = loaded.specs.values()
    return spec.job_id


def test_the_id_is_16_hex_chars_and_pinned() -> None:
    jid = job_id(BASE)
    assert re.fullmatch(r"[0-9a-f]{16}", jid)
    # Pinned: sha256 of the identity as compact JSON with sorted keys. If this
    # changes, every ledger's jobs get new ids and the fleet retrains everything.
    canonical = ('{"hyper":{"lr":0.1,"size":64},"mode":"realistic","model":"quick",'
                 '"seed":7,"split_recipe":"80/20","train_hosts":["pi","desktop"]}')
    assert jid == hashlib.sha256(canonical.encode()).hexdigest()[:16] == "e237add713e5d702"


@pytest.mark.parametrize(("change", "extra"), [
    ({"name": "renamed"}, ""),
    ({"priority": 100}, ""),
    ({"require_cuda": True}, ""),
    ({"prefer_cuda": True}, ""),
    ({"min_vram_gib": 8}, ""),
    ({"min_ram_gib": 16}, ""),
    ({"min_cores": 4}, ""),
    ({"allowed_hosts": ["pi"]}, ""),
    ({"denied_hosts": ["laptop"]}, ""),
    ({"n_resamples": 5}, ""),
    ({"cancel": True}, ""),
    ({"hyper": {"size": 64, "lr": 0.1}}, ""),  # same hyper, other order
    ({}, "\n[defaults]\npriority = 9\nmin_ram_gib = 2\n"),
], ids=lambda v: next(iter(v), "defaults") if isinstance(v, dict) else None)
def test_scheduling_fields_keep_the_id(change: dict, extra: str) -> None:
    assert job_id({**BASE, **change}, extra) == job_id(BASE)


def test_the_trainers_command_keeps_the_id() -> None:
    assert job_id(BASE, trainer=["python", "moved/elsewhere.py"]) == job_id(BASE)


@pytest.mark.parametrize("change", [
    {"hyper": {"lr": 0.2, "size": 64}},
    {"hyper": {"lr": 0.1}},
    {"hyper": {"lr": 0.1, "size": 64, "seconds": 1}},
    {"hyper": {"lr": 1, "size": 64}},  # int 1 and float 0.1 differ, of course
    {"seed": 8},
    {"model": "other"},
    {"mode": "quick"},
    {"split_recipe": "70/30"},
    {"train_hosts": ["pi"]},
    {"train_hosts": ["desktop", "pi"]},
], ids=lambda c: f"{next(iter(c))}={next(iter(c.values()))}")
def test_identity_fields_change_the_id(change: dict) -> None:
    assert job_id({**BASE, **change}, SECOND_TRAINER) != job_id(BASE, SECOND_TRAINER)


@pytest.mark.parametrize("field", ["mode", "split_recipe", "train_hosts", "seed"])
def test_unset_is_not_the_same_as_set(field: str) -> None:
    without = {k: v for k, v in BASE.items() if k != field}
    assert job_id(without) != job_id(BASE)


def test_identity_covers_exactly_the_design_fields() -> None:
    assert set(IDENTITY_FIELDS) == {"model", "mode", "hyper", "split_recipe", "train_hosts",
                                    "seed"}


@pytest.mark.parametrize(("field", "toml"), [
    ("seed", "7"),
    ("mode", '"realistic"'),
    ("split_recipe", '"80/20"'),
    ("train_hosts", '["pi", "desktop"]'),
])
def test_defaults_are_applied_before_hashing(field: str, toml: str) -> None:
    without = {k: v for k, v in BASE.items() if k != field}
    from_defaults = job_id(without, f"\n[defaults]\n{field} = {toml}\n")
    assert from_defaults == job_id(BASE)
    # and a job's own value beats the default
    assert job_id(BASE, "\n[defaults]\nseed = 99\nmode = \"other\"\n") == job_id(BASE)


def test_an_unset_seed_hashes_as_seed_zero() -> None:
    without = {k: v for k, v in BASE.items() if k != "seed"}
    assert job_id(without) == job_id({**BASE, "seed": 0})


def test_the_spec_carries_defaults_and_the_trainer() -> None:
    text = manifest_text([{"name": "alpha", "seed": 1}],
                         extra="\n[defaults]\nmin_ram_gib = 3\npriority = 4\nmode = \"m\"\n")
    spec = next(iter(load_manifest(text.encode()).specs.values()))
    assert (spec.min_ram_gib, spec.priority, spec.mode, spec.seed) == (3, 4, "m", 1)
    assert spec.command[-1].endswith("quick.py")
    assert spec.to_json()["job_id"] == spec.job_id == job_id_of(spec)
