"""Checkpoint and resume for the torch example trainers: the pattern any
trainer can follow (docs/trainers.md).

After every epoch the trainer writes everything the next epoch depends on
(model, optimiser, the epoch count and every RNG state) to
`$TRAINLEDGER_CHECKPOINT_DIR/checkpoint.pt`, atomically: a temp file renamed
over the old one, so the worker, which bundles the directory while the trainer
runs, only ever sees a whole checkpoint. `checkpoint.json` beside it says which
epoch it holds, for people and tests. When the worker starts an attempt from a
saved checkpoint it unpacks it there first and sets `TRAINLEDGER_RESUMED_FROM`;
the trainer then continues after the saved epoch, and a deterministic trainer
ends with the same bytes as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
SUMMARY = "checkpoint.json"


def checkpoint_dir() -> Path | None:
    """The worker's checkpoint directory, or None when run by hand without one."""
    value = os.environ.get("TRAINLEDGER_CHECKPOINT_DIR", "")
    return Path(value) if value and Path(value).is_dir() else None


def save_checkpoint(directory: Path | None, state: dict[str, Any]) -> None:
    """Write `state` (tensors, dicts, numbers) atomically; `state["epoch"]` is the
    number of epochs done."""
    if directory is None:
        return
    tmp = directory / f".{CHECKPOINT}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, directory / CHECKPOINT)
    summary = directory / f".{SUMMARY}.tmp"
    summary.write_text(json.dumps({"epoch": state["epoch"]}) + "\n")
    os.replace(summary, directory / SUMMARY)


def load_checkpoint(directory: Path | None) -> dict[str, Any] | None:
    """The saved state, or None for a fresh start. `weights_only` loads tensors
    and plain containers only: a checkpoint is data, never code."""
    if directory is None or not (directory / CHECKPOINT).is_file():
        return None
    return torch.load(directory / CHECKPOINT, map_location="cpu", weights_only=True)


def training_state(epoch: int, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                   shuffle: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimiser": optimiser.state_dict(),
        "shuffle": shuffle.get_state(),
        "torch_rng": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def resume(directory: Path | None, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
           shuffle: torch.Generator, epochs: int) -> int:
    """Restore a saved state into the live objects; returns the first epoch to run
    (0 for a fresh start)."""
    saved = load_checkpoint(directory)
    if saved is None:
        return 0
    model.load_state_dict(saved["model"])
    optimiser.load_state_dict(saved["optimiser"])
    shuffle.set_state(saved["shuffle"])
    torch.set_rng_state(saved["torch_rng"])
    if "cuda_rng" in saved and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    epoch = min(int(saved["epoch"]), epochs)
    attempt = os.environ.get("TRAINLEDGER_RESUMED_FROM", "?")
    print(f"resuming from epoch {epoch} of {epochs} (checkpoint saved by attempt {attempt})",
          flush=True)
    return epoch
