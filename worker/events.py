"""The worker's log line per event: `event=KIND key=value ...`, with the job
name and attempt, parsed by --log-format json and by the fault harness."""

from __future__ import annotations

import logging

log = logging.getLogger("trainledger.worker")


def event(kind: str, **fields: object) -> None:
    log.info("event=%s %s", kind, " ".join(f"{k}={v}" for k, v in fields.items()))
