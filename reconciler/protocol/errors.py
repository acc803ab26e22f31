"""One base for every error trainledger raises on purpose.

The docstring of each subclass is its default message (as procrastinate does),
and the data that explains it is kept on attributes (as scmrepo does), so the
CLI can print one clear line and tests can assert on fields, not on prose.
"""

from __future__ import annotations


class LedgerError(Exception):
    """The ledger could not do what was asked."""

    def __init__(self, message: str | None = None, **data: object) -> None:
        self.data = data
        for key, value in data.items():
            setattr(self, key, value)
        super().__init__(message or (self.__doc__ or "").strip())


class ManifestError(LedgerError):
    """The manifest is not valid."""


class StateError(LedgerError, ValueError):
    """A state file is not valid."""


class IllegalTransition(LedgerError):
    """A state change is not allowed for this actor."""


class AccessDenied(LedgerError):
    """This identity may not write that."""


class GitError(LedgerError):
    """A git command failed."""


class LostRace(LedgerError):
    """Another writer moved main first; fetch, re-check and retry."""


class PushRejected(LedgerError):
    """The ledger refused the push (a hook or a server rule said no)."""


class PushAmbiguous(LedgerError):
    """The push may or may not have landed; fetch to find out."""


class StoreError(LedgerError):
    """The artifact store could not do what was asked."""


class BundleError(LedgerError):
    """A bundle is unsafe or corrupt; nothing was written."""


class JobNotFound(LedgerError):
    """No job matches that id, prefix or name."""
