"""The cores and RAM this process may actually use, for worker/capability.py:
the CPU affinity set capped by a cgroup CPU quota, and RAM capped by a cgroup
memory limit, so a worker in a container with 8 GiB does not claim a job that
needs 32 GiB and get OOM-killed (which fails the job at once).

Every reader takes its root paths as arguments, so tests feed it a tree.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# cgroup "no limit" is 'max' (v2) or a number near 2**63 (v1): anything this big is none.
_NO_LIMIT = 1 << 60


@dataclass(frozen=True)
class CgroupLimits:
    """What the cgroups this process is in allow; None means no limit found."""

    cpus: float | None = None
    memory_bytes: int | None = None
    memory_used_bytes: int | None = None  # working set: usage minus inactive page cache


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """`/proc/self/cgroup` as controller -> path; the v2 hierarchy is under ''."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                out[controller] = parts[2]
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _int(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 <= value < _NO_LIMIT else None


def _ancestors(root: Path, rel: str) -> list[Path]:
    """The cgroup's directory and its parents up to the mount, leaf first. In a
    container the path may name the host's hierarchy: then only the mount root."""
    leaf = root / rel.strip("/")
    if not leaf.is_dir():
        return [root] if root.is_dir() else []
    out = [leaf]
    while out[-1] != root:
        out.append(out[-1].parent)
    return out


def _inactive_file(stat: str | None, key: str) -> int:
    for line in (stat or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return _int(value) or 0
    return 0


def _min(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return min(present) if present else None


def cgroup_limits(root: Path = Path("/sys/fs/cgroup"),
                  proc_cgroup: Path = Path("/proc/self/cgroup")) -> CgroupLimits:
    """CPU quota and memory limit of this process's cgroups (v2, else v1),
    the tightest along the path, since a parent's limit binds its children."""
    paths = parse_proc_cgroup(_read(proc_cgroup) or "")
    if "" in paths and (root / "cgroup.controllers").exists():
        dirs = _ancestors(root, paths[""])
        cpus = _min([_v2_cpus(_read(d / "cpu.max")) for d in dirs])
        limit = _min([_int(_read(d / "memory.max")) for d in dirs])
        used = _int(_read(dirs[0] / "memory.current")) if dirs else None
        if used is not None:
            used -= _inactive_file(_read(dirs[0] / "memory.stat"), "inactive_file")
        return CgroupLimits(cpus, limit, used)
    cpu_root = next((root / n for n in ("cpu", "cpu,cpuacct") if (root / n).is_dir()), None)
    cpus = None
    if cpu_root is not None:
        cpus = _min([_v1_cpus(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
                     for d in _ancestors(cpu_root, paths.get("cpu", "/"))])
    mem = _ancestors(root / "memory", paths.get("memory", "/"))
    limit = _min([_int(_read(d / "memory.limit_in_bytes")) for d in mem])
    used = _int(_read(mem[0] / "memory.usage_in_bytes")) if mem else None
    if used is not None:
        used -= _inactive_file(_read(mem[0] / "memory.stat"), "total_inactive_file")
    return CgroupLimits(cpus, limit, used)


def _v2_cpus(text: str | None) -> float | None:
    quota, _, period = (text or "max").partition(" ")
    q, p = _int(quota), _int(period or "100000")
    return q / p if q and p else None


def _v1_cpus(quota: str | None, period: str | None) -> float | None:
    q, p = _int(quota), _int(period)  # a quota of -1 (none) reads as None
    return q / p if q and p else None


def usable_cores(limits: CgroupLimits) -> int:
    """Logical cores this process may run on: affinity, capped by the quota
    (rounded up: a 1.5-CPU quota still runs two threads)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    if limits.cpus is not None:
        cores = min(cores, math.ceil(limits.cpus))
    return max(1, min(cores, 65_536))


def usable_memory(limits: CgroupLimits) -> tuple[int, int]:
    """(total, available) bytes, capped by the cgroup's memory limit."""
    mem = psutil.virtual_memory()
    total, available = mem.total, mem.available
    if limits.memory_bytes is not None:
        total = min(total, limits.memory_bytes)
        if limits.memory_used_bytes is not None:
            available = min(available, limits.memory_bytes - limits.memory_used_bytes)
    return total, min(max(available, 0), total)
