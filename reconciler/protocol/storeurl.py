"""Where the store is, from one setting that every host reads.

`[fleet] store` in the manifest is read on the Pi and on every worker, so it
names a place *on the ledger's host*: a relative path is taken from the
directory that holds the ledger (`store = "store"` next to `ledger.git`), an
absolute path is a path on that host. The Pi, whose ledger is a local path,
gets a local directory; a worker whose ledger is `ssh://trainledger@pi/...`
gets `ssh://trainledger@pi/<path>`, the same host and key as its git. A
`--store` flag is given on one host, so it keeps its plain meaning (a path is
relative to the working directory). An scp-style `host:path` is ssh, exactly
as git reads it: never a local directory called `host:`.
"""

from __future__ import annotations

import os
import posixpath
import re

from reconciler.protocol.errors import StoreError

# ssh://[user@]host[:port][/path]
SSH_URL = re.compile(r"^ssh://(?P<auth>(?:[^@/]+@)?(?:\[[^\]]+\]|[^:/]+)(?::[0-9]+)?)"
                     r"(?P<path>/.*)?$")
# git's scp-like syntax: [user@]host:path, a colon before any slash. One letter
# before the colon is a Windows drive (C:\...), never a host.
SCP = re.compile(r"^(?P<auth>(?:[^@/:]+@)?(?:\[[^\]]+\]|[^:/\[\]]{2,})):(?P<path>.*)$")


def is_scp(url: str) -> bool:
    return "://" not in url and SCP.match(url) is not None


def scp_to_ssh(url: str) -> str:
    """`[user@]host:path` as `ssh://[user@]host/path` (a relative path is the
    login's home, written `~/path`; the Pi's forced command knows the real root)."""
    m = SCP.match(url)
    if m is None or not m["path"]:
        raise StoreError(f"store URL {url!r}: expected [user@]host:/path "
                         "or ssh://[user@]host[:port]/path")
    path = m["path"] if m["path"].startswith("/") else f"/~/{m['path']}"
    return f"ssh://{m['auth']}{path}"


def normalize(url: str) -> str:
    """A store URL as given on one host's command line: scp-style becomes ssh://."""
    if not url:
        raise StoreError("empty store URL: give a path, file:///path or "
                         "ssh://[user@]host[:port]/path")
    return scp_to_ssh(url) if is_scp(url) else url


def _ledger_location(ledger: str) -> tuple[str | None, str]:
    """(the ssh://[user@]host[:port] part or None for a local ledger, its path)."""
    if ledger.startswith("file://"):
        return None, ledger.removeprefix("file://")
    m = SSH_URL.match(ledger)
    if m:
        return f"ssh://{m['auth']}", m["path"] or "/"
    if is_scp(ledger):
        s = SCP.match(ledger)
        assert s is not None
        path = s["path"] if s["path"].startswith("/") else f"/~/{s['path']}"
        return f"ssh://{s['auth']}", path
    return None, ledger


def from_manifest(store: str, ledger: str) -> str:
    """`[fleet] store` resolved for a host that reaches the ledger at `ledger`."""
    if "://" in store or is_scp(store):
        return normalize(store)
    remote, ledger_path = _ledger_location(ledger)
    if remote is None:
        ledger_path = os.path.abspath(ledger_path)  # the store must not move with the cwd
    base = posixpath.dirname(ledger_path.rstrip("/")) or "."
    path = posixpath.normpath(posixpath.join(base, store))
    if remote is None:
        return path
    if not path.startswith("/"):
        path = "/~/" + path
    return remote + path


def resolve(flag: str | None, manifest_store: str | None, ledger: str) -> str:
    """The store this host uses: `--store` if given, else the manifest's."""
    if flag:
        return normalize(flag)
    if not manifest_store:
        raise StoreError("no store: pass --store or set [fleet] store in the manifest")
    return from_manifest(manifest_store, ledger)


def describe_store(store: object) -> str:
    """Where bundles land, said so that an operator sees which host, too."""
    root = getattr(store, "root", None)
    if root is not None:
        return f"{root} on this host"
    return f"{getattr(store, 'url', store)} (over ssh)"
