"""Hyper values as a trainer sees them, to catch one job written twice.

A job's id hashes its hyper values as JSON, so 60, 60.0 and "60" give three
ids, three trainings of what is, to a trainer that parses `--epochs 60`, one
job. Normalising the values would change every existing job's id (and retrain
the fleet), so instead the manifest refuses two jobs whose identities differ
only in how a value is written.
"""

from __future__ import annotations

import math
from typing import Any

from reconciler.protocol.identity import JobSpec


def _value(v: Any) -> Any:
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int | float):
        return ("num", float(v))
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return ("str", v)
        return ("num", f) if math.isfinite(f) else ("str", v)
    if isinstance(v, list):
        return ("list", tuple(_value(x) for x in v))
    if isinstance(v, dict):
        return ("dict", tuple(sorted((k, _value(x)) for k, x in v.items())))
    return ("other", repr(v))


def value_key(spec: JobSpec) -> tuple:
    """The identity fields with each hyper value as its meaning, not its spelling."""
    return (spec.model, spec.mode, spec.split_recipe, spec.train_hosts, spec.seed,
            tuple(sorted((k, _value(v)) for k, v in spec.hyper.items())))
