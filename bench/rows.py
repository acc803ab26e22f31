"""The shape every row returns, and the context rows run in."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.common import Scratch


@dataclass
class Config:
    """Sizes per mode: --quick keeps every row but shrinks it to fit 2 minutes."""

    quick: bool
    scratch: Scratch
    p1_reps: int = 15
    p2_jobs: int = 500
    p2_ks: tuple[int, ...] = (1, 4, 16, 32)
    p2_window_s: float = 35.0
    p3_trials: int = 7
    p4_sizes: tuple[int, ...] = (10_000, 100_000)
    p4_reps: int = 2
    p4_history_cap: int = 5_000
    p5_jobs: int = 200
    p5_hours: float = 24.0
    p6_bytes: int = 1 << 30
    p6_reps: int = 3
    p7_seconds: float = 60.0
    p7_jobs: int = 10_000
    p8_jobs: int = 30
    p8_reps: int = 8
    p9_workers: int = 4
    p9_jobs: int = 40
    p9_seconds: float = 3.0

    @classmethod
    def for_mode(cls, quick: bool, scratch: Scratch) -> Config:
        if not quick:
            return cls(quick, scratch)
        return cls(quick, scratch, p1_reps=5, p2_jobs=100, p2_window_s=6.0, p3_trials=3,
                   p4_sizes=(1_000, 10_000), p4_reps=1, p4_history_cap=500, p5_jobs=60,
                   p5_hours=2.0, p6_bytes=128 << 20, p6_reps=2, p7_seconds=10.0,
                   p7_jobs=2_000, p8_jobs=8, p8_reps=3, p9_jobs=8, p9_seconds=1.0)


@dataclass
class RowResult:
    """One row: what was measured, its reference in the same run, the verdicts."""

    id: str
    title: str
    measured: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    targets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Clock:
    """Wall time of a row, for the budget line of the report."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
