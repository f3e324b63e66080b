"""Session and sliding windows on the real broker (tests/apps/sessions.py): a worker is killed
-9 half-way and another one, on an empty state directory, restores the tables from their
changelogs and finishes. The committed outputs are exactly the model's, record by record, and
the final sessions and sliding windows read over HTTP are exactly the model's too."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
from kafka_helpers import load_kafka_local, read_to_end, recent_window_start
from workers import WorkerProcess, app_under_test, by_partition, collect, produce

from onceflow.partitioner import partition_for_key

GAP_MS, SIZE_MS, GRACE_MS = 10_000, 10_000, 5_000  # as in tests/apps/sessions.py
PARTITIONS = 3
KEYS = [f"k{i}" for i in range(12)]


def generate(seed: int, n: int) -> list[tuple[str, int]]:
    """Keys round robin on one clock, with pauses longer than the gap, records up to grace out
    of order and records late by more than size + grace. Records late for some sliding windows
    but not all are left out (which of their windows they still reach is Kafka Streams'
    implementation order, not the definition the model follows)."""
    rng = random.Random(seed)
    clock = recent_window_start(60_000)
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    out = []
    for i in range(n):
        key = KEYS[i % len(KEYS)]
        clock += rng.randrange(15_000, 40_000) if rng.random() < 0.05 else rng.randrange(0, 400)
        r = rng.random()
        t = clock - (rng.randrange(0, GRACE_MS) if r < 0.08 else 0)
        t = clock - rng.randrange(20_000, 40_000) if r > 0.96 else t
        p = partition_for_key(key.encode(), PARTITIONS)
        st = max(stream_time[p], t)
        if t + GRACE_MS < st <= t + SIZE_MS + GRACE_MS:
            continue
        stream_time[p] = st
        out.append((key, t))
    return out


def model(inputs: list[Any]) -> tuple[dict[int, list[tuple[bytes, bytes]]], dict[str, Any]]:
    """Per partition the outputs in offset order; per key the final sessions and windows."""
    outputs: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    sessions: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    accepted: dict[str, list[int]] = defaultdict(list)  # by the sliding table
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    for r in inputs:
        key, t = r.key.decode(), r.timestamp
        st = stream_time[r.partition] = max(stream_time[r.partition], t)
        mine = sessions[key]
        joined = [
            s
            for s in mine
            if s[1] + GAP_MS + GRACE_MS >= st and s[1] >= t - GAP_MS and s[0] <= t + GAP_MS
        ]
        start = min([t] + [s[0] for s in joined])
        end = max([t] + [s[1] for s in joined])
        if end + GAP_MS + GRACE_MS < st:
            shown = "late"
        else:
            merged = (start, end, 1 + sum(s[2] for s in joined))
            sessions[key] = sorted([s for s in mine if s not in joined] + [merged])
            shown = f"{start},{end},{merged[2]}"
        if t + SIZE_MS + GRACE_MS < st:
            left = "-"
        else:
            accepted[key].append(t)
            low = max(0, t - SIZE_MS)
            left = str(sum(1 for x in accepted[key] if low <= x <= low + SIZE_MS))
        outputs[r.partition].append((r.key, f"{shown};{left}".encode()))
    final = {
        key: {
            "sessions": [{"start": s, "end": e, "value": v} for s, e, v in sessions[key]],
            "recent": sliding_windows(accepted[key]),
        }
        for key in KEYS
    }
    return dict(outputs), final


def sliding_windows(times: list[int]) -> list[dict[str, int]]:
    starts = set()
    for t in times:
        starts.add(max(0, t - SIZE_MS))
        if any(t < r <= t + 1 + SIZE_MS for r in times):
            starts.add(t + 1)
    return [
        {"start": s, "end": s + SIZE_MS, "value": sum(1 for r in times if s <= r <= s + SIZE_MS)}
        for s in sorted(starts)
    ]


async def get_json(url: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=10) as http:
        while True:
            try:
                response = await http.get(url)
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no answer from {url}"
            await asyncio.sleep(0.2)


async def test_sessions_and_sliding_windows_survive_a_kill_and_a_full_restore(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("sessions-in", partitions=PARTITIONS)
    sink = await new_topic("sessions-out", partitions=PARTITIONS)
    records = generate(7, 3000)
    app = app_under_test(
        bootstrap_servers, "tests.apps.sessions", source, sink, tmp_path, state_dirs=2
    )
    # Inputs arrive at 300/s while the first worker runs; it is killed -9 mid-stream, with a
    # transaction open, and the second one, on an empty state directory, restores both tables
    # from their changelogs and takes over.
    producing = asyncio.ensure_future(
        produce(bootstrap_servers, source, [(k.encode(), b"x", t) for k, t in records], rate=300)
    )
    first = app.spawn(0)
    try:
        await collect(
            bootstrap_servers, sink, len(records) // 4, timeout=90, workers=[first], settle=0
        )
    finally:
        first.kill()
    assert not producing.done()  # the kill came mid-stream
    port = load_kafka_local().free_ports(1)[0]
    second: WorkerProcess = app.spawn(
        1, ONCEFLOW_HTTP_HOST="127.0.0.1", ONCEFLOW_HTTP_PORT=port
    )  # state-1: empty, so every table restores from its changelog
    try:
        await producing
        inputs = await read_to_end(bootstrap_servers, source)
        expected, final = model(inputs)
        flat = [v for values in expected.values() for _, v in values]
        assert sum(v.startswith(b"late") for v in flat) > 10  # late for the sessions
        assert sum(v.endswith(b";-") for v in flat) > 10  # late for the sliding windows
        assert max(len(f["sessions"]) for f in final.values()) > 5
        output = await collect(bootstrap_servers, sink, len(inputs), timeout=120, workers=[second])
        assert by_partition(output) == expected
        url = f"http://127.0.0.1:{port}"
        tables = {t["name"]: t for t in (await get_json(f"{url}/tables"))["tables"]}
        assert tables["sessions"]["kind"] == "session"
        assert tables["recent"]["kind"] == "sliding"
        assert tables["recent"]["window_size_ms"] == SIZE_MS
        for key in KEYS:
            got = await get_json(f"{url}/tables/sessions/keys/{key}")
            assert got == {"key": key, "windows": final[key]["sessions"]}
            got = await get_json(f"{url}/tables/recent/keys/{key}")
            assert got == {"key": key, "windows": final[key]["recent"]}
        middle = final[KEYS[0]]["sessions"][1]["start"]
        got = await get_json(f"{url}/tables/sessions/keys/{KEYS[0]}?from={middle}")
        assert got["windows"] == final[KEYS[0]]["sessions"][1:]
    finally:
        assert second.stop() == 0, second.log_text()[-3000:]
