"""The ledger template: `reconciler init` copies it into every new ledger, so it
must validate, mirror the seed fleet's capability table, and only use hyper keys
the example trainers really accept."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reconciler.protocol.access import load_access
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.manifest import LoadedManifest, load_manifest
from reconciler.protocol.schema import Fleet, Host, Job, Manifest, Trainer
from worker.examples import TRAINERS, build_parser
from worker.examples.common import hyper_keys, parse_hyper

TEMPLATE = Path(__file__).resolve().parents[2] / "ledger-template"

# model -> (require_cuda, prefer_cuda, min_vram_gib), the seed fleet's table
CAPABILITY = {
    "gbt": (False, False, 0.0),
    "mlp": (False, False, 0.0),
    "cnn": (False, True, 1.0),
    "gru": (True, False, 2.0),
    "lstm": (True, False, 2.0),
    "transformer": (True, False, 4.0),
}


@pytest.fixture(scope="module")
def loaded() -> LoadedManifest:
    return load_manifest((TEMPLATE / "manifest.toml").read_bytes(), "manifest.toml")


def test_template_loads_with_production_fleet_values(loaded: LoadedManifest) -> None:
    assert loaded.manifest.schema_version == 1
    fleet = loaded.fleet
    assert (fleet.heartbeat_s, fleet.stale_after_s, fleet.max_attempts,
            fleet.prefer_cuda_grace_s) == (30, 600, 3, 300)
    assert fleet.store is None, "init fills the store in; the template must not pick one"


def test_twelve_jobs_mirror_the_capability_table(loaded: LoadedManifest) -> None:
    specs = list(loaded.specs.values())
    assert len(specs) == 12
    pairs = {(s.model, s.mode) for s in specs}
    assert pairs == {(m, mode) for m in CAPABILITY for mode in ("realistic", "oracle")}
    for spec in specs:
        assert (spec.require_cuda, spec.prefer_cuda, spec.min_vram_gib) == CAPABILITY[spec.model], (
            spec.name
        )
        assert spec.name == f"{spec.model}-{spec.mode}"
        assert not spec.cancel


def test_trainers_run_the_examples(loaded: LoadedManifest) -> None:
    trainers = loaded.manifest.trainers
    assert set(trainers) == set(TRAINERS)
    for model, trainer in trainers.items():
        assert trainer.command == ["python", "-m", f"worker.examples.{model}"]


@pytest.mark.parametrize("model", TRAINERS)
def test_declared_hyper_keys_are_exactly_what_the_trainer_parses(
    loaded: LoadedManifest, model: str
) -> None:
    declared = loaded.manifest.trainers[model].hyper
    assert sorted(declared) == sorted(hyper_keys(build_parser(model)))
    assert len(set(declared)) == len(declared)


def _argv(spec: JobSpec) -> list[str]:
    """The flags the worker appends, rendered as the contract says."""
    argv: list[str] = []
    for key, value in spec.hyper.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        argv += ["--" + key.replace("_", "-"), text]
    return argv


def test_every_job_hyper_parses(loaded: LoadedManifest) -> None:
    for spec in loaded.specs.values():
        args = parse_hyper(build_parser(spec.model), _argv(spec))
        for key, value in spec.hyper.items():
            assert getattr(args, key) == value, (spec.name, key)


def test_worker_renders_the_same_flags(loaded: LoadedManifest) -> None:
    runner = pytest.importorskip("worker.runner")
    for spec in loaded.specs.values():
        argv = runner.trainer_argv(spec, python="/py")
        assert argv == ["/py", "-m", f"worker.examples.{spec.model}", *_argv(spec)]


def test_unknown_flag_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_hyper(build_parser("gbt"), ["--max-depth", "3", "--max-dept", "4"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--max-dept" in err and "--max-depth" in err and "manifest.toml" in err


def test_abbreviations_are_not_accepted() -> None:
    with pytest.raises(SystemExit):
        parse_hyper(build_parser("mlp"), ["--epoch", "3"])


def test_pi_runs_only_light_jobs(loaded: LoadedManifest) -> None:
    pi = loaded.manifest.hosts["office-pi"]
    assert pi.allow_jobs == ["gbt", "mlp"]


def test_access_roles() -> None:
    access = load_access((TEMPLATE / "access.toml").read_bytes())
    assert access.operators == ["operator"]
    assert access.reconcilers == ["reconciler"]
    assert access.workers is None


def test_manifest_comments_teach_every_field() -> None:
    text = (TEMPLATE / "manifest.toml").read_text()
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for model in (Manifest, Fleet, Trainer, Host, Job):
        for field in model.model_fields:
            # set in the example, or explained in a comment
            assert re.search(rf"\b{field}\b", text), f"{model.__name__}.{field} undocumented"
    for word in ("identity", "scheduling", "seconds", "GiB"):
        assert word in comments


def test_fleet_table_survives_init_rewrites() -> None:
    """`reconciler init` edits [fleet] with a regex that stops at the first '[':
    comments inside the table must not contain one."""
    text = (TEMPLATE / "manifest.toml").read_text()
    body = text.split("\n[fleet]\n", 1)[1].split("\n[", 1)[0]
    assert "[" not in body
    assert tomllib.loads(text)["fleet"].keys() == {
        "heartbeat_s", "stale_after_s", "max_attempts", "prefer_cuda_grace_s"
    }


def test_init_overrides_keep_every_job(tmp_path: Path) -> None:
    init = pytest.importorskip("reconciler.rules.init")
    text = (TEMPLATE / "manifest.toml").read_text()
    fleet = {"heartbeat_s": 0.5, "stale_after_s": 3, "prefer_cuda_grace_s": 1}
    out = load_manifest(init._with_fleet(text, (tmp_path / "store").as_posix(), fleet).encode())
    assert len(out.specs) == 12
    assert (out.fleet.heartbeat_s, out.fleet.stale_after_s) == (0.5, 3)
    assert out.fleet.store == (tmp_path / "store").as_posix()


def test_readme_covers_the_operator_tasks() -> None:
    text = (TEMPLATE / "README.md").read_text()
    for needle in ("cancel = true", "reconciler cancel", "reconciler requeue", "--grep",
                   "%(trailers", "Ledger-Job", "Ledger-Attempt", "Ledger-Transition",
                   "Ledger-Actor", "state/", "attempt", "cpu_ok", "last_error"):
        assert needle in text, needle


def test_parser_builders_import_nothing_heavy() -> None:
    """The hook, tests and tools import the parsers; torch alone takes seconds."""
    code = (
        "import sys\n"
        "from worker.examples import TRAINERS, build_parser\n"
        "for t in TRAINERS: build_parser(t)\n"
        "heavy = sorted({'torch', 'numpy', 'xgboost'} & set(sys.modules))\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""
