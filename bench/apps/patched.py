"""The app named in ``BENCH_APP`` (``module[:attr]``), with the hot-path prototypes named in
``BENCH_PATCHES`` applied first (see bench.patches): ``onceflow worker bench.apps.patched``."""

from __future__ import annotations

import logging
import os

from app.cli import load_app
from bench.patches import apply

patches = apply()
app = load_app(os.environ["BENCH_APP"])
logging.getLogger("onceflow.bench").warning("hot-path prototypes applied: %s", patches or "none")
