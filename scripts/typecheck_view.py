#!/usr/bin/env python3
"""Lay out ``build/typecheck/onceflow`` as the installed package looks, for mypy.

The repository keeps ``app/``, ``state/`` and ``processors/`` at the top and setuptools maps them
to ``onceflow``, ``onceflow.state`` and ``onceflow.examples`` (pyproject.toml). The editable
install resolves that mapping with an import hook, which mypy does not run; mypy reads this tree
of symbolic links instead (``mypy_path`` in pyproject.toml). It is rebuilt on every ``make lint``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Subpackages that live outside app/, by their name inside ``onceflow``.
MAPPED = {"state": REPO / "state", "examples": REPO / "processors"}


def build(root: Path = REPO / "build" / "typecheck") -> Path:
    package = root / "onceflow"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir(parents=True)
    for entry in sorted((REPO / "app").iterdir()):
        if entry.name != "__pycache__" and entry.name not in MAPPED:
            os.symlink(os.path.relpath(entry, package), package / entry.name)
    for name, target in MAPPED.items():
        os.symlink(os.path.relpath(target, package), package / name)
    return package


if __name__ == "__main__":
    print(build())
