"""Bounded LRU caches of committed values, remembering absent keys too.

Caching misses matters: a counting aggregation asks for every new key once, and without a
negative entry each first-seen key would cost a SQLite round trip.

Two kinds, with the same interface (``ReadCache``):

* ``LruCache``: one store partition's own cache. Lookups may come from any thread; changes are
  not thread-safe by themselves: the store partition makes them under its state lock.
* ``SharedCache``: one memory budget for every store partition of a worker, one LRU over all of
  them; each store partition reads and writes it through its ``view()``. The budget follows the
  working set: a store partition whose keys are hot holds most of it, an idle one's entries age
  out. Thread-safe (a lock of its own for what changes its accounting: store partitions flush
  and load in worker threads; lookups take no lock).
"""

from __future__ import annotations

import enum
import itertools
import struct
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

__all__ = [
    "MAX_SHARDS",
    "MISS",
    "SHARD_BYTES",
    "CacheView",
    "LruCache",
    "Miss",
    "ReadCache",
    "SharedCache",
]


class Miss(enum.Enum):
    """Type of the ``MISS`` sentinel: the cache does not know the key."""

    MISS = enum.auto()


MISS = Miss.MISS


# What an entry costs beyond its key's and value's lengths: two bytes objects' headers and the
# OrderedDict's slot and link (measured with tracemalloc: ~190 bytes for a 12-byte key and an
# 8-byte value).
ENTRY_OVERHEAD = 170


class ReadCache(Protocol):
    """What a store partition needs of its read cache."""

    def __len__(self) -> int: ...

    @property
    def size_bytes(self) -> int: ...

    def lookup(self, key: bytes) -> bytes | Miss | None:
        """The cached value (None = absent), or ``MISS``."""
        ...

    def store(self, key: bytes, value: bytes | None) -> None:
        """Remember ``value`` for ``key``, evicting the least recently used entries if full."""
        ...

    def store_many(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """``store`` each item, in order."""
        ...

    def forget(self, key: bytes) -> None:
        """Drop ``key`` if cached."""
        ...

    def clear(self) -> None:
        """Drop every entry."""
        ...

    def close(self) -> None:
        """The store partition closed (its entries may go)."""
        ...


class LruCache:
    """At most ``capacity`` entries ``key -> value | None`` (None: known to be absent), and at
    most ``max_bytes`` of them counted as ``len(key) + len(value) + ENTRY_OVERHEAD`` (None: no
    byte bound). A byte bound keeps memory flat whatever the value sizes. (The runtime gives
    its store partitions views of one ``SharedCache`` instead.)"""

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
            self._entries.move_to_end(key)  # evicted meanwhile by a thread: a miss
        except KeyError:
            return MISS
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

    def store_many(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        """``store`` each item, in order."""
        for key, value in items:
            self.store(key, value)

    def forget(self, key: bytes) -> None:
        """Drop ``key`` if cached."""
        old = self._entries.pop(key, MISS)
        if old is not MISS:
            self._bytes -= _cost(key, old)

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._bytes = 0

    def close(self) -> None:
        """Drop every entry."""
        self.clear()


def _cost(key: bytes, value: bytes | None) -> int:
    return len(key) + (0 if value is None else len(value)) + ENTRY_OVERHEAD


_PREFIX = struct.Struct(">Q")
_PREFIX_LEN = _PREFIX.size


class _Owner:
    """A prefix's live entries and their accounted bytes; ``retired`` once its view moved on
    (cleared or closed): the record goes with the prefix's last entry."""

    __slots__ = ("bytes", "entries", "retired")

    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0
        self.retired = False


SHARD_BYTES = 2**20
"""Budget of one shard of a ``SharedCache`` (at most ``MAX_SHARDS`` of them)."""
MAX_SHARDS = 64


class SharedCache:
    """At most ``max_bytes`` of entries (counted like ``LruCache``'s, the key with an 8-byte
    owner prefix) shared by every ``view()``: a worker's budget for all its store partitions.

    The entries of all views are spread by key hash over shards of about ``SHARD_BYTES`` each,
    each an LRU of its share of the budget: least recently used first among every view's
    entries, as one LRU would, but no dict grows big. (One dict of ~170k entries resized in
    whichever thread stored into it, a ~10 MB table each time; glibc keeps such blocks in
    per-thread arenas, and a worker's RSS grew 3-4 MB per MiB of budget.)

    Entries are keyed ``owner prefix + key``; a view's ``clear()`` takes a fresh prefix, so its
    old entries are never found again and age out first (nothing reads them) instead of being
    searched for: clearing is O(1), and memory never exceeds the budget meanwhile.
    """

    __slots__ = (
        "_bytes",
        "_lock",
        "_max_bytes",
        "_owners",
        "_prefixes",
        "_shard_bytes",
        "_shard_limit",
        "_shards",
    )

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"cache max_bytes must be >= 0, got {max_bytes}")
        self._max_bytes = max_bytes
        self._bytes = 0
        count = max(1, min(MAX_SHARDS, max_bytes // SHARD_BYTES))
        self._shards: list[OrderedDict[bytes, bytes | None]] = [OrderedDict() for _ in range(count)]
        self._shard_bytes = [0] * count
        self._shard_limit = max_bytes // count
        self._lock = threading.Lock()
        self._prefixes = itertools.count(1)
        self._owners: dict[bytes, _Owner] = {}

    @property
    def max_bytes(self) -> int:
        """The budget."""
        return self._max_bytes

    @property
    def size_bytes(self) -> int:
        """Every entry's accounted size, those of cleared views included until they age out."""
        return self._bytes

    def __len__(self) -> int:
        return sum(len(shard) for shard in self._shards)

    def view(self) -> CacheView:
        """A store partition's cache, drawing on this budget."""
        return CacheView(self)

    def _new_prefix(self) -> bytes:
        with self._lock:
            prefix = _PREFIX.pack(next(self._prefixes))
            self._owners[prefix] = _Owner()
        return prefix

    def _usage(self, prefix: bytes) -> tuple[int, int]:
        with self._lock:
            owner = self._owners.get(prefix)
            return (0, 0) if owner is None else (owner.entries, owner.bytes)

    def _lookup(self, full: bytes) -> bytes | Miss | None:
        # Without the lock: a lookup changes no accounting, and each OrderedDict operation is
        # atomic under the GIL. An entry evicted between the two is a miss (a read of SQLite);
        # the lock would make the event loop wait for a thread storing a whole batch.
        shards = self._shards
        entries = shards[hash(full) % len(shards)]
        try:
            value = entries[full]
            entries.move_to_end(full)
        except KeyError:
            return MISS
        return value

    def _store(self, prefix: bytes, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        # The hot loop of a flush and a load (every written or loaded key, in a worker thread
        # holding the GIL): accounting in locals, an entry replaced in place where it is.
        shards, sizes, limit = self._shards, self._shard_bytes, self._shard_limit
        count = len(shards)
        overhead = ENTRY_OVERHEAD + _PREFIX_LEN
        with self._lock:
            owners = self._owners
            owner = owners.get(prefix)
            if owner is None or owner.retired:  # stored under a prefix cleared meanwhile
                return
            added_bytes = added_entries = 0
            for key, value in items:
                full = prefix + key
                index = hash(full) % count
                entries = shards[index]
                cost = len(key) + overhead + (0 if value is None else len(value))
                old = entries.get(full, MISS)
                if old is not MISS:
                    delta = cost - (len(key) + overhead + (0 if old is None else len(old)))
                    if cost > limit:
                        del entries[full]
                        delta, added_entries = -(cost - delta), added_entries - 1
                    else:
                        entries[full] = value
                        entries.move_to_end(full)
                    sizes[index] += delta
                    added_bytes += delta
                    if delta <= 0:
                        continue
                elif cost > limit:
                    continue
                else:
                    entries[full] = value
                    sizes[index] += cost
                    added_bytes += cost
                    added_entries += 1
                while sizes[index] > limit:
                    evicted, dropped = entries.popitem(last=False)
                    evicted_cost = _cost(evicted, dropped)
                    sizes[index] -= evicted_cost
                    by_prefix = evicted[:_PREFIX_LEN]
                    if by_prefix == prefix:
                        added_bytes -= evicted_cost
                        added_entries -= 1
                        continue
                    self._bytes -= evicted_cost
                    by = owners[by_prefix]
                    by.entries -= 1
                    by.bytes -= evicted_cost
                    if by.retired and by.entries == 0:
                        del owners[by_prefix]
            self._bytes += added_bytes
            owner.bytes += added_bytes
            owner.entries += added_entries

    def _forget(self, prefix: bytes, full: bytes) -> None:
        index = hash(full) % len(self._shards)
        with self._lock:
            old = self._shards[index].pop(full, MISS)
            if old is not MISS:
                cost = _cost(full, old)
                self._shard_bytes[index] -= cost
                self._bytes -= cost
                owner = self._owners[prefix]
                owner.entries -= 1
                owner.bytes -= cost

    def _retire(self, prefix: bytes) -> None:
        with self._lock:
            owner = self._owners.get(prefix)
            if owner is None or owner.retired:
                return
            if owner.entries == 0:
                del self._owners[prefix]
            else:
                owner.retired = True


class CacheView:
    """One store partition's part of a ``SharedCache`` (a ``ReadCache``). ``len`` and
    ``size_bytes`` count its own live entries only."""

    __slots__ = ("_prefix", "_shared")

    def __init__(self, shared: SharedCache) -> None:
        self._shared = shared
        self._prefix = shared._new_prefix()

    def __len__(self) -> int:
        return self._shared._usage(self._prefix)[0]

    @property
    def size_bytes(self) -> int:
        return self._shared._usage(self._prefix)[1]

    def lookup(self, key: bytes) -> bytes | Miss | None:
        return self._shared._lookup(self._prefix + key)

    def store(self, key: bytes, value: bytes | None) -> None:
        self._shared._store(self._prefix, ((key, value),))

    def store_many(self, items: Iterable[tuple[bytes, bytes | None]]) -> None:
        self._shared._store(self._prefix, items)

    def forget(self, key: bytes) -> None:
        self._shared._forget(self._prefix, self._prefix + key)

    def clear(self) -> None:
        """Forget every entry of this view (they age out of the shared LRU first)."""
        old, self._prefix = self._prefix, self._shared._new_prefix()
        self._shared._retire(old)

    def close(self) -> None:
        """The store partition closed: its entries age out, nothing is stored any more."""
        self._shared._retire(self._prefix)
