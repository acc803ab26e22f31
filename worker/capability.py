"""What this host can run: detected, or read from `--capability FILE`.

Detection never fails for want of a GPU: CUDA devices come from torch (only
if the `torch` distribution is installed, and then in a child process, so the
long-lived worker never holds torch's memory or a CUDA context that would eat
VRAM its trainers need, and a hung driver costs a timeout, not the worker),
else from `nvidia-smi`, else there are none.

Resources are what the worker may actually use: logical cores are the CPU
affinity set capped by a cgroup CPU quota, and RAM is capped by a cgroup
memory limit, so a worker in a container with 8 GiB does not claim a job that
needs 32 GiB and get OOM-killed (which fails the job at once).

Every parser here is a pure function of text, so tests feed it text.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from pydantic import ValidationError

from reconciler.protocol.errors import LedgerError
from reconciler.protocol.schema import Capability, CudaDevice

GIB = 1024**3
NVIDIA_SMI_ARGS = ("--query-gpu=index,name,memory.total,memory.free",
                   "--format=csv,noheader,nounits")
NVIDIA_SMI_TIMEOUT_S = 10.0
# `import torch` alone takes seconds on a slow disk; a Pi with a cold cache is slower.
TORCH_PROBE_TIMEOUT_S = 60.0
MAX_CAPABILITY_BYTES = 1 << 20
# cgroup "no limit" is 'max' (v2) or a number near 2**63 (v1): anything this big is none.
_NO_LIMIT = 1 << 60

# Run by the probe child: one JSON list of devices on stdout, or a non-zero exit.
TORCH_PROBE = """\
import json, torch
out = []
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append({"index": i, "name": torch.cuda.get_device_name(i),
                    "total": total, "free": free})
print(json.dumps(out))
"""


class CapabilityError(LedgerError):
    """The capability file is not valid."""


# ------------------------------------------------------------------ versions


def _version(dist: str) -> str | None:
    """Installed version from metadata: asking never imports the package."""
    try:
        return importlib.metadata.version(dist)[:64]
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------- CUDA


def _gib(n_bytes: float) -> float:
    return round(max(n_bytes, 0) / GIB, 2)


def parse_nvidia_smi(text: str) -> list[CudaDevice]:
    """Devices from `nvidia-smi` with NVIDIA_SMI_ARGS (memory in MiB).

    Memory reported as `[N/A]` counts as 0 (the device exists, but no free VRAM
    is proven); lines that are not devices (warnings, garbage) are skipped.
    """
    devices = []
    for line in text.splitlines():
        head, sep, tail = line.partition(",")
        fields = tail.rsplit(",", 2)
        if not sep or len(fields) != 3:
            continue
        name, total, free = (f.strip() for f in fields)
        try:
            index = int(head.strip())
            device = CudaDevice(index=index, name=name[:256],
                                vram_total_gib=round(_mib(total) / 1024, 2),
                                vram_free_gib=round(_mib(free) / 1024, 2))
        except (ValueError, ValidationError):
            continue
        devices.append(device)
    return devices


def _mib(text: str) -> float:
    if text.startswith("[") and text.endswith("]"):  # [N/A], [Not Supported]
        return 0.0
    value = float(text)
    if not value >= 0:  # negative or NaN: not a reading
        raise ValueError(text)
    return value


def visible_devices(devices: list[CudaDevice], env_value: str | None) -> list[CudaDevice]:
    """Apply CUDA_VISIBLE_DEVICES to nvidia-smi's list, as CUDA would: only the
    listed indices, renumbered 0.. in the listed order, stopping at the first
    invalid entry ('' or '-1' hides every device).

    nvidia-smi ignores the variable, torch does not, so without this a worker
    restricted to GPU 1 would advertise GPU 0 too. UUID entries cannot be
    mapped from this query, so such a value leaves the list as it is.
    """
    if env_value is None:
        return devices
    entries = [e.strip() for e in env_value.split(",")]
    if any(e and not e.lstrip("-").isdigit() for e in entries):
        return devices
    by_index = {d.index: d for d in devices}
    out: list[CudaDevice] = []
    seen: set[int] = set()
    for entry in entries:
        index = int(entry) if entry else -1
        if index not in by_index or index in seen:
            break
        seen.add(index)
        out.append(by_index[index].model_copy(update={"index": len(out)}))
    return out


def nvidia_smi_devices(exe: str | None = None,
                       timeout_s: float = NVIDIA_SMI_TIMEOUT_S) -> list[CudaDevice]:
    """What nvidia-smi lists; [] when it is missing, fails or hangs."""
    exe = exe or shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, *NVIDIA_SMI_ARGS], capture_output=True, text=True,
                              timeout=timeout_s, errors="replace", check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return visible_devices(parse_nvidia_smi(proc.stdout),
                           os.environ.get("CUDA_VISIBLE_DEVICES"))


def parse_torch_probe(text: str) -> list[CudaDevice] | None:
    """The probe's stdout (last line, JSON) as devices; None if it is not that."""
    lines = text.strip().splitlines()
    try:
        rows = json.loads(lines[-1]) if lines else None
        if not isinstance(rows, list):
            return None
        return [CudaDevice(index=r["index"], name=str(r["name"])[:256],
                           vram_total_gib=_gib(r["total"]), vram_free_gib=_gib(r["free"]))
                for r in rows]
    except (ValueError, TypeError, KeyError, ValidationError):
        return None


def torch_may_see_cuda(version: str, system: str) -> bool:
    """False for builds that cannot use CUDA (a `+cpu` wheel, any macOS build),
    which saves the seconds `import torch` costs on every worker start."""
    return system != "Darwin" and version.partition("+")[2] != "cpu"


def torch_devices(python: str | None = None,
                  timeout_s: float = TORCH_PROBE_TIMEOUT_S) -> list[CudaDevice] | None:
    """Devices torch can use, asked in a child process. None when torch is not
    installed or the probe failed; [] when torch sees no CUDA device."""
    version = _version("torch")
    if version is None:
        return None
    if not torch_may_see_cuda(version, platform.system()):
        return []
    python = python or sys.executable
    if not python:
        return None
    try:
        # -P: a stray torch.py in the working directory must not shadow torch.
        proc = subprocess.run([python, "-P", "-c", TORCH_PROBE], capture_output=True,
                              text=True, timeout=timeout_s, errors="replace", check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_torch_probe(proc.stdout) if proc.returncode == 0 else None


def cuda_devices() -> list[CudaDevice]:
    """torch's view when it sees CUDA; otherwise nvidia-smi's (a host may train
    with xgboost on a GPU that a CPU build of torch cannot see); otherwise none."""
    devices = torch_devices()
    return devices if devices else nvidia_smi_devices()


# -------------------------------------------------------------------- cgroups


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


# ------------------------------------------------------------------ detection


def _memory(limits: CgroupLimits) -> tuple[int, int]:
    """(total, available) bytes, capped by the cgroup's memory limit."""
    mem = psutil.virtual_memory()
    total, available = mem.total, mem.available
    if limits.memory_bytes is not None:
        total = min(total, limits.memory_bytes)
        if limits.memory_used_bytes is not None:
            available = min(available, limits.memory_bytes - limits.memory_used_bytes)
    return total, min(max(available, 0), total)


def refresh_capability(cap: Capability) -> Capability:
    """`cap` with available RAM and each device's free VRAM read again: cheap
    (/proc, cgroup files, one nvidia-smi call; never torch), so a worker asks
    before each claim decision and each heartbeat. A device nvidia-smi does not
    report keeps its last figure."""
    total, available = _memory(cgroup_limits())
    update: dict[str, Any] = {"ram_total_gib": _gib(total), "ram_available_gib": _gib(available)}
    if cap.cuda_devices:
        fresh = nvidia_smi_devices()
        update["cuda_devices"] = [_fresh_figure(d, fresh) for d in cap.cuda_devices]
    return cap.model_copy(update=update)


def _fresh_figure(device: CudaDevice, fresh: list[CudaDevice]) -> CudaDevice:
    """nvidia-smi numbers devices by PCI bus, torch (which detected them) may
    number them fastest first: match on the same index and name, else on a name
    and size only one device has; no match keeps the last figure."""
    same = [f for f in fresh if f.name == device.name
            and abs(f.vram_total_gib - device.vram_total_gib) < 0.5]
    match = next((f for f in same if f.index == device.index), None)
    if match is None and len(same) == 1:
        match = same[0]
    if match is None:
        return device
    return device.model_copy(update={"vram_free_gib": min(match.vram_free_gib,
                                                          device.vram_total_gib)})


def detect_capability() -> Capability:
    """This host as it is now. Never raises for a missing GPU, torch or cgroup."""
    limits = cgroup_limits()
    total, available = _memory(limits)
    devices = cuda_devices()
    physical = psutil.cpu_count(logical=False)
    return Capability(
        hostname=socket.gethostname()[:256],
        cpu_cores=usable_cores(limits),
        cpu_physical_cores=min(physical, 65_536) if physical else None,
        ram_total_gib=_gib(total),
        ram_available_gib=_gib(available),
        cuda_available=bool(devices),
        cuda_devices=devices,
        torch_version=_version("torch"),
        xgboost_version=_version("xgboost") or _version("xgboost-cpu"),
        os=platform.system()[:64],
        arch=platform.machine()[:64],
        trainledger_version=_version("trainledger") or "",
    )


# ---------------------------------------------------------------- file, JSON


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads keeps the last of two equal keys; a hand-edited file must not."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def load_capability(path: Path) -> Capability:
    """A capability file (`worker run --capability`). Every error names the file
    and, when there is one, the field (also kept on `.path` and `.field`)."""
    path = Path(path)

    def fail(message: str, field: str | None = None) -> CapabilityError:
        where = f"field {field!r}: " if field else ""
        return CapabilityError(f"{path}: {where}{message}", path=path, field=field)

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_CAPABILITY_BYTES:
        raise fail(f"file is {len(data)} bytes, over the {MAX_CAPABILITY_BYTES}-byte limit")
    try:
        raw = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 (invalid byte at offset {exc.start})") from None
    except _DuplicateKey as exc:
        raise fail("duplicate key", str(exc)) from None
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise fail("not JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise fail(f"expected a JSON object, got {type(raw).__name__}")
    try:
        return Capability.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        fields = [_dotted(e["loc"]) for e in errors]
        message = "\n".join(f"{path}: field {f!r}: {_reason(e)}"
                            for f, e in zip(fields, errors, strict=True))
        raise CapabilityError(message, path=path, field=fields[0], fields=fields) from None


def _reason(err: Mapping[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    value = err.get("input")
    msg = str(err["msg"])
    if isinstance(value, str | int | float | bool) and len(repr(value)) < 60:
        return f"{msg} (got {value!r})"
    return msg


def self_test(cap: Capability) -> list[str]:
    """Problems that must stop a worker from starting: a capability that
    contradicts itself would make every eligibility verdict wrong."""
    problems = []
    if cap.ram_total_gib <= 0:
        problems.append("ram_total_gib is 0: no RAM detected")
    if cap.ram_available_gib > cap.ram_total_gib:
        problems.append(f"ram_available_gib ({cap.ram_available_gib}) is more than "
                        f"ram_total_gib ({cap.ram_total_gib})")
    if cap.cuda_available and not cap.cuda_devices:
        problems.append("cuda_available is true but no CUDA device is listed")
    if not cap.cuda_available and cap.cuda_devices:
        problems.append("CUDA devices are listed but cuda_available is false")
    indices = [d.index for d in cap.cuda_devices]
    if len(set(indices)) != len(indices):
        problems.append(f"CUDA device indices repeat: {indices}")
    for d in cap.cuda_devices:
        if d.vram_free_gib > d.vram_total_gib:
            problems.append(f"cuda:{d.index} has more free VRAM ({d.vram_free_gib}) than "
                            f"total ({d.vram_total_gib})")
    return problems


def capability_json(cap: Capability) -> str:
    """Canonical JSON (sorted keys, 2-space indent, trailing newline), the
    format `worker capability --json` prints and `--capability` reads."""
    return json.dumps(cap.model_dump(mode="json"), sort_keys=True, indent=2) + "\n"
