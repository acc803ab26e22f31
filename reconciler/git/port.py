"""The ledger port: what the worker and reconciler loops call on a ledger.

`reconciler.git.ledger.Ledger` implements it over git; `reconciler.git.memory`
implements it in memory for loop tests with fake time. The loops are typed
against this protocol, never against either implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from reconciler.git.push import Proposal, WriteOutcome
    from reconciler.git.snapshot import HeartbeatRecord, Snapshot
    from reconciler.protocol.schema import Heartbeat


class LedgerPort(Protocol):
    identity: str
    url: str
    push_timeout_s: float
    clock: Callable[[], float]  # the writer's wall clock (commit and beat times)

    def fetch(self, *, heartbeats: bool = False, timeout: float | None = None) -> str | None:
        """Read main (and every heartbeat) from the ledger; the tip, None if no main."""
        ...

    def snapshot(self, revision: str | None = None) -> Snapshot:
        ...

    def write(self, build: Callable[[Snapshot], Proposal | None], *, max_tries: int = 50,
              deadline_s: float = 120.0,
              sleep: Callable[[float], None] = ...) -> WriteOutcome:
        """Compare-and-swap: build on the tip read, push; rebuild after a lost race."""
        ...

    def push_heartbeat(self, beat: Heartbeat) -> str:
        ...

    def heartbeats(self) -> dict[str, HeartbeatRecord]:
        ...

    def last_commit_touching(self, path: str, rev: str) -> str | None:
        ...

    def manifest_history(self, rev: str, limit: int = 50) -> Iterator[tuple[str, bytes]]:
        """(commit, manifest.toml bytes) of the commits that changed it, newest first."""
        ...

    def gc(self) -> None:
        """Housekeeping of the local cache (loose objects of amended beats)."""
        ...

    def repair_cache(self) -> str | None:
        """After a write failed that the ledger alone does not explain: check the
        local cache and, when it is damaged, replace it; what was wrong, or None
        when the cache is sound (the failure is then the ledger's or the network's)."""
        ...

    def close(self) -> None:
        ...
