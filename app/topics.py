"""Topics as the App declares them: a name and the serdes of its keys and values."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from onceflow.serdes import Serde, resolve_serde

__all__ = ["Topic"]

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
