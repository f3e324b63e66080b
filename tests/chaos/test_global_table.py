"""A global table under kill -9 (mid-load and mid-stream), SIGSTOP past the session timeout and
the rebalances they cause, on the real broker, two workers on two "hosts":

* every order is enriched exactly once (read_committed), no transaction is left open;
* every enrichment is a value its country had in the topic (never an aborted or invented one);
* orders sent after the last country update, once the workers serve it, all see the last values
  (the background consumer keeps up through the faults);
* a kill during the initial load resumes from the positions it had written (the restart reads
  less than the whole topic), and after a clean stop each worker's SQLite store equals the topic's
  latest value per key, tombstones included.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
from pathlib import Path

import httpx
import pytest
from kafka_helpers import read_to_end
from workers import (
    AppUnderTest,
    WorkerProcess,
    app_under_test,
    assert_no_hanging_transactions,
    collect,
    produce,
)

from onceflow.state.sqlite.global_store import GlobalStorePartition

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]
MODULE = "tests.apps.global_enrich"
KEYS = 2000


def versions(first: int, last: int, rng: random.Random) -> list[tuple[bytes, bytes | None]]:
    """Every key's value for each version in [first, last]; now and then a tombstone."""
    return [
        (f"c{i}".encode(), None if rng.random() < 0.02 else f"v{v}-{i}".encode())
        for v in range(first, last + 1)
        for i in range(KEYS)
    ]


def loaded_line(worker: WorkerProcess) -> re.Match[str] | None:
    pattern = r"global table countries loaded: .* read (\d+) records.* \(store (.+)\)"
    return re.search(pattern, worker.log_text())


async def kill_mid_load(app: AppUnderTest, total: int) -> WorkerProcess:
    """Start worker 0 and kill -9 it once its load has written some progress but not all (its
    readiness says how many records are left); the restart must resume. A load on a quiet
    machine takes well under a second: the readiness is polled, not waited on by a delay."""
    pattern = re.compile(r"loading global table countries: (\d+) records left")
    async with httpx.AsyncClient(timeout=1) as http:
        for attempt in range(0, 12, 2):  # even: state-0 each time, a store not loaded yet
            worker = app.spawn(attempt)
            if await _killed_mid_load(worker, http, pattern, total):
                break
            app.tmp_path.joinpath("state-0").rename(app.tmp_path / f"state-0-loaded-{attempt}")
        else:
            pytest.fail("the load always finished before the kill")
    restarted = app.spawn(100)  # on the same "host" as the killed one (state-0)
    found = None
    for _ in range(450):
        if (found := loaded_line(restarted)) is not None:
            break
        assert restarted.alive, restarted.log_text()[-3000:]
        await asyncio.sleep(0.2)
    assert found is not None
    assert 0 < int(found.group(1)) < total, found.group(0)  # resumed from written positions
    return restarted


async def _killed_mid_load(
    worker: WorkerProcess, http: httpx.AsyncClient, pattern: re.Pattern[str], total: int
) -> bool:
    for _ in range(3000):
        ports = re.findall(r"HTTP API on http://[^:]+:(\d+)", worker.log_text())
        if ports or not worker.alive:
            break
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{ports[-1]}/health/ready" if ports else ""
    while worker.alive and url and loaded_line(worker) is None:
        try:
            reason = (await http.get(url)).json().get("reason", "")
        except (httpx.HTTPError, ValueError):
            reason = ""
        # Two batches read (10,000 records each): the first is written with its positions.
        if (left := pattern.search(reason)) is not None and 0 < int(
            left.group(1)
        ) <= total - 20_000:
            worker.kill()
            return loaded_line(worker) is None
        await asyncio.sleep(0.005)
    worker.kill()
    return False


async def serves(worker: WorkerProcess, latest: dict[bytes, bytes | None]) -> bool:
    port = re.findall(r"HTTP API on http://[^:]+:(\d+)", worker.log_text())
    if not port:
        return False
    async with httpx.AsyncClient(timeout=5) as http:
        for key in (b"c0", b"c1", f"c{KEYS - 1}".encode()):
            answer = await http.get(
                f"http://127.0.0.1:{port[-1]}/tables/countries/keys/{key.decode()}"
            )
            want = latest[key]
            got = answer.json().get("value") if answer.status_code == 200 else None
            if (want.decode() if want else None) != got:
                return False
    return True


async def test_global_table_under_worker_faults(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    rng = random.Random(15)
    countries = await new_topic("g-countries", partitions=3)
    orders = await new_topic("g-orders", partitions=4)
    out = await new_topic("g-enriched", partitions=4)
    app = app_under_test(
        bootstrap_servers, MODULE, orders, out, tmp_path, state_dirs=2,
        ONCEFLOW_TEST_GLOBAL=countries, ONCEFLOW_COMMIT_INTERVAL_MS=500,
    )  # fmt: skip
    initial = versions(1, 60, rng)  # 120k records: a load of about a second
    await produce(bootstrap_servers, countries, initial)
    workers = [await kill_mid_load(app, len(initial)), app.spawn(7)]

    order_n = 0

    async def send_orders(count: int, rate: float) -> None:
        nonlocal order_n
        batch = [
            (f"o{order_n + i}".encode(), f"c{rng.randrange(KEYS)}".encode()) for i in range(count)
        ]
        order_n += count
        await produce(bootstrap_servers, orders, batch, rate=rate)

    async def update_countries() -> None:
        for v in range(61, 81):
            await produce(bootstrap_servers, countries, versions(v, v, rng), rate=4000)

    ordering = asyncio.create_task(send_orders(20_000, rate=500))
    updating = asyncio.create_task(update_countries())
    faults = 0
    try:
        while not (ordering.done() and updating.done()) or faults < 5:
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            victim = rng.randrange(2)
            if faults % 3 == 2:  # a zombie: paused past the session timeout (6 s), then resumed
                workers[victim].signal(signal.SIGSTOP)
                await asyncio.sleep(8)
                workers[victim].signal(signal.SIGCONT)
            else:
                workers[victim].kill()
                workers[victim] = app.spawn(10 + faults)
            faults += 1
        await ordering
        await updating
        latest: dict[bytes, bytes | None] = {}
        for r in await read_to_end(bootstrap_servers, countries):
            latest[r.key] = r.value
        deadline = time.monotonic() + 90
        while not all([await serves(w, latest) for w in workers]):
            assert time.monotonic() < deadline, "the workers never served the last versions"
            await asyncio.sleep(0.5)
        first_final = order_n
        await send_orders(500, rate=1000)
        records = await collect(bootstrap_servers, out, order_n, timeout=180, workers=workers)
    finally:
        codes = [w.stop() for w in workers]
    assert codes == [0, 0], codes

    # Exactly once, each enrichment a value its country had, the last orders see the last values.
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)) == order_n, (len(keys), len(set(keys)), order_n)
    had: dict[str, set[str]] = {}
    for r in await read_to_end(bootstrap_servers, countries):
        had.setdefault(r.key.decode(), set()).add(r.value.decode() if r.value else "-")
    for r in records:
        country, value = r.value.decode().split("=", 1)
        assert value in had[country], (r.key, r.value)
        if int(r.key.decode()[1:]) >= first_final:
            want = latest[country.encode()]
            assert value == (want.decode() if want else "-"), (r.key, r.value)
    await assert_no_hanging_transactions(bootstrap_servers, out)

    # Each final worker's store, flushed by its clean stop, equals the topic's latest values.
    for worker in workers:
        found = loaded_line(worker)
        assert found is not None
        store = GlobalStorePartition(Path(found.group(2)))
        try:
            rows = dict(store.range_items(b"", b"\xff"))
        finally:
            store.close()
        assert rows == {k: v for k, v in latest.items() if v is not None}
