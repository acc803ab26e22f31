"""Fresh capability and what running jobs hold: the figures a worker judges by.

Detected once, free VRAM and available RAM went stale for a worker's whole
life, and `--slots` placed two 16 GiB jobs on one 24 GiB device. Now the
measured figures are read again (cheaply, at most every `min_interval_s`)
before each claim decision and each heartbeat, and every running job reserves
its `min_vram_gib` on its device and its `min_ram_gib` on the host. What a
worker may still place is, per device,

    min(measured free, total - reserved by our running jobs)

so a job that has not allocated yet still counts in full, and one using more
than it reserved counts for what it uses. Pure apart from the `measure`
callable, so tests pass figures in.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from reconciler.protocol.eligibility import choose_device
from reconciler.protocol.identity import JobSpec
from reconciler.protocol.schema import Capability

log = logging.getLogger("trainledger.worker")


@dataclass(frozen=True)
class Reservation:
    device: int | None
    vram_gib: float
    ram_gib: float


def reservation(spec: JobSpec, device: int | None) -> Reservation:
    return Reservation(device, spec.min_vram_gib if device is not None else 0.0,
                       spec.min_ram_gib)


def _floor(gib: float) -> float:
    """Down to a quarter GiB: a reading that wobbles by megabytes judges the same,
    so the worker's eligible set (kept across polls while the figures are
    equal) is not rebuilt every poll."""
    return max(0.0, math.floor(gib * 4) / 4)


def judged(measured: Capability, held: Iterable[Reservation]) -> Capability:
    """`measured` less what `held` reserves: free VRAM per device and available RAM."""
    held = list(held)
    devices = []
    for d in measured.cuda_devices:
        reserved = sum(r.vram_gib for r in held if r.device == d.index)
        free = _floor(min(d.vram_free_gib, d.vram_total_gib - reserved))
        devices.append(d if free == d.vram_free_gib
                       else d.model_copy(update={"vram_free_gib": free}))
    ram_reserved = sum(r.ram_gib for r in held)
    ram = _floor(min(measured.ram_available_gib, measured.ram_total_gib - ram_reserved))
    return measured.model_copy(update={"cuda_devices": devices, "ram_available_gib": ram})


def place(spec: JobSpec, cap: Capability) -> tuple[int | None, Capability]:
    """The device this job runs on, and `cap` with the job's reservation taken
    out, so the next job of the same claim is judged after it."""
    device = choose_device(spec, cap)
    return device, judged(cap, [reservation(spec, device)])


class Resources:
    """The worker's view: measured figures refreshed on demand, less what the
    running jobs hold. Thread-safe: the heartbeat thread asks too."""

    def __init__(self, base: Capability,
                 measure: Callable[[Capability], Capability] | None = None,
                 min_interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._measured = base
        self._measure = measure
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._at: float | None = None
        self._lock = threading.Lock()
        self._failed = False

    def measured(self) -> Capability:
        if self._measure is None:
            return self._measured
        with self._lock:
            now = self._clock()
            if self._at is not None and now - self._at < self._min_interval_s:
                return self._measured
            self._at = now
            try:
                self._measured = self._measure(self._measured)
                self._failed = False
            except Exception as exc:  # a failed reading keeps the last one
                if not self._failed:
                    log.warning("event=capability-refresh-failed error=%s (keeping the last "
                                "figures)", str(exc).splitlines()[0] if str(exc) else exc)
                self._failed = True
            return self._measured

    def now(self, held: Iterable[Reservation]) -> Capability:
        return judged(self.measured(), held)
