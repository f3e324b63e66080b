"""A bounded LRU cache of committed values, remembering absent keys too.

Caching misses matters: a counting aggregation asks for every new key once, and without a
negative entry each first-seen key would cost a SQLite round trip (~0.1 ms through sqlitedict).
Not thread-safe by itself: the store partition guards it with its state lock.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

__all__ = ["MISS", "LruCache", "Miss"]


class Miss(enum.Enum):
    """Type of the ``MISS`` sentinel: the cache does not know the key."""

    MISS = enum.auto()


MISS = Miss.MISS


class LruCache:
    """At most ``capacity`` entries ``key -> value | None`` (None: known to be absent)."""

    __slots__ = ("_capacity", "_entries")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        self._capacity = capacity
        self._entries: OrderedDict[bytes, bytes | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, key: bytes) -> bytes | Miss | None:
        """The cached value (None = absent), or ``MISS``."""
        try:
            value = self._entries[key]
        except KeyError:
            return MISS
        self._entries.move_to_end(key)
        return value

    def store(self, key: bytes, value: bytes | None) -> None:
        """Remember ``value`` for ``key``, evicting the least recently used entry if full."""
        if self._capacity == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, key: bytes) -> None:
        """Drop ``key`` if cached."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
