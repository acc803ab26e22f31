"""On a CUDA host, detection reports every device torch sees (skipped without CUDA)."""

from __future__ import annotations

import pytest

from worker.capability import detect_capability


@pytest.mark.gpu
def test_detects_every_cuda_device() -> None:
    import torch

    cap = detect_capability()
    assert cap.cuda_available
    assert [d.index for d in cap.cuda_devices] == list(range(torch.cuda.device_count()))
    for device in cap.cuda_devices:
        assert device.name == torch.cuda.get_device_name(device.index)
        assert 0 < device.vram_free_gib <= device.vram_total_gib


def test_detection_on_this_host_is_a_valid_capability() -> None:
    cap = detect_capability()
    assert cap.cpu_cores >= 1 and cap.ram_total_gib > 0
    assert cap.cuda_available == bool(cap.cuda_devices)
