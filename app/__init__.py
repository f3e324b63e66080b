"""onceflow: exactly-once stateful stream processing on Apache Kafka, for asyncio.

Example::

    from onceflow import App, Context, Tumbling

    app = App("eos-stream-app")
    clicks = app.topic("input-topic", key_serde="str", value_serde="str")
    out = app.topic("output-topic", key_serde="str", value_serde="str")
    counts = app.windowed_table("counts", window=Tumbling(minutes=5), default=0)

    @app.handler(clicks)
    async def count(ctx: Context, key: str, value: str) -> None:
        n = counts.add(ctx, key, 1)
        if n is not None:
            await ctx.send(out, key, str(n))

Run it with ``onceflow worker module:app``.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from onceflow.context import Context
    from onceflow.errors import (
        ChangelogMissingError,
        ConfigurationError,
        CopartitioningError,
        HandlerFailedError,
        OnceflowError,
        SerdeError,
        StateError,
        StoreCorruptError,
        StoreLockedError,
        TaskFencedError,
        TopicNotFoundError,
        WrongPartitionError,
    )
    from onceflow.global_tables import GlobalTable
    from onceflow.scope import TaskScope
    from onceflow.serdes import Serde, resolve_serde
    from onceflow.sessions import SessionTable
    from onceflow.settings import Settings, load_settings
    from onceflow.sliding import SlidingWindowedTable
    from onceflow.source_tables import SourceTable
    from onceflow.sql_sink import SinkRecord, SinkTransaction
    from onceflow.tables import Table, WindowedTable, WindowValue
    from onceflow.topics import Topic
    from onceflow.topology import App, Handler
    from onceflow.windows import Hopping, Session, Sliding, Tumbling

# Where each public name lives. Imported on first use (PEP 562), so that ``onceflow``'s entry
# point (``onceflow.cli``) can install its SIGTERM handler before the heavy imports (aiokafka,
# FastAPI, pydantic) run: a pod stopped in its first seconds then exits 0, not -15.
_WHERE = {
    "App": "onceflow.topology",
    "Handler": "onceflow.topology",
    "Context": "onceflow.context",
    "ChangelogMissingError": "onceflow.errors",
    "ConfigurationError": "onceflow.errors",
    "CopartitioningError": "onceflow.errors",
    "HandlerFailedError": "onceflow.errors",
    "OnceflowError": "onceflow.errors",
    "SerdeError": "onceflow.errors",
    "StateError": "onceflow.errors",
    "StoreCorruptError": "onceflow.errors",
    "StoreLockedError": "onceflow.errors",
    "TaskFencedError": "onceflow.errors",
    "TopicNotFoundError": "onceflow.errors",
    "WrongPartitionError": "onceflow.errors",
    "GlobalTable": "onceflow.global_tables",
    "TaskScope": "onceflow.scope",
    "Serde": "onceflow.serdes",
    "resolve_serde": "onceflow.serdes",
    "SessionTable": "onceflow.sessions",
    "Settings": "onceflow.settings",
    "load_settings": "onceflow.settings",
    "SlidingWindowedTable": "onceflow.sliding",
    "SinkRecord": "onceflow.sql_sink",
    "SinkTransaction": "onceflow.sql_sink",
    "SourceTable": "onceflow.source_tables",
    "Table": "onceflow.tables",
    "WindowedTable": "onceflow.tables",
    "WindowValue": "onceflow.tables",
    "Topic": "onceflow.topics",
    "Hopping": "onceflow.windows",
    "Session": "onceflow.windows",
    "Sliding": "onceflow.windows",
    "Tumbling": "onceflow.windows",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'onceflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "App",
    "ChangelogMissingError",
    "ConfigurationError",
    "Context",
    "CopartitioningError",
    "GlobalTable",
    "Handler",
    "HandlerFailedError",
    "Hopping",
    "OnceflowError",
    "Serde",
    "SerdeError",
    "Session",
    "SessionTable",
    "Settings",
    "SinkRecord",
    "SinkTransaction",
    "Sliding",
    "SlidingWindowedTable",
    "SourceTable",
    "StateError",
    "StoreCorruptError",
    "StoreLockedError",
    "Table",
    "TaskFencedError",
    "TaskScope",
    "Topic",
    "TopicNotFoundError",
    "Tumbling",
    "WindowValue",
    "WindowedTable",
    "WrongPartitionError",
    "load_settings",
    "resolve_serde",
]
