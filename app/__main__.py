"""``python -m app`` is the ``onceflow`` command."""

import sys

from app.cli import main

sys.exit(main())
