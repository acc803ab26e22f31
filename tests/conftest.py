"""Shared test setup: git isolated from the developer's config, and the gpu marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if any(item.get_closest_marker("gpu") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA device; none is visible to torch here")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_git(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the developer's git config, hooks or identity."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_AUTHOR_NAME", "operator")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "operator@test")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "operator")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "operator@test")
    for key in ("GIT_DIR", "GIT_WORK_TREE", "TRAINLEDGER_LEDGER", "TRAINLEDGER_IDENTITY",
                "GIT_SSH_COMMAND"):
        monkeypatch.delenv(key, raising=False)
    return home


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_report_header(config: pytest.Config) -> str:
    return f"trainledger tests; cuda={'yes' if _cuda_available() else 'no'}; cpus={os.cpu_count()}"
