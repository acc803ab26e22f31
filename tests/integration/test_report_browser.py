"""`reconciler report` rendered by a real browser: headless Chromium (Debian's
`chromium`, installed by the fixture when missing, as tests/ssh installs
openssh-server) loads index.html from disk with networking off, the DOM names
every host that ran a job, and the screenshot (kept in the test's directory)
shows a row of coloured bars for each host."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from ledgerkit import make_ledger
from reconciler.cli.main import main
from workerkit import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.browser]
FAST = {"heartbeat_s": 0.3, "stale_after_s": 2.5, "max_attempts": 3, "prefer_cuda_grace_s": 1}
INSTALL_TIMEOUT_S = 900
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--force-color-profile=srgb", "--hide-scrollbars"]
GREEN, RED = (0x2E, 0x9D, 0x4F), (0xD6, 0x45, 0x45)  # report.COLOURS completed, failed


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _install_chromium() -> str | None:
    """Install Debian's chromium; return why it is impossible, or None."""
    if shutil.which("apt-get") is None:
        return "chromium is missing and there is no apt-get to install it"
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and shutil.which("sudo") is None:
        return "chromium is missing; installing it needs root (or sudo)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        proc = subprocess.run([*prefix, *argv], capture_output=True, text=True, env=env,
                              timeout=INSTALL_TIMEOUT_S)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
            return f"`{' '.join(argv)}` failed: {' '.join(tail)}"
    return None if _chromium() else "chromium installed but not on PATH"


@pytest.fixture(scope="session")
def chromium() -> str:
    if _chromium() is None:
        why = _install_chromium()
        if why:
            pytest.skip(why)
    found = _chromium()
    assert found is not None
    return found


def browse(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1)
                                                           * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc
                                      else c)) & 0xFF
        rows.append(bytes(line[k] for j in range(0, stride, channels) for k in (j, j + 1, j + 2)))
        prev = line
    return width, height, rows


def bands_of(rows: list[bytes], colour: tuple[int, int, int]) -> list[range]:
    """Runs of screen lines that hold at least 20 pixels of `colour`."""
    want = bytes(colour)
    hit = [sum(1 for x in range(0, len(r), 3) if r[x:x + 3] == want) >= 20 for r in rows]
    bands, start = [], None
    for y, on in enumerate([*hit, False]):
        if on and start is None:
            start = y
        elif not on and start is not None:
            bands.append(range(start, y))
            start = None
    return bands


def test_report_of_a_ledger_two_workers_trained_renders_in_chromium(
        tmp_path: Path, chromium: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    jobs = [{"name": f"lr-{i}", "seed": i, "allowed_hosts": ["w1" if i < 3 else "w2"],
             "hyper": {"seconds": 0.3}} for i in range(6)]
    # the failure trains a while, so its bar stays visible however long a loaded
    # machine stretches the timeline (a 0.1 s bar shrank to its 3 px minimum)
    jobs.append({"name": "oom", "seed": 7, "allowed_hosts": ["w1"],
                 "hyper": {"seconds": 1.5, "exit_code": 3}})
    led = make_ledger(tmp_path, jobs=jobs, fleet=FAST)
    fleet = Fleet(led.url, tmp_path, led.store)
    workers = [fleet.start_worker(n, "--exit-when-idle") for n in ("w1", "w2")]
    for w in workers:
        assert w.wait(120) == 0, w.text()
    out = tmp_path / "www"
    assert main(["report", "--ledger", led.url, "--out", str(out)]) == 0
    index = out / "index.html"
    html = index.read_text()
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html and "<script" not in html and "<link" not in html

    dom = browse(chromium, tmp_path / "profile", "--dump-dom", index.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    for host in ("w1", "w2"):
        assert f'data-host="{host}"' in dom.stdout and f">{host}</text>" in dom.stdout
    assert dom.stdout.count('class="bar completed"') == 6
    assert dom.stdout.count('class="bar failed"') == 1
    assert "lr-0 (attempt 1) on w1: completed" in dom.stdout  # hover text
    assert "trainer exit 3: quick: failing on purpose with 3" in dom.stdout

    shot = tmp_path / "report.png"  # kept with the test's output
    proc = browse(chromium, tmp_path / "profile", "--window-size=1200,700",
                  f"--screenshot={shot}", index.as_uri())
    assert proc.returncode == 0 and shot.exists(), proc.stderr[-2000:]
    _, _, rows = png_pixels(shot)
    green, red = bands_of(rows, GREEN), bands_of(rows, RED)
    # the legend swatches and the count boxes are coloured too: bars are the bands
    # at least 15 px tall; w1's row holds green and red bars, w2's green only
    bars = [b for b in green if len(b) >= 15]
    assert len(bars) == 2, f"green bands {green}"
    red_lines = [y for y, r in enumerate(rows)
                 if sum(1 for x in range(0, len(r), 3) if r[x:x + 3] == bytes(RED)) >= 5]
    assert any(y in bars[0] for y in red_lines), f"red bands {red}, bars {bars}"
    print(f"screenshot: {shot}", file=sys.stderr)
