"""The in-memory writes of one open transaction, shared by every StorePartition implementation.

A ``WriteBatch`` holds point writes (``None`` marks a delete) and range deletions. Range deletions
are kept as a set of disjoint half-open intervals rather than expanded into keys, because the keys
they cover usually live only in the committed store (e.g. an expired window segment).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence

__all__ = ["RangeSet", "WriteBatch", "merge_range", "merge_range_paged"]


class RangeSet:
    """Disjoint, sorted half-open byte ranges ``[lo, hi)``; membership in O(log n)."""

    __slots__ = ("_his", "_los")

    def __init__(self) -> None:
        self._los: list[bytes] = []
        self._his: list[bytes] = []

    def add(self, lo: bytes, hi: bytes) -> None:
        """Add ``[lo, hi)``, merging it with the ranges it overlaps or touches."""
        if lo >= hi:
            return
        # Intervals i..j-1 overlap or touch the new one: hi_k >= lo and lo_k <= hi.
        i = bisect_left(self._his, lo)
        j = bisect_right(self._los, hi)
        if i < j:
            lo = min(lo, self._los[i])
            hi = max(hi, self._his[j - 1])
        self._los[i:j] = [lo]
        self._his[i:j] = [hi]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, bytes):
            return False
        i = bisect_right(self._los, key) - 1
        return i >= 0 and key < self._his[i]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(zip(self._los, self._his, strict=True))

    def __len__(self) -> int:
        return len(self._los)

    def __bool__(self) -> bool:
        return bool(self._los)


class WriteBatch:
    """Writes of one transaction: ``writes`` (last value per key, ``None`` = delete) applied
    after ``ranges`` (range deletions). A write made after a range deletion survives it."""

    __slots__ = ("_sorted_keys", "ranges", "writes")

    def __init__(self) -> None:
        self.writes: dict[bytes, bytes | None] = {}
        self.ranges = RangeSet()
        # Sorted view of writes' keys for range reads, rebuilt lazily: puts are the hot path.
        self._sorted_keys: list[bytes] | None = None

    def __bool__(self) -> bool:
        return bool(self.writes) or bool(self.ranges)

    def put(self, key: bytes, value: bytes | None) -> None:
        """Record a write (``None`` = delete)."""
        if self._sorted_keys is not None and key not in self.writes:
            self._sorted_keys = None
        self.writes[key] = value

    def delete_range(self, lo: bytes, hi: bytes) -> None:
        """Delete every key in ``[lo, hi)``, including earlier writes of this batch."""
        if lo >= hi:
            return
        for key in self.keys_between(lo, hi):
            del self.writes[key]
        if self._sorted_keys is not None:
            self._sorted_keys = None
        self.ranges.add(lo, hi)

    def lookup(self, key: bytes) -> tuple[bool, bytes | None]:
        """``(True, value)`` when this batch decides the key's value, else ``(False, None)``."""
        if key in self.writes:
            return True, self.writes[key]
        if key in self.ranges:
            return True, None
        return False, None

    def keys_between(self, lo: bytes, hi: bytes) -> list[bytes]:
        """Keys written in this batch with ``lo <= key < hi``, in key order."""
        if self._sorted_keys is None:
            self._sorted_keys = sorted(self.writes)
        keys = self._sorted_keys
        return keys[bisect_left(keys, lo) : bisect_left(keys, hi)]

    def absorb(self, later: WriteBatch) -> None:
        """Append ``later``'s operations after this batch's, as if made in one transaction."""
        for lo, hi in later.ranges:
            self.delete_range(lo, hi)
        for key, value in later.writes.items():
            self.put(key, value)


def merge_range(
    committed: Sequence[tuple[bytes, bytes]],
    overlays: Sequence[WriteBatch],
    lo: bytes,
    hi: bytes,
) -> list[tuple[bytes, bytes]]:
    """Overlay ``overlays`` (oldest first) on ``committed`` items of ``[lo, hi)``; sorted result."""
    live = [batch for batch in overlays if batch]
    if not live:
        return list(committed)
    merged: dict[bytes, bytes | None] = dict(committed)
    for batch in live:
        if batch.ranges:
            for key in [key for key in merged if key in batch.ranges]:
                del merged[key]
        for key in batch.keys_between(lo, hi):
            merged[key] = batch.writes[key]
    return sorted((key, value) for key, value in merged.items() if value is not None)


def merge_range_paged(
    read: Callable[[bytes, bytes, int], Sequence[tuple[bytes, bytes]]],
    overlays: Sequence[WriteBatch],
    lo: bytes,
    hi: bytes,
    limit: int,
) -> list[tuple[bytes, bytes]]:
    """The first ``limit`` items of ``merge_range``, reading committed items page by page with
    ``read(lo, hi, page_size)``."""
    # Overlays may hide committed rows, so read pages of growing size until enough survive;
    # a page fixes the merged result for every key up to its last row.
    out: list[tuple[bytes, bytes]] = []
    start, page = lo, max(limit, 16)
    while len(out) < limit and start < hi:
        rows = read(start, hi, page)
        end = hi if len(rows) < page else rows[-1][0] + b"\x00"
        out.extend(merge_range(rows, overlays, start, end))
        start, page = end, page * 2
    return out[:limit]
