"""`reconciler run`: level-triggered passes over the whole ledger tip.

Each pass fetches main and the heartbeat refs, notes what is new on the
reconciler's own clock (reconciler/daemon/observe.py), plans (pure, reconciler/daemon/plan.py)
and writes every action as one commit (reconciler/daemon/apply.py), re-planning on the
new tip after a lost race. Watchdog events on a local ledger's refs and a
periodic tick only mark the ledger dirty; bursts coalesce into one pass.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.daemon.apply import apply
from reconciler.daemon.observe import live_workers, observe
from reconciler.daemon.plan import Action, Observations, View, next_due, orphans, plan
from reconciler.daemon.refused import Refusals
from reconciler.daemon.report import Report
from reconciler.git.port import LedgerPort
from reconciler.git.snapshot import Snapshot
from reconciler.git.sshconn import is_ssh
from reconciler.protocol import transitions
from reconciler.protocol.errors import LedgerError, ManifestError, PushRejected
from reconciler.protocol.lease import Lease
from reconciler.protocol.manifest import LoadedManifest, load_manifest
from reconciler.protocol.schema import Heartbeat
from reconciler.protocol.state import JobState
from reconciler.protocol.transitions import Move
from reconciler.rules.hookpath import has_our_hook
from reconciler.rules.recheck import Rechecker
from reconciler.sdnotify import notify, watchdog_interval_s

log = logging.getLogger("trainledger.reconciler")
GC_EVERY_S = 600.0
MIN_WAIT_S = 0.1  # never poll faster than this, whatever the manifest says
SETTLE_S = 0.05  # a burst of ref updates within this window gives one pass


def local_path(url: str) -> Path | None:
    """The bare repository when the ledger is a local path, else None."""
    if is_ssh(url):
        return None
    path = Path(url.removeprefix("file://"))
    return path if (path / "HEAD").exists() else None


def recheck_needed(url: str) -> bool:
    """A local ledger with our pre-receive hook judged every push already (with
    the pusher's real identity, which history does not keep: an operator's
    commit authored "Alice Smith" would look like a worker's). Anything else,
    remote or hook-less, is re-judged from its authors."""
    path = local_path(url)
    if path is None:
        return True
    return not has_our_hook(path)  # wherever git runs it: core.hooksPath or hooks/


class Reconciler:
    """One ledger's reconciler: passes, its report and its heartbeat."""

    def __init__(self, ledger: LedgerPort, clock: Callable[[], float] = time.monotonic,
                 recheck: Any = "auto") -> None:
        """`ledger` is the git Ledger or any LedgerPort (reconciler/git/memory.py);
        `recheck` an object with `check(tip) -> [Finding]`, None for none, or
        "auto": the git re-check wherever no hook of ours judged the pushes."""
        self.ledger = ledger
        self.clock = clock
        self.obs = Observations(started_at=clock())
        self.manifest: LoadedManifest | None = None
        self.report = Report()
        if recheck == "auto":
            repo = getattr(ledger, "repo", None)  # the git Ledger's cache
            recheck = Rechecker(repo) if repo is not None and recheck_needed(ledger.url) \
                else None
        self.recheck = recheck
        self.restores: dict[str, tuple[JobState, JobState, str]] = {}
        self.refusals = Refusals()
        self._decided: list[Action] = []  # the last plan handed to apply
        self._single = False  # one action per commit, to find the one refused
        self.due_at: float | None = None  # next time rule deadline, on our clock
        self.seq = 0
        self._last_gc = clock()
        # called after every pass with its snapshot (--metrics-file, --report-dir);
        # a hook that fails is logged and never fails the pass
        self.after_pass: list[Callable[[Reconciler, Snapshot], None]] = []

    # ---------------------------------------------------------------- a pass

    def pass_once(self) -> list[Action]:
        """Fetch, observe, plan and write; returns the actions written."""
        tip = self.ledger.fetch(heartbeats=True)
        if tip is None:
            raise LedgerError(f"{self.ledger.url}: no main branch (run `reconciler init`)")
        self._recheck(tip)
        written, snapshot = self._apply_around_refusals(tip)
        for action in written:
            if action.meaning is Move.RESTORE:
                self.restores.pop(action.new.job_id, None)
            log.info("event=%s job=%s attempt=%s %s", action.meaning, action.new.name,
                     action.new.attempt, action.reason)
        self._update_report(snapshot, len(written))
        for hook in self.after_pass:
            try:
                hook(self, snapshot)
            except Exception as exc:
                log.warning("event=after-pass-failed hook=%s error=%s", type(hook).__name__,
                            (str(exc) or repr(exc)).splitlines()[0])
        return written

    def _apply_around_refusals(self, tip: str, max_refusals: int = 64
                               ) -> tuple[list[Action], Snapshot]:
        """Write the pass's actions; when the hook refuses the commit, find the
        refused action (one action per commit), report it, and write the rest:
        one bad action never blocks the others, nor later passes."""
        written: list[Action] = []
        self._single = False
        for _ in range(max_refusals):
            try:
                applied = apply(self.ledger, self._decide)
            except PushRejected as exc:
                if len(self._decided) > 1 and not self._single:
                    self._single = True
                    continue
                for action in self._decided:
                    self._refuse(action, tip, exc)
                continue
            self.report.lost_races += applied.lost_races
            written += applied.actions
            if not self._single or not applied.actions:
                return written, applied.snapshot
        raise LedgerError(f"the ledger refused {max_refusals} actions in one pass; "
                          "see `reconciler status` for the rules")

    def _refuse(self, action: Action, tip: str, exc: PushRejected) -> None:
        """Report a refused action and stop planning it while its job stands still;
        a refused restore is dropped for good (the hook accepted the commit it
        would undo, so that commit was legal)."""
        self.refusals.add(action, tip, getattr(exc, "commit", None),
                          getattr(exc, "reason", None) or str(exc))
        self.report.refused = list(self.refusals.recent)
        if action.meaning is Move.RESTORE:
            self.restores.pop(action.new.job_id, None)

    def _decide(self, snap: Snapshot) -> list[Action]:
        """Observe, then plan on this snapshot (called again after a lost race)."""
        now = self.clock()
        loaded = self._manifest_of(snap)
        observe(self.obs, snap.states, self.ledger.heartbeats(), now)
        if loaded is None:
            self.due_at = None
            return []
        view = View(loaded.specs, loaded.fleet, snap.states)
        due = next_due(view, self.obs, now)
        self.due_at = None if due is None else now + due
        self.refusals.prune(snap.states)
        # Restores go alone: their commit's `Ledger-Kind: restore` covers every change.
        actions = self.refusals.allowed(self._restore_actions(snap)) \
            or self.refusals.allowed(plan(view, self.obs, now))
        self._decided = actions[:1] if self._single else actions
        return self._decided

    def _recheck(self, tip: str) -> None:
        """Judge the commits read since the last pass with the hook's rules."""
        for finding in self.recheck.check(tip) if self.recheck else []:
            log.warning("event=illegal-commit commit=%s author=%s %s", finding.commit[:12],
                        finding.author, finding.message)
            self.report.findings = [*self.report.findings, finding.message][-20:]
            for job_id, (illegal, legal) in finding.restore.items():
                self.restores[job_id] = (illegal, legal, finding.commit)

    def _restore_actions(self, snap: Snapshot) -> list[Action]:
        """Undo an illegal change while nothing has happened to the job since."""
        actions = []
        for job_id, (illegal, legal, commit) in list(self.restores.items()):
            if snap.states.get(job_id) != illegal:
                del self.restores[job_id]  # moved on since: report only
                continue
            actions.append(Action(transitions.restore(illegal, legal),
                                  f"restored the state before illegal commit {commit[:12]}"))
        return actions

    def _manifest_of(self, snap: Snapshot) -> LoadedManifest | None:
        """The tip's manifest, or the last valid one: a bad commit never stops the
        fleet, nor blocks its fix (Flux keeps its last applied revision)."""
        self.report.attempted_revision = snap.revision
        if snap.manifest is not None:
            self.manifest = snap.manifest
            self.report.manifest_error = self.report.manifest_error_commit = None
            self.report.applied_revision = snap.revision
            return snap.manifest
        if self.report.manifest_error != snap.manifest_error:
            log.warning("event=manifest-error %s", (snap.manifest_error or "").splitlines()[0])
        self.report.manifest_error = snap.manifest_error
        self.report.manifest_error_commit = self.ledger.last_commit_touching("manifest.toml",
                                                                             snap.revision)
        if self.manifest is None:
            self.manifest, self.report.applied_revision = \
                self._last_valid_manifest(snap.revision)
        return self.manifest

    def _last_valid_manifest(self, rev: str) -> tuple[LoadedManifest | None, str | None]:
        """After a restart on a broken tip: the newest valid manifest in history."""
        for commit, data in self.ledger.manifest_history(rev, 50):
            try:
                return load_manifest(data), commit
            except ManifestError:
                continue
        return None, None

    def _update_report(self, snap: Snapshot, actions: int) -> None:
        now = self.clock()
        self.report.last_pass_at = time.time()
        self.report.passes += 1
        self.report.actions += actions
        self.report.last_error = None
        self.report.workers = {w: round(s, 1) for w, s in
                               live_workers(self.obs, now, float("inf")).items()}
        if self.manifest is not None:
            view = View(self.manifest.specs, self.manifest.fleet, snap.states)
            self.report.orphans = [s.job_id for s in orphans(view)]

    # ------------------------------------------------------- beat and upkeep

    def beat(self) -> None:
        """The reconciler's own heartbeat ref carries its report."""
        beat = Heartbeat(worker=self.ledger.identity, seq=self.seq, sent_at=time.time(),
                         report=self.report.as_dict())
        self.seq += 1
        self.ledger.push_heartbeat(beat)

    def housekeeping(self) -> None:
        """Amended heartbeats and lost races leave loose objects: `git gc --auto`
        on a local ledger and on our cache keeps them from piling up on the Pi."""
        if self.clock() - self._last_gc < GC_EVERY_S:
            return
        self._last_gc = self.clock()
        path = local_path(self.ledger.url)
        if path is not None:
            subprocess.run(["git", "-C", str(path), "gc", "--auto", "--quiet"],
                           capture_output=True, timeout=600, check=False)
        self.ledger.gc()

    def wait_s(self, tick_s: float | None = None) -> float:
        """Until the next pass: the tick (at most heartbeat_s, so a new beat is
        seen within one beat), or sooner when a sweep or grace falls due."""
        tick = tick_s or Lease.of(self.manifest.fleet if self.manifest else None).tick_s
        if self.due_at is not None:
            tick = min(tick, self.due_at - self.clock() + 0.01)
        return max(MIN_WAIT_S, tick)


# ---------------------------------------------------------------- the daemon


class Dirty:
    """Coalesces triggers: many pushes in a burst give one pass."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def mark(self, *_: object) -> None:
        self.event.set()

    def wait(self, timeout: float, watchdog_s: float | None = None) -> bool:
        """Wait for a mark or the timeout, pinging systemd's watchdog meanwhile;
        then let the burst settle before the pass reads the ledger."""
        deadline = time.monotonic() + timeout
        fired = False
        while not fired:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            fired = self.event.wait(min(left, watchdog_s or left))
            notify("WATCHDOG=1")
        if fired:
            time.sleep(SETTLE_S)
        self.event.clear()
        return fired


HEARTBEAT_DIR = f"{os.sep}refs{os.sep}heartbeats"
# watchdog >= 5 also reports opens and closes-without-write (inotify): every git
# process reading the ledger, the reconciler's own fetch included, woke another
# pass, so an idle reconciler never idled (bench P7).
READ_EVENTS = frozenset({"opened", "closed_no_write"})


def watch_refs(path: Path, dirty: Dirty) -> Any:
    """Watchdog on a local bare ledger's refs/ and packed-refs, for writes only.
    Heartbeat refs do not wake it either: a pass per beat (its own beat, pushed
    after each pass, too) is wasted work; liveness is judged on the tick, which
    is at most heartbeat_s."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if event.event_type in READ_EVENTS:
                return  # a read is no change: our own fetch opens HEAD, config, refs
            src = str(getattr(event, "src_path", ""))
            dest = str(getattr(event, "dest_path", "") or "")
            if HEARTBEAT_DIR in src or HEARTBEAT_DIR in dest:
                return  # beats are read on the tick (bench P7: a pass per beat, its own too)
            if not src.endswith(".lock") or dest:
                dirty.mark()  # a ref written, or a lock renamed onto its ref

    observer = Observer()
    observer.schedule(Handler(), str(path / "refs"), recursive=True)
    observer.schedule(Handler(), str(path), recursive=False)  # packed-refs
    observer.daemon = True
    observer.start()
    return observer


def run(reconciler: Reconciler, *, once: bool = False, tick_s: float | None = None,
        stop: threading.Event | None = None, dirty: Dirty | None = None,
        wait: Callable[[float], object] | None = None) -> int:
    """Pass, beat, sleep until dirty or due; until `stop` is set. Errors back off
    (doubling, up to a minute) and are reported; they never end the loop.
    `wait(seconds)` sleeps between passes (default: until dirty, pinging the
    watchdog); a test passes one that advances its fake clock."""
    stop = stop or threading.Event()
    dirty = dirty or Dirty()
    path = None if once else local_path(reconciler.ledger.url)
    observer = watch_refs(path, dirty) if path is not None else None
    notify("READY=1")
    failures = 0
    try:
        while not stop.is_set():
            try:
                reconciler.pass_once()
                failures = 0
            except Exception as exc:
                if not isinstance(exc, LedgerError | OSError):
                    log.exception("event=pass-failed (a bug: please report it)")
                if once:
                    raise
                failures += 1
                reconciler.report.last_error = (str(exc) or repr(exc)).splitlines()[0]
                log.warning("event=pass-failed error=%s", reconciler.report.last_error)
            try:
                reconciler.beat()
            except (LedgerError, OSError) as exc:
                log.warning("event=beat-failed error=%s", (str(exc) or repr(exc)).splitlines()[0])
            if once or stop.is_set():
                break
            reconciler.housekeeping()
            pause = min(reconciler.wait_s(tick_s) * 2 ** min(failures, 9), 60.0)
            if wait is not None:
                wait(pause)
            else:
                dirty.wait(pause, watchdog_interval_s())
    finally:
        notify("STOPPING=1")
        if observer is not None:
            observer.stop()
    return 0
