"""The trainer's runtime and its results, end to end: real ledgers (hooks
installed), real worker processes, real trainer subprocesses.

Metrics in the ledger and `reconciler results`; logs in the store and
`reconciler logs`; --pass-env and [trainers.X] env; GPU memory accounting on a
fake 24 GiB device; the whole process tree fenced on SIGKILL; tqdm progress.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ledgerkit import QUICK_HYPER, manifest_text
from reconciler.cli.status import read_status, render
from reconciler.protocol.schema import TERMINAL, Status
from reconciler.rules.init import init_ledger
from workerkit import CUDA_CAPABILITY, Fleet, wait_for

pytestmark = pytest.mark.slow
RUNTIME = Path(__file__).resolve().parent.parent / "trainers" / "runtime.py"


def runtime_fleet(root: Path, jobs: list[dict], trainer: list[str] | None = None,
                  env: dict[str, str] | None = None, hooks: bool = True) -> Fleet:
    text = manifest_text(jobs, trainer=trainer or [sys.executable, str(RUNTIME)])
    line = 'hyper = ["mode", "lr", "seconds"]'
    if env:
        line += "\nenv = { " + ", ".join(f'{k} = "{v}"' for k, v in env.items()) + " }"
    text = text.replace(QUICK_HYPER, line)
    template = root / "template"
    template.mkdir(parents=True)
    (template / "manifest.toml").write_text(text)
    path = root / "ledger.git"
    init_ledger(path, template=template, store=root / "store")
    if not hooks:
        (path / "hooks" / "pre-receive").unlink()
    return Fleet(str(path), root, root / "store")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def drained(fleet: Fleet) -> dict:
    states = fleet.states()
    return states if states and all(s.status in TERMINAL for s in states.values()) else {}


def by_name(fleet: Fleet) -> dict:
    return {s.name: s for s in fleet.states().values()}


def marker_pids(marker: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv:
                try:
                    state = (entry / "stat").read_text().rsplit(") ", 1)[1][0]
                except (OSError, IndexError):
                    continue
                if state != "Z":
                    out.append(int(entry.name))
    return out


def test_metrics_land_in_the_state_and_results_sorts_them(tmp_path: Path) -> None:
    # Given three jobs whose trainer writes metrics.json and one that writes a broken one
    fleet = runtime_fleet(tmp_path, [
        {"name": "lr-high", "seed": 1, "hyper": {"lr": 0.3}},
        {"name": "lr-low", "seed": 2, "hyper": {"lr": 0.1}},
        {"name": "lr-mid", "seed": 3, "hyper": {"lr": 0.2}},
        {"name": "broken-metrics", "seed": 4, "hyper": {"mode": "bad-metrics"}},
    ])
    # When a worker runs them all
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    states = by_name(fleet)
    # Then every job completed, metrics recorded, the malformed file noted, not fatal
    assert {s.status for s in states.values()} == {Status.COMPLETED}
    assert states["lr-low"].metrics == {"loss": 0.1, "acc": 0.9, "seed": 2}
    assert states["broken-metrics"].metrics is None
    assert "metrics.json ignored: not JSON" in states["broken-metrics"].metrics_error
    # And `reconciler results --json --sort loss` ranks them, with their hyper
    proc = cli("results", "--ledger", fleet.url, "--json", "--sort", "loss")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert [r["name"] for r in rows] == ["lr-low", "lr-mid", "lr-high", "broken-metrics"]
    assert rows[0]["hyper"] == {"lr": 0.1} and rows[0]["metrics"]["loss"] == 0.1
    assert rows[-1]["metrics"] == {} and rows[-1]["metrics_error"]
    proc = cli("results", "--ledger", fleet.url, "--sort", "acc", "--desc")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split("\t")[:2] == ["job", "model"] and "loss" in lines[0]
    assert [ln.split("\t")[0] for ln in lines[1:4]] == ["lr-low", "lr-mid", "lr-high"]
    assert any("broken-metrics: metrics.json ignored" in ln for ln in lines)


def test_a_failed_jobs_whole_log_from_another_host_and_its_real_error_line(
        tmp_path: Path) -> None:
    # Given a trainer that dies of a Python exception
    fleet = runtime_fleet(tmp_path, [{"name": "crashes", "seed": 1,
                                      "hyper": {"mode": "traceback", "lr": 9.5}}])
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    state = by_name(fleet)["crashes"]
    assert state.status is Status.FAILED and state.log is not None and state.log.attempt == 1
    # Then the error's first line is the exception, not a header
    assert state.last_error.splitlines()[0] == \
        "trainer exit 1: ValueError: the real error: lr 9.5 too high"
    row = next(ln for ln in render(read_status(fleet.url)).splitlines()
               if ln.startswith("crashes"))
    assert "ValueError: the real error" in row
    # And another host (its own HOME and caches, only the ledger and store URLs)
    # prints the whole log from the store
    other = tmp_path / "other-host"
    other.mkdir()
    env = {"HOME": str(other), "XDG_STATE_HOME": str(other / "state")}
    proc = cli("logs", "crashes", "--ledger", fleet.url, "--store", str(fleet.store), env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("runtime: loading data\nruntime: epoch 1 of 3\n")
    assert "Traceback (most recent call last)" in proc.stdout
    assert proc.stdout.rstrip().endswith("ValueError: the real error: lr 9.5 too high")
    same = cli("logs", state.job_id, "--attempt", "1", "--ledger", fleet.url,
               "--store", str(fleet.store), env=env)
    assert same.stdout == proc.stdout
    missing = cli("logs", "crashes", "--attempt", "7", "--ledger", fleet.url,
                  "--store", str(fleet.store), env=env)
    assert missing.returncode == 1 and "no log in the store for attempt 7" in missing.stderr


def test_the_trainer_sees_passed_and_manifest_variables_and_not_others(tmp_path: Path) -> None:
    fleet = runtime_fleet(tmp_path, [{"name": "env", "seed": 1, "hyper": {"mode": "env"}}],
                          env={"FROM_MANIFEST": "from-git"})
    w = fleet.start_worker("alpha", "--exit-when-idle", "--pass-env", "PASSED_*",
                           env={"PASSED_ONE": "p1", "OTHER_FROM_FILE": "o1",
                                "UNLISTED_SECRET": "s3cret",
                                "TRAINLEDGER_PASS_ENV": "OTHER_*"})  # as a unit's env file
    assert w.wait(120) == 0, w.text()
    state = by_name(fleet)["env"]
    assert state.status is Status.COMPLETED, state.last_error
    assert state.metrics == {"PASSED_ONE": "p1", "OTHER_FROM_FILE": "o1",
                             "FROM_MANIFEST": "from-git", "UNLISTED_SECRET": "<unset>"}


def test_two_16_gib_jobs_on_one_24_gib_device_run_one_after_the_other(tmp_path: Path) -> None:
    # Given two jobs that each need 16 GiB of VRAM and a worker with one 24 GiB device
    # (a fake capability: the figures never change, so only accounting can keep them apart)
    jobs = [{"name": f"big-{i}", "seed": i, "min_vram_gib": 16.0,
             "hyper": {"seconds": 1.0}} for i in range(2)]
    fleet = runtime_fleet(tmp_path, jobs)
    cap = {**CUDA_CAPABILITY, "cuda_devices": [
        {"index": 0, "name": "Fake 24G", "vram_total_gib": 24.0, "vram_free_gib": 24.0}]}
    # When it runs with two slots
    w = fleet.start_worker("alpha", "--slots", "2", "--exit-when-idle", capability=cap)
    assert w.wait(120) == 0, w.text()
    assert {s.status for s in fleet.states().values()} == {Status.COMPLETED}
    # Then the ledger's history shows the second claimed only after the first completed
    raw = subprocess.run(["git", "-C", fleet.url, "log", "--reverse", "--format=%B%x01", "main"],
                         capture_output=True, text=True, check=True).stdout
    events = []
    for i, message in enumerate(raw.split("\x01")):
        for line in message.splitlines():
            if "pending->claimed" in line or "running->completed" in line:
                events.append((i, line))
    claims = [i for i, ln in events if "pending->claimed" in ln]
    completions = [i for i, ln in events if "running->completed" in ln]
    assert len(claims) == 2 and len(completions) == 2, events
    assert claims[1] > completions[0], f"both ran at once: {events}"
    assert claims[0] != claims[1]


def test_sigkill_of_the_worker_leaves_no_process_of_a_forking_trainer(tmp_path: Path) -> None:
    # Given a trainer that is a shell which forks `sleep` and waits for it
    marker = f"{random.randint(300, 399)}.{random.randint(10**5, 10**6 - 1)}"
    fleet = runtime_fleet(tmp_path, [{"name": "wrapped", "seed": 1}],
                          trainer=["sh", "-c", f"sleep {marker} & wait"])
    w = fleet.start_worker("alpha")
    wait_for(lambda: marker_pids(marker), timeout=60, what="the trainer's sleep to start")
    # When the worker is SIGKILLed
    w.signal(signal.SIGKILL)
    w.wait(10)
    # Then the sleep is gone within a few seconds
    wait_for(lambda: not marker_pids(marker), timeout=10,
             what=f"no `sleep {marker}` left after the worker's SIGKILL")


def test_a_restarted_worker_kills_what_its_dead_predecessor_left(tmp_path: Path) -> None:
    # Given a forking trainer whose shepherd is killed along with its worker (it
    # gets no chance to fence: stopped first, then SIGKILLed)
    marker = f"{random.randint(300, 399)}.{random.randint(10**5, 10**6 - 1)}"
    fleet = runtime_fleet(tmp_path, [{"name": "wrapped", "seed": 1}],
                          trainer=["sh", "-c", f"sleep {marker} & wait"])
    w = fleet.start_worker("alpha")
    sleeper = wait_for(lambda: marker_pids(marker), timeout=60, what="the sleep")[0]
    shepherd = wait_for(lambda: w.trainer_pids(), what="the shepherd pid")[0]
    os.kill(shepherd, signal.SIGSTOP)
    w.signal(signal.SIGKILL)
    w.wait(10)
    os.kill(shepherd, signal.SIGKILL)
    assert marker_pids(marker) == [sleeper]  # the premise: it outlived both
    # When the worker restarts on the same state dir
    again = fleet.start_worker("alpha")
    try:
        # Then it kills the leftover before anything else
        wait_for(lambda: not marker_pids(marker), timeout=30, what="the leftover sleep killed")
        wait_for(lambda: "event=leftovers-killed" in again.text(), timeout=10,
                 what="the leftovers event")
    finally:
        again.stop()


def test_tqdm_progress_shows_in_status_and_logs_prints_the_running_lines(tmp_path: Path) -> None:
    fleet = runtime_fleet(tmp_path, [{"name": "bar", "seed": 1,
                                      "hyper": {"mode": "tqdm", "seconds": 300}}])
    w = fleet.start_worker("alpha")
    try:
        def progress():
            job = read_status(fleet.url)["jobs"][0]
            return job if job["progress"] == pytest.approx(0.45) else None
        job = wait_for(progress, timeout=60, what="progress 45% in status")
        assert job["last_line"].startswith(" 45%|####")
        proc = cli("logs", "bar", "--ledger", fleet.url)
        assert proc.returncode == 0, proc.stderr
        # each \r redraw replaced the one before: one line, the latest
        assert proc.stdout.splitlines() == [" 45%|####      | 45/100 [00:01<00:02]"]
        # -f follows until the attempt ends (here: the worker shuts down and releases it)
        out, err = tmp_path / "follow.out", tmp_path / "follow.err"
        follow = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "logs", "bar", "-f", "--ledger", fleet.url],
            stdout=out.open("w"), stderr=err.open("w"))
        wait_for(lambda: "45%|" in out.read_text(), timeout=60, what="follow to print the bar")
        w.stop()
        assert follow.wait(60) == 0
        assert "attempt 1 ended (pending)" in err.read_text()
    finally:
        w.stop()


def test_a_worker_on_a_broken_tip_works_from_the_last_valid_manifest(tmp_path: Path) -> None:
    # Given a ledger without hooks whose tip's manifest is broken
    fleet = runtime_fleet(tmp_path, [{"name": "ok", "seed": 1}], hooks=False)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", fleet.url, str(clone)], check=True)
    manifest = clone / "manifest.toml"
    manifest.write_text(manifest.read_text() + "\n[[jobs]]\nname = 'no model'\n")
    subprocess.run(["git", "-C", str(clone), "commit", "-qam", "broken"], check=True)
    subprocess.run(["git", "-C", str(clone), "push", "-q", "origin", "HEAD:main"], check=True)
    # When a worker starts
    w = fleet.start_worker("alpha", "--exit-when-idle")
    assert w.wait(120) == 0, w.text()
    # Then it ran the job of the last valid manifest and said why
    assert by_name(fleet)["ok"].status is Status.COMPLETED
    assert "event=manifest-error" in w.text() and "the last valid manifest" in w.text()


def test_status_and_explain_show_the_free_figures_they_judged_by(tmp_path: Path) -> None:
    # Given a worker running one 16 GiB job on its one 24 GiB device, and a second waiting
    jobs = [{"name": f"big-{i}", "seed": i, "min_vram_gib": 16.0, "priority": 1 - i,
             "hyper": {"mode": "tqdm", "seconds": 300}} for i in range(2)]
    fleet = runtime_fleet(tmp_path, jobs)
    cap = {**CUDA_CAPABILITY, "cuda_devices": [
        {"index": 0, "name": "Fake24", "vram_total_gib": 24.0, "vram_free_gib": 24.0}]}
    w = fleet.start_worker("alpha", "--slots", "2", capability=cap)
    try:
        def judged_8():
            doc = read_status(fleet.url)
            workers = [x for x in doc["workers"] if x["name"] == "alpha" and x["jobs"]]
            return doc if workers and workers[0]["gpus"][0]["vram_free_gib"] == 8.0 else None
        # Then status shows 8 of 24 GiB free (what the worker judges by), and why the
        # second job waits
        doc = wait_for(judged_8, timeout=60, what="status to show 8 GiB free")
        assert "Fake24 8/24G" in render(doc)
        cap_file = tmp_path / "cap.json"
        cap_file.write_text(json.dumps(cap))
        proc = subprocess.run(
            [sys.executable, "-m", "worker.cli", "explain", "--ledger", fleet.url, "--name",
             "alpha", "--capability", str(cap_file), "--state-dir", str(tmp_path / "explain"),
             "--json"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        assert out["judged_by"]["gpus"][0]["vram_free_gib"] == 8.0
        [row] = [r for r in out["jobs"] if r["name"] == "big-1"]
        assert row["reasons"] == ["needs 16.0 GiB free VRAM, best device has 8.0"]
        assert len(by_name(fleet)) == 2 and by_name(fleet)["big-1"].status is Status.PENDING
    finally:
        w.stop()
