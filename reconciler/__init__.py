"""trainledger's reconciler package: the ledger's schema, rules and daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trainledger")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
