"""The heartbeat thread: the worker's lease, renewed apart from the trainer.

Every `heartbeat_s` it amend-pushes `refs/heartbeats/<name>` with the jobs held,
then fetches main through its own cache and checks that each held job is still
ours (same holder, same attempt, not cancelled). What it finds is handed to the
main thread, which alone starts and stops trainers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.git.port import LedgerPort
from reconciler.protocol.errors import LedgerError, PushRejected
from reconciler.protocol.schema import HELD, Capability, JobState, Status
from worker.beatcap import fit_beat

log = logging.getLogger("trainledger.worker")


@dataclass(frozen=True)
class Held:
    job_id: str
    name: str
    attempt: int
    progress: float | None
    last_line: str | None
    tail: list[str] | None = None  # the latest lines, for `reconciler logs` of a running job
    device: int | None = None


def revocation(state: JobState | None, worker: str, attempt: int) -> str | None:
    """Why a held job is no longer ours, or None while it still is."""
    if state is None:
        return "its state file is gone"
    if state.status is Status.CANCELLED:
        return "cancelled"
    if state.attempt != attempt or state.holder != worker or state.status not in HELD:
        who = f" by {state.holder}" if state.holder else ""
        return (f"lost: the ledger holds attempt {state.attempt} ({state.status.value}{who}), "
                f"not our attempt {attempt}")
    return None


def hook_refusal(exc: BaseException) -> str | None:
    """The hook's reason when it said no (`trainledger: refused: ...`), else None:
    a server-side failure (a ref lock, a full disk) is an outage, not a refusal."""
    if not isinstance(exc, PushRejected):
        return None
    text = str(getattr(exc, "reason", None) or exc)
    _, found, reason = text.partition("trainledger: refused: ")
    return reason.strip().splitlines()[0][:500] if found and reason.strip() else None


class Beater(threading.Thread):
    def __init__(
        self,
        ledger: LedgerPort,
        worker: str,
        capability: Capability | Callable[[], Capability],
        slots: int,
        held: Callable[[], list[Held]],
        on_revoked: Callable[[str, int, str], None],
        interval: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.ledger = ledger
        self.worker = worker
        self.capability = capability
        self.slots = slots
        self.held = held
        self.on_revoked = on_revoked
        self.interval = interval
        self.clock = clock
        self.last_ok = clock()
        self.seq = 0
        self._halt = threading.Event()
        self._wake = threading.Event()
        self._outage_since: float | None = None
        self.ok_beats = 0
        self.last_error: str | None = None
        self.refused: str | None = None  # the hook's reason, when it said no

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def poke(self) -> None:
        self._wake.set()

    def run(self) -> None:
        while not self._halt.is_set():
            self.beat_once()
            self._wake.wait(self.interval())
            self._wake.clear()

    def beat_once(self, final: bool = False) -> bool:
        held = [] if final else self.held()
        try:  # fresh figures, less what the running jobs reserve (worker/resources.py)
            cap = self.capability() if callable(self.capability) else self.capability
        except Exception:
            log.exception("event=capability-error worker=%s", self.worker)
            cap = None
        beat = fit_beat(self.worker, self.seq, self.ledger.clock(), self.slots, cap,
                        held)  # bounded: worker/beatcap.py
        self.seq += 1
        try:
            self.ledger.push_heartbeat(beat)
            if not final:
                snap = self.ledger.snapshot(self.ledger.fetch())
                for h in held:
                    why = revocation(snap.states.get(h.job_id), self.worker, h.attempt)
                    if why:
                        self.on_revoked(h.job_id, h.attempt, why)
        except Exception as exc:
            if not isinstance(exc, LedgerError):
                log.exception("event=beat-error worker=%s", self.worker)
            self.last_error = (str(exc).splitlines() or [type(exc).__name__])[0]
            self.refused = hook_refusal(exc)
            if self._outage_since is None:
                self._outage_since = self.clock()
                log.warning("event=beat-failed worker=%s error=%s (retrying every beat; "
                            "logged once per outage)", self.worker, str(exc).splitlines()[0])
            return False
        if self._outage_since is not None:
            log.info("event=beat-restored worker=%s outage_s=%.1f", self.worker,
                     self.clock() - self._outage_since)
            self._outage_since = None
        self.last_ok = self.clock()
        self.ok_beats += 1
        self.refused = self.last_error = None
        return True

    @property
    def failing_since(self) -> float | None:
        """When the current run of failed beats began; None while beats land."""
        return self._outage_since
