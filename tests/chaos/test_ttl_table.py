"""A table with TTL under kill -9, SIGSTOP zombies and rebalances (tests/apps/ttl_counts.py,
exactly-once): the outputs and the final table — read over HTTP, and rebuilt from the
changelog as a restore would — are identical to what a fault-free model computes
(tests/ttl_model.py), however the commits fell around the faults."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from kafka_helpers import load_kafka_local, read_to_end, recent_window_start
from ttl_model import ttl_counts
from workers import WorkerProcess, app_under_test, collect, produce, wait_until_processing

from onceflow.state.ttl import decode_row

pytestmark = pytest.mark.chaos

PARTITIONS = 4
TTL_MS = 1_500
KEYS = 80


def _inputs(n: int, seed: int) -> list[tuple[bytes, bytes, int]]:
    """Keys recurring every ~0.8 s of event time on average, some after more than the ttl
    (forgotten), timestamps 10 ms apart with out-of-order jitter; the last 10 s only a quarter
    of the keys recur, so the others have expired by the end."""
    rng = random.Random(seed)
    start = recent_window_start(60_000, hours_ago=1)
    return [
        (
            f"k{rng.randrange(KEYS if i < n - 1000 else KEYS // 4)}".encode(),
            b"x",
            start + 10 * i + rng.randrange(-300, 300),
        )
        for i in range(n)
    ]


async def _query(http: httpx.AsyncClient, port: int, key: str) -> int | None:
    """The key's value over HTTP (any instance: it proxies to the owner); None for a 404."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            reply = await http.get(f"http://127.0.0.1:{port}/tables/counts/keys/{key}")
        except httpx.TransportError:
            reply = None
        if reply is not None and reply.status_code in (200, 404):
            return reply.json()["value"] if reply.status_code == 200 else None
        await asyncio.sleep(0.2)
    raise AssertionError(f"no answer for {key}")


@pytest.mark.timeout(400)
async def test_a_ttl_table_is_exact_under_kill_9_zombies_and_rebalances(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("ttl-chaos-in", partitions=PARTITIONS)
    sink = await new_topic("ttl-chaos-out", partitions=PARTITIONS)
    app = app_under_test(
        bootstrap_servers,
        "tests.apps.ttl_counts",
        source,
        sink,
        tmp_path,
        state_dirs=3,  # three hosts: a task that moves restores from the changelog
        ONCEFLOW_TEST_TTL_MS=TTL_MS,
        ONCEFLOW_COMMIT_INTERVAL_MS=700,
    )
    records = _inputs(6_000, 7)
    ports = iter(load_kafka_local().free_ports(12))

    def spawn(i: int) -> tuple[WorkerProcess, int]:
        port = next(ports)
        return app.spawn(i, ONCEFLOW_HTTP_HOST="127.0.0.1", ONCEFLOW_HTTP_PORT=port), port

    workers = [spawn(0), spawn(1)]
    spawned = 2
    faults = {"kill -9": 0, "SIGSTOP": 0, "scale-up": 0}
    producing = asyncio.create_task(produce(bootstrap_servers, source, records, rate=250))
    try:
        assert await wait_until_processing(workers[0][0])
        for round_ in range(5):
            await asyncio.sleep(3)
            if round_ == 4:
                workers.append(spawn(spawned))  # a rebalance onto a third host
                spawned += 1
                faults["scale-up"] += 1
                continue
            victim, port = workers.pop(0)
            if round_ % 2:
                victim.signal(signal.SIGSTOP)  # a zombie: paused past its session timeout
                await asyncio.sleep(8)
                victim.signal(signal.SIGCONT)
                workers.append((victim, port))
                faults["SIGSTOP"] += 1
            else:
                await wait_until_processing(victim)
                victim.kill()  # mid-transaction
                workers.append(spawn(spawned))
                spawned += 1
                faults["kill -9"] += 1
        produced = await producing
        assert produced == len(records)
        got = await collect(
            bootstrap_servers, sink, len(records), timeout=180, workers=[w for w, _ in workers]
        )
        outputs, final = ttl_counts(records, PARTITIONS, TTL_MS)
        by_partition: dict[int, list[tuple[bytes, int]]] = defaultdict(list)
        for r in got:
            by_partition[r.partition].append((r.key, json.loads(r.value)))
        assert dict(by_partition) == outputs, f"outputs differ from the model under {faults}"
        keys = sorted({key.decode() for key, _, _ in records})
        async with httpx.AsyncClient(timeout=10) as http:
            port = workers[-1][1]
            served = {key: await _query(http, port, key) for key in keys}
        assert {k: v for k, v in served.items() if v is not None} == {
            k.decode(): v for k, v in final.items()
        }, f"the table served over HTTP differs from the model under {faults}"
        for w, _ in workers:
            assert w.stop() == 0, w.log_text()[-3000:]
    finally:
        producing.cancel()
        for w, _ in workers:
            w.stop()
    # What a restore rebuilds: the last committed changelog record per key (expired keys were
    # tombstoned by the commits that expired them).
    changelog = await read_to_end(
        bootstrap_servers, f"{app.env['ONCEFLOW_TEST_APP_ID']}-counts-changelog"
    )
    last = {r.key: r.value for r in changelog}
    restored = {k: json.loads(decode_row(v)[1]) for k, v in last.items() if v is not None}
    assert restored == final, f"the changelog differs from the model under {faults}"
    forgotten = sum(1 for p in outputs.values() for _, n in p if n == 1) - KEYS
    print(f"faults={faults} records={len(records)} forgotten={forgotten} live keys={len(final)}")
    assert forgotten > 100 and len(final) <= KEYS // 4  # the ttl did matter
