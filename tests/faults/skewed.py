"""Run a Python program with a skewed clock: the clock-skew row's worker.

    python skewed.py OFFSET_S RATE -- python -m worker.cli run ...

Every clock the program reads runs RATE times as fast as the real one, and the
wall clock is OFFSET_S off as well: `time.time()` (heartbeats' `sent_at`,
commit dates, log stamps) and `time.monotonic()` (the worker's beat interval,
its self-fence deadline), and `time.sleep` and timed waits last 1/RATE of the
real time they ask for, as on a host whose clock runs fast.

Why not libfaketime: Debian 12's libfaketime 0.9.10 does not intercept the
`sem_clockwait(CLOCK_MONOTONIC)` that Python 3.11's `threading` waits use, so
under `faketime` any `Event.wait(timeout)` hangs (and with
FAKETIME_DONT_FAKE_MONOTONIC=1 `time.sleep` fails with EINVAL). Both were
measured; the row would test libfaketime, not the product.
"""

from __future__ import annotations

import runpy
import sys
import threading
import time


def install(offset_s: float, rate: float) -> None:
    real_time, real_mono, real_sleep = time.time, time.monotonic, time.sleep
    t0, m0 = real_time(), real_mono()

    def fake_time() -> float:
        return t0 + offset_s + (real_time() - t0) * rate

    def fake_mono() -> float:
        return m0 + (real_mono() - m0) * rate

    time.time = fake_time
    time.time_ns = lambda: int(fake_time() * 1e9)
    time.monotonic = fake_mono
    time.monotonic_ns = lambda: int(fake_mono() * 1e9)
    time.sleep = lambda s: real_sleep(s / rate)
    real_wait = threading.Condition.wait

    def wait(self: threading.Condition, timeout: float | None = None) -> bool:
        return real_wait(self, None if timeout is None else timeout / rate)

    threading.Condition.wait = wait  # type: ignore[method-assign]  # Event.wait uses it


def main() -> None:
    offset_s, rate = float(sys.argv[1]), float(sys.argv[2])
    command = sys.argv[sys.argv.index("--") + 1:]
    module = command[command.index("-m") + 1]
    install(offset_s, rate)
    sys.argv = [module, *command[command.index("-m") + 2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
