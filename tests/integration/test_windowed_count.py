"""The reference app (processors/windowed_count.py) on the seed's example: per key and 5-minute
tumbling window the emitted counts go 1, 2, …, n; boundaries are exact; late records are
dropped and counted."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from pathlib import Path

from kafka_helpers import read_to_end, recent_window_start, unique_name
from workers import WorkerProcess, collect, produce, worker_env

WINDOW = 5 * 60 * 1000
T0 = recent_window_start(WINDOW)  # a window start


def expected_outputs(inputs: list) -> tuple[dict[int, list[tuple[bytes, bytes]]], int]:
    """Model of the app, per partition in offset order: stream time, lateness, counts."""
    outputs: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    counts: dict[tuple[bytes, int], int] = defaultdict(int)
    stream_time: dict[int, int] = defaultdict(lambda: -1)
    late = 0
    for r in inputs:
        stream_time[r.partition] = max(stream_time[r.partition], r.timestamp)
        start = r.timestamp - r.timestamp % WINDOW
        if stream_time[r.partition] >= start + WINDOW:  # grace 0
            late += 1
            continue
        counts[(r.key, start)] += 1
        outputs[r.partition].append((r.key, str(counts[(r.key, start)]).encode()))
    return dict(outputs), late


async def test_windowed_count_matches_the_seed_example(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("wc-in", partitions=3)
    sink = await new_topic("wc-out", partitions=3)
    rng = random.Random(3)
    records = []
    ts = T0
    for i in range(6000):
        ts += rng.randrange(0, 600)  # ~6000 * 300 ms = 30 min: six windows
        if i % 250 == 249:
            records.append((b"k-late", b"x", ts - WINDOW - 1))  # older than the open window
        # exact boundaries: a record at a window's first and last millisecond
        stamp = ts - ts % WINDOW if i % 400 == 0 else ts
        stamp = stamp + WINDOW - 1 if i % 400 == 1 and stamp % WINDOW == 0 else stamp
        records.append((f"user-{i % 13}".encode(), b"click", stamp))
    await produce(bootstrap_servers, source, records)
    env = worker_env(
        bootstrap_servers,
        unique_name("wc"),
        tmp_path / "state",
        ONCEFLOW_APP_ID=unique_name("eos-stream-app"),
        ONCEFLOW_INPUT_TOPIC=source,
        ONCEFLOW_OUTPUT_TOPIC=sink,
    )
    inputs = await read_to_end(bootstrap_servers, source)
    expected, late = expected_outputs(inputs)
    assert late > 0
    total = sum(len(v) for v in expected.values())
    worker = WorkerProcess("onceflow.examples.windowed_count", env, tmp_path / "worker.log").start()
    try:
        output = await collect(bootstrap_servers, sink, total, timeout=90, workers=[worker])
    finally:
        assert worker.stop() == 0, worker.log_text()[-3000:]
    got: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
    for r in output:
        got[r.partition].append((r.key, r.value))
    assert dict(got) == expected
    # per key and window the counts run 1..n without gap or repeat
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for r in output:
        per_key[r.key].append(int(r.value))
    for counts in per_key.values():
        for previous, current in itertools.pairwise(counts):
            assert current == previous + 1 or current == 1
