"""Identity names: the NAME alphabet, and the git ref rules a name must also keep.

A worker's name becomes `refs/heartbeats/<name>`, so a name git refuses as a ref
component (`x.lock`, `a..b`, `host.`) would make every heartbeat fail while
claims still land: the worker would claim, self-fence and release forever.
Such names are refused wherever a name enters: enroll, the forced command,
access.toml, the manifest's hosts, `worker run --name` and the hook's pusher.
"""

from __future__ import annotations

import re

# Same alphabet as reconciler.state.NAME_PATTERN / reconciler.schema.NAME_PATTERN.
NAME_CHARS_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def name_problem(name: object) -> str | None:
    """Why `name` is not a valid identity name, or None when it is."""
    if not isinstance(name, str) or not NAME_CHARS_RE.fullmatch(name):
        return "not a valid name (letters, digits, . _ -; starts with a letter or digit; " \
               "up to 64)"
    if ".." in name:
        return "not a valid name: '..' is not allowed in a git ref"
    if name.endswith("."):
        return "not a valid name: a git ref component may not end with '.'"
    if name.endswith(".lock"):
        return "not a valid name: a git ref component may not end with '.lock'"
    return None


def is_valid_name(name: object) -> bool:
    return name_problem(name) is None
