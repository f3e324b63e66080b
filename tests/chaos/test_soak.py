"""Worker faults combined and repeated, on the stateful oracle.

A random schedule of kill -9, SIGSTOP past the session timeout then SIGCONT, SIGTERM rolling
restarts and scaling 1 -> 3 -> 1, while records flow. The short form runs in ``make test``; the
soak (``make chaos``, ``-m soak``) runs for ten minutes and reports worker RSS at start and end.
Both stop by themselves: the schedule is bounded in time and every process is reaped.
tests/history.py judges the run and prints one line: faults injected, records checked and
anomalies found. Worker logs stay in the test's tmp_path (``worker-<i>.log``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fleet import soak


@pytest.mark.chaos
async def test_short_soak(bootstrap_servers: str, new_topic, tmp_path: Path) -> None:
    await soak(bootstrap_servers, new_topic, tmp_path, seconds=75)


@pytest.mark.soak
@pytest.mark.timeout(1500)
async def test_ten_minute_soak(bootstrap_servers: str, new_topic, tmp_path: Path) -> None:
    await soak(bootstrap_servers, new_topic, tmp_path, seconds=600)
