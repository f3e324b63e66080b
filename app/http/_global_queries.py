"""``GET /tables/{name}/keys/{key}`` for a global table: answered by whichever instance is asked.

Every instance holds all partitions of a global table's topic, so there is no owner to find and
nothing to proxy (docs/architecture.md, *Global tables*). The answer is the value this instance
has flushed to its store (at most one commit interval behind what its handlers read); 503 with
``Retry-After`` while the table is still loading or the worker is stopping.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import HTTPException

from onceflow.http._types import KeyValue, TableInfo, WorkerView
from onceflow.serdes import parse_text_key, render_value

__all__ = ["global_infos", "global_lookup"]

T = TypeVar("T")
Reader = Callable[[Callable[[bytes], bytes | None], bytes], Awaitable[bytes | None]]


async def global_lookup(worker: WorkerView, name: str, text: str, read: Reader) -> KeyValue:
    """The value of ``text`` (the key as typed) in global table ``name``, from the local store;
    ``read(fn, key)`` runs the store read off the event loop."""
    table = worker.app.global_tables[name]
    try:
        key = parse_text_key(table.key_serde, text)
        key_bytes = table.key_serde.serialize(key)
    except Exception as exc:  # custom serdes may raise anything: it is still the client's text
        raise HTTPException(
            400, f"key {text!r:.80} is not a valid key for serde {table.key_serde.name!r}: {exc}"
        ) from None
    retry = {"Retry-After": "1"}
    if worker.phase in ("stopping", "stopped"):
        raise HTTPException(503, f"worker is {worker.phase}; retry", headers=retry)
    loading = worker.global_tables.loading()
    if loading is not None:
        raise HTTPException(503, f"{loading}; retry", headers=retry)
    raw = await read(worker.global_tables.store(name).committed_get, key_bytes)
    shown = render_value(table.key_serde, key)
    if raw is None:
        raise HTTPException(404, f"key {shown!r} not found in global table {name!r}")
    return KeyValue(key=shown, value=render_value(table.value_serde, table.value(raw)))


def global_infos(worker: WorkerView) -> list[TableInfo]:
    """``/tables`` entries of the global tables: kind ``global``, every partition of the topic
    (``partitions`` once loaded, ``restoring`` while loading), no task group."""
    infos = []
    for name in sorted(worker.app.global_tables):
        table = worker.app.global_tables[name]
        held = worker.global_tables.partitions(name)
        loaded = worker.global_tables.loading() is None
        infos.append(
            TableInfo(
                name=name,
                kind="global",
                key_serde=table.key_serde.name,
                value_serde=table.value_serde.name,
                group="",
                changelog_topic=table.topic,
                num_partitions=len(held) or None,
                partitions=held if loaded else [],
                restoring=[] if loaded else held,
                window_size_ms=None,
            )
        )
    return infos
