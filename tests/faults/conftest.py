"""Fault-injection suite: a short profile runs in `make test`; `make soak` loops it.

`--soak-minutes=N` repeats every row with fresh random seeds until N minutes have
passed; `--fault-seed=S` replays one seed. A failing row prints its seed.
"""

from __future__ import annotations

import random
import time

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-minutes", type=float, default=0.0,
                     help="repeat the fault rows with random seeds for this many minutes")
    parser.addoption("--fault-seed", type=int, default=None, help="replay one seed")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "fault_seed" not in metafunc.fixturenames:
        return
    config = metafunc.config
    if config.getoption("--fault-seed") is not None:
        seeds = [config.getoption("--fault-seed")]
    elif config.getoption("--soak-minutes"):
        # enough seeds to fill the window; the deadline fixture skips the rest
        seeds = [random.randrange(1 << 30) for _ in range(200)]
    else:
        seeds = [1]
    metafunc.parametrize("fault_seed", seeds, ids=[f"seed{s}" for s in seeds])


_START = time.monotonic()


def pytest_runtest_teardown(item: pytest.Item) -> None:
    minutes = item.config.getoption("--soak-minutes")
    if minutes and time.monotonic() - _START > minutes * 60:
        item.session.shouldstop = f"soak window of {minutes:g} min is over"


@pytest.fixture
def fault_rng(fault_seed: int) -> random.Random:
    print(f"fault seed {fault_seed} (replay with --fault-seed={fault_seed})")
    return random.Random(fault_seed)
