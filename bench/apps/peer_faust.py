"""The reference app (windowed_count) on faust-streaming, for ``python -m bench --peers``.

Run by the peer's own virtualenv (``bench.peers``), never with onceflow importable: a 5-minute
tumbling window count per key, ``key -> str(count)`` after every update, exactly once, faust's
default store (``memory://``, backed by its changelog topic). Settings come from ``PEER_*``
environment variables; everything else is faust's default.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import Any

import faust

env = os.environ
app = faust.App(
    env["PEER_GROUP"],
    broker=f"kafka://{env['PEER_BOOTSTRAP']}",
    processing_guarantee="exactly_once",
    broker_commit_interval=int(env["PEER_COMMIT_INTERVAL_MS"]) / 1000,
    topic_partitions=int(env["PEER_PARTITIONS"]),
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",  # faust's default too; onceflow's
    datadir=env["PEER_STATE_DIR"],
    web_enabled=False,
)
source = app.topic(
    env["PEER_INPUT"], key_type=bytes, value_type=bytes, key_serializer="raw",
    value_serializer="raw",
)  # fmt: skip
sink = app.topic(
    env["PEER_OUTPUT"], key_type=bytes, value_type=bytes, key_serializer="raw",
    value_serializer="raw",
)  # fmt: skip
# Windows on the record's timestamp (faust's default for windowed tables), no grace.
counts = app.Table("counts", default=int, key_type=str, value_type=int).tumbling(
    timedelta(minutes=5), expires=timedelta(minutes=5)
)


@app.agent(source)
async def count(stream: Any) -> None:
    async for key, _value in stream.items():
        k = key.decode()
        counts[k] += 1
        await sink.send(key=key, value=str(counts[k].current()).encode())


if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "info", "--without-web"]
    app.main()
