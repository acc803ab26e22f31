"""lease.py: every deadline derived from [fleet], the schema's defaults the only ones."""

from __future__ import annotations

from reconciler.protocol.lease import Lease
from reconciler.protocol.schema import Fleet


def test_deadlines_derive_from_the_fleet() -> None:
    lease = Lease.of(Fleet(heartbeat_s=5, stale_after_s=60, max_attempts=2))
    assert lease.renew_deadline_s == 40
    assert lease.tick_s == 5 and lease.worker_tick_s(2.0) == 2.0
    assert Lease.of(Fleet(heartbeat_s=30, stale_after_s=60)).tick_s == 15  # stale / 4
    assert lease.beat_push_timeout_s == 20 and lease.write_push_timeout_s == 60
    assert lease.write_deadline_s == 40
    assert lease.lease_lost(40.0) is False and lease.lease_lost(40.001) is True
    assert lease.sweep_due(last_sign=100, started_at=50) == 160
    assert lease.sweep_due(last_sign=100, started_at=130) == 190  # a restart gives a full period
    assert Lease.of(Fleet(prefer_cuda_grace_s=30)).grace_due(10) == 40


def test_the_schema_defaults_are_the_only_defaults() -> None:
    fleet = Fleet()
    assert Lease.of(None) == Lease(fleet.heartbeat_s, fleet.stale_after_s, fleet.max_attempts,
                                   fleet.prefer_cuda_grace_s)


def test_push_timeouts_stay_within_their_bounds() -> None:
    tiny = Lease.of(Fleet(heartbeat_s=0.3, stale_after_s=2.5))
    assert tiny.beat_push_timeout_s == 2.0 and tiny.write_push_timeout_s == 5.0
    assert tiny.write_deadline_s == 30.0
    huge = Lease.of(Fleet(heartbeat_s=60, stale_after_s=7200))
    assert huge.beat_push_timeout_s == 60.0 and huge.write_push_timeout_s == 60.0
