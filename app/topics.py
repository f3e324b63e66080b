"""Topics as the App declares them: a name and the serdes of its keys and values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from onceflow.serdes import Serde, resolve_serde

__all__ = ["RepartitionTopic", "Topic"]

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True, eq=False)
class Topic(Generic[K, V]):
    """A Kafka topic with its key and value serdes.

    Create topics with ``App.topic``; pass them to ``@app.handler`` (sources) and ``ctx.send``.
    """

    name: str
    key_serde: Serde[K]
    value_serde: Serde[V]
    partitions: int | None = None  # for ``onceflow topics create``; None = broker default
    config: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        name: str,
        key_serde: str | Serde[Any] = "bytes",
        value_serde: str | Serde[Any] = "bytes",
        *,
        partitions: int | None = None,
    ) -> Topic[Any, Any]:
        return Topic(name, resolve_serde(key_serde), resolve_serde(value_serde), partitions)

    def __repr__(self) -> str:
        return f"Topic({self.name!r})"


@dataclass(frozen=True, eq=False)
class RepartitionTopic(Topic[K, V]):
    """An internal topic to re-key through (``App.repartition``): a handler sends to it with a
    new key, another handler consumes it. Named ``<app_id>-<base_name>-repartition``; the worker
    creates it (``partitions``: None = the partition count of the group that reads it, or of the
    app's widest source) and purges what every reader committed."""

    base_name: str = ""

    def __repr__(self) -> str:
        return f"RepartitionTopic({self.name!r})"
