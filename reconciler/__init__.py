"""trainledger's reconciler package: the ledger's schema, rules and daemon."""


def __getattr__(name: str) -> str:
    # Lazy: importlib.metadata costs ~45 ms, paid by the hook and the ssh forced
    # command on every push and fetch if it ran at import time.
    if name != "__version__":
        raise AttributeError(f"module 'reconciler' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("trainledger")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+src"
