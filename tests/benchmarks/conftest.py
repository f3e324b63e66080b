"""The benchmarks' own tests (a package: its conftest must not shadow tests/conftest.py, which
other tests import as ``conftest``). ``bench`` is not part of the installed package: it runs from the
repository root (``python -m bench``), so its tests import it from there."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
