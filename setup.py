"""Build step only (the project's metadata is in pyproject.toml): copy the ledger
template, the hook scripts and the systemd units into the wheel under
reconciler/_data/, where reconciler/rules/resources.py finds them in an install."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA = {"ledger-template": "ledger-template", "hooks": "hooks", "systemd": "scripts/systemd"}


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        for name, source in DATA.items():
            dest = Path(self.build_lib) / "reconciler" / "_data" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(ROOT / source, dest,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithData})
