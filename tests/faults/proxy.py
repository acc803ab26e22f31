"""A small loopback TCP proxy in front of sshd, for the network faults.

One proxy per worker, so a fault hits that host only. It can

- `partition()` / `heal()`: no byte moves either way and new connections wait
  unconnected, as when a cable is pulled. Nothing is dropped: TCP would
  retransmit across a short outage, so bytes read before the partition are
  held and delivered after `heal()`, and ssh connections survive it as they
  would a real one;
- `reset()`: every open connection is reset (RST both ways) at once;
- `reset_after(n)`: the same, once `n` more bytes have gone client -> server
  (an upload, e.g. a pushed pack, is cut off after it was sent).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class _Conn:
    client: socket.socket
    upstream: socket.socket | None = None
    closed: bool = False
    halves: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _rst(sock: socket.socket | None) -> None:
    """Close with SO_LINGER 0: the peer sees a connection reset, not an EOF.
    SHUT_RD first wakes our own pump blocked in recv() on it (sending nothing),
    so the last reference goes and the RST leaves at once."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


class Proxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._reset_budget: int | None = None
        self._stopped = False
        self.accepted = 0
        self.resets = 0
        self.bytes_up = 0
        self.bytes_down = 0
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    # -------------------------------------------------------------- faults

    @property
    def partitioned(self) -> bool:
        return not self._flowing.is_set()

    def partition(self) -> None:
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def reset(self) -> int:
        """Reset every open connection; returns how many."""
        with self._lock:
            conns, self._conns = list(self._conns), set()
            self._reset_budget = None
        for conn in conns:
            self._close(conn, rst=True)
        self.resets += len(conns)
        return len(conns)

    def reset_after(self, nbytes: int) -> None:
        """Reset every connection once `nbytes` more have gone client -> server."""
        with self._lock:
            self._reset_budget = nbytes

    @property
    def armed(self) -> bool:
        return self._reset_budget is not None

    def close(self) -> None:
        self._stopped = True
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        self.reset()

    # ------------------------------------------------------------ plumbing

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            conn = _Conn(client)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._connect, args=(conn,), daemon=True).start()

    def _connect(self, conn: _Conn) -> None:
        self._flowing.wait()  # during a partition a new connection gets nowhere
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            self._close(conn, rst=True)
            return
        with conn.lock:
            if conn.closed:
                _rst(upstream)
                return
            conn.upstream = upstream
        for src, dst, up in ((conn.client, upstream, True), (upstream, conn.client, False)):
            threading.Thread(target=self._pump, args=(conn, src, dst, up), daemon=True).start()

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if conn.closed:
                    return
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    break
                self._flowing.wait()  # held, not dropped, while partitioned
                if conn.closed:
                    return
                dst.sendall(data)
                if up:
                    self.bytes_up += len(data)
                    if self._spend(len(data)):
                        self.reset()
                        return
                else:
                    self.bytes_down += len(data)
        except OSError:
            self._close(conn, rst=True)
            return
        with conn.lock:
            conn.halves += 1
            done = conn.halves == 2
        if done:
            self._close(conn, rst=False)

    def _spend(self, n: int) -> bool:
        with self._lock:
            if self._reset_budget is None:
                return False
            self._reset_budget -= n
            return self._reset_budget <= 0

    def _close(self, conn: _Conn, rst: bool) -> None:
        with conn.lock:
            if conn.closed:
                return
            conn.closed = True
        with self._lock:
            self._conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if rst:
                _rst(sock)
            elif sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
