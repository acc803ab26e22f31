"""`make demo`: a fresh local ledger, a reconciler and two workers, trained end to end.

Everything lives under ./.trainledger-demo (ledger, store, logs, worker state)
and is recreated on every run. The demo ledger shortens the fleet timings so a
`prefer_cuda` job is seen waiting for a GPU and then opened to the CPU workers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".trainledger-demo"
PY = sys.executable
FLEET = {"heartbeat_s": 1, "stale_after_s": 15, "prefer_cuda_grace_s": 20}


def reconciler(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "reconciler.cli", *args], capture_output=True, text=True,
                          check=check)


def start(name: str, argv: list[str], logs: Path) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def status(ledger: Path) -> dict:
    proc = reconciler("status", "--ledger", str(ledger), "--json", check=False)
    if proc.returncode != 0:
        return {}
    return json.loads(proc.stdout)


def settled(report: dict, started: float) -> bool:
    """Done when nothing is held and every pending job is waiting for a reason no
    CPU worker can change (after the grace, so prefer_cuda jobs had their turn)."""
    jobs = report.get("jobs", [])
    if not jobs or time.monotonic() - started < FLEET["prefer_cuda_grace_s"] + 2:
        return False
    if any(j["status"] in ("claimed", "running") for j in jobs):
        return False
    waiting = {w["job_id"] for w in report.get("unschedulable", [])}
    return all(j["status"] != "pending" or j["job_id"] in waiting for j in jobs)


def show_progress(report: dict, elapsed: float) -> None:
    jobs = report.get("jobs", [])
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j["status"]] = counts.get(j["status"], 0) + 1
    busy = ", ".join(f"{j['name']}@{j['holder']}" + (
        f" {j['progress']:.0%}" if j.get("progress") is not None else "")
        for j in jobs if j["status"] in ("claimed", "running"))
    line = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    print(f"[{elapsed:5.0f}s] {line}" + (f" | {busy}" if busy else ""), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout", type=float, default=600, help="give up after this long")
    args = parser.parse_args()
    if DEMO.exists():
        shutil.rmtree(DEMO)
    logs = DEMO / "logs"
    logs.mkdir(parents=True)
    ledger, store = DEMO / "ledger.git", DEMO / "store"
    sets = [f"--set=fleet.{k}={v}" for k, v in FLEET.items()]
    print(reconciler("init", str(ledger), "--store", str(store), *sets).stdout, end="")
    procs = [start("reconciler", [PY, "-m", "reconciler.cli", "run", "--ledger", str(ledger),
                                  "--state-dir", str(DEMO / "reconciler")], logs)]
    for name in ("demo-cpu-1", "demo-cpu-2"):
        procs.append(start(name, [PY, "-m", "worker.cli", "run", "--ledger", str(ledger),
                                  "--name", name, "--state-dir", str(DEMO / name),
                                  "--poll-s", "1"], logs))
    print("reconciler and two workers started; logs in", logs, flush=True)
    started = time.monotonic()
    ok = False
    try:
        while time.monotonic() - started < args.timeout:
            report = status(ledger)
            show_progress(report, time.monotonic() - started)
            if settled(report, started):
                ok = True
                break
            if any(p.poll() is not None for p in procs):
                print("a daemon exited early; see", logs, file=sys.stderr)
                break
            time.sleep(3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    print("\n$ reconciler status --ledger", ledger)
    print(reconciler("status", "--ledger", str(ledger), check=False).stdout)
    print("$ git log --format='%h %an: %s' -15")
    print(subprocess.run(["git", "-C", str(ledger), "log", "--format=%h %an: %s", "-15"],
                         capture_output=True, text=True).stdout)
    print(f"ledger: {ledger}\nstore:  {store}\nlogs:   {logs}")
    print("try:   .venv/bin/reconciler status --ledger", ledger, "\n       .venv/bin/reconciler log"
          " --ledger", ledger)
    if not ok:
        print("demo did not settle: see the logs above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
