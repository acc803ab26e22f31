"""The CUDA devices this host has, for worker/capability.py's detection and
refresh: kept apart because finding them means asking outside processes.

Devices come from torch (only if the `torch` distribution is installed, and
then in a child process, so the long-lived worker never holds torch's memory
or a CUDA context that would eat VRAM its trainers need, and a hung driver
costs a timeout, not the worker), else from `nvidia-smi`, else there are none.

Every parser here is a pure function of text, so tests feed it text.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys

from pydantic import ValidationError

from reconciler.protocol.schema import CudaDevice

GIB = 1024**3
NVIDIA_SMI_ARGS = ("--query-gpu=index,name,memory.total,memory.free",
                   "--format=csv,noheader,nounits")
NVIDIA_SMI_TIMEOUT_S = 10.0
# `import torch` alone takes seconds on a slow disk; a Pi with a cold cache is slower.
TORCH_PROBE_TIMEOUT_S = 60.0

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


def installed_version(dist: str) -> str | None:
    """Installed version from metadata: asking never imports the package."""
    try:
        return importlib.metadata.version(dist)[:64]
    except importlib.metadata.PackageNotFoundError:
        return None


def gib(n_bytes: float) -> float:
    return round(max(n_bytes, 0) / GIB, 2)


# ------------------------------------------------------------------ nvidia-smi


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


# ----------------------------------------------------------------------- torch


def parse_torch_probe(text: str) -> list[CudaDevice] | None:
    """The probe's stdout (last line, JSON) as devices; None if it is not that."""
    lines = text.strip().splitlines()
    try:
        rows = json.loads(lines[-1]) if lines else None
        if not isinstance(rows, list):
            return None
        return [CudaDevice(index=r["index"], name=str(r["name"])[:256],
                           vram_total_gib=gib(r["total"]), vram_free_gib=gib(r["free"]))
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
    version = installed_version("torch")
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
