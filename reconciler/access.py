"""Identities and roles: `access.toml` in the ledger, changed by operators only.

The pusher's identity never comes from commit authors: over ssh it is the
argument of the forced command in `authorized_keys`; on a local path push it is
`TRAINLEDGER_IDENTITY` of the pushing process (as good as the local user).
"""

from __future__ import annotations

import tomllib

from pydantic import Field, ValidationError

from reconciler.errors import AccessDenied
from reconciler.schema import Name, Strict
from reconciler.transitions import Actor, Role

DEFAULT_ACCESS = b"""\
# Who may write what. Only operators may change this file.
operators = ["operator"]
reconcilers = ["reconciler"]
# workers: unset means every other enrolled identity is a worker.
# workers = ["desktop", "laptop"]
"""


class Access(Strict):
    operators: list[Name] = Field(
        default_factory=lambda: ["operator"], description="Identities with the operator role."
    )
    reconcilers: list[Name] = Field(
        default_factory=lambda: ["reconciler"], description="Identities of reconcilers."
    )
    workers: list[Name] | None = Field(
        None, description="Worker identities; unset means any other identity."
    )

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


def load_access(data: bytes | None, filename: str = "access.toml") -> Access:
    """Parse access.toml; a missing file means the defaults."""
    if data is None:
        return Access()
    if len(data) > 64 * 1024:
        raise AccessDenied(f"{filename}: over 64 KiB")
    try:
        return Access.model_validate(tomllib.loads(data.decode("utf-8")))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise AccessDenied(f"{filename}: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AccessDenied(f"{filename}: field {where!r}: {first['msg']}") from None
