"""On a CUDA host, detection reports what torch sees (the conftest skips these,
with a reason, where torch sees no CUDA device)."""

from __future__ import annotations

import os
import shutil

import pytest

from reconciler.protocol.eligibility import choose_device
from reconciler.protocol.identity import JobSpec
from worker.capability import detect_capability, self_test
from worker.cuda import nvidia_smi_devices, torch_devices

pytestmark = pytest.mark.gpu


def test_detects_every_cuda_device_torch_sees() -> None:
    import torch

    cap = detect_capability()
    assert cap.cuda_available and self_test(cap) == []
    assert [d.index for d in cap.cuda_devices] == list(range(torch.cuda.device_count()))
    for device in cap.cuda_devices:
        props = torch.cuda.get_device_properties(device.index)
        assert device.name == torch.cuda.get_device_name(device.index)
        assert abs(device.vram_total_gib - props.total_memory / 1024**3) < 0.01
        assert 0 <= device.vram_free_gib <= device.vram_total_gib


def test_the_torch_probe_is_what_detection_used() -> None:
    devices = torch_devices()
    assert devices
    assert [(d.index, d.name) for d in devices] == [
        (d.index, d.name) for d in detect_capability().cuda_devices]


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="nvidia-smi is not on PATH")
def test_nvidia_smi_agrees_on_the_devices_torch_sees() -> None:
    """Only the count and sizes: nvidia-smi orders by PCI bus, CUDA fastest first."""
    smi = nvidia_smi_devices()
    cap = detect_capability()
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").startswith(("GPU-", "MIG-")):
        pytest.skip("CUDA_VISIBLE_DEVICES holds UUIDs, which the nvidia-smi path cannot map")
    assert len(smi) == len(cap.cuda_devices)
    assert sorted(round(d.vram_total_gib) for d in smi) == sorted(
        round(d.vram_total_gib) for d in cap.cuda_devices)


def test_the_chosen_device_takes_a_tensor() -> None:
    import torch

    spec = JobSpec(
        job_id="0" * 16, index=0, name="g", model="m", mode=None, priority=0,
        require_cuda=True, prefer_cuda=False, min_vram_gib=0.0, min_ram_gib=0.0,
        min_cores=0, allowed_hosts=None, denied_hosts=(), hyper={}, split_recipe=None,
        train_hosts=None, seed=0, n_resamples=None, cancel=False, command=("true",),
        workdir=None, timeout_s=None)
    index = choose_device(spec, detect_capability())
    assert index is not None
    assert torch.ones(4, device=f"cuda:{index}").sum().item() == 4


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="nvidia-smi is not on PATH")
def test_a_refresh_sees_vram_a_process_took() -> None:
    """Fresh capability (worker/resources.py): after this process allocates 2 GiB
    on device 0, a refresh reports at least ~2 GiB less free there."""
    import torch

    from worker.capability import refresh_capability

    cap = detect_capability()
    before = refresh_capability(cap).cuda_devices[0].vram_free_gib
    block = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda:0")
    torch.cuda.synchronize()
    after = refresh_capability(cap).cuda_devices[0].vram_free_gib
    del block
    assert before - after > 1.5
