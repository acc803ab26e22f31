"""The fault matrix's profiles, seeds and fixtures.

- `make test` runs the short profile: every row once, with seed 1 (or the seed
  given with `--fault-seed`), a few jobs each.
- `make soak` (`--soak-minutes=N`) runs only `test_soak`: the rows in turn,
  each with a fresh random seed and the full-size fixture (20 jobs of 1-3 s),
  until N minutes have passed. Every failure prints its row and seed; replay one
  with `pytest tests/faults -k <row> --fault-seed=<seed>`.
- Either way, the invariant report (what check C counted per row) is printed
  at the end of the run.

The ledger is reached over real sshd on loopback when tests/ssh/conftest.py's
fixture can start it, over local paths otherwise (rows that need the network
then skip, saying so).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.check import REPORTS
from faults.harness import SHORT, SOAK, FaultRun, soak_minutes

_spec = importlib.util.spec_from_file_location(
    "trainledger_ssh_fixture", Path(__file__).resolve().parent.parent / "ssh" / "conftest.py")
assert _spec and _spec.loader
_ssh = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(_ssh, "sshd"):
    _spec.loader.exec_module(_ssh)
sshd = _ssh.sshd  # the same session fixture as tests/ssh uses

FAULTS_DIR = Path(__file__).resolve().parent
DEFAULT_SEED = 1


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("faults", "fault matrix (tests/faults)")
    group.addoption("--soak-minutes", type=float, default=0.0,
                    help="run only the soak loop: rows with random seeds for N minutes")
    group.addoption("--fault-seed", type=int, default=None,
                    help="replay the fault rows with this seed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak mode runs the soak loop alone; otherwise the loop is not collected."""
    soak = soak_minutes(config) > 0
    keep, drop = [], []
    for item in items:
        in_faults = FAULTS_DIR in Path(str(item.path)).resolve().parents
        is_loop = item.name == "test_soak"
        if in_faults and (is_loop != soak):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed row carries the tails of its daemons' logs."""
    report = yield
    run = getattr(item, "funcargs", {}).get("fault")
    if report.failed and isinstance(run, FaultRun):
        for rig in run.rigs:
            for log in sorted([*rig.root.glob("reconciler-*.log"),
                               *rig.root.glob("w-*/worker.log")]):
                lines = log.read_text(errors="replace").splitlines()[-40:]
                report.sections.append((f"log {log.relative_to(run.root)}", "\n".join(lines)))
    return report


@pytest.fixture(scope="session")
def ssh_server(request: pytest.FixtureRequest):
    """sshd when it can run here, else None (local path rows)."""
    try:
        return request.getfixturevalue("sshd")
    except pytest.skip.Exception as exc:
        print(f"fault rows run over local paths: {exc}")
        return None


@pytest.fixture
def fault(request: pytest.FixtureRequest, tmp_path: Path, ssh_server) -> Iterator[FaultRun]:
    seed = request.config.getoption("--fault-seed", default=None)
    seed = DEFAULT_SEED if seed is None else seed
    row = request.node.originalname.removeprefix("test_")
    run = FaultRun(row, seed, SHORT, tmp_path, ssh_server)
    print(f"fault row {row}, seed {seed}, time scale {run.scale} (replay: pytest tests/faults "
          f"-k {row} --fault-seed={seed})")
    try:
        yield run
    finally:
        run.close()


@pytest.fixture
def soak_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             ssh_server):
    """A factory of FaultRuns with the soak profile, for the soak loop."""
    def make(row: str, seed: int) -> FaultRun:
        return FaultRun(row, seed, SOAK, tmp_path_factory.mktemp(f"soak-{row}"), ssh_server)
    return make


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not REPORTS:
        return
    tr = terminalreporter
    tr.section("fault matrix: invariant report (check C)")
    tr.write_line(f"{'row':<28}{'seed':>11} {'jobs':>4} {'commits':>7} {'claims':>6} "
                  f"{'done':>5} {'sweeps':>6} {'bundles':>7} {'fsck':>5} {'scale':>5}  statuses")
    for r in REPORTS:
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))
        tr.write_line(f"{r.row:<28}{r.seed:>11} {r.jobs:>4} {r.commits:>7} {r.claims:>6} "
                      f"{r.completions:>5} {r.sweeps:>6} {r.bundles:>7} {r.fsck_findings:>5} "
                      f"{r.scale:>5.1f}  {statuses}")
        for note in r.notes:
            tr.write_line(f"{'':<28}note: {note}")
    tr.write_line("scale: the fleet's times (heartbeat_s 0.3, stale_after_s 2) were multiplied "
                  "by it for a loaded machine")
    total = len(REPORTS)
    tr.write_line(f"{total} check C runs passed: 0 double completions, 0 skipped or reused "
                  "attempts, 0 transitions by a non-holder, every bundle re-hashed, git fsck "
                  "clean, no locks or temp files left")
