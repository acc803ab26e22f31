"""The fault matrix of RELIABILITY.md, short profile: real ledger (hooks on), real
reconciler, real workers with their own clones, a real tiny trainer; check C after
every row. Rows that need ssh and a proxy (partition, ambiguous push, server kill
mid-push) are not here yet: see tests/faults/PROTECTIONS.md."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from faults.check import check_c, states

from ledgerkit import LedgerDir, make_ledger
from reconciler.state import HELD, Status
from reconciler.store import LocalStore
from workerkit import Fleet, WorkerProc, pid_alive, wait_for

pytestmark = pytest.mark.slow
FLEET = {"heartbeat_s": 0.3, "stale_after_s": 2, "max_attempts": 4, "prefer_cuda_grace_s": 1}


def jobs(n: int, rng: random.Random, **hyper: object) -> list[dict]:
    return [{"name": f"job-{i:02d}", "seed": i,
             "hyper": {"seconds": round(rng.uniform(1, 2), 2), **hyper}} for i in range(n)]


class Rig:
    def __init__(self, root: Path, job_list: list[dict]) -> None:
        self.led: LedgerDir = make_ledger(root, jobs=job_list, fleet=FLEET)
        self.fleet = Fleet(self.led.url, root, self.led.store)
        self.root = root
        self.rec: subprocess.Popen | None = None

    def start_reconciler(self) -> subprocess.Popen:
        log = (self.root / "reconciler.log").open("ab")
        self.rec = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", "--ledger", self.led.url,
             "--state-dir", str(self.root / "rec")], stdout=log, stderr=subprocess.STDOUT)
        return self.rec

    def worker(self, name: str, *extra: str, **kw: object) -> WorkerProc:
        return self.fleet.start_worker(name, *extra, **kw)

    def close(self) -> None:
        self.fleet.stop_all()
        if self.rec and self.rec.poll() is None:
            self.rec.terminate()
            self.rec.wait(timeout=30)


@pytest.fixture
def rig(tmp_path: Path):
    made: list[Rig] = []

    def build(job_list: list[dict]) -> Rig:
        made.append(Rig(tmp_path, job_list))
        return made[-1]

    yield build
    for r in made:
        r.close()


def test_worker_crash_loop(rig, fault_rng: random.Random) -> None:
    r = rig(jobs(6, fault_rng))
    r.start_reconciler()
    workers = {n: r.worker(n) for n in ("w1", "w2", "w3")}
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        time.sleep(fault_rng.uniform(1.5, 3))
        name = fault_rng.choice(list(workers))
        workers[name].signal(signal.SIGKILL)
        workers[name].wait(10)
        workers[name] = r.worker(name)
    check_c(r.led, max_attempts=FLEET["max_attempts"])


def test_trainer_crash_fails_the_job_with_the_log_tail(rig, fault_rng) -> None:
    r = rig([{"name": "victim", "hyper": {"seconds": 30}}])
    r.start_reconciler()
    w = r.worker("w1", "--exit-when-idle")
    pid = wait_for(lambda: w.trainer_pids(), what="the trainer")[0]
    wait_for(lambda: any("progress" in p.read_text() for p in w.state_dir.glob("logs/*.log")),
             what="a progress line in the trainer's log")
    os.kill(pid, signal.SIGKILL)
    assert w.wait(60) == 0
    state = next(iter(states(r.led).values()))
    assert state.status is Status.FAILED and "signal SIGKILL" in state.last_error
    assert "progress" in state.last_error  # the log tail
    check_c(r.led, max_attempts=FLEET["max_attempts"])


def test_stale_worker_returns_and_is_fenced(rig, fault_rng) -> None:
    r = rig([{"name": "held", "hyper": {"seconds": 6}}])
    r.start_reconciler()
    w = r.worker("sleepy")
    pid = wait_for(lambda: w.trainer_pids(), what="the trainer")[0]
    wait_for(lambda: any(s.status is Status.RUNNING for s in states(r.led).values()),
             what="running")
    w.signal(signal.SIGSTOP)
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: next(iter(states(r.led).values())).status not in HELD,
             timeout=30, what="the sweep while it sleeps")
    time.sleep(FLEET["stale_after_s"] * 2)
    other = r.worker("awake", "--exit-when-idle")
    wait_for(lambda: next(iter(states(r.led).values())).attempt >= 2, what="a re-claim")
    w.signal(signal.SIGCONT)
    os.kill(pid, signal.SIGCONT)
    # the old holder learns at its next beat that attempt 1 is gone: trainer killed
    wait_for(lambda: "event=revoked" in w.text() or "result-discarded" in w.text()
             or "self-fence" in w.text(), timeout=30, what="the stale worker to stand down")
    wait_for(lambda: not pid_alive(pid), timeout=30, what="its trainer to be gone")
    assert other.wait(120) == 0
    check_c(r.led, max_attempts=FLEET["max_attempts"])


def test_claim_storm_exactly_one_claim(rig, fault_rng) -> None:
    r = rig([{"name": "prize", "hyper": {"seconds": 1}}])
    ws = [r.worker(f"s{i}", "--exit-when-idle") for i in range(6)]
    for w in ws:
        assert w.wait(120) == 0, w.text()
    claims = [t for _, _, _, t, _ in r.led.transitions() if t == "pending->claimed"]
    assert claims == ["pending->claimed"]
    check_c(r.led, max_attempts=FLEET["max_attempts"])


def test_reconciler_crash_loop(rig, fault_rng) -> None:
    r = rig(jobs(5, fault_rng))
    ws = [r.worker(n, "--exit-when-idle") for n in ("w1", "w2")]
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        rec = r.start_reconciler()
        time.sleep(fault_rng.uniform(1, 3))
        rec.send_signal(signal.SIGKILL)
        rec.wait(10)
    r.start_reconciler()
    for w in ws:
        assert w.wait(120) == 0
    # live workers were never swept: no sweep can happen sooner than stale_after_s
    # after a start, and every start here was followed by a kill within 3 s
    check_c(r.led, max_attempts=FLEET["max_attempts"])
    assert "->pending" not in " ".join(t for _, _, _, t, a in r.led.transitions()
                                       if a == "reconciler" and t != "new->pending")


def test_store_failure_then_retried(rig, fault_rng, tmp_path: Path) -> None:
    r = rig([{"name": "big", "hyper": {"seconds": 0.5}}])
    r.start_reconciler()
    # a worker whose store cannot be written (its sha256/ is a file, not a directory)
    broken = tmp_path / "broken-store"
    broken.mkdir()
    (broken / "sha256").write_text("not a directory")
    small = r.worker("cramped", "--max-jobs", "1", "--store", str(broken))
    assert small.wait(60) == 0, small.text()
    assert "store-failed" in small.text()
    assert list(broken.rglob("*.tar.zst")) == [] and list(r.led.store.rglob("*.tar.zst")) == []
    state = next(iter(states(r.led).values()))
    assert "store failed" in (state.last_error or "")
    roomy = r.worker("roomy", "--exit-when-idle")
    assert roomy.wait(60) == 0
    check_c(r.led, max_attempts=FLEET["max_attempts"])


def test_same_bundle_twice_concurrently(tmp_path: Path, fault_rng) -> None:
    data = fault_rng.randbytes(3 << 20)
    bundle = tmp_path / "b.bin"
    bundle.write_bytes(data)
    store = LocalStore(tmp_path / "store")
    results, errors = [], []

    def put() -> None:
        try:
            results.append(store.put_file(bundle))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len({a.sha256 for a in results}) == 1
    assert len(list(store.root.glob("sha256/*/*"))) == 1
    assert store.verify(results[0].sha256)


def test_operator_during_load(rig, fault_rng) -> None:
    r = rig([*jobs(5, fault_rng), {"name": "long", "seed": 99, "hyper": {"seconds": 60}}])
    r.start_reconciler()
    ws = [r.worker(n) for n in ("w1", "w2")]
    wait_for(lambda: any(s.name == "long" and s.status is Status.RUNNING
                         for s in states(r.led).values()), timeout=60, what="long to run")
    holder = next(w for w in ws if "job=long" in w.text())
    pid = [int(p) for p in holder.trainer_pids()][-1]
    cancel = subprocess.run([sys.executable, "-m", "reconciler.cli", "cancel", "long",
                             "--ledger", r.led.url], capture_output=True, text=True, timeout=60)
    assert cancel.returncode == 0, cancel.stderr
    t0 = time.monotonic()
    wait_for(lambda: not pid_alive(pid), timeout=10, what="the cancelled trainer to stop")
    assert time.monotonic() - t0 < 10
    check_c(r.led, max_attempts=FLEET["max_attempts"], deadline_s=120)
    requeue = subprocess.run([sys.executable, "-m", "reconciler.cli", "requeue", "job-00",
                              "--ledger", r.led.url], capture_output=True, text=True,
                             timeout=60)
    assert requeue.returncode == 0, requeue.stderr
    check_c(r.led, max_attempts=FLEET["max_attempts"], deadline_s=120)
