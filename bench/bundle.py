"""P6: bundle + hash + store of model-like outputs vs raw zstd and raw sha256.

The product side runs in a fresh child process (`python -m bench.bundle pack
...`) so its peak RSS growth is its own: VmHWM is reset after imports and read
after the pack. The references run in-process over the same bytes, read the
same way, so the page cache treats both alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, peak_rss_bytes, reset_peak_rss, rss_bytes
from bench.rows import Config, RowResult
from bench.stats import Target, summarize

CHUNK = 1 << 20


def make_outputs(out: Path, total: int, seed: int = 3) -> int:
    """What a trainer leaves: a few float32 weight files (normal noise compresses
    about as badly as real weights), metrics JSON and a log. Written in chunks."""
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shards = 4
    written = 0
    for s in range(shards):
        size = total // shards
        with (out / f"model-{s:02d}.bin").open("wb") as f:
            left = size
            while left > 0:
                n = min(left, 16 << 20) // 4
                f.write(rng.standard_normal(n, dtype=np.float32).tobytes())
                left -= n * 4
                written += n * 4
    metrics = {"loss": [1.0 / (i + 1) for i in range(2000)], "epochs": 2000, "seed": seed}
    text = json.dumps(metrics, indent=2).encode()
    (out / "metrics.json").write_bytes(text)
    log = "".join(f"epoch {i} loss {1.0 / (i + 1):.6f}\n" for i in range(20000)).encode()
    (out / "train.log").write_bytes(log)
    return written + len(text) + len(log)


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file())


def raw_zstd(src: Path) -> float:
    """zstd level 3 with all cores over the same bytes, output discarded."""
    import zstandard

    start = time.perf_counter()
    cctx = zstandard.ZstdCompressor(level=3, threads=-1)
    comp = cctx.compressobj()
    for path in _files(src):
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                comp.compress(chunk)
    comp.flush()
    return time.perf_counter() - start


def raw_sha256(src: Path) -> float:
    start = time.perf_counter()
    h = hashlib.sha256()
    for path in _files(src):
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    h.hexdigest()
    return time.perf_counter() - start


def pack_child(src: Path, store_root: Path, tmp: Path) -> dict[str, Any]:
    """In the child: the product's pack_into into a LocalStore, timed, with peak RSS."""
    from reconciler.store.backends import pack_into
    from reconciler.store.local import LocalStore

    store = LocalStore(store_root)
    tmp.mkdir(parents=True, exist_ok=True)
    base = rss_bytes()
    reset_ok = reset_peak_rss()
    start = time.perf_counter()
    artifact = pack_into(store, src, tmp)
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    return {"seconds": seconds, "rss_before": base, "peak_rss": peak,
            "peak_growth": peak - base if reset_ok else None,
            "sha256": artifact.sha256, "size": artifact.size}


def run_pack(src: Path, store_root: Path, tmp: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.bundle", "pack", str(src),
                           str(store_root), str(tmp)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"pack child failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_p6(cfg: Config) -> RowResult:
    mib = cfg.p6_bytes >> 20
    row = RowResult("P6", f"bundle + hash + store of {mib} MiB of model-like outputs")
    with cfg.scratch.dir("p6") as root:
        src = root / "outputs"
        total = make_outputs(src, cfg.p6_bytes)
        raw_sha256(src)  # warm the page cache for everyone
        packs, zstds, shas, growth = [], [], [], []
        small = None
        for rep in range(cfg.p6_reps):
            store = root / f"store-{rep}"
            result = run_pack(src, store, root / f"tmp-{rep}")
            packs.append(result["seconds"])
            if result["peak_growth"] is not None:
                growth.append(result["peak_growth"])
            shutil.rmtree(store, ignore_errors=True)
            zstds.append(raw_zstd(src))
            shas.append(raw_sha256(src))
            bundle_size = result["size"]
        small_src = root / "small"
        make_outputs(small_src, cfg.p6_bytes // 8)
        small = run_pack(small_src, root / "store-small", root / "tmp-small")
    mb = total / 1e6
    tp = [mb / s for s in packs]
    tz = [mb / s for s in zstds]
    th = [mb / s for s in shas]
    slower = min(summarize(tz)["median"], summarize(th)["median"])
    ratio = summarize(tp)["median"] / slower
    peak = max(growth) if growth else None
    row.measured = {"bytes": total, "bundle_bytes": bundle_size, "pack_s": summarize(packs),
                    "pack_mb_s": summarize(tp), "peak_rss_growth_bytes": peak,
                    "peak_rss_growth_at_one_eighth_size": small.get("peak_growth")}
    row.reference = {"zstd3_mt_mb_s": summarize(tz), "sha256_mb_s": summarize(th),
                     "slower_of_two_mb_s": slower}
    row.targets = [
        Target("pack throughput / slower of (zstd-3 MT, sha256)", 0.8, ">=").verdict(ratio),
        Target("peak RSS growth", 64, "<=", " MiB").verdict(
            peak / 2**20 if peak is not None else None),
    ]
    row.notes.append("peak RSS growth at 1/8 of the size is shown too: a streaming bundle's "
                     "growth does not depend on the size")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bundle")
    parser.add_argument("what", choices=["pack"])
    parser.add_argument("src", type=Path)
    parser.add_argument("store", type=Path)
    parser.add_argument("tmp", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(pack_child(args.src, args.store, args.tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
