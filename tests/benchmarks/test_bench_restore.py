"""The restore benchmark on a real broker: ``restore_once`` runs the scenario it is given against
a changelog another scenario filled, as ``python -m bench --only restore --base DIR`` does
(``restore.base``: the base checkout's code and settings, the changelog ``restore`` filled)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.restore import Changelog, restore_once
from bench.scenarios import SCENARIOS, RunContext

KEYS = 12_000  # 2,000 records per partition: batches large enough for the store I/O children


async def test_restore_once_runs_the_scenario_it_is_given(
    bootstrap_servers: str, tmp_path: Path
) -> None:
    ctx = RunContext(bootstrap=bootstrap_servers, workdir=tmp_path, records=KEYS, quick=True)
    restore = dataclasses.replace(SCENARIOS["restore"], keys=KEYS, quick_keys=KEYS)
    changelog = Changelog(ctx, restore, "restore-once")
    await changelog.fill()
    in_process = dataclasses.replace(
        restore,
        name="restore.in-process",
        env={**restore.env, "ONCEFLOW_STATE_IO_PROCESSES": "0"},
    )

    children = await restore_once(changelog, 0)
    alone = await restore_once(changelog, 1, in_process)

    assert children["verified"] and alone["verified"], (children, alone)
    # SQLite in store I/O children with the filling scenario's settings; none with the other's.
    assert children["child_peak_rss_mb"] > 0, children
    assert alone["child_peak_rss_mb"] == 0, alone
