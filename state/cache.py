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


# What an entry costs beyond its key's and value's lengths: two bytes objects' headers and the
# OrderedDict's slot and link (measured with tracemalloc: ~190 bytes for a 12-byte key and an
# 8-byte value).
ENTRY_OVERHEAD = 170


class LruCache:
    """At most ``capacity`` entries ``key -> value | None`` (None: known to be absent), and at
    most ``max_bytes`` of them counted as ``len(key) + len(value) + ENTRY_OVERHEAD`` (None: no
    byte bound). A byte bound keeps memory flat whatever the value sizes: a worker holds one
    cache per store partition, twelve for two tables over six partitions."""

    __slots__ = ("_bytes", "_capacity", "_entries", "_max_bytes")

    def __init__(self, capacity: int, max_bytes: int | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0 or None, got {max_bytes}")
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._bytes = 0
        self._entries: OrderedDict[bytes, bytes | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        """The entries' accounted size (see the class docstring)."""
        return self._bytes

    def lookup(self, key: bytes) -> bytes | Miss | None:
        """The cached value (None = absent), or ``MISS``."""
        try:
            value = self._entries[key]
        except KeyError:
            return MISS
        self._entries.move_to_end(key)
        return value

    def store(self, key: bytes, value: bytes | None) -> None:
        """Remember ``value`` for ``key``, evicting the least recently used entries if full."""
        if self._capacity == 0:
            return
        entries = self._entries
        old = entries.get(key, MISS)
        if old is not MISS:
            self._bytes -= _cost(key, old)
        entries[key] = value
        entries.move_to_end(key)
        self._bytes += _cost(key, value)
        limit = self._max_bytes
        while entries and (
            len(entries) > self._capacity or (limit is not None and self._bytes > limit)
        ):
            evicted, dropped = entries.popitem(last=False)
            self._bytes -= _cost(evicted, dropped)

    def forget(self, key: bytes) -> None:
        """Drop ``key`` if cached."""
        old = self._entries.pop(key, MISS)
        if old is not MISS:
            self._bytes -= _cost(key, old)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._bytes = 0


def _cost(key: bytes, value: bytes | None) -> int:
    return len(key) + (0 if value is None else len(value)) + ENTRY_OVERHEAD
