"""The fault rig: the real processes of a small fleet, and the knobs to hurt them.

- a bare ledger (hooks on) and a store on "the Pi" (a temp dir), reached over
  real sshd on loopback when the ssh fixture runs (each worker with its own
  key and its own proxy in front of sshd, so a network fault hits one host),
  over local paths otherwise;
- a reconciler daemon on the Pi's local path, killed and restarted at will,
  one log file per instance;
- workers, each with its own state dir, caches and log (tests/workerkit.py);
- jobs of the tiny real trainer tests/trainers/quick.py;
- a `reference-transaction` hook on the ledger that, when armed, SIGKILLs
  receive-pack at a chosen point of a chosen worker's push to main, or holds it
  there until the test lets go (the server side of the ambiguous-push and
  server-kill rows).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import pytest
from faults.check import Report, check_c, load_factor
from faults.proxy import Proxy

from ledgerkit import LedgerDir, make_ledger
from reconciler.git.ledger import Ledger
from reconciler.protocol.schema import Heartbeat
from reconciler.protocol.state import JobState
from workerkit import Fleet, WorkerProc, pid_alive, wait_for

if TYPE_CHECKING:
    from conftest import SshClient, SshServer

FLEET = {"heartbeat_s": 0.3, "stale_after_s": 2, "max_attempts": 4, "prefer_cuda_grace_s": 1}
TIMES = ("heartbeat_s", "stale_after_s", "prefer_cuda_grace_s")
MAX_SCALE = 8.0


def beat_cost(root: Path, sshd: SshServer | None, beaters: int = 1) -> float:
    """Seconds one heartbeat costs here now (push, then fetch of main: what a
    worker's beat does), the second worst of all samples, on a throwaway ledger
    over the same transport the rows use. `beaters` beat at once, each as its own
    host, because that is what a rig's workers do: on a machine with few cores
    their pushes (ssh, the forced command, the pre-receive hook) queue behind
    each other, and one beater alone would measure a fraction of the real cost."""
    led = make_ledger(root, jobs=1)
    ledgers = []
    try:
        for i in range(beaters):
            env, url = {}, led.url
            if sshd is not None:
                env = sshd.enroll(f"calibrate{i}", led.path, led.store).env
                url = sshd.url(led.path)
            with mock.patch.dict(os.environ, env):
                ledgers.append(Ledger(url, root / f"calibrate{i}.git", f"calibrate{i}"))
        costs: list[float] = []
        errors: list[BaseException] = []

        def beat(ledger: Ledger) -> None:
            try:
                beats(ledger)
            except BaseException as exc:  # re-raised on the calling thread
                errors.append(exc)

        def beats(ledger: Ledger) -> None:
            ledger.fetch()  # opens the reused ssh connection, as a worker's first fetch does
            for seq in range(4):
                t0 = time.monotonic()
                ledger.push_heartbeat(Heartbeat(worker=ledger.identity, seq=seq,
                                                sent_at=time.time(), slots=1, jobs=[]))
                ledger.snapshot(ledger.fetch())
                costs.append(time.monotonic() - t0)

        threads = [threading.Thread(target=beat, args=(ledger,)) for ledger in ledgers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise RuntimeError(f"a calibration beat failed: {errors[0]!r}") from errors[0]
        return sorted(costs)[-2]
    finally:
        for ledger in ledgers:
            ledger.close()


def time_scale(root: Path, sshd: SshServer | None, beaters: int = 1) -> float:
    """The factor on the fleet's times for a new rig. A worker self-fences after
    2/3 of stale_after_s without a successful beat, and a beat takes `heartbeat_s`
    plus what a push and a fetch cost; on an idle machine that is far below the
    limit at the matrix's heartbeat_s=0.3, stale_after_s=2 (factor 1), on a loaded
    one it is not, and live workers would fence themselves and be swept over and
    over. So the times are stretched until two beats fit in the self-fence
    window, and with the load average: every ratio the rows check stays the same.
    TRAINLEDGER_FAULT_SCALE pins it (1 for the PROTECTIONS.md experiments)."""
    pinned = os.environ.get("TRAINLEDGER_FAULT_SCALE")
    if pinned:
        return float(pinned)
    cost = beat_cost(root, sshd, beaters)
    window = 2 / 3 * FLEET["stale_after_s"] - 2 * FLEET["heartbeat_s"]  # per unit of scale
    needed = 2 * cost / window
    load = load_factor()
    scale = math.ceil(min(MAX_SCALE, max(1.0, load, needed)) * 2) / 2
    print(f"time scale {scale}: a beat costs {cost:.2f}s with {beaters} beating at once "
          f"(needs {needed:.1f}), load factor {load:.1f}")
    return scale


@dataclass(frozen=True)
class Profile:
    """How big a row is: the short one runs in `make test`, soak in `make soak`."""

    name: str
    jobs: int  # jobs of the quick trainer in a load row
    seconds: tuple[float, float]  # each job trains this long
    fault_s: float  # how long a nemesis keeps hurting the fleet
    workers: int = 3


SHORT = Profile("short", jobs=6, seconds=(1.0, 2.0), fault_s=8.0)
SOAK = Profile("soak", jobs=20, seconds=(1.0, 3.0), fault_s=20.0)


def quick_jobs(n: int, rng: random.Random, profile: Profile, prefix: str = "job",
               scale: float = 1.0, **hyper: object) -> list[dict]:
    """`scale` stretches the training times with the fleet's, for a row whose
    nemesis must find jobs still running at intervals of stale_after_s."""
    lo, hi = profile.seconds
    return [{"name": f"{prefix}-{i:02d}", "seed": i,
             "hyper": {"seconds": round(rng.uniform(lo, hi) * scale, 2), **hyper}}
            for i in range(n)]


# The server-side fault injector. It must start fast (every push runs it twice),
# hence sh; it does nothing unless an arm file matches.
REF_TX_HOOK = r"""#!/bin/sh
# tests/faults/harness.py: fault injection on pushes to main, when armed.
# An arm file holds "<state> <identity> <subject-prefix> <action>".
state=$1
input=$(cat)
line=$(printf '%s\n' "$input" | awk '$3 == "refs/heads/main"')
[ -n "$line" ] || exit 0
old=${line%% *}
new=$(printf '%s\n' "$line" | awk '{ print $2 }')
for arm in @CTL@/arm-*; do
    [ -f "$arm" ] || continue
    read -r want who prefix action <"$arm" || continue
    [ "$want" = "$state" ] && [ "$who" = "$TRAINLEDGER_IDENTITY" ] || continue
    subject=$(git log -1 --format=%s "$new" 2>/dev/null)
    [ "$prefix" = "-" ] || case $subject in "$prefix"*) ;; *) continue ;; esac
    fired="@CTL@/fired-${arm##*/arm-}"
    mv "$arm" "$fired" 2>/dev/null || continue
    printf '%s %s %s\n' "$old" "$new" "$subject" >"$fired.tmp" && mv "$fired.tmp" "$fired.info"
    case $action in
    kill) kill -9 "$PPID" ;;
    hold) i=0
        while [ ! -e "$fired.release" ] && [ "$i" -lt 400 ]; do sleep 0.05; i=$((i + 1)); done ;;
    esac
done
exit 0
"""

ROOMY_TRAINER = Path(__file__).resolve().parent / "roomy_trainer.py"
SKEWED = Path(__file__).resolve().parent / "skewed.py"


@dataclass
class Rec:
    """One reconciler instance."""

    proc: subprocess.Popen[bytes]
    log: Path
    started: float  # time.time() just before it was started

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Rig:
    root: Path
    led: LedgerDir
    sshd: SshServer | None
    fleet: Fleet
    ctl: Path
    settings: dict
    proxies: dict[str, Proxy] = field(default_factory=dict)
    clients: dict[str, SshClient] = field(default_factory=dict)
    workers: dict[str, WorkerProc] = field(default_factory=dict)
    recs: list[Rec] = field(default_factory=list)
    disrupted: set[str] = field(default_factory=set)  # workers the row hurt
    _reader: Ledger | None = None

    # ------------------------------------------------------------- building

    @classmethod
    def build(cls, root: Path, jobs: list[dict], sshd: SshServer | None,
              trainer: list[str] | None = None, fleet: dict | None = None,
              scale: float = 1.0) -> Rig:
        root.mkdir(parents=True, exist_ok=True)
        settings = {k: round(v * scale, 2) if k in TIMES else v
                    for k, v in {**FLEET, **(fleet or {})}.items()}
        led = make_ledger(root / "pi", jobs=jobs, fleet=settings, trainer=trainer)
        ctl = root / "pi" / "faults"
        ctl.mkdir()
        hook = led.path / "hooks" / "reference-transaction"
        hook.write_text(REF_TX_HOOK.replace("@CTL@", shlex.quote(str(ctl))))
        hook.chmod(0o755)
        url = sshd.url(led.path) if sshd else led.url
        return cls(root, led, sshd, Fleet(url, root, led.store), ctl, settings)

    @property
    def beat(self) -> float:
        return self.settings["heartbeat_s"]

    @property
    def stale(self) -> float:
        return self.settings["stale_after_s"]

    @property
    def scale(self) -> float:
        return self.stale / FLEET["stale_after_s"]

    @property
    def over_ssh(self) -> bool:
        return self.sshd is not None

    @property
    def store_url(self) -> str:
        return self.sshd.url(self.led.store) if self.sshd else str(self.led.store)

    def client(self, name: str, role: str = "worker") -> SshClient:
        if name not in self.clients:
            assert self.sshd is not None
            self.clients[name] = self.sshd.enroll(name, self.led.path, self.led.store, role)
        return self.clients[name]

    def proxy(self, name: str) -> Proxy:
        """The worker's own path to sshd."""
        if name not in self.proxies:
            assert self.sshd is not None
            self.proxies[name] = Proxy(self.sshd.port)
            known = self.root / "known_hosts"
            host_key = (self.sshd.root / "ssh_host_ed25519_key.pub").read_text().split()
            with known.open("a") as f:
                f.write(f"[127.0.0.1]:{self.proxies[name].port} {host_key[0]} {host_key[1]}\n")
        return self.proxies[name]

    def ssh_env(self, name: str, role: str = "worker", proxied: bool = True) -> dict[str, str]:
        """GIT_SSH_COMMAND of host `name`: its own key, through its own proxy."""
        client = self.client(name, role)
        argv = list(client.ssh_argv)
        if proxied:
            port = self.proxy(name).port
            argv[argv.index("-p") + 1] = str(port)
            argv = [f"UserKnownHostsFile={self.root / 'known_hosts'}"
                    if a.startswith("UserKnownHostsFile=") else a for a in argv]
        return {"GIT_SSH_COMMAND": shlex.join(argv)}

    # -------------------------------------------------------------- workers

    def start_worker(self, name: str, *extra: str, prefix: list[str] | None = None,
                     env: dict[str, str] | None = None, store: str | None = None) -> WorkerProc:
        env = {**(self.ssh_env(name) if self.over_ssh else {}), **(env or {})}
        w = self.fleet.start_worker(name, "--store", store or self.store_url, *extra,
                                    prefix=prefix, env=env)
        self.workers[name] = w
        return w

    def stop_processes(self) -> None:
        """SIGTERM every worker (they release what they hold) and the reconciler."""
        for p in self.proxies.values():
            p.heal()
        self.fleet.stop_all()
        for rec in self.recs:
            if rec.proc.poll() is None:
                rec.proc.terminate()
                try:
                    rec.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    rec.proc.kill()
                    rec.proc.wait()

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL, as a crash or power loss would; returns its trainers' pids."""
        w = self.workers[name]
        self.disrupted.add(name)
        w.signal(signal.SIGKILL)
        w.wait(30)
        return w.trainer_pids()

    def worker_holding(self, job_name: str, timeout: float = 60.0) -> tuple[WorkerProc, int]:
        """The worker whose trainer runs `job_name` (it has logged the start), and its pid."""
        def find():
            for w in self.workers.values():
                m = re.findall(rf"event=start job={re.escape(job_name)} .*?pid=(\d+)", w.text())
                if m and w.proc.poll() is None and pid_alive(int(m[-1])):
                    return w, int(m[-1])
            return None
        return wait_for(find, timeout=timeout, every=0.05, what=f"a trainer running {job_name}")

    # ----------------------------------------------------------- reconciler

    def start_reconciler(self) -> Rec:
        log = self.root / f"reconciler-{len(self.recs)}.log"
        started = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "run", "--ledger", str(self.led.path),
             "--state-dir", str(self.root / "rec")],
            stdout=log.open("ab"), stderr=subprocess.STDOUT)
        rec = Rec(proc, log, started)
        self.recs.append(rec)
        return rec

    def kill_reconciler(self) -> None:
        rec = self.recs[-1]
        if rec.proc.poll() is None:
            rec.proc.send_signal(signal.SIGKILL)
            rec.proc.wait(30)

    # --------------------------------------------------------------- reading

    def states(self) -> dict[str, JobState]:
        """main at the Pi, read through one cached reader."""
        if self._reader is None:
            self._reader = Ledger(self.led.url, self.root / "reader.git", "reader")
        return self._reader.snapshot(self._reader.fetch()).states

    def state(self, job_name: str) -> JobState:
        return next(s for s in self.states().values() if s.name == job_name)

    def main(self) -> str:
        return self.led.git("rev-parse", "main").strip()

    def heartbeat(self, worker: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(self.led.path), "rev-parse", "--verify", "-q",
                               f"refs/heartbeats/{worker}"], capture_output=True, text=True)
        return proc.stdout.strip() or None

    # ------------------------------------------------- server-side injection

    def arm(self, label: str, state: str, who: str, subject_prefix: str, action: str) -> None:
        """On the next push to main by `who` whose commit subject starts with
        `subject_prefix` ("-": any), at ref-transaction `state` (prepared: lock held, ref
        not moved; committed: ref moved, client not told): `kill` receive-pack,
        or `hold` it until `release(label)`."""
        tmp = self.ctl / f".{label}"
        tmp.write_text(f"{state} {who} {subject_prefix} {action}\n")
        tmp.rename(self.ctl / f"arm-{label}")

    def fired(self, label: str, timeout: float = 60.0) -> tuple[str, str, str]:
        """(old tip, pushed commit, its subject) of the push that fired `label`."""
        info = self.ctl / f"fired-{label}.info"
        wait_for(info.exists, timeout=timeout, every=0.02, what=f"the {label} injection to fire")
        old, new, subject = info.read_text().strip().split(" ", 2)
        return old, new, subject

    def release(self, label: str) -> None:
        (self.ctl / f"fired-{label}.release").touch()

    def disarm(self, label: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.ctl / f"arm-{label}").unlink()

    # ----------------------------------------------------------------- close

    def close(self) -> None:
        for rec in self.recs:
            if rec.proc.poll() is None:
                rec.proc.terminate()
        for p in self.proxies.values():
            p.heal()
        for w in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                if w.proc.poll() is None:
                    os.kill(w.proc.pid, signal.SIGCONT)
        self.fleet.stop_all()
        for rec in self.recs:
            try:
                rec.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                rec.proc.kill()
                rec.proc.wait()
        for p in self.proxies.values():
            p.close()
        if self._reader is not None:
            self._reader.close()


def soak_minutes(config) -> float:
    return float(config.getoption("--soak-minutes", default=0.0) or 0.0)


@dataclass
class FaultRun:
    """One row with one seed: makes rigs, closes them, runs check C."""

    row: str
    seed: int
    profile: Profile
    root: Path
    sshd: object | None
    rng: random.Random = field(init=False)
    scale: float = field(init=False)  # on the fleet's times, for this machine's load
    rigs: list[Rig] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.scale = time_scale(self.root / "calibration", self.sshd,  # type: ignore[arg-type]
                                beaters=self.profile.workers + 1)  # + the reconciler's fetches

    @property
    def stale(self) -> float:
        return FLEET["stale_after_s"] * self.scale

    def rig(self, jobs: list[dict], **kw: object) -> Rig:
        rig = Rig.build(self.root / f"rig{len(self.rigs)}", jobs, self.sshd, scale=self.scale,
                        **kw)
        self.rigs.append(rig)
        return rig

    def need_ssh(self) -> None:
        if self.sshd is None:
            pytest.skip(f"row {self.row} needs sshd (the proxy sits in front of it); "
                        "Debian's openssh-server could not be started here")

    def check(self, rig: Rig, **kw: object) -> Report:
        return check_c(rig, row=self.row, seed=self.seed, **kw)

    def close(self) -> None:
        for rig in self.rigs:
            rig.close()
