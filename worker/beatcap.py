"""A heartbeat's size, bounded by construction.

The hook refuses a beat commit over 64 KiB, and a refused beat is a lost lease.
A trainer chooses its own output, so the beat must fit whatever it prints: each
job's `last_line` is cut by its JSON-encoded bytes (a non-ASCII character can
take 12 escaped bytes), the lines share one budget across slots, slots are
capped, and as a last resort lines and then the capability are left out. Every
held job is always listed: the reconciler reads the list as each job's sign of
life.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from reconciler.protocol.schema import Capability, Heartbeat, HeldJob

MAX_SLOTS = 256  # ~70 bytes per listed job without its line: 18 KiB at most
BEAT_BUDGET = 48 * 1024  # bytes of the message; the hook's limit is 64 KiB per commit
LINES_BUDGET = 16 * 1024  # bytes of last_line text, shared by the held jobs
LINE_MAX = 512  # JSON bytes of one job's line
TAIL_BUDGET = 16 * 1024  # JSON bytes of the jobs' latest lines (`reconciler logs -f`), shared


def clip_line(line: str | None, limit: int) -> str | None:
    """`line` cut so that its JSON encoding fits `limit` bytes."""
    if line is None or limit <= 2:
        return None
    if len(json.dumps(line)) <= limit:
        return line
    lo, hi = 0, min(len(line), limit)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(json.dumps(line[:mid])) <= limit else (lo, mid - 1)
    return line[:lo]


def clip_tail(lines: Sequence[str] | None, limit: int) -> list[str] | None:
    """The newest of `lines` whose JSON encodings fit `limit` bytes together,
    each cut to LINE_MAX; oldest first."""
    out: list[str] = []
    for line in reversed(lines or []):
        clipped = clip_line(line, min(LINE_MAX, limit))
        if clipped is None:
            break
        limit -= len(json.dumps(clipped)) + 2
        out.append(clipped)
    return out[::-1] or None


def beat_size(beat: Heartbeat) -> int:
    return len(json.dumps(beat.model_dump(mode="json", exclude_none=True), sort_keys=True))


def fit_beat(worker: str, seq: int, sent_at: float, slots: int,
             capability: Capability | None, held: Sequence[Any]) -> Heartbeat:
    """The beat for `held` (objects with job_id, attempt, progress, last_line and
    optionally tail and device), within BEAT_BUDGET whatever the trainers
    printed: the tails go first, then the lines, then the capability."""
    per_line = min(LINE_MAX, LINES_BUDGET // max(1, len(held)))
    per_tail = TAIL_BUDGET // max(1, len(held))

    def build(lines: bool, tails: bool, cap: Capability | None) -> Heartbeat:
        return Heartbeat(
            worker=worker, seq=seq, sent_at=sent_at, slots=min(slots, MAX_SLOTS),
            capability=cap,
            jobs=[HeldJob(job_id=h.job_id, attempt=h.attempt, progress=h.progress,
                          last_line=clip_line(h.last_line, per_line) if lines else None,
                          tail=clip_tail(getattr(h, "tail", None), per_tail) if tails else None,
                          device=getattr(h, "device", None))
                  for h in held])

    beat = build(True, True, capability)
    for lines, tails, cap in ((True, False, capability), (False, False, capability),
                              (False, False, None)):
        if beat_size(beat) <= BEAT_BUDGET:
            break
        beat = build(lines, tails, cap)
    return beat
