"""Issue 2's must-show through the installed `reconciler` command: `validate` on a
misspelt field, a misspelt hyper key, a string `command`, a negative
`min_ram_gib` and a TOML syntax error exits 1 with one message each naming the
file, the job and the field (or the line and column), never a traceback;
`schema` prints JSON; and the operator's pre-commit hook from `install-hooks`
refuses a bad staged manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import make_ledger, manifest_text

SCRIPT = Path(sys.executable).with_name("reconciler")
GOOD = manifest_text([{"name": "alpha", "seed": 1, "hyper": {"lr": 0.1}},
                      {"name": "beta", "seed": 2}])


def reconciler(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "reconciler.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


MUST_SHOW = [
    ("misspelt field", GOOD.replace('name = "beta"', 'name = "beta"\npriorty = 3'),
     ["job 'beta' (jobs[1])", "field 'priorty'", "unknown key"]),
    ("misspelt hyper key", GOOD.replace("lr = 0.1", "learning_rate = 0.1"),
     ["job 'alpha' (jobs[0])", "field 'hyper.learning_rate'", "does not accept"]),
    ("string command", GOOD.replace("command = [", 'command = "python train.py" #['),
     ["[trainers.quick]", "field 'command'", "valid list"]),
    ("negative min_ram_gib", GOOD.replace('name = "alpha"', 'name = "alpha"\nmin_ram_gib = -4'),
     ["job 'alpha' (jobs[0])", "field 'min_ram_gib'", "greater than or equal to 0"]),
    ("TOML syntax error", GOOD.replace('name = "beta"', 'name = "beta'),
     ["TOML syntax error", "line 22, column 13"]),
]


@pytest.mark.parametrize(("text", "expected"), [r[1:] for r in MUST_SHOW],
                         ids=[r[0] for r in MUST_SHOW])
def test_validate_exits_1_with_one_message_naming_file_job_and_field(
        tmp_path: Path, text: str, expected: list[str]) -> None:
    path = tmp_path / "fleet" / "manifest.toml"
    path.parent.mkdir()
    path.write_text(text)
    proc = reconciler("validate", str(path))
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{path}: ")
    for word in expected:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    # --json says the same, as data
    proc = reconciler("validate", str(path), "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {"ok": False, "file": str(path), "errors": lines}


def test_validate_ok_and_the_default_file(tmp_path: Path) -> None:
    (tmp_path / "manifest.toml").write_text(GOOD)
    proc = reconciler("validate", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (0, "manifest.toml: ok (2 jobs)\n")
    proc = reconciler("validate", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout) == {"ok": True, "file": "manifest.toml", "jobs": 2,
                                         "sweeps": {}}


def test_validate_of_a_missing_file_is_one_line(tmp_path: Path) -> None:
    proc = reconciler("validate", str(tmp_path / "nope.toml"))
    assert proc.returncode == 1
    assert proc.stderr == f"reconciler validate: {tmp_path / 'nope.toml'}: " \
                          "No such file or directory\n"


@pytest.mark.parametrize("which", ["manifest", "state", "capability"])
def test_schema_prints_json(which: str) -> None:
    proc = reconciler("schema", which)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert schema["title"] == {"manifest": "Manifest", "state": "JobState",
                               "capability": "Capability"}[which]


def test_schema_defaults_to_the_manifest_and_refuses_unknown_names() -> None:
    default = reconciler("schema")
    assert json.loads(default.stdout)["title"] == "Manifest"
    assert "jobs" in json.loads(default.stdout)["properties"]
    proc = reconciler("schema", "nonsense")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def git(clone: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(clone), *args], capture_output=True, text=True,
                          check=check)


def test_the_pre_commit_hook_refuses_a_bad_staged_manifest(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=2, hooks=False)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    proc = reconciler("install-hooks", str(clone))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"installed {clone / '.git' / 'hooks' / 'pre-commit'}\n"
    manifest = clone / "manifest.toml"
    good = manifest.read_text()
    head = git(clone, "rev-parse", "HEAD").stdout

    bad = {
        "hyper": good.replace('name = "job-001"', 'name = "job-001"\nhyper = { lrr = 1 }'),
        "syntax": good.replace('name = "job-001"', 'name = "job-001'),
    }
    expected = {"hyper": "job 'job-001' (jobs[1]): field 'hyper.lrr'",
                "syntax": "TOML syntax error"}
    for kind, text in bad.items():
        manifest.write_text(text)
        git(clone, "add", "manifest.toml")
        refused = git(clone, "commit", "-m", f"bad {kind}", check=False)
        assert refused.returncode != 0
        assert "commit refused, the staged manifest is invalid" in refused.stderr
        assert f"manifest.toml: {expected[kind]}" in refused.stderr
        assert git(clone, "rev-parse", "HEAD").stdout == head

    # what is staged counts, not the work tree: a good file staged, a bad one on disk
    manifest.write_text(good.replace('name = "job-001"', 'name = "job-001"\npriority = 4'))
    git(clone, "add", "manifest.toml")
    manifest.write_text(bad["syntax"])
    ok = git(clone, "commit", "-m", "raise job-001", check=False)
    assert ok.returncode == 0, ok.stderr
    assert "manifest.toml ok (2 jobs)" in ok.stderr
    assert "priority = 4" in git(clone, "show", "HEAD:manifest.toml").stdout

    git(clone, "checkout", "--", "manifest.toml")
    git(clone, "rm", "-q", "manifest.toml")
    gone = git(clone, "commit", "-m", "delete it", check=False)
    assert gone.returncode != 0 and "staged for deletion" in gone.stderr
    git(clone, "reset", "-q", "--hard")
    git(clone, "mv", "manifest.toml", "manifest.old")
    moved = git(clone, "commit", "-m", "move it away", check=False)
    assert moved.returncode != 0 and "staged for deletion" in moved.stderr
