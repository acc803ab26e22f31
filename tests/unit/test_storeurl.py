"""One `[fleet] store` for every host: resolved against the ledger's URL."""

from __future__ import annotations

import pytest

from reconciler.git.sshconn import is_ssh
from reconciler.protocol.errors import StoreError
from reconciler.protocol.storeurl import from_manifest, normalize, resolve

PI = "ssh://trainledger@pi/srv/trainledger/ledger.git"


@pytest.mark.parametrize(("store", "ledger", "want"), [
    # a relative store is beside the ledger: local on the Pi, over ssh elsewhere
    ("store", "/srv/trainledger/ledger.git", "/srv/trainledger/store"),
    ("store", "/srv/trainledger/ledger.git/", "/srv/trainledger/store"),
    ("store", PI, "ssh://trainledger@pi/srv/trainledger/store"),
    ("../data/store", PI, "ssh://trainledger@pi/srv/data/store"),
    ("store", "ssh://pi:2222/srv/l.git", "ssh://pi:2222/srv/store"),
    ("store", "trainledger@pi:/srv/trainledger/ledger.git",
     "ssh://trainledger@pi/srv/trainledger/store"),
    ("store", "pi:ledger.git", "ssh://pi/~/store"),
    ("store", "file:///srv/l.git", "/srv/store"),
    # an absolute path is a path on the ledger's host
    ("/data/store", "/srv/l.git", "/data/store"),
    ("/data/store", PI, "ssh://trainledger@pi/data/store"),
    # an explicit URL is taken as it is; scp-style is ssh
    ("ssh://nas/store", PI, "ssh://nas/store"),
    ("nas:/store", "/srv/l.git", "ssh://nas/store"),
])
def test_manifest_store_is_on_the_ledgers_host(store: str, ledger: str, want: str) -> None:
    assert from_manifest(store, ledger) == want


def test_a_relative_local_ledger_gives_an_absolute_store(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert from_manifest("store", "demo/ledger.git") == str(tmp_path / "demo" / "store")


def test_a_flag_keeps_its_plain_meaning_but_scp_is_ssh() -> None:
    assert resolve("./here", "store", PI) == "./here"
    assert resolve("nohost.invalid:/srv/store", None, "/l.git") == "ssh://nohost.invalid/srv/store"
    assert resolve(None, "store", PI) == "ssh://trainledger@pi/srv/trainledger/store"
    with pytest.raises(StoreError, match="no store"):
        resolve(None, None, PI)
    with pytest.raises(StoreError, match="host:/path"):
        normalize("nohost.invalid:")


@pytest.mark.parametrize(("url", "ssh"), [
    ("pi:/srv/l.git", True), ("a@pi:l.git", True), ("ssh://pi/x", True),
    ("/srv/l.git", False), ("./a:b", False), ("C:\\ledger", False), ("rel/a:b", False),
    ("file:///x", False),
])
def test_is_ssh_follows_gits_scp_rule(url: str, ssh: bool) -> None:
    assert is_ssh(url) is ssh
