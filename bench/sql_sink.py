"""``python -m bench --sql``: rows/s of a SQL sink into PostgreSQL, with batches of 1, 100 and
1000 records, as a ratio to a bare asyncpg loop that inserts the same rows in transactions of
the same size, without Kafka, offsets or fencing, measured in the same run.

The sink runs in this process (``onceflow.runtime.sql_runner.SinkRunner``, its own consumer and
group, read_committed) on a one-partition topic filled beforehand; its rate is measured from its
first committed batch to its last (the group join before it is not counted), by watching
``onceflow_offsets``. PostgreSQL is started by ``scripts/postgres_local.py`` (fsync off for both
sides). Each figure is the median of ``--repeat`` runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from sqlalchemy import text

from bench.env import REPO, broker, machine
from onceflow import App, SinkRecord, SinkTransaction
from onceflow.runtime.clients import Clients
from onceflow.runtime.metrics import Metrics
from onceflow.runtime.sql_health import SinkMetrics
from onceflow.runtime.sql_offsets import create_tables, make_engine
from onceflow.runtime.sql_runner import SinkRunner
from onceflow.settings import load_settings

RESULTS = REPO / "bench" / "results"
BATCHES = (1, 100, 1000)
TABLE = "CREATE TABLE {name} (id BIGINT NOT NULL, customer TEXT NOT NULL, amount BIGINT NOT NULL)"
INSERT = "INSERT INTO {name} (id, customer, amount) VALUES ({params})"


def _rows(n: int) -> list[tuple[int, str, int]]:
    return [(i, f"c{i % 1000}", i % 97) for i in range(n)]


def _postgres_local() -> Any:
    spec = importlib.util.spec_from_file_location(
        "postgres_local", REPO / "scripts/postgres_local.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def _fresh_table(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        await conn.execute(TABLE.format(name=name))
    finally:
        await conn.close()


async def bare(dsn: str, rows: list[tuple[int, str, int]], batch: int) -> float:
    """Rows/s of plain asyncpg: one transaction per ``batch`` rows, executemany."""
    await _fresh_table(dsn, "bare_rows")
    conn = await asyncpg.connect(dsn)
    sql = INSERT.format(name="bare_rows", params="$1, $2, $3")
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            async with conn.transaction():
                await conn.executemany(sql, rows[i : i + batch])
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def _fill(bootstrap: str, topic: str, rows: list[tuple[int, str, int]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    await producer.start()
    try:
        for i, customer, amount in rows:
            await producer.send(topic, f"{i}:{amount}".encode(), key=customer.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def sink(bootstrap: str, dsn: str, rows: list[tuple[int, str, int]], batch: int) -> float:
    """Rows/s of a SQL sink writing the same rows, ``batch`` records per transaction."""
    await _fresh_table(dsn, "sink_rows")
    run = f"sqlbench-{batch}-{time.time_ns()}"
    await _fill(bootstrap, run, rows)
    app = App(run)
    source = app.topic(run, key_serde="str", value_serde="str")
    sql = text(INSERT.format(name="sink_rows", params=":id, :customer, :amount"))

    @app.sql_sink(source, batch=batch, name="rows")
    async def write(tx: SinkTransaction, records: Sequence[SinkRecord[str, str]]) -> None:
        params = []
        for r in records:
            i, amount = r.value.split(":")
            params.append({"id": int(i), "customer": r.key, "amount": int(amount)})
        await tx.execute(sql, params)

    settings = load_settings(bootstrap_servers=bootstrap, sql_sink_max_batch_wait_ms=20)
    sqlalchemy_dsn = dsn.replace("postgresql://", "postgresql+asyncpg://")

    async def no_bad_record(*_: Any) -> None:
        raise AssertionError("no record of the benchmark fails")

    engine = make_engine(sqlalchemy_dsn, settings)
    await create_tables(engine)  # before watching onceflow_offsets
    runner = SinkRunner(
        app.sql_sinks["rows"], group=f"{run}-sink", engine=engine,
        settings=settings, clients=Clients(settings, client_id=run),
        metrics=SinkMetrics(Metrics(run, eos=True)), owner="bench", on_bad_record=no_bad_record,
    )  # fmt: skip
    stop = asyncio.Event()
    running = asyncio.create_task(runner.run(stop))
    conn = await asyncpg.connect(dsn)
    try:
        first = last = None
        while last is None:
            assert not running.done(), running.exception()
            done = await conn.fetchval(
                "SELECT next_offset FROM onceflow_offsets WHERE consumer_group = $1", f"{run}-sink"
            )
            now = time.perf_counter()
            if done and first is None:
                first = (now, done)
            if done == len(rows):
                last = now
            await asyncio.sleep(0.005)
        assert first is not None
        return (len(rows) - first[1]) / (last - first[0])
    finally:
        stop.set()
        await running
        await runner.close()
        await conn.close()


async def run(bootstrap: str | None, repeat: int, records: int, workdir: Path) -> dict[str, Any]:
    pg = _postgres_local()
    data_dir = Path(tempfile.mkdtemp(prefix="onceflow-bench-pg-"))
    dsn = pg.start(data_dir, _free_port())
    results: dict[str, Any] = {}
    try:
        async with broker(bootstrap, workdir) as kafka:
            info = machine(kafka)
            for batch in BATCHES:
                n = min(records, 2_000) if batch == 1 else records
                rows = _rows(n)
                sinks, bares = [], []
                for _ in range(repeat):  # paired: the bare loop right after the sink
                    sinks.append(await sink(kafka.bootstrap, dsn, rows, batch))
                    bares.append(await bare(dsn, rows, batch))
                s, b = statistics.median(sinks), statistics.median(bares)
                results[str(batch)] = {
                    "records": n, "sink_rows_per_s": sinks, "bare_rows_per_s": bares,
                    "sink_median": s, "bare_median": b, "ratio": s / b,
                }  # fmt: skip
                print(f"batch {batch:>4}: sink {s:>9,.0f} rows/s, bare asyncpg {b:>9,.0f} rows/s, "
                      f"ratio {s / b:.2f}", flush=True)  # fmt: skip
    finally:
        pg.stop(data_dir, "immediate")
        shutil.rmtree(data_dir, ignore_errors=True)
    return {"machine": info, "repeat": repeat, "records": records, "batches": results}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(bootstrap: str | None, repeat: int, records: int, workdir: Path) -> Path:
    result = asyncio.run(run(bootstrap, repeat, records, workdir))
    out = RESULTS / f"sql-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return out
