"""The package layers, held by their imports (docs/architecture.md, "Layers").

Every import counts, the lazy ones inside functions too: a lazy import is still
a dependency, only a later one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY = {"hook", "shell", "precommit", "sdnotify"}  # deployed entry points, kept flat

# layer -> the layers it may import (its own always allowed)
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "git": {"protocol"},
    "store": {"protocol", "git"},
    "rules": {"protocol", "git", "store", "entry"},
    "entry": {"protocol", "git", "store", "rules"},
    "daemon": {"protocol", "git", "store", "rules", "entry"},
    "worker": {"protocol", "git", "store", "entry"},
    "worker-cli": {"protocol", "git", "store", "entry", "worker", "cli"},
    "cli": {"protocol", "git", "store", "rules", "entry", "daemon", "worker"},
}


def layer_of_file(path: Path) -> str:
    rel = path.relative_to(ROOT).parts
    if rel[0] == "worker":
        return "worker-cli" if rel[-1] == "cli.py" else "worker"
    if len(rel) == 2:
        return "entry" if path.stem in ENTRY or path.stem == "__init__" else "flat"
    return rel[1]


def layer_of_module(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] == "worker":
        return "worker-cli" if parts[-1] == "cli" else "worker"
    if parts[0] != "reconciler" or len(parts) == 1:
        return None
    return "entry" if parts[1] in ENTRY else parts[1]


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "reconciler":  # from reconciler import protocol
                found += [(node.lineno, f"reconciler.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


SOURCES = sorted(p for d in ("reconciler", "worker") for p in (ROOT / d).rglob("*.py")
                 if "examples" not in p.parts and "_data" not in p.parts)


def test_every_module_sits_in_a_layer() -> None:
    flat = [p.relative_to(ROOT) for p in SOURCES if layer_of_file(p) == "flat"]
    assert not flat, f"modules outside the layers (move them into a sub-package): {flat}"
    unknown = {layer_of_file(p) for p in SOURCES} - set(ALLOWED)
    assert not unknown, f"sub-packages with no rule in ALLOWED: {unknown}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_respect_the_layers(path: Path) -> None:
    mine = layer_of_file(path)
    allowed = ALLOWED.get(mine, set()) | {mine}
    bad = [f"line {line}: {mod} ({layer_of_module(mod)})" for line, mod in imports(path)
           if (layer := layer_of_module(mod)) is not None and layer not in allowed]
    assert not bad, f"{path.relative_to(ROOT)} ({mine}) imports across its layer: {bad}"


def test_the_rules_catch_a_worker_importing_the_daemon() -> None:
    """The check itself can fail: a planted import is reported."""
    planted = ROOT / "worker" / "_planted_for_test.py"
    planted.write_text("from reconciler.daemon.plan import plan\n")
    try:
        with pytest.raises(AssertionError, match=r"worker/_planted_for_test\.py"):
            test_imports_respect_the_layers(planted)
    finally:
        planted.unlink()
