"""The reference app (windowed_count) on Quix Streams, for ``python -m bench --peers``.

Run by the peer's own virtualenv (``bench.peers``), never with onceflow importable: a 5-minute
tumbling window count per key, ``key -> str(count)`` after every update (``.current()``),
exactly once, Quix's default state store (RocksDB, backed by its changelog topic). Settings
come from ``PEER_*`` environment variables; everything else is Quix's default.
"""

from __future__ import annotations

import os
from typing import Any

from quixstreams import Application

env = os.environ
app = Application(
    broker_address=env["PEER_BOOTSTRAP"],
    consumer_group=env["PEER_GROUP"],
    processing_guarantee="exactly-once",
    commit_interval=int(env["PEER_COMMIT_INTERVAL_MS"]) / 1000,
    auto_offset_reset="earliest",  # onceflow's; Quix defaults to "latest"
    state_dir=env["PEER_STATE_DIR"],
)
source = app.topic(env["PEER_INPUT"], key_deserializer="str", value_deserializer="str")
sink = app.topic(env["PEER_OUTPUT"], key_serializer="str", value_serializer="str")


def _count(window: dict[str, Any]) -> str:
    return str(window["value"])


sdf = app.dataframe(source)
sdf = sdf.tumbling_window(duration_ms=300_000, grace_ms=0).count().current()
sdf = sdf.apply(_count)
sdf.to_topic(sink)

if __name__ == "__main__":
    app.run()
