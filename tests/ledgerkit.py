"""Test helpers: real ledgers from generated templates, and history read from trailers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from reconciler.protocol import trailers
from reconciler.rules.init import init_ledger

QUICK_TRAINER = Path(__file__).resolve().parent / "trainers" / "quick.py"


# the hyper keys tests/trainers/quick.py accepts (tests swap this line for their trainer's)
QUICK_HYPER = ('hyper = ["seconds", "exit_code", "size", "lr", "steps", "fail_attempts", '
               '"term_exit"]')


def manifest_text(
    jobs: int | list[dict] = 3,
    fleet: dict | None = None,
    trainer: list[str] | None = None,
    extra: str = "",
) -> str:
    fleet = {"heartbeat_s": 0.5, "stale_after_s": 3, "max_attempts": 3,
             "prefer_cuda_grace_s": 2, **(fleet or {})}
    argv = trainer or [sys.executable, str(QUICK_TRAINER)]
    lines = ['schema_version = 1', 'name = "test-fleet"', "", "[fleet]"]
    lines += [f"{k} = {_toml(v)}" for k, v in fleet.items()]
    lines += ["", "[trainers.quick]", f"command = {_toml(argv)}", QUICK_HYPER, ""]
    specs = [{"name": f"job-{i:03d}", "seed": i} for i in range(jobs)] \
        if isinstance(jobs, int) else jobs
    for spec in specs:
        lines.append("[[jobs]]")
        spec = {"model": "quick", **spec}
        hyper = spec.pop("hyper", None)
        lines += [f"{k} = {_toml(v)}" for k, v in spec.items()]
        if hyper:
            lines.append("hyper = { " + ", ".join(f"{k} = {_toml(v)}" for k, v in hyper.items())
                         + " }")
        lines.append("")
    return "\n".join(lines) + extra


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


@dataclass
class LedgerDir:
    url: str
    path: Path
    store: Path
    root: Path

    def git(self, *args: str) -> str:
        return subprocess.run(["git", "-C", str(self.path), *args], check=True,
                              capture_output=True, text=True).stdout

    def transitions(self) -> list[tuple[str, str, int, str, str]]:
        """(commit, job_id, attempt, transition, actor), oldest first."""
        out = []
        raw = self.git("log", "--reverse", "--format=%H%x00%B%x01", "main")
        for record in raw.split("\x01"):
            if not record.strip():
                continue
            sha, _, message = record.strip().partition("\x00")
            actor = trailers.parse(message).get(trailers.ACTOR, ["?"])[-1]
            for job, attempt, transition in trailers.changes_of(message):
                out.append((sha, job, attempt, transition, actor))
        return out


def make_ledger(root: Path, jobs: int | list[dict] = 3, fleet: dict | None = None,
                hooks: bool = True, **kw: object) -> LedgerDir:
    template = root / "template"
    template.mkdir(parents=True)
    (template / "manifest.toml").write_text(manifest_text(jobs, fleet, **kw))
    path = root / "ledger.git"
    init_ledger(path, template=template, store=root / "store")
    if not hooks:
        (path / "hooks" / "pre-receive").unlink()
    return LedgerDir(str(path), path, root / "store", root)


def operator_push(led: LedgerDir, clone: Path, path: str, text: str, message: str) -> None:
    """An operator's edit of one top-level file, committed in a clone and pushed as
    `operator`, as a person would do it by hand."""
    if not clone.exists():
        subprocess.run(["git", "clone", "-q", led.url, str(clone)], check=True)
    (clone / path).write_text(text)
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", message], check=True)
    subprocess.run(["git", "-C", str(clone), "pull", "-q", "--rebase"], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True,
                   env={**os.environ, "TRAINLEDGER_IDENTITY": "operator"})


def start_reconciler(led: LedgerDir, *extra: str, env: dict | None = None) -> subprocess.Popen:
    """`reconciler run` on the ledger, as its own process, logging to reconciler.log."""
    log = (led.root / "reconciler.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "reconciler.cli", "run", "--ledger", led.url,
                             "--state-dir", str(led.root / "rec"), *extra], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, and a clean exit within 30 s."""
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
