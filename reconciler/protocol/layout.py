"""Where things live in a ledger: refs, paths and the name alphabet.

Standard library only (one `re`): the pre-receive hook and the ssh forced
command import it on every push and fetch, so it must cost nothing to load.
"""

from __future__ import annotations

import re

ZERO = "0" * 40  # git's "no object": a ref created or deleted
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
BLOB_MODE = "100644"

MAIN = "refs/heads/main"
HEARTBEATS = "refs/heartbeats/"
CACHED_MAIN = "refs/remotes/ledger/main"  # in an actor's cache
CACHED_HEARTBEATS = "refs/remotes/heartbeats/"

# The only paths a ledger's tree may hold: three operator files and one state
# file per job, fanned out by the first byte of its id.
TOP_LEVEL_FILES = ("manifest.toml", "access.toml", "README.md")
STATE_RE = re.compile(r"^state/([0-9a-f]{2})/([0-9a-f]{16})\.json$")

# Worker, operator, host and job names (the schema's `Name` type uses it too).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


def state_job(path: str) -> str | None:
    """The job id of a well-placed state file path, else None."""
    m = STATE_RE.match(path)
    return m.group(2) if m and m.group(1) == m.group(2)[:2] else None
