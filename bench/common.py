"""Shared bench plumbing: an isolated git environment, scratch dirs, small
ledgers, the machine description and process resource probes.

Every row runs on fresh temp ledgers under one scratch dir, with git isolated
from the developer's config (as the tests do), so a global hook or alias can
not skew a figure.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
if str(TESTS_DIR) not in sys.path:  # ledgerkit: manifests and ledgers the tests use too
    sys.path.insert(0, str(TESTS_DIR))

from ledgerkit import make_ledger, manifest_text  # noqa: E402

__all__ = ["make_ledger", "manifest_text"]

CPU_CAPABILITY: dict[str, Any] = {
    "hostname": "bench-cpu", "cpu_cores": 2, "ram_total_gib": 16.0, "ram_available_gib": 12.0,
    "cuda_available": False, "cuda_devices": [], "os": "Linux", "arch": "x86_64",
    "trainledger_version": "bench",
}


def isolate_git(home: Path) -> None:
    """No figure may depend on the developer's git config, hooks or identity."""
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update({
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "operator", "GIT_AUTHOR_EMAIL": "operator@bench",
        "GIT_COMMITTER_NAME": "operator", "GIT_COMMITTER_EMAIL": "operator@bench",
    })
    for key in ("GIT_DIR", "GIT_WORK_TREE", "TRAINLEDGER_LEDGER", "TRAINLEDGER_IDENTITY",
                "GIT_SSH_COMMAND"):
        os.environ.pop(key, None)


def scratch_root(explicit: Path | None = None) -> Path:
    """bench/out/ when writable (gitignored), else the temp dir."""
    if explicit is not None:
        explicit.mkdir(parents=True, exist_ok=True)
        return explicit
    base = REPO_ROOT / "bench" / "out"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="run-", dir=base))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="trainledger-bench-"))


@dataclass
class Scratch:
    """A fresh directory per row; removed afterwards unless --keep."""

    root: Path
    keep: bool = False

    @contextmanager
    def dir(self, name: str) -> Iterator[Path]:
        path = self.root / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            if not self.keep:
                shutil.rmtree(path, ignore_errors=True)


def git(cwd: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["git", "-C", str(cwd), *args], input=input, capture_output=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:3])} in {cwd}: "
                           f"{proc.stderr.decode(errors='replace').strip()}")
    return proc


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    freq = psutil.cpu_freq()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout
    import sqlite3

    import zstandard

    return {
        "cpu": model or platform.processor(), "cores": os.cpu_count(),
        "cpu_mhz": round(freq.current) if freq else None,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(), "git": git_version.strip().removeprefix("git "),
        "sqlite": sqlite3.sqlite_version, "zstandard": zstandard.__version__,
        "filesystem_tmp": tempfile.gettempdir(),
    }


def write_capability(path: Path, name: str) -> Path:
    path.write_text(json.dumps({**CPU_CAPABILITY, "hostname": name}))
    return path


def rss_bytes(pid: int | None = None) -> int:
    return psutil.Process(pid).memory_info().rss


def peak_rss_bytes() -> int:
    """This process's high-water RSS (VmHWM), resettable with reset_peak_rss()."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so a peak is per phase."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def tree_cpu_seconds(proc: psutil.Process) -> float:
    """CPU time of a process and all its live descendants (git children too)."""
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            continue
    return total


def tree_rss_bytes(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total
