"""Every metric name the chart's Grafana dashboard and alert rules read is exported by a running
worker: a real ``onceflow worker`` subprocess of an app with windows (emit="close"), a table, a
timer and the dead-letter topic, on the real broker, scraped over HTTP once it has processed,
closed windows, fired its timer, dropped a late record and dead-lettered a bad one."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import httpx
from kafka_helpers import load_kafka_local, recent_window_start
from monitoring import missing_names, used_names
from prometheus_client.parser import text_string_to_metric_families
from workers import app_under_test, produce

# The series the inputs below must have moved before the scrape counts.
MOVED = (
    "onceflow_records_processed_total",
    "onceflow_transactions_total",
    "onceflow_windows_closed_total",
    "onceflow_timer_firings_total",
    "onceflow_late_records_dropped_total",
    "onceflow_dead_letter_records_total",
)


def moved(exposition: str) -> set[str]:
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.value > 0
    }


async def test_every_metric_the_dashboard_and_rules_read_is_exported(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    source = await new_topic("mon-in")
    sink = await new_topic("mon-out")
    ticks = await new_topic("mon-ticks")
    port = load_kafka_local().free_ports(1)[0]
    app = app_under_test(
        bootstrap_servers, "tests.apps.finals", source, sink, tmp_path,
        ONCEFLOW_TEST_TICKS=ticks, ONCEFLOW_COMMIT_INTERVAL_MS=200,
        ONCEFLOW_HTTP_HOST="127.0.0.1", ONCEFLOW_HTTP_PORT=port,
    )  # fmt: skip
    worker = app.spawn(0)
    base = recent_window_start(1000)
    one = struct.pack(">q", 1)
    # 8 s of event time: windows close, the 3 s stream-time timer fires.
    inputs = [(f"k{i % 4}".encode(), one, base + i * 100) for i in range(80)]
    # Then a record for a window closed long ago (late) and one the int64 serde cannot read.
    inputs += [(b"k0", one, base), (b"k1", b"not an int64", base + 8000)]
    await produce(bootstrap_servers, source, inputs)
    exposition = ""
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not set(MOVED) <= moved(exposition):
                assert worker.alive, f"worker exited:\n{worker.log_text()[-3000:]}"
                await asyncio.sleep(0.5)
                try:
                    exposition = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                except httpx.TransportError:
                    continue
    finally:
        worker.stop()
    assert set(MOVED) <= moved(exposition), f"not moved: {set(MOVED) - moved(exposition)}"
    assert len(used_names()) >= 20
    assert missing_names(exposition) == {}
