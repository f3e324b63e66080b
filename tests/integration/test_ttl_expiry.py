"""A table with TTL on a real broker (tests/apps/ttl_counts.py as a worker subprocess): keys
expire for handlers and for HTTP queries by stream time, expired keys are deleted from SQLite and
tombstoned in the changelog, and a worker that restores the table from the changelog (state
directory wiped) serves the same table: expired keys stay gone, live keys come back."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from kafka_helpers import load_kafka_local, read_to_end, recent_window_start, unique_name
from ttl_model import ttl_counts
from workers import WorkerProcess, collect, produce, worker_env

from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.ttl import decode_row, row_key

TTL_MS = 10_000
T0 = recent_window_start(60_000, hours_ago=1)


def inputs() -> list[tuple[bytes, bytes, int]]:
    """old-* written at T0; live-* at T0 + 15 s; a tick at T0 + 20 s expires old-* (written
    at T0, 10 s ago) but not live-*; then old-0 and live-0 again: 1 and 2."""
    records = [(f"old-{i}".encode(), b"x", T0) for i in range(40)]
    records += [(f"live-{i}".encode(), b"x", T0 + 15_000) for i in range(40)]
    records += [(b"tick", b"x", T0 + 20_000), (b"old-0", b"x", T0 + 21_000)]
    return [*records, (b"live-0", b"x", T0 + 21_000)]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


class Worker(WorkerProcess):
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = load_kafka_local().free_ports(1)[0]
        listen = {"ONCEFLOW_HTTP_HOST": "127.0.0.1", "ONCEFLOW_HTTP_PORT": str(self.port)}
        super().__init__("tests.apps.ttl_counts", {**env, **listen}, log)

    async def query(self, http: httpx.AsyncClient, key: str) -> httpx.Response:
        """GET the key, retrying while the worker is not ready (503) or not listening."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.alive, self.log_text()[-3000:]
            try:
                reply = await http.get(f"http://127.0.0.1:{self.port}/tables/counts/keys/{key}")
            except httpx.TransportError:
                reply = None
            if reply is not None and reply.status_code != 503:
                return reply
            await asyncio.sleep(0.1)
        raise AssertionError(f"no answer for {key}:\n{self.log_text()[-3000:]}")

    async def table(self, http: httpx.AsyncClient, keys: list[str]) -> dict[str, int]:
        found = {}
        for key in keys:
            reply = await self.query(http, key)
            assert reply.status_code in (200, 404), reply.text
            if reply.status_code == 200:
                found[key] = reply.json()["value"]
        return found


def stored(state: Path, app_id: str) -> dict[bytes, int]:
    """The rows of the table's SQLite store (the worker stopped), expired or not."""
    with SqliteStorePartition(state / app_id / "counts" / "0") as store:
        rows = store.range_items(row_key(b""), b"\x02", include_pending=False)
    return {key[1:]: json.loads(decode_row(row)[1]) for key, row in rows}


@pytest.mark.timeout(300)
async def test_keys_expire_for_handlers_queries_sqlite_and_a_restore(
    bootstrap_servers: str, new_topic, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    source = await new_topic("ttl-in", partitions=1)
    sink = await new_topic("ttl-out", partitions=1)
    app_id = unique_name("ttl")
    env = worker_env(
        bootstrap_servers,
        app_id,
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_TEST_TTL_MS=TTL_MS,
    )
    records = inputs()
    outputs, final = ttl_counts(records, 1, TTL_MS)
    worker = Worker(env, tmp_path / "a.log").start()
    await produce(bootstrap_servers, source, records)
    got = await collect(bootstrap_servers, sink, len(records), timeout=120, workers=[worker])
    # Handlers: old-0 was forgotten (1 again), live-0 was not (2).
    assert [(r.key, json.loads(r.value)) for r in got] == outputs[0]
    assert outputs[0][-2:] == [(b"old-0", 1), (b"live-0", 2)]
    keys = [key.decode() for key, _, _ in records]
    # Queries: by the committed stream time, T0 + 21 s.
    assert await worker.table(http, keys) == {k.decode(): v for k, v in final.items()}
    assert "old-1" not in final and final[b"live-1"] == 1 and final[b"old-0"] == 1
    assert worker.stop() == 0
    # SQLite: expired keys were deleted at the commit that expired them; the changelog has a
    # tombstone for each, and its last record per key agrees with the store.
    assert stored(tmp_path / "state", app_id) == final
    changelog = await read_to_end(bootstrap_servers, f"{app_id}-counts-changelog")
    last = {r.key: r.value for r in changelog}
    assert sorted(k for k, v in last.items() if v is None) == sorted(
        f"old-{i}".encode() for i in range(1, 40)
    )
    assert {k: json.loads(decode_row(v)[1]) for k, v in last.items() if v is not None} == final

    shutil.rmtree(tmp_path / "state")  # the next worker restores the table from the changelog
    restored = Worker(env, tmp_path / "b.log").start()
    assert await restored.table(http, keys) == {k.decode(): v for k, v in final.items()}
    assert restored.stop() == 0
    assert stored(tmp_path / "state", app_id) == final


@pytest.mark.timeout(300)
@pytest.mark.parametrize("wipe", [False, True], ids=["store", "changelog"])
async def test_adding_a_ttl_to_an_existing_table_stops_the_worker_naming_it(
    bootstrap_servers: str, new_topic, tmp_path: Path, wipe: bool
) -> None:
    source = await new_topic("ttl-add-in", partitions=1)
    sink = await new_topic("ttl-add-out", partitions=1)
    env = worker_env(
        bootstrap_servers,
        unique_name("ttl-add"),
        tmp_path / "state",
        ONCEFLOW_TEST_INPUT=source,
        ONCEFLOW_TEST_OUTPUT=sink,
        ONCEFLOW_TEST_TTL_MS="none",
    )
    records = [(f"k{i}".encode(), b"x", T0) for i in range(20)]
    before = Worker(env, tmp_path / "before.log").start()
    await produce(bootstrap_servers, source, records)
    await collect(bootstrap_servers, sink, len(records), timeout=120, workers=[before], settle=0)
    assert before.stop() == 0
    if wipe:  # a new host: the table is restored from its changelog
        shutil.rmtree(tmp_path / "state")
    after = Worker({**env, "ONCEFLOW_TEST_TTL_MS": "10000"}, tmp_path / "after.log").start()
    assert after.wait(90) == 1, after.log_text()[-3000:]
    if wipe:
        refused = "table 'counts' has a ttl, but its changelog holds rows written without one"
    else:  # the store's recorded layout says so first (docs/architecture.md, *Layout changes*)
        refused = "table 'counts' was declared as kind 'table' and is now kind 'table with ttl'"
    assert refused in after.log_text()
