"""Pure statistics for the bench: medians, spreads, percentiles, ratios, verdicts.

No I/O here, so the smoke test can check these without git. Figures are
quoted as medians with a spread (min, p10, p90, max); a single run is never
quoted on its own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100] (numpy's default method)."""
    if not samples:
        return math.nan
    data = sorted(samples)
    if len(data) == 1:
        return float(data[0])
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return float(data[lo] + (data[hi] - data[lo]) * (pos - lo))


def summarize(samples: Sequence[float]) -> dict[str, float | int]:
    """n, median, min, p10, p90, max (and p50/p99 for latency distributions)."""
    if not samples:
        return {"n": 0, "median": math.nan}
    return {
        "n": len(samples),
        "median": float(statistics.median(samples)),
        "min": float(min(samples)),
        "p10": percentile(samples, 10),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "max": float(max(samples)),
    }


def paired_ratios(numer: Sequence[float], denom: Sequence[float]) -> list[float]:
    """Ratios of samples taken side by side (i-th with i-th), so machine noise
    that hits both at once cancels."""
    return [n / d for n, d in zip(numer, denom, strict=False) if d > 0]


def ratio_of_medians(numer: Sequence[float], denom: Sequence[float]) -> float:
    if not numer or not denom:
        return math.nan
    d = statistics.median(denom)
    return float(statistics.median(numer) / d) if d else math.nan


@dataclass(frozen=True)
class Target:
    """One target of the issue: `measured <op> limit`."""

    name: str
    limit: float
    op: str = "<="  # "<=" or ">=" or "=="
    unit: str = ""

    def check(self, measured: float | None) -> bool:
        if measured is None or (isinstance(measured, float) and math.isnan(measured)):
            return False
        ops: dict[str, Callable[[float, float], bool]] = {
            "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "==": lambda a, b: a == b,
        }
        return ops[self.op](measured, self.limit)

    def verdict(self, measured: float | None) -> dict[str, Any]:
        return {"target": f"{self.name} {self.op} {fmt(self.limit)}{self.unit}",
                "measured": measured, "pass": self.check(measured)}


def fmt(value: float | int | None, digits: int = 3) -> str:
    """Short human number: 0.0123 -> '0.0123', 1234.5 -> '1234', NaN -> 'n/a'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1):
        return f"{int(value)}" if abs(value) < 1e15 else f"{value:.3g}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def fmt_seconds(value: float | None) -> str:
    """Seconds as ms below one second: 0.0412 -> '41.2 ms', 1.5 -> '1.50 s'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if abs(value) < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def fmt_spread(summary: dict[str, Any], seconds: bool = True) -> str:
    """'41.2 ms (p10 39.0 ms .. p90 45.1 ms, n=9)'."""
    f = fmt_seconds if seconds else fmt
    if not summary or not summary.get("n"):
        return "n/a"
    if summary["n"] == 1:
        return f"{f(summary['median'])} (n=1)"
    return f"{f(summary['median'])} (p10 {f(summary['p10'])} .. p90 {f(summary['p90'])}, " \
           f"n={summary['n']})"
