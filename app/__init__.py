"""onceflow: exactly-once stateful stream processing on Apache Kafka, for asyncio.

Example::

    from app import App, Context, Tumbling

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
    from app.app import App, Handler
    from app.context import Context
    from app.errors import (
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
    from app.serdes import Serde, resolve_serde
    from app.settings import Settings, load_settings
    from app.tables import Table, WindowedTable, WindowValue
    from app.topics import Topic
    from app.windows import Hopping, Tumbling

# Where each public name lives. Imported on first use (PEP 562), so that ``onceflow``'s entry
# point (``app.cli``) can install its SIGTERM handler before the heavy imports (aiokafka,
# FastAPI, pydantic) run: a pod stopped in its first seconds then exits 0, not -15.
_WHERE = {
    "App": "app.app",
    "Handler": "app.app",
    "Context": "app.context",
    "ChangelogMissingError": "app.errors",
    "ConfigurationError": "app.errors",
    "CopartitioningError": "app.errors",
    "HandlerFailedError": "app.errors",
    "OnceflowError": "app.errors",
    "SerdeError": "app.errors",
    "StateError": "app.errors",
    "StoreCorruptError": "app.errors",
    "StoreLockedError": "app.errors",
    "TaskFencedError": "app.errors",
    "TopicNotFoundError": "app.errors",
    "WrongPartitionError": "app.errors",
    "Serde": "app.serdes",
    "resolve_serde": "app.serdes",
    "Settings": "app.settings",
    "load_settings": "app.settings",
    "Table": "app.tables",
    "WindowedTable": "app.tables",
    "WindowValue": "app.tables",
    "Topic": "app.topics",
    "Hopping": "app.windows",
    "Tumbling": "app.windows",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'app' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


__all__ = [
    "App",
    "ChangelogMissingError",
    "ConfigurationError",
    "Context",
    "CopartitioningError",
    "Handler",
    "HandlerFailedError",
    "Hopping",
    "OnceflowError",
    "Serde",
    "SerdeError",
    "Settings",
    "StateError",
    "StoreCorruptError",
    "StoreLockedError",
    "Table",
    "TaskFencedError",
    "Topic",
    "TopicNotFoundError",
    "Tumbling",
    "WindowValue",
    "WindowedTable",
    "WrongPartitionError",
    "load_settings",
    "resolve_serde",
]
