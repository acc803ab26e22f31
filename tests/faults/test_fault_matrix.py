"""The fault matrix of docs/failure-model.md: real ledger (hooks on, behind real sshd when
it can run), real reconciler daemon, real workers with their own keys, clones and
proxies, the real tiny trainer; a fault per row; check C after every row.

Each row is a function of a `FaultRun` (seed, profile, rigs), so the short
profile (`test_<row>`, in `make test`) and the soak loop (`test_soak`, in
`make soak`) run the same code. Which protection each row catches, and how that
was shown, is in tests/faults/PROTECTIONS.md.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from unittest import mock

import pytest
from faults.check import fsck_json, slack
from faults.harness import (
    ROOMY_TRAINER,
    SKEWED,
    SOAK,
    FaultRun,
    Rig,
    quick_jobs,
    soak_minutes,
)

from reconciler.git.ledger import Ledger
from reconciler.git.push import Proposal
from reconciler.protocol import trailers
from reconciler.protocol.errors import PushRejected
from reconciler.protocol.state import HELD, Artifact, Status
from workerkit import pid_alive, wait_for

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------ helpers


def as_host(rig: Rig, name: str, role: str = "worker") -> Ledger:
    """A Ledger as host `name` would open it: its key over ssh (not through its
    proxy), or the local path with its identity."""
    cache = rig.root / f"as-{name}-{time.monotonic_ns()}.git"
    if not rig.over_ssh:
        return Ledger(rig.led.url, cache, name)
    with mock.patch.dict(os.environ, rig.ssh_env(name, role, proxied=False)):
        return Ledger(rig.fleet.url, cache, name)


def operator_env(rig: Rig) -> dict[str, str]:
    return rig.ssh_env("operator", "operator", proxied=False) if rig.over_ssh else {}


def push_stale_result(rig: Rig, worker: str, job_name: str, attempt: int) -> str:
    """What a stale holder without the client-side check would push: its job
    completed at its old attempt, on top of today's tip (rebuilt after a lost
    race, as any writer does). Returns the ledger's refusal."""
    ledger = as_host(rig, worker)

    def stale_completion(snap):
        cur = next(s for s in snap.states.values() if s.name == job_name)
        assert cur.attempt > attempt, f"{job_name} was never taken from attempt {attempt}"
        stale = cur.model_copy(update={
            "status": Status.COMPLETED, "holder": None, "attempt": attempt, "last_error": None,
            "artifact": Artifact(sha256=hashlib.sha256(b"stale").hexdigest(), size=5)})
        return Proposal.of_states([stale], [trailers.Change(
            cur.job_id, cur.name, attempt, "running->completed", "complete")])

    try:
        ledger.write(stale_completion)
    except PushRejected as exc:
        return str(exc.reason)
    finally:
        ledger.close()
    raise AssertionError(f"the ledger accepted {worker}'s write for {job_name} at stale "
                         f"attempt {attempt}")


# A job no host may take until an operator's commit replaces HELD_BACK_LINE (how
# ledgerkit renders HELD_BACK): the row decides when it becomes claimable.
HELD_BACK = {"allowed_hosts": ["nobody"]}
HELD_BACK_LINE = 'allowed_hosts = ["nobody"]\n'


def edit_manifest(rig: Rig, old: str, new: str, subject: str,
                  also: tuple[tuple[str, str], ...] = ()) -> str:
    """An operator's commit replacing `old` by `new` (and each pair of `also`) in
    manifest.toml, every occurrence; its sha."""
    ledger = as_host(rig, "operator", "operator")

    def edit(snap):
        text = ledger.repo.git("show", f"{snap.revision}:manifest.toml").stdout.decode()
        for was, now in ((old, new), *also):
            assert was in text, f"{was!r} is not in the manifest"
            text = text.replace(was, now)
        return Proposal({"manifest.toml": text.encode()}, [], subject)

    try:
        commit = ledger.write(edit).commit
    finally:
        ledger.close()
    assert commit is not None
    return commit


def start_fleet(rig: Rig, n: int, *extra: str, reconciler: bool = True) -> list[str]:
    if reconciler:
        rig.start_reconciler()
    names = [f"w{i}" for i in range(1, n + 1)]
    for name in names:
        rig.start_worker(name, *extra)
    return names


def busy_workers(rig: Rig, names: list[str]) -> list[str]:
    """Workers with a live trainer now (from their logs)."""
    out = []
    for name in names:
        w = rig.workers[name]
        pids = w.trainer_pids()
        if w.proc.poll() is None and pids and pid_alive(pids[-1]):
            out.append(name)
    return out


def log_time(line: str) -> float:
    """The wall-clock time of a `%(asctime)s` log line."""
    stamp = line[:23]
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


class RefWatch(threading.Thread):
    """Polls refs on the Pi every 20 ms: when each heartbeat last changed, and
    when each job first left `held`, on the test's own clock."""

    def __init__(self, rig: Rig, workers: list[str], jobs: list[str]) -> None:
        super().__init__(daemon=True)
        self.rig, self.workers, self.jobs = rig, workers, jobs
        self.beat_changed: dict[str, float] = {}
        self.released: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        last: dict[str, str | None] = {}
        reader = Ledger(self.rig.led.url, self.rig.root / "watch.git", "watch")
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                for w in self.workers:
                    value = self.rig.heartbeat(w)
                    if value != last.get(w):
                        last[w], self.beat_changed[w] = value, now
                states = reader.snapshot(reader.fetch()).states
                for s in states.values():
                    if s.name in self.jobs and s.name not in self.released \
                            and s.status not in HELD and s.attempt > 0:
                        self.released[s.name] = now
                time.sleep(0.02)
        finally:
            reader.close()


# --------------------------------------------------------------------- rows


def row_worker_crash_loop(f: FaultRun) -> None:
    """SIGKILL a worker that holds a job every few seconds and restart it."""
    p = f.profile
    # the anchor runs long and prints rarely, so that only the parent-death signal
    # can end its trainer within a second of the first kill (a progress line into
    # the dead worker's pipe would end it too: SIGPIPE)
    rig = f.rig([{"name": "anchor", "seed": 77, "priority": 10,
                  "hyper": {"seconds": 8, "steps": 2}},
                 *quick_jobs(p.jobs, f.rng, p, scale=f.scale)])
    names = start_fleet(rig, p.workers)
    holder, pid = rig.worker_holding("anchor")
    rig.kill_worker(holder.name)
    wait_for(lambda: not pid_alive(pid), timeout=slack(1.0), every=0.02,
             what="the killed holder's trainer to die with it (PR_SET_PDEATHSIG)")
    rig.start_worker(holder.name)
    orphans: list[int] = [pid]
    kills = 1
    deadline = time.monotonic() + p.fault_s * f.scale
    # the fault matrix: every 5 s at stale_after_s = 2, i.e. 2.5 x stale in the soak
    lo, hi = (0.75, 1.5) if p is not SOAK else (1.5, 3.0)
    while time.monotonic() < deadline:
        time.sleep(f.rng.uniform(lo, hi) * f.stale)
        busy = busy_workers(rig, names)
        if not busy:
            if all(s.status.value in ("completed", "failed") for s in rig.states().values()):
                break
            continue
        victim = f.rng.choice(busy)
        orphans.append(rig.workers[victim].trainer_pids()[-1])
        rig.kill_worker(victim)
        kills += 1
        rig.start_worker(victim)
    assert kills >= 2, "no worker was ever killed while holding a job in the loop"
    # the parent-death signal: a dead worker's trainer dies with it
    wait_for(lambda: not any(pid_alive(pid) for pid in orphans), timeout=slack(5),
             what=f"the trainers of killed workers ({orphans}) to be gone")
    report = f.check(rig)
    assert report.sweeps >= 1, "no job held by a killed worker was ever swept"


def row_trainer_crash(f: FaultRun) -> None:
    """SIGKILL the trainer: the job fails at once, with the log's tail."""
    p = f.profile
    rig = f.rig([{"name": "victim", "seed": 99, "priority": 10, "hyper": {"seconds": 30}},
                 *quick_jobs(2, f.rng, p)])
    start_fleet(rig, 2)
    w, pid = rig.worker_holding("victim")
    wait_for(lambda: any("progress" in log.read_text(errors="replace")
                         for log in w.state_dir.glob("logs/victim-*.log")),
             timeout=slack(20), what="a progress line in the victim's trainer log")
    os.kill(pid, signal.SIGKILL)
    # the log goes to the store first (ssh), then the failure to main: both
    # slower on a loaded machine; attempt 1 and lost 0 below say it was not swept
    state = wait_for(lambda: (s := rig.state("victim")).status is Status.FAILED and s,
                     timeout=slack(20) + 2 * f.stale, what="victim to fail")
    assert state.attempt == 1 and state.lost == 0, state
    assert state.last_error.startswith("trainer signal SIGKILL"), state.last_error
    assert "progress: " in state.last_error, f"no log tail in {state.last_error!r}"
    f.check(rig)


def row_stale_worker_returns(f: FaultRun) -> None:
    """SIGSTOP the holder (worker and trainer: a frozen host) for 2 x stale_after_s."""
    # still training on awake when sleepy wakes 2 x stale after the stop, and
    # through the stale write after that
    rig = f.rig([{"name": "held", "seed": 7, "hyper": {"seconds": round(2 * f.stale + 5, 1)}}])
    rig.start_reconciler()
    sleepy = rig.start_worker("sleepy")
    _, pid = rig.worker_holding("held")
    wait_for(lambda: rig.state("held").status is Status.RUNNING, what="held to be running")
    rig.disrupted.add("sleepy")
    sleepy.signal(signal.SIGSTOP)
    os.killpg(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    rig.start_worker("awake")
    wait_for(lambda: (s := rig.state("held")).attempt == 2 and s.holder == "awake",
             timeout=slack(10) + 3 * rig.stale,
             what="the sweep and awake's claim while sleepy sleeps")
    time.sleep(max(0.0, stopped + 2 * rig.stale - time.monotonic()))
    sleepy.signal(signal.SIGCONT)
    os.killpg(pid, signal.SIGCONT)
    woke = time.monotonic()
    # the old holder learns at its next beat that attempt 1 is gone: trainer killed
    wait_for(lambda: not pid_alive(pid), timeout=slack(5) + rig.stale,
             what="sleepy's trainer to be killed")
    took = time.monotonic() - woke
    # by the heartbeat's news (revoked) or its own silent clock (self-fence), whichever first
    assert re.search(r"event=(revoked|self-fence) job=held attempt=1 ", sleepy.text()), \
        sleepy.text()[-2000:]
    # and a stale-attempt write, had it been sent, is refused naming job, attempt, holder
    wait_for(lambda: rig.state("held").status is Status.RUNNING, timeout=slack(20),
             what="awake to start held")
    refusal = push_stale_result(rig, "sleepy", "held", 1)
    assert "job held" in refusal and "attempt 2" in refusal and "held by awake" in refusal, \
        refusal
    f.check(rig)
    final = rig.state("held")
    assert final.status is Status.COMPLETED and final.attempt == 2, final
    print(f"stale holder's trainer killed {took:.2f}s after it woke")


def row_partition(f: FaultRun) -> None:
    """Blackhole the holder's network for 2 x stale_after_s."""
    f.need_ssh()
    p = f.profile
    # it must still be training when it self-fences, 2/3 of stale_after_s into the cut
    seconds = round(f.stale * 1.5 + 4, 1)
    rig = f.rig([{"name": "cut-off", "seed": 99, "priority": 10, "hyper": {"seconds": seconds}},
                 *quick_jobs(3, f.rng, p)])
    rig.start_reconciler()
    island = rig.start_worker("island")
    _, pid = rig.worker_holding("cut-off")
    wait_for(lambda: rig.state("cut-off").status is Status.RUNNING, what="cut-off to run")
    for name in ("w2", "w3"):
        rig.start_worker(name)
    rig.disrupted.add("island")
    rig.proxy("island").partition()
    cut = time.monotonic()
    # self-fence: past 2/3 of stale_after_s without a beat it stops its trainer
    wait_for(lambda: not pid_alive(pid), timeout=2 * rig.stale + 5,
             what="the partitioned holder to stop its trainer")
    fenced = time.monotonic() - cut
    # how soon is a timing claim: exactly past 2/3 stale_after_s on fake time in
    # tests/unit/test_worker_loop.py; here, the outcome: it fenced itself
    assert "event=self-fence job=cut-off attempt=1" in island.text()
    wait_for(lambda: (s := rig.state("cut-off")).attempt >= 2 and s.holder != "island",
             timeout=slack(10) + 3 * rig.stale,
             what="another worker to take cut-off after the sweep")
    time.sleep(max(0.0, cut + 2 * rig.stale - time.monotonic()))
    rig.proxy("island").heal()
    wait_for(lambda: "event=beat-restored" in island.text(), timeout=slack(10) + 2 * rig.stale,
             what="island's heartbeat to come back")
    refusal = push_stale_result(rig, "island", "cut-off", 1)
    assert "job cut-off" in refusal and "attempt" in refusal, refusal
    f.check(rig)
    print(f"partitioned holder self-fenced after {fenced:.2f}s")


def row_ambiguous_push(f: FaultRun) -> None:
    """The connection is reset after the pack was sent (and the ref moved)."""
    f.need_ssh()
    p = f.profile
    # "mine" only w1 may run: w1 has a completion to push even if the sweep of a
    # job it held (its beats die with the reset) lets the others drain the rest
    rig = f.rig([*quick_jobs(p.jobs, f.rng, p),
                 {"name": "mine", "seed": 40, "hyper": {"seconds": 1},
                  "allowed_hosts": ["w1"]}])
    rig.start_reconciler()
    target = "w1"
    rig.disrupted.add(target)
    for label in ("claim", "complete"):
        # the server holds its answer while the proxy resets the connection
        rig.arm(label, "committed", target, label, "hold")
    names = [target, "w2", "w3"]
    for name in names:
        rig.start_worker(name)
    w = rig.workers[target]
    for label in ("claim", "complete"):
        _, sha, subject = rig.fired(label)
        assert rig.proxy(target).reset() >= 1
        rig.release(label)
        job, attempt = re.match(r"\w+ (\S+) by w1 \(attempt (\d+)\)", subject).groups()
        # the worker re-fetches, finds its commit and carries on as the winner
        wait_for(lambda job=job, attempt=attempt, label=label: re.search(
            rf"event={label} job={job} attempt={attempt}\b", w.text()), timeout=slack(30),
            what=f"w1 to see that its ambiguous {label} of {job} landed")
        assert subprocess.run(["git", "-C", str(rig.led.path), "merge-base", "--is-ancestor",
                               sha, "main"]).returncode == 0
    assert "push result unknown" in w.text()
    # then random resets in the middle of whatever is on the wire
    deadline = time.monotonic() + p.fault_s / 2 * f.scale
    while time.monotonic() < deadline:
        victim = f.rng.choice(names)
        rig.disrupted.add(victim)
        rig.proxy(victim).reset_after(f.rng.randint(200, 6000))
        time.sleep(f.rng.uniform(0.5, 1.5))
    for name in names:
        rig.proxy(name).reset_after(1 << 40)  # disarmed in effect
    report = f.check(rig)
    # a job may be claimed again after a sweep, but never twice at one attempt, and
    # every claim a worker believed it won is on main (none was lost or invented)
    claims = re.findall(r"event=claim job=(\S+) attempt=(\d+)",
                        "".join(rig.workers[n].text() for n in names))
    assert len(claims) == len(set(claims)) == report.claims, \
        f"claims logged {claims}, on main {report.claims}"


def row_claim_storm(f: FaultRun) -> None:
    """6 workers, 1 job, released to all of them at once by one manifest commit."""
    rig = f.rig([{"name": "prize", "seed": 1, "hyper": {"seconds": 1},
                  **HELD_BACK}])
    rig.start_reconciler()
    names = [f"s{i}" for i in range(6)]
    traces = {n: rig.root / f"trace-{n}.txt" for n in names}
    for n in names:
        rig.start_worker(n, env={"GIT_TRACE2": str(traces[n])})
    wait_for(lambda: all(rig.heartbeat(n) for n in names), timeout=slack(30),
             what="all six workers to be up and beating")
    time.sleep(3 * rig.beat)
    # the barrier: the job becomes eligible for everyone in one commit
    edit_manifest(rig, HELD_BACK_LINE, "", "open prize to every host")
    report = f.check(rig)
    # one winner for attempt 1, and only it believes it won
    winners = [n for n in names if "event=claim job=prize attempt=1 " in rig.workers[n].text()]
    assert len(winners) == 1, f"workers that believe they claimed attempt 1: {winners}"
    if report.sweeps == 0:
        assert report.claims == 1, report
    pushes = {}
    for n in names:
        text = traces[n].read_text(errors="replace") if traces[n].exists() else ""
        pushes[n] = len(re.findall(r" start git .*push .*:refs/heads/main$", text, re.M))
    tried = [n for n in names if pushes[n]]
    assert len(tried) >= 2, f"no race happened: pushes to main {pushes}"
    # bounded: a loser pushes once, loses, re-reads and stops; a claimer pushes its
    # claim, start and result (and a lost race or a timed-out push may add one each)
    for n in names:
        claimed = rig.workers[n].text().count("event=claim job=prize ")
        assert pushes[n] <= 3 * claimed + 2, f"{n} claimed {claimed} times: pushes {pushes}"
    assert not any("claim-gave-up" in rig.workers[n].text() for n in names)
    print(f"claim storm: pushes to main per worker {pushes}")


def row_reconciler_crash_loop(f: FaultRun) -> None:
    """SIGKILL the reconciler again and again; also kill a holder just before a restart."""
    p = f.profile
    # anchor trains past the loop's first kill (at most 1.75 x stale after the first
    # start): under load the quick jobs spend most of their time bundling and
    # pushing, so without it a check could find no live trainer at all (seen once)
    rig = f.rig([{"name": "anchor", "seed": 61, "priority": 10,
                  "hyper": {"seconds": round(2 * f.stale + 1, 1)}},
                 *quick_jobs(p.jobs, f.rng, p)])
    names = start_fleet(rig, p.workers, reconciler=False)
    deadline = time.monotonic() + p.fault_s * f.scale
    killed_holder = False
    # the fault matrix: every 7 s at stale_after_s = 2 (3.5 x stale) in the soak; the
    # short profile kills sooner, so most instances never live a full lease
    lo, hi = (0.5, 1.75) if p is not SOAK else (1.0, 3.5)
    while time.monotonic() < deadline:
        rig.start_reconciler()
        time.sleep(f.rng.uniform(lo, hi) * f.stale)
        busy = busy_workers(rig, names)
        if not killed_holder and busy:
            # a stale claim for the next reconciler to find at its start
            victim = f.rng.choice(busy)
            rig.kill_worker(victim)
            rig.start_worker(victim)  # a fresh process: the old claim is nobody's now
            killed_holder = True
        rig.kill_reconciler()
    rig.start_reconciler()
    assert killed_holder, "no holder was killed during the loop"
    report = f.check(rig)
    assert report.sweeps >= 1, "the killed holder's job was never swept"
    for rec in rig.recs:
        for line in rec.text().splitlines():
            if " event=sweep " in line:
                after = log_time(line) - rec.started
                assert after >= rig.stale, \
                    f"a reconciler swept {after:.2f}s after it started: {line}"
    replay_sweeps = [t for _, _, _, t, a in rig.led.transitions()
                     if a == "reconciler" and t.endswith(("->pending", "->failed"))
                     and not t.startswith("new")]
    assert replay_sweeps, "no sweep on main"


def row_clock_skew(f: FaultRun) -> None:
    """One worker's clock an hour off and running twice as fast (tests/faults/skewed.py)."""
    spec = f.rng.choice(["+3600 2", "-3600 2"]) if f.profile is SOAK else "+3600 2"
    # long enough to be running when both are killed (stale_after_s + 1 s after both
    # started), short enough that the rerun does not dominate the row
    long_s = round(3 * f.stale + 10, 1)
    rig = f.rig([{"name": "skewed-long", "seed": 90, "priority": 10, "hyper": {"seconds": long_s}},
                 {"name": "plain-long", "seed": 91, "priority": 10, "hyper": {"seconds": long_s}},
                 *quick_jobs(2, f.rng, f.profile)])
    rig.start_reconciler()
    skewed = rig.start_worker("skewed", prefix=[sys.executable, str(SKEWED), *spec.split(), "--"])
    plain = rig.start_worker("plain")
    wait_for(lambda: {s.holder for s in rig.states().values()
                      if s.status is Status.RUNNING} >= {"skewed", "plain"},
             timeout=slack(60), what="both workers to run a long job")
    jobs = {s.holder: s.name for s in rig.states().values() if s.status is Status.RUNNING}
    watch = RefWatch(rig, ["skewed", "plain"], list(jobs.values()))
    watch.start()
    # alive past stale_after_s: neither is swept, whatever its clock says
    time.sleep(rig.stale + 1.0)
    for who in ("skewed", "plain"):
        s = rig.state(jobs[who])
        assert s.status is Status.RUNNING and s.holder == who and s.attempt == 1, s
    rig.disrupted |= {"skewed", "plain"}
    for w in (skewed, plain):
        w.signal(signal.SIGKILL)
    for w in (skewed, plain):
        w.wait(30)
    wait_for(lambda: len(watch.released) == 2, timeout=slack(10) + 3 * rig.stale,
             what="both jobs to be swept")
    watch.stop.set()
    watch.join()
    delay = {w: watch.released[jobs[w]] - watch.beat_changed[w] for w in ("skewed", "plain")}
    print(f"clock skew {spec!r}: sweep {delay['skewed']:.2f}s after the skewed worker's last "
          f"beat, {delay['plain']:.2f}s after the plain one's")
    # When each was swept is a timing claim, made exactly on fake time in
    # tests/unit/test_reconciler_loop.py (a skewed worker's beats move no deadline).
    rig.start_worker("after", "--slots", "4")  # the two reruns side by side
    f.check(rig)
    # the skew was real: the skewed worker's commits carry its clock, an hour off
    offset = float(spec.split()[0])
    dates = [(int(t), who) for t, who in (line.split(" ", 1) for line in rig.led.git(
        "log", "--format=%at %an", "main").splitlines())]
    skewed_off = [t - time.time() for t, who in dates if who == "skewed"]
    assert skewed_off and all(abs(d - offset) < 600 for d in skewed_off), skewed_off
    assert all(abs(t - time.time()) < 600 for t, who in dates if who == "plain")


def row_server_kill_mid_push(f: FaultRun) -> None:
    """receive-pack SIGKILLed after the pack arrived: once after the ref moved,
    once while it held the ref's lock."""
    p = f.profile
    # spare is w2's next push to main whatever the rest of the fleet has done by
    # then: it is held back until step 2 opens it to w2
    rig = f.rig([*quick_jobs(p.jobs, f.rng, p),
                 {"name": "spare", "seed": 50, "hyper": {"seconds": 1}, **HELD_BACK}])
    rig.arm("after", "committed", "w1", "start", "kill")
    rig.disrupted |= {"w1", "w2"}
    start_fleet(rig, p.workers)
    # 1. killed after the ref moved: all of the push is on main; the worker finds it
    _, sha, subject = rig.fired("after")
    job = re.match(r"start (\S+) by", subject).group(1)
    wait_for(lambda: subprocess.run(["git", "-C", str(rig.led.path), "merge-base",
                                     "--is-ancestor", sha, "main"]).returncode == 0,
             timeout=slack(10), what="the killed push's commit on main")
    # 2. killed holding refs/heads/main.lock: nothing moved, and the lock stays
    # (opened first: a lock left by the kill would hold the operator's push too; w2
    # still pushes spare's completion after the arm, a second of training later)
    edit_manifest(rig, HELD_BACK_LINE, 'allowed_hosts = ["w2"]\n', "open spare to w2")
    rig.arm("before", "prepared", "w2", "-", "kill")
    old, sha, subject = rig.fired("before")
    lock = rig.led.path / "refs" / "heads" / "main.lock"
    wait_for(lambda: all(w.proc.poll() is None for w in rig.workers.values()) and
             lock.exists(), timeout=slack(10), what="the stale lock")
    time.sleep(1.0)  # the fleet keeps pushing into the lock meanwhile
    assert rig.main() == old, "main moved although receive-pack died before the commit"
    assert subprocess.run(["git", "-C", str(rig.led.path), "merge-base", "--is-ancestor", sha,
                           "main"]).returncode == 1
    # the ref's lock, and HEAD's (git locks HEAD too when it points at the ref)
    report = fsck_json(rig.led.path, rig.led.store)
    found = {Path(lk["path"]) for lk in report["repository"]["locks"]}
    assert not report["ok"] and lock in found, report["repository"]
    assert found <= {lock, rig.led.path / "HEAD.lock"}, report["repository"]
    assert all(w.proc.poll() is None for w in rig.workers.values()), "a worker died"
    # the operator's cleanup: `reconciler fsck --fix` removes locks older than a
    # minute that no process holds (the minute is skipped by ageing the file)
    stamp = time.time() - 120
    for path in found:
        os.utime(path, (stamp, stamp))
    fixed = fsck_json(rig.led.path, rig.led.store, "--fix")
    assert {Path(lk["path"]) for lk in fixed["repository"]["locks"] if lk["removed"]} == found, \
        fixed["repository"]
    # the aged, stale locks are gone; a live push may already hold a fresh one
    def aged(path: Path) -> bool:
        try:
            return path.stat().st_mtime <= stamp + 1
        except FileNotFoundError:
            return False

    assert not any(aged(path) for path in found)
    f.check(rig)  # (f): no lock is left once the fleet has stopped
    assert re.search(rf"event=start job={job} ", rig.workers["w1"].text())


def row_store_disk_full(f: FaultRun) -> None:
    """RLIMIT_FSIZE on a worker: its bundle cannot be written."""
    rig = f.rig([{"name": "bulky", "seed": 5, "hyper": {"seconds": 0.3}}],
                trainer=[sys.executable, str(ROOMY_TRAINER)])
    rig.start_reconciler()
    store = str(rig.led.store)  # the store as a mounted path: the limit hits this host
    cramped = rig.start_worker("cramped", "--max-jobs", "1", store=store,
                               prefix=["prlimit", f"--fsize={256 << 10}:unlimited", "--"])
    assert cramped.wait(60) == 0, cramped.text()[-3000:]
    text = cramped.text()
    failures = re.findall(r"event=store-failed job=bulky attempt=1 error=(.*)", text)
    assert len(failures) == 3, f"expected 3 tries: {failures}"
    assert all("File too large" in e for e in failures), failures
    assert "Traceback" not in text
    state = rig.state("bulky")
    assert state.status is Status.PENDING and state.lost == 1, state
    assert state.last_error.startswith("store failed on cramped:") and \
        "File too large" in state.last_error, state.last_error
    assert list(rig.led.store.rglob("*.tar.zst")) == [], "something under a final name"
    assert [p for p in rig.led.store.rglob("*") if p.is_file()] == [], "temp files left"
    rig.start_worker("roomy", "--exit-when-idle", store=store)
    f.check(rig)
    final = rig.state("bulky")
    assert final.status is Status.COMPLETED and final.attempt == 2, final


PUT_SCRIPT = """
import sys, time
from pathlib import Path
from reconciler.store.local import LocalStore
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.001)
print(LocalStore(Path(sys.argv[1])).put_file(Path(sys.argv[2])).sha256)
"""


def row_same_bundle_twice(f: FaultRun) -> None:
    """Concurrent puts of one sha: one file, every put succeeds."""
    root = f.root / "same-bundle"
    root.mkdir()
    data = f.rng.randbytes(8 << 20)
    sha = hashlib.sha256(data).hexdigest()
    bundle = root / "bundle.tar.zst"
    bundle.write_bytes(data)
    store, go = root / "store", root / "go"
    procs = [subprocess.Popen([sys.executable, "-c", PUT_SCRIPT, str(store), str(bundle),
                               str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    time.sleep(1.0)
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e for _, e in outs]
    assert {o.strip() for o, _ in outs} == {sha}
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files == [store / "sha256" / sha[:2] / f"{sha}.tar.zst"], files
    assert hashlib.sha256(files[0].read_bytes()).hexdigest() == sha
    # and through the fleet: two jobs whose trainers write identical outputs,
    # finished at the same moment by two workers (over ssh: two store-puts at once)
    rig = f.rig([{"name": "twin-a", "seed": 3, "hyper": {"seconds": 1.0}},
                 {"name": "twin-b", "seed": 3, "hyper": {"seconds": 1.01}}])
    start_fleet(rig, 2, "--exit-when-idle")
    f.check(rig)
    a, b = rig.state("twin-a"), rig.state("twin-b")
    assert a.status is b.status is Status.COMPLETED and a.artifact == b.artifact, (a, b)
    # the twins' one artifact, and each attempt's log bundle (identical logs: one)
    stored = sorted(p.name for p in rig.led.store.rglob("*") if p.is_file())
    assert stored == sorted({f"{s}.tar.zst" for s in (a.artifact.sha256, a.log.sha256,
                                                        b.log.sha256)}), (stored, a, b)


def row_operator_during_load(f: FaultRun) -> None:
    """Cancel a running job, raise a priority, requeue a completed job, under load."""
    p = f.profile
    # late and rival are held back (no host may take them) until the operator's
    # commit opens both and raises late above rival: however fast the fleet has
    # drained the others by then, the first claim after it shows the priority
    held_back = {**HELD_BACK, "hyper": {"seconds": 1}}
    # long outlasts the operator's first commit, which under load may lose races
    # to busy workers for a minute (seen in the soak at scale 3.5)
    rig = f.rig([{"name": "long", "seed": 99, "priority": 5,
                  "hyper": {"seconds": round(60 * f.scale)}},
                 *quick_jobs(p.jobs, f.rng, p),
                 {"name": "rival", "seed": 97, "priority": 50, **held_back},
                 {"name": "late", "seed": 98, "priority": -5, **held_back}])
    names = start_fleet(rig, p.workers)
    _, pid = rig.worker_holding("long")
    wait_for(lambda: rig.state("long").status is Status.RUNNING, what="long to run")
    env = {**os.environ, **operator_env(rig)}

    def operator(*argv: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "reconciler.cli", *argv, "--ledger",
                               rig.fleet.url, "--as", "operator"], capture_output=True,
                              text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr

    # priority: late goes from last to first; the next claim on main is late's
    assert rig.state("late").status is Status.PENDING
    raised = edit_manifest(rig, "priority = -5\n", "priority = 100\n",
                           "priority of late to 100; open late and rival to every host",
                           also=((HELD_BACK_LINE, ""),))
    # cancel: the running trainer stops (how soon, a beat, is a timing claim made
    # on fake time in tests/unit/test_worker_loop.py)
    operator("cancel", "long")
    cancelled = time.monotonic()
    wait_for(lambda: not pid_alive(pid), timeout=slack(30), every=0.02,
             what="long's trainer to stop")
    took = time.monotonic() - cancelled
    def first_claim_since_raise() -> str | None:
        after = rig.led.git("log", "--reverse", "--format=%H", f"{raised}..main").split()
        return next((c for c in after
                     if "pending->claimed" in rig.led.git("log", "-1", "--format=%B", c)), None)

    first_claim = wait_for(first_claim_since_raise, timeout=slack(30),
                           what="a claim after the priority change")
    body = rig.led.git("log", "-1", "--format=%s", first_claim)
    assert body.startswith("claim late by"), f"first claim after the priority change: {body}"
    # requeue: a completed job runs again, at the next attempt
    done = wait_for(lambda: next((s for s in rig.states().values()
                                  if s.status is Status.COMPLETED and s.name != "late"), None),
                    timeout=slack(60), what="a completed job")
    operator("requeue", done.name)
    f.check(rig)
    again = rig.state(done.name)
    # at a later attempt: under load a claim may also be released (a self-fence)
    # before the one that completes, so not always the very next one
    assert again.status is Status.COMPLETED and again.attempt > done.attempt, again
    assert rig.state("long").status is Status.CANCELLED
    # its trainer stopped (waited on above); no second worker ever ran it
    stopped = [n for n in names if "event=revoked job=long" in rig.workers[n].text()]
    assert len(stopped) <= 1, stopped
    print(f"cancelled trainer stopped {took:.2f}s after the commit landed")


ROWS: dict[str, Callable[[FaultRun], None]] = {
    "worker_crash_loop": row_worker_crash_loop,
    "trainer_crash": row_trainer_crash,
    "stale_worker_returns": row_stale_worker_returns,
    "partition": row_partition,
    "ambiguous_push": row_ambiguous_push,
    "claim_storm": row_claim_storm,
    "reconciler_crash_loop": row_reconciler_crash_loop,
    "clock_skew": row_clock_skew,
    "server_kill_mid_push": row_server_kill_mid_push,
    "store_disk_full": row_store_disk_full,
    "same_bundle_twice": row_same_bundle_twice,
    "operator_during_load": row_operator_during_load,
}


# ------------------------------------------------------- the short profile


def test_worker_crash_loop(fault: FaultRun) -> None:
    row_worker_crash_loop(fault)


def test_trainer_crash(fault: FaultRun) -> None:
    row_trainer_crash(fault)


def test_stale_worker_returns(fault: FaultRun) -> None:
    row_stale_worker_returns(fault)


def test_partition(fault: FaultRun) -> None:
    row_partition(fault)


def test_ambiguous_push(fault: FaultRun) -> None:
    row_ambiguous_push(fault)


def test_claim_storm(fault: FaultRun) -> None:
    row_claim_storm(fault)


def test_reconciler_crash_loop(fault: FaultRun) -> None:
    row_reconciler_crash_loop(fault)


def test_clock_skew(fault: FaultRun) -> None:
    row_clock_skew(fault)


def test_server_kill_mid_push(fault: FaultRun) -> None:
    row_server_kill_mid_push(fault)


def test_store_disk_full(fault: FaultRun) -> None:
    row_store_disk_full(fault)


def test_same_bundle_twice(fault: FaultRun) -> None:
    row_same_bundle_twice(fault)


def test_operator_during_load(fault: FaultRun) -> None:
    row_operator_during_load(fault)


# -------------------------------------------------------------- the soak loop


def test_soak(request: pytest.FixtureRequest, soak_run) -> None:
    """`make soak`: the rows in turn with random seeds until the time is up."""
    minutes = soak_minutes(request.config)
    fixed = request.config.getoption("--fault-seed", default=None)
    seeds = random.Random(fixed) if fixed is not None else random.SystemRandom()
    deadline = time.monotonic() + minutes * 60
    failures: list[str] = []
    runs = 0
    order = list(ROWS)
    while time.monotonic() < deadline:
        row = order[runs % len(order)]
        seed = seeds.randrange(1, 1 << 31)
        run = soak_run(row, seed)
        started = time.monotonic()
        try:
            ROWS[row](run)
            print(f"soak: {row} seed {seed}: ok in {time.monotonic() - started:.0f}s")
        except pytest.skip.Exception as exc:
            print(f"soak: {row} seed {seed}: skipped ({exc})")
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append(f"{row} seed {seed}: {type(exc).__name__}: {first[:300]} "
                            f"(replay: pytest tests/faults -k test_{row} --fault-seed={seed})")
            print(f"soak: FAILED {failures[-1]}")
        finally:
            run.close()
        runs += 1
    print(f"soak: {runs} row runs in {minutes:g} min, {len(failures)} failed")
    assert runs > 0
    assert failures == [], "\n".join(failures)

