"""A windowed key-value store on top of any StorePartition.

Store key layout (big-endian, so byte order is numeric order)::

    segment_id + 2**63 (8 bytes) | len(key) (4 bytes) | key | window_start + 2**63 (8 bytes)

with ``segment_id = window_start // segment_interval_ms``. The 2**63 bias keeps negative starts in
order. Segments are contiguous key ranges, so dropping every expired segment is a single
``delete_range``; inside a segment a key's windows are contiguous and ordered by start, so
``fetch`` is one range read per segment.

Changelog key: ``key | window_start`` (8 bytes, signed big-endian) — Kafka Streams'
``WindowKeySchema`` without the sequence number.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Self

from onceflow.errors import StateError
from onceflow.state.typing import StorePartition
from onceflow.state.wrapped import Wrapped

__all__ = ["WindowedStorePartition", "changelog_key", "parse_changelog_key"]

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_BIAS = 1 << 63
_PAST_LAST_SEGMENT = b"\xff" * 9  # sorts after every store key
# Up to this many segments in a fetch range are read directly; beyond, only those that exist.
_DIRECT_SEGMENTS = 8


def changelog_key(key: bytes, start: int) -> bytes:
    """``key`` followed by the window start as 8-byte signed big-endian."""
    return key + _I64.pack(start)


def parse_changelog_key(data: bytes) -> tuple[bytes, int]:
    """Inverse of ``changelog_key``; StateError for a record too short to be one."""
    if len(data) < _I64.size:
        raise StateError(
            f"windowed changelog key of {len(data)} bytes is shorter than its 8-byte window "
            "start: the changelog topic holds records of another store"
        )
    return data[: -_I64.size], int(_I64.unpack_from(data, len(data) - _I64.size)[0])


def _segment_prefix(segment: int) -> bytes:
    biased = segment + _BIAS
    return _PAST_LAST_SEGMENT if biased >= 1 << 64 else _U64.pack(biased)


class WindowedStorePartition(Wrapped):
    """Windows ``(key, window_start) -> value`` of one (store, partition), kept in ``inner``.

    ``expire_before`` drops expired windows segment-wise; windows that start before the last
    expiry bound are hidden from reads and from the changelog even while their segment is
    still on disk. Transactions (flush, discard, checkpoint) are ``inner``'s.
    """

    def __init__(self, inner: StorePartition, *, segment_interval_ms: int) -> None:
        if segment_interval_ms <= 0:
            raise ValueError(f"segment_interval_ms must be > 0, got {segment_interval_ms}")
        self.inner = inner
        self.segment_interval_ms = segment_interval_ms
        self._expired_before: int | None = None  # this transaction's bound
        self._expired_flushed: int | None = None  # the durable one, restored by discard()

    def store_key(self, key: bytes, start: int) -> bytes:
        """The inner store's key for window ``start`` of ``key``."""
        if not -_BIAS <= start < _BIAS:
            raise ValueError(f"window start {start} does not fit in a signed 64-bit integer")
        segment = start // self.segment_interval_ms
        return _U64.pack(segment + _BIAS) + _U32.pack(len(key)) + key + _U64.pack(start + _BIAS)

    @staticmethod
    def parse_store_key(data: bytes) -> tuple[bytes, int]:
        """Inverse of ``store_key``: ``(key, start)``."""
        size = int(_U32.unpack_from(data, 8)[0])
        start = int(_U64.unpack_from(data, 12 + size)[0]) - _BIAS
        return data[12 : 12 + size], start

    def _expired(self, start: int) -> bool:
        return self._expired_before is not None and start < self._expired_before

    def get(self, key: bytes, start: int) -> bytes | None:
        """The value of ``key``'s window starting at ``start``, through the open transaction."""
        return None if self._expired(start) else self.inner.get(self.store_key(key, start))

    def committed_get(self, key: bytes, start: int) -> bytes | None:
        """Committed value of one window (for interactive queries)."""
        if self._expired(start):
            return None
        return self.inner.committed_get(self.store_key(key, start))

    def prefetch(self, windows: Iterable[tuple[bytes, int]]) -> None:
        """Warm the inner store's read cache for ``(key, start)`` windows (blocking)."""
        self.inner.prefetch(self.store_key(key, start) for key, start in windows)

    def put(self, key: bytes, start: int, value: bytes) -> None:
        """Buffer the value of ``key``'s window starting at ``start``."""
        self.inner.put(self.store_key(key, start), value)

    def delete(self, key: bytes, start: int) -> None:
        """Buffer deletion of one window."""
        self.inner.delete(self.store_key(key, start))

    def fetch(
        self, key: bytes, from_ms: int, to_ms: int, *, committed: bool = False
    ) -> list[tuple[int, bytes]]:
        """``key``'s windows whose start is in ``[from_ms, to_ms]``, by ascending start.

        ``committed=True`` leaves out the open transaction (for queries).
        """
        if self._expired_before is not None:
            from_ms = max(from_ms, self._expired_before)
        if from_ms > to_ms:
            return []
        interval = self.segment_interval_ms
        first, last = from_ms // interval, to_ms // interval
        segments: Iterator[int] | range = (
            range(first, last + 1)
            if last - first < _DIRECT_SEGMENTS
            else self._live_segments(first, last, committed)
        )
        out: list[tuple[int, bytes]] = []
        for segment in segments:
            lo = self.store_key(key, max(from_ms, segment * interval))
            hi = self.store_key(key, min(to_ms, segment * interval + interval - 1)) + b"\x00"
            for data, value in self.inner.range_items(lo, hi, include_pending=not committed):
                out.append((self.parse_store_key(data)[1], value))
        return out

    def windows_starting(self, lo: int, hi: int) -> Iterator[tuple[int, list[tuple[bytes, bytes]]]]:
        """Every key's window that starts in ``[lo, hi]``, through the open transaction: per
        start (ascending), its ``(key, value)`` pairs in key order. What a table that emits
        final results reads when stream time closes those windows; one range read per live
        segment, so a table with one start per segment reads exactly the closing windows."""
        lo = max(lo, -_BIAS)
        if lo > hi:
            return
        interval = self.segment_interval_ms
        for segment in self._live_segments(lo // interval, hi // interval, committed=False):
            rows: dict[int, list[tuple[bytes, bytes]]] = {}
            lo_key, hi_key = _segment_prefix(segment), _segment_prefix(segment + 1)
            for data, value in self.inner.range_items(lo_key, hi_key):
                key, start = self.parse_store_key(data)
                if lo <= start <= hi:
                    rows.setdefault(start, []).append((key, value))
            for start in sorted(rows):
                yield start, sorted(rows[start])

    def live_segments(self, from_ms: int, to_ms: int) -> list[int]:
        """The segments from that of ``from_ms`` to that of ``to_ms`` holding any window of any
        key, through the open transaction: two reads per live segment."""
        interval = self.segment_interval_ms
        return list(self._live_segments(from_ms // interval, to_ms // interval, False))

    def _live_segments(self, first: int, last: int, committed: bool) -> Iterator[int]:
        # Skip-scan: jump to the next segment that holds any key, so a wide range (a query from
        # 0 to now) costs a read per live segment, not one per possible segment.
        end = _segment_prefix(last + 1)
        segment = first
        while segment <= last:
            head = self.inner.range_items(
                _segment_prefix(segment), end, include_pending=not committed, limit=1
            )
            if not head:
                return
            segment = int(_U64.unpack_from(head[0][0])[0]) - _BIAS
            yield segment
            segment += 1

    def expire_before(self, start_ms: int, *, exact: bool = False) -> None:
        """Drop every window that starts before ``start_ms``.

        Whole segments below the bound go with one ``delete_range``. Windows of the segment the
        bound falls in are hidden at once and deleted when their whole segment expires; with
        ``exact=True`` they are deleted now too, which reads that whole segment — avoid it on a
        per-commit path. Expiry is local retention: nothing is sent to the changelog.
        """
        # No early return for an unchanged bound: the range deletion may have been discarded
        # with an aborted transaction, and repeating it costs one index seek at flush.
        segment = start_ms // self.segment_interval_ms
        self.inner.delete_range(b"", _segment_prefix(segment))
        if self._expired_before is None or start_ms > self._expired_before:
            self._expired_before = start_ms
        if exact and start_ms > segment * self.segment_interval_ms:
            lo, hi = _segment_prefix(segment), _segment_prefix(segment + 1)
            for data, _ in self.inner.range_items(lo, hi):
                if self.parse_store_key(data)[1] < start_ms:
                    self.inner.delete(data)

    def pending_changelog(self) -> list[tuple[bytes, bytes | None]]:
        """The open transaction's writes as changelog records (``None`` = tombstone): every
        one, including writes to windows expired since, so that the changelog never holds an
        older value than SQLite (the flush writes them too; reads hide them by stream time)."""
        parse, pending = self.parse_store_key, self.inner.pending()
        return [(changelog_key(*parse(data)), value) for data, value in pending.items()]

    def restore_batch(
        self,
        records: Sequence[tuple[bytes, bytes | None]],
        last_offset: int,
        *,
        min_start: int | None = None,
    ) -> None:
        """Apply changelog records, skipping windows that start before ``min_start``."""
        out: list[tuple[bytes, bytes | None]] = []
        for data, value in records:
            key, start = parse_changelog_key(data)
            if min_start is None or start >= min_start:
                out.append((self.store_key(key, start), value))
        self.inner.restore_batch(out, last_offset)

    def cut(self) -> None:
        """See ``StorePartition.cut``."""
        self.inner.cut()

    def seal(self) -> None:
        """See ``StorePartition.seal``."""
        self.inner.seal()

    def flush(self, checkpoint: int | None, *, seal: bool = True) -> None:
        """See ``StorePartition.flush``."""
        bound = self._expired_before
        if seal:
            self.inner.seal()
        self.inner.flush(checkpoint, seal=False)
        self._expired_flushed = bound

    def discard(self) -> None:
        """Drop the open transaction, including its expiry."""
        self.inner.discard()
        self._expired_before = self._expired_flushed

    def wipe(self) -> None:
        """Delete every window and the checkpoint."""
        self.inner.wipe()
        self._expired_before = self._expired_flushed = None

    def close(self) -> None:
        """Close the inner store; safe to call twice."""
        self.inner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
