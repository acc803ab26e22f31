"""`reconciler init`: a hardened bare ledger (the server config of docs/operators.md
and docs/failure-model.md, security rule 6), hooks run by an absolute interpreter, a first commit by
the reconciler with one pending state file per job and its trailers, the store
directory; a non-empty DIR refused with a clear message; --set overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ledgerkit import manifest_text
from reconciler.protocol import trailers
from reconciler.protocol.errors import LedgerError
from reconciler.protocol.manifest import load_manifest
from reconciler.protocol.state import JobState, Status
from reconciler.rules.init import InitError, init_ledger, install_client_hooks


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def git(path: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def template(tmp_path: Path) -> Path:
    t = tmp_path / "template"
    t.mkdir()
    (t / "manifest.toml").write_text(manifest_text(4))
    (t / "README.md").write_text("# operators\n")
    return t


def test_init_creates_a_hardened_ledger_with_a_first_commit_per_job(tmp_path: Path,
                                                                    template: Path) -> None:
    ledger, store = tmp_path / "pi" / "ledger.git", tmp_path / "pi-store"
    proc = cli("init", str(ledger), "--template", str(template), "--store", str(store),
               "--set", "fleet.heartbeat_s=1", "--set", "fleet.stale_after_s=7.5",
               "--set", "fleet.max_attempts=5")
    assert proc.returncode == 0, proc.stderr
    head = git(ledger, "rev-parse", "main").strip()
    assert f"created ledger {ledger} (main {head[:12]}); store {store}" in proc.stdout

    config = {key: git(ledger, "config", "--get", key).strip() for key in (
        "receive.denyNonFastForwards", "receive.denyDeletes", "receive.fsckObjects",
        "receive.maxInputSize", "core.fsync", "core.fsyncMethod", "core.bare")}
    assert config == {
        "receive.denyNonFastForwards": "true", "receive.denyDeletes": "true",
        "receive.fsckObjects": "true", "receive.maxInputSize": str(16 << 20),
        "core.fsync": "all", "core.fsyncMethod": "fsync", "core.bare": "true",
    }
    assert (store / "sha256").is_dir()

    # the first commit: the reconciler's, a root, with one pending state per job
    assert git(ledger, "rev-list", "--count", "main").strip() == "1"
    assert git(ledger, "log", "-1", "--format=%an <%ae>|%cn", "main").strip() \
        == "reconciler <reconciler@trainledger>|reconciler"
    message = git(ledger, "log", "-1", "--format=%B", "main")
    assert message.startswith("init ledger test-fleet with 4 jobs\n")
    manifest_bytes = git(ledger, "show", "main:manifest.toml").encode()
    loaded = load_manifest(manifest_bytes)
    assert (loaded.fleet.heartbeat_s, loaded.fleet.stale_after_s, loaded.fleet.max_attempts) \
        == (1, 7.5, 5)
    assert loaded.fleet.store == store.as_posix()
    assert trailers.changes_of(message) == [(jid, 0, "new->pending") for jid in loaded.specs]
    assert trailers.parse(message)[trailers.ACTOR] == ["reconciler"]
    paths = git(ledger, "ls-tree", "-r", "--name-only", "main").split()
    assert sorted(paths) == sorted(["README.md", "access.toml", "manifest.toml",
                                    *(f"state/{j[:2]}/{j}.json" for j in loaded.specs)])
    for jid, spec in loaded.specs.items():
        data = git(ledger, "show", f"main:state/{jid[:2]}/{jid}.json")
        state = JobState.model_validate_json(data)
        assert state == JobState(job_id=jid, name=spec.name, status=Status.PENDING)
    # comments and layout of the template survive the overrides
    assert tomllib.loads(manifest_bytes.decode())["fleet"]["prefer_cuda_grace_s"] == 2


def test_hooks_are_executable_and_run_by_an_absolute_interpreter(tmp_path: Path,
                                                                 template: Path) -> None:
    ledger = tmp_path / "ledger.git"
    init_ledger(ledger, template=template, store=tmp_path / "store")
    hook = ledger / "hooks" / "pre-receive"
    assert os.access(hook, os.X_OK)
    assert not list((ledger / "hooks").glob("*.sample"))
    shebang = hook.read_text().splitlines()[0]
    interpreter, flags = shebang.removeprefix("#!").split(" ", 1)
    assert Path(interpreter).is_absolute() and os.access(interpreter, os.X_OK)
    assert flags == "-IS"
    # it runs as git runs it: isolated, from the repository, reading updates on stdin
    head = git(ledger, "rev-parse", "main").strip()
    env = {"PATH": os.environ["PATH"], "TRAINLEDGER_IDENTITY": "alpha",
           "HOME": os.environ["HOME"], "PYTHONPATH": "/nonexistent"}
    proc = subprocess.run([str(hook)], input=f"{'0' * 40} {head} refs/tags/x\n", cwd=ledger,
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("trainledger: refused: refs/tags/x: only refs/heads/main "
                                   "and refs/heartbeats/<your name> may be pushed")


@pytest.mark.parametrize("occupant", ["file-inside", "dir-is-a-file"])
def test_init_refuses_a_non_empty_dir(tmp_path: Path, template: Path, occupant: str) -> None:
    target = tmp_path / "ledger.git"
    if occupant == "file-inside":
        target.mkdir()
        (target / "precious.txt").write_text("keep me\n")
    else:
        target.write_text("a file\n")
    proc = cli("init", str(target), "--template", str(template))
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"reconciler init: {target}: exists and is not empty; "
                                   "choose a new directory")
    if occupant == "file-inside":
        assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]
    else:
        assert target.read_text() == "a file\n"


def test_an_existing_empty_dir_is_fine(tmp_path: Path, template: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    _repo, sha, store = init_ledger(target, template=template)
    assert git(target, "rev-parse", "main").strip() == sha
    assert store == tmp_path / "store" and store.is_dir()


@pytest.mark.parametrize(("setting", "message"), [
    ("fleet.heartbeat_s", "expected fleet.KEY=NUMBER"),
    ("fleet.heartbeat_s=fast", "'fast' is not a number"),
    ("fleet.bad key=1", "expected fleet.KEY=NUMBER"),
    ("fleet.heartbeat_s=-1", "field 'fleet.heartbeat_s'"),
    ("fleet.max_attempt=3", "field 'fleet.max_attempt': unknown key"),
    ("fleet.stale_after_s=0.1", "must be at least twice heartbeat_s"),
])
def test_bad_settings_are_one_line_and_create_nothing(tmp_path: Path, template: Path,
                                                      setting: str, message: str) -> None:
    target = tmp_path / "ledger.git"
    proc = cli("init", str(target), "--template", str(template), "--set", setting)
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not target.exists()


def test_an_invalid_template_is_refused_naming_its_manifest(tmp_path: Path) -> None:
    t = tmp_path / "t"
    t.mkdir()
    (t / "manifest.toml").write_bytes(manifest_text(1).encode().replace(b"job-000", b"j\xff"))
    with pytest.raises(LedgerError, match=r"manifest.toml: not UTF-8 \(invalid byte at line"):
        init_ledger(tmp_path / "l.git", template=t)
    (t / "manifest.toml").write_text(manifest_text(1) + "typo = 1\n")
    with pytest.raises(LedgerError, match=r"job 'job-000' \(jobs\[0\]\): field 'typo'"):
        init_ledger(tmp_path / "l.git", template=t)
    (t / "manifest.toml").unlink()
    with pytest.raises(InitError, match=r"template has no manifest\.toml"):
        init_ledger(tmp_path / "l.git", template=t)
    assert not (tmp_path / "l.git").exists()


@pytest.mark.parametrize("style", ["header comment", "indented keys", "CRLF", "spaced header",
                                   "no [fleet]", "no final newline"])
def test_overrides_land_in_the_fleet_table_however_it_is_written(tmp_path: Path,
                                                                 style: str) -> None:
    text = manifest_text(2)  # [fleet] with heartbeat_s = 0.5 ... written by ledgerkit
    text = {
        "header comment": text.replace("[fleet]\n", "[fleet]   # timing [s]\n"),
        "indented keys": text.replace("\nheartbeat_s", "\n  heartbeat_s"),
        "CRLF": text.replace("\n", "\r\n"),
        "spaced header": text.replace("[fleet]", "[ fleet ]"),
        "no [fleet]": "\n".join(ln for ln in text.splitlines()
                                if ln != "[fleet]" and not ln.endswith(("_s = 0.5", "_s = 3",
                                                                        "_s = 2"))
                                and not ln.startswith("max_attempts")) + "\n",
        "no final newline": text.rstrip("\n"),
    }[style]
    t = tmp_path / "t"
    t.mkdir()
    (t / "manifest.toml").write_bytes(text.encode())
    init_ledger(tmp_path / "l.git", template=t, store=tmp_path / "s",
                fleet={"heartbeat_s": 1, "stale_after_s": 9})
    fleet = load_manifest(git(tmp_path / "l.git", "show", "main:manifest.toml").encode()).fleet
    # a store beside the ledger is named relative to it: every host reads one setting
    assert (fleet.heartbeat_s, fleet.stale_after_s, fleet.store) == (1, 9, "s")


def test_an_explicit_store_wins_over_the_templates(tmp_path: Path) -> None:
    t = tmp_path / "t"
    t.mkdir()
    text = manifest_text(1).replace("[fleet]\n", '[fleet]\nstore = "/srv/elsewhere"\n')
    (t / "manifest.toml").write_text(text)
    init_ledger(tmp_path / "kept.git", template=t)
    kept = load_manifest(git(tmp_path / "kept.git", "show", "main:manifest.toml").encode())
    assert kept.fleet.store == "/srv/elsewhere"
    init_ledger(tmp_path / "mine.git", template=t, store=tmp_path / "mine")
    mine = load_manifest(git(tmp_path / "mine.git", "show", "main:manifest.toml").encode())
    assert mine.fleet.store == "mine"


def test_client_hooks_go_into_a_clone_and_only_a_clone(tmp_path: Path, template: Path) -> None:
    ledger = tmp_path / "ledger.git"
    init_ledger(ledger, template=template)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ledger), str(clone)], check=True)
    (written,) = install_client_hooks(clone)
    assert written == clone / ".git" / "hooks" / "pre-commit" and os.access(written, os.X_OK)
    assert Path(written.read_text().split()[0].removeprefix("#!")).is_absolute()
    not_a_clone = tmp_path / "plain"
    not_a_clone.mkdir()
    with pytest.raises(InitError, match="not a git clone"):
        install_client_hooks(not_a_clone)


def test_the_ledgers_manifest_validates_with_the_cli(tmp_path: Path, template: Path) -> None:
    """`reconciler validate --json` on the ledger's own manifest agrees with init."""
    ledger = tmp_path / "ledger.git"
    init_ledger(ledger, template=template)
    (tmp_path / "m.toml").write_text(git(ledger, "show", "main:manifest.toml"))
    proc = cli("validate", str(tmp_path / "m.toml"), "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"ok": True, "file": str(tmp_path / "m.toml"), "jobs": 4,
                                         "sweeps": {}}
