"""The operator's pre-commit hook: validate the staged manifest before the commit exists."""

from __future__ import annotations

import subprocess
import sys


def main() -> int:
    from reconciler.protocol.errors import ManifestError
    from reconciler.protocol.manifest import load_manifest

    # --no-renames: a rename away from manifest.toml lists only the new name
    staged = subprocess.run(["git", "diff", "--cached", "--name-only", "--no-renames", "-z"],
                            capture_output=True, check=True).stdout.split(b"\0")
    if b"manifest.toml" not in staged:
        return 0
    show = subprocess.run(["git", "show", ":manifest.toml"], capture_output=True)
    if show.returncode != 0:
        print("trainledger: manifest.toml is staged for deletion; the ledger needs it",
              file=sys.stderr)
        return 1
    try:
        loaded = load_manifest(show.stdout, filename="manifest.toml")
    except ManifestError as exc:
        print(f"trainledger: commit refused, the staged manifest is invalid:\n{exc}",
              file=sys.stderr)
        return 1
    print(f"trainledger: manifest.toml ok ({len(loaded.specs)} jobs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
