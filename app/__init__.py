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
