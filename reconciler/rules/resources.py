"""The files trainledger ships besides its code: the ledger template, the
server and client hook scripts, and the systemd units.

In a checkout they sit at the repository root (`ledger-template/`, `hooks/`,
`scripts/systemd/`); a wheel carries copies under `reconciler/_data/` (the
build step in setup.py), so `reconciler init` works from a plain install.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from reconciler.protocol.errors import LedgerError

CHECKOUT_ROOT = Path(str(resources.files("reconciler"))).resolve().parent  # beside the package
# name under reconciler/_data -> where it lives in a checkout
LAYOUT = {"ledger-template": "ledger-template", "hooks": "hooks", "systemd": "scripts/systemd"}


def resource_dir(name: str) -> Path:
    """The directory of shipped files `name`: the installed copy, else the checkout's."""
    packaged = Path(str(resources.files("reconciler"))) / "_data" / name
    if packaged.is_dir():
        return packaged
    checkout = CHECKOUT_ROOT / LAYOUT[name]
    if checkout.is_dir():
        return checkout
    raise LedgerError(f"trainledger's {name} files are missing (looked in {packaged} and "
                      f"{checkout}): reinstall the package")
