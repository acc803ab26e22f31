"""Example trainers that train real models on data they generate: the template
ledger's jobs, and a pattern for bringing your own (docs/trainers.md).

Each module runs as `python -m worker.examples.<model>` and exposes
`build_parser()`; importing them loads neither torch, xgboost nor numpy.
"""

from __future__ import annotations

import argparse
import importlib

TRAINERS = ("gbt", "mlp", "cnn", "gru", "lstm", "transformer")


def build_parser(model: str) -> argparse.ArgumentParser:
    """The hyper-flag parser of one example trainer, by model name."""
    if model not in TRAINERS:
        raise KeyError(f"no example trainer {model!r}; have {', '.join(TRAINERS)}")
    return importlib.import_module(f"worker.examples.{model}").build_parser()
