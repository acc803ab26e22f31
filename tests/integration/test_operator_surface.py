"""The operator's surface against a real ledger, a real reconciler daemon and
real worker processes: versions, status filters and times, workers, health,
metrics (read by prometheus_client's parser), multi-job requeue, drain and
retire, and commands whose reader goes away."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledgerkit import LedgerDir, make_ledger, manifest_text, operator_push, start_reconciler
from reconciler.cli.main import main
from workerkit import Fleet, wait_for

pytestmark = pytest.mark.slow
FAST = {"heartbeat_s": 0.3, "stale_after_s": 2.5, "max_attempts": 3, "prefer_cuda_grace_s": 1}
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture(autouse=True)
def own_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """status/health/report caches under the test's dir, not ~/.local/state."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


def cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def ok_json(*args: str) -> dict:
    code, out, err = cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def run_cli(*args: str, module: str = "reconciler.cli.main", **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True,
                          text=True, timeout=120, **kw)


def operator_commit(led: LedgerDir, clone: Path, text: str) -> None:
    operator_push(led, clone, "manifest.toml", text, "edit manifest")


def metrics(path: Path) -> dict[str, list]:
    """{family name: [(labels, value)]} as prometheus_client's own parser reads it."""
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_versions() -> None:
    for module, prog in (("reconciler.cli.main", "reconciler"), ("worker.cli", "worker")):
        proc = run_cli("--version", module=module)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"{prog} (trainledger) ")


def test_a_fleet_seen_through_status_workers_health_metrics_and_requeue(
        tmp_path: Path) -> None:
    # each worker gets jobs only it may run, so both hosts show in the report
    # however the claim races go on a loaded machine
    jobs = [{"name": f"transformer-d512-h8-l6-lr3e-4-seed{i}", "seed": i,
             "allowed_hosts": [f"w{1 + i % 2}"], "hyper": {"seconds": 0.3}} for i in range(4)]
    jobs.append({"name": "bad", "seed": 9, "hyper": {"seconds": 0.1, "exit_code": 3}})
    led = make_ledger(tmp_path, jobs=jobs, fleet=FAST)
    prom = tmp_path / "textfile" / "trainledger.prom"
    prom.parent.mkdir()
    rec = start_reconciler(led, "--metrics-file", str(prom), "--report-dir",
                           str(tmp_path / "www"))
    fleet = Fleet(led.url, tmp_path, led.store)
    try:
        fleet.start_worker("w1")
        fleet.start_worker("w2")
        wait_for(lambda: len(fleet.states()) == 5 and all(
            s.status.value in TERMINAL for s in fleet.states().values()), 120,
            what="every job to end")

        # status --status failed --json: only the failed job, with its times and host
        doc = ok_json("status", "--ledger", led.url, "--status", "failed")
        assert [j["name"] for j in doc["jobs"]] == ["bad"] and doc["selected"] == 1
        bad = doc["jobs"][0]
        assert doc["counts"]["failed"] == 1 and doc["counts"]["completed"] == 4
        assert bad["last_host"] in ("w1", "w2")
        assert bad["claimed_at"] <= bad["started_at"] <= bad["ended_at"]
        assert bad["elapsed_s"] == bad["ended_at"] - bad["started_at"]
        glob = ok_json("status", "--ledger", led.url, "transformer-*", "--status",
                       "completed,failed")
        assert len(glob["jobs"]) == 4
        code, wide, _ = cli("status", "--ledger", led.url, "-o", "wide")
        assert code == 0 and "CLAIMED" in wide and "STARTED" in wide and "ENDED" in wide
        header = next(ln for ln in wide.splitlines() if ln.startswith("JOB "))
        row = next(ln for ln in wide.splitlines() if ln.startswith(jobs[0]["name"]))
        assert row.index(" ", len(jobs[0]["name"])) < header.index("ID")  # columns fit

        # workers and health on a live fleet
        wait_for(lambda: cli("health", "--ledger", led.url)[0] == 0, 60,
                 what="health to say the live fleet is healthy")
        workers = ok_json("workers", "--ledger", led.url)
        assert [w["name"] for w in workers["workers"]] == ["w1", "w2"]
        assert all(w["live"] and w["drain"] is None and w["jobs"] == []
                   for w in workers["workers"])
        assert {"last_seen_s", "cpu_cores", "ram_available_gib", "gpus", "job_names"} \
            <= set(workers["workers"][0])
        health = ok_json("health", "--ledger", led.url)
        assert health["status"] == "healthy" and health["workers_live"] == 2

        # the metrics file, at the revision status reads, counts what status counts
        def same_revision() -> dict | None:
            m = metrics(prom)
            doc = ok_json("status", "--ledger", led.url)
            info = m["trainledger_ledger_info"][0][0]
            return m if info["revision"] == doc["revision"] else None
        m = wait_for(same_revision, 60, what="a pass at the status revision")
        counts = {labels["status"]: value for labels, value in m["trainledger_jobs"]}
        assert counts == {k: float(v) for k, v in doc["counts"].items()}
        assert m["trainledger_claims_total"] == [({}, 5.0)]
        assert m["trainledger_completions_total"] == [({}, 4.0)]
        assert m["trainledger_failures_total"] == [({}, 1.0)]
        assert m["trainledger_manifest_applied"] == [({}, 1.0)]
        assert m["trainledger_workers_live"][0][1] == 2.0
        assert (tmp_path / "www" / "index.html").read_text().count('class="host-row"') == 2

        # requeue by selector: --dry-run writes nothing, then one commit does it
        tip = led.git("rev-parse", "main").strip()
        code, out, _ = cli("requeue", "--ledger", led.url, "--status", "failed", "--dry-run")
        assert code == 0 and "would requeue: bad" in out and "nothing was written" in out
        assert led.git("rev-parse", "main").strip() == tip
        code, out, _ = cli("requeue", "--ledger", led.url, "--status", "failed",
                           "--worker", bad["last_host"])
        assert code == 0 and "requeue: bad" in out and "is now pending" in out
        code, _, err = cli("cancel", "--ledger", led.url)
        assert code == 1 and "name one or more jobs" in err
    finally:
        fleet.stop_all()

    # the reconciler stopped: health turns non-zero once stale_after_s has passed
    rec.send_signal(signal.SIGTERM)
    assert rec.wait(timeout=30) == 0
    wait_for(lambda: run_cli("health", "--ledger", led.url).returncode == 2, 60,
             what="health to report the reconciler down")
    down = run_cli("health", "--ledger", led.url)
    assert down.stdout.startswith("DOWN") and "reconciler's last heartbeat" in down.stdout


def test_drain_finishes_the_running_job_and_claims_nothing_more(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    trainer = tmp_path / "gated.py"
    trainer.write_text(
        "import os, pathlib, sys, time\n"
        f"gate = pathlib.Path({str(gate)!r})\n"
        "deadline = time.monotonic() + 120\n"
        "while not gate.exists() and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "pathlib.Path(os.environ['TRAINLEDGER_OUTPUT_DIR'], 'w.bin').write_bytes(b'x')\n")
    jobs = [{"name": f"job-{i}", "seed": i} for i in range(3)]
    led = make_ledger(tmp_path, jobs=jobs, fleet=FAST, trainer=[sys.executable, str(trainer)])
    rec = start_reconciler(led, "--log-format", "json")
    fleet = Fleet(led.url, tmp_path, led.store)
    try:
        w1 = fleet.start_worker("w1", env={"TRAINLEDGER_LOG_FORMAT": "json"})
        held = wait_for(lambda: [s for s in fleet.states().values()
                                 if s.holder == "w1" and s.status.value == "running"], 60,
                        what="w1 to run a job")
        running = held[0]
        operator_commit(led, tmp_path / "clone",
                        manifest_text(jobs, FAST, trainer=[sys.executable, str(trainer)],
                                      extra="\n[hosts.w1]\ndrain = true\n"))

        def drain_state() -> str | None:
            return ok_json("workers", "--ledger", led.url)["workers"][0]["drain"]
        assert wait_for(lambda: drain_state() == "draining", 60,
                        what="status to show w1 draining")
        gate.write_text("go")
        wait_for(lambda: fleet.states()[running.job_id].status.value == "completed", 60,
                 what="the running job to complete")
        wait_for(lambda: drain_state() == "drained", 60, what="w1 drained")
        # two more beats of w1: it has polled since, and still claimed nothing
        beat = led.git("rev-parse", "refs/heartbeats/w1").strip()
        for _ in range(2):
            wait_for(lambda b=beat: led.git("rev-parse", "refs/heartbeats/w1").strip() != b,
                     30, what="another w1 heartbeat")
            beat = led.git("rev-parse", "refs/heartbeats/w1").strip()
        states = fleet.states()
        pending = [s for s in states.values() if s.status.value == "pending"]
        assert len(pending) == 2 and all(s.attempt == 0 for s in pending)
        assert sum(1 for t in led.transitions() if t[3] == "pending->claimed") == 1
        doc = ok_json("status", "--ledger", led.url)
        assert any("[hosts.w1] drain = true" in r for u in doc["unschedulable"]
                   for r in u["reasons"])
        assert w1.proc.poll() is None  # drained, not stopped

        # retire it: it leaves status, workers and health
        operator_commit(led, tmp_path / "clone",
                        manifest_text(jobs, FAST, trainer=[sys.executable, str(trainer)],
                                      extra="\n[hosts.w1]\nretired = true\n"))
        w1.stop()
        doc = wait_for(lambda: (d := ok_json("status", "--ledger", led.url))
                       ["retired_workers"] == ["w1"] and d, 60, what="w1 retired")
        assert doc["workers"] == []
        assert ok_json("workers", "--ledger", led.url)["retired"] == ["w1"]
    finally:
        fleet.stop_all()
        rec.send_signal(signal.SIGTERM)
        rec.wait(timeout=30)
    # both daemons logged one JSON object a line, the event's key=values as keys
    for log in (led.root / "reconciler.log", tmp_path / "w-w1" / "worker.log"):
        docs = [json.loads(line) for line in log.read_text().splitlines()
                if line.startswith("{")]
        assert docs and len(docs) == len([ln for ln in log.read_text().splitlines()
                                          if ln.strip()]), log
        assert all({"ts", "level", "logger", "msg"} <= set(d) for d in docs)
    worker_events = [json.loads(line) for line in
                     (tmp_path / "w-w1" / "worker.log").read_text().splitlines()]
    claim = next(d for d in worker_events if d.get("event") == "claim")
    assert claim["job"] == running.name and claim["worker"] == "w1"


def _closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run with stdout on a pipe whose reader is already gone: every write fails."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "reconciler.cli", *argv], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)


def test_a_reader_that_leaves_ends_the_command_quietly(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=3, fleet=FAST)
    for _ in range(2):
        cli("cancel", "--ledger", led.url, "job-*")
        cli("requeue", "--ledger", led.url, "job-*")
    for argv in (["status", "--watch", "1"], ["log"], ["status", "--json"], ["workers"]):
        proc = _closed_pipe_run([*argv, "--ledger", led.url])
        assert proc.returncode == 0, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, argv
    for line in (f"python -m reconciler.cli status --watch 1 --ledger {led.url} | head -1",
                 f"python -m reconciler.cli log --ledger {led.url} | head -1"):
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", line.replace(
            "python", sys.executable, 1)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert len(proc.stdout.splitlines()) == 1 and "Traceback" not in proc.stderr
        assert proc.stdout.startswith(("ledger at ", "20")), proc.stdout  # a real first line


def test_ctrl_c_is_exit_130_without_a_traceback(tmp_path: Path) -> None:
    led = make_ledger(tmp_path, jobs=1, fleet=FAST)
    # Ctrl-C as a terminal delivers it: to a process whose SIGINT is at its
    # default. A suite started in the background by a non-interactive shell
    # (`make test &`) inherits SIGINT ignored, and Python then keeps it ignored.
    proc = subprocess.Popen([sys.executable, "-m", "reconciler.cli", "status", "--watch", "30",
                             "--ledger", led.url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    wait_for(lambda: proc.stdout.readline(), 60, what="the first status frame")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130
    assert "Traceback" not in proc.stderr.read()
