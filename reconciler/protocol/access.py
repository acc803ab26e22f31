"""Identities and roles: `access.toml` in the ledger, changed by operators only.

The pusher's identity never comes from commit authors: over ssh it is the
argument of the forced command in `authorized_keys`; on a local path push it is
`TRAINLEDGER_IDENTITY` of the pushing process (as good as the local user).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from reconciler.protocol.errors import AccessDenied
from reconciler.protocol.layout import NAME_PATTERN
from reconciler.protocol.names import name_problem
from reconciler.protocol.transitions import Actor, Role

NAME_RE = re.compile(NAME_PATTERN)

DEFAULT_ACCESS = b"""\
# Who may write what. Only operators may change this file.
operators = ["operator"]
reconcilers = ["reconciler"]
# workers: unset means every other enrolled identity is a worker.
# workers = ["desktop", "laptop"]
"""


@dataclass(frozen=True)
class Access:
    """Roles by identity. Plain Python, not pydantic: every push reads it."""

    operators: list[str] = field(default_factory=lambda: ["operator"])
    reconcilers: list[str] = field(default_factory=lambda: ["reconciler"])
    workers: list[str] | None = None  # None: any other identity is a worker

    def role_of(self, identity: str) -> Role | None:
        if identity in self.operators:
            return Role.OPERATOR
        if identity in self.reconcilers:
            return Role.RECONCILER
        if self.workers is None or identity in self.workers:
            return Role.WORKER
        return None

    def actor(self, identity: str) -> Actor:
        role = self.role_of(identity)
        if role is None:
            raise AccessDenied(f"identity {identity!r} has no role in access.toml",
                               identity=identity)
        return Actor(identity, role)


def _names(raw: dict[str, Any], key: str, filename: str) -> list[str] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AccessDenied(f"{filename}: field {key!r}: expected a list of names")
    for name in value:
        if not NAME_RE.fullmatch(name) or name_problem(name):
            raise AccessDenied(f"{filename}: field {key!r}: {name!r} is not a valid name")
    return list(value)


def load_access(data: bytes | None, filename: str = "access.toml") -> Access:
    """Parse access.toml; a missing file means the defaults."""
    if data is None:
        return Access()
    if len(data) > 64 * 1024:
        raise AccessDenied(f"{filename}: over 64 KiB")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise AccessDenied(f"{filename}: {exc}") from None
    unknown = sorted(set(raw) - {"operators", "reconcilers", "workers"})
    if unknown:
        raise AccessDenied(f"{filename}: field {unknown[0]!r}: unknown field")
    defaults = Access()
    operators = _names(raw, "operators", filename)
    reconcilers = _names(raw, "reconcilers", filename)
    for key, names in (("operators", operators), ("reconcilers", reconcilers)):
        if names == []:  # was silently read as the default list
            raise AccessDenied(f"{filename}: field {key!r}: name at least one, or leave it "
                               f"out for the default {getattr(defaults, key)}")
    return Access(
        operators=operators or defaults.operators,
        reconcilers=reconcilers or defaults.reconcilers,
        workers=_names(raw, "workers", filename),
    )
