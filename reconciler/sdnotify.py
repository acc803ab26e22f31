"""systemd's notify protocol (Type=notify, WatchdogSec) in a few lines, no dependency.

Without $NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


def notify(state: str, env: dict[str, str] | None = None) -> bool:
    """Send e.g. "READY=1", "WATCHDOG=1" or "STOPPING=1"; True if sent."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(state.encode(), address)
        except OSError:
            return False
    return True


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """Half of WatchdogSec, as systemd recommends; None when no watchdog is set."""
    usec = (env if env is not None else os.environ).get("WATCHDOG_USEC")
    try:
        return int(usec) / 2e6 if usec else None
    except ValueError:
        return None
