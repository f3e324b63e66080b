"""The benchmarks' own tests. ``bench`` is not part of the installed package: it runs from the
repository root (``python -m bench``), so its tests import it from there. A package (with
``__init__.py``), so that this conftest does not shadow tests/conftest.py, which other tests
import as ``conftest``."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
