"""A key-value store whose keys expire ``ttl`` of stream time after their last write.

``TtlStorePartition`` wraps any ``StorePartition`` (as ``WindowedStorePartition`` does) and keeps
two kinds of rows in it::

    row:    0x01 | key                                  -> row value
    index:  0x00 | written_at + 2**63 (8 bytes) | key   -> b""

A row value is ``ROW_FORMAT (1 byte) | written_at (8 bytes, signed big-endian) | value``, where
``written_at`` is the task's stream time at the write; the changelog carries ``key -> row value``
(the index is local: a restore rebuilds it). A key is expired once ``written_at + ttl <=
stream_time``: reads filter by the stream time they are given, and ``expire`` deletes expired keys
in bulk, as point deletes that the changelog carries as tombstones (docs/architecture.md,
*Tables with TTL*).

Writes never read: rewriting a key leaves its previous index entry behind. ``expire`` range-scans
the index up to the bound, deletes a row only if its ``written_at`` still matches the entry, and
drops the scanned entries with one range deletion.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from onceflow.errors import ConfigurationError
from onceflow.state.typing import StorePartition
from onceflow.state.wrapped import Wrapped

__all__ = [
    "EXPIRE_BATCH",
    "ROW_FORMAT",
    "TtlStorePartition",
    "decode_row",
    "encode_row",
    "live_value",
    "row_key",
]

ROW_FORMAT = b"\xf5"
"""First byte of every row value: never the first byte of UTF-8 text (JSON, str), so rows of a
table that had no ttl before are told apart."""
EXPIRE_BATCH = 1_000
"""Index entries ``expire`` reads per call at least (more when the transaction wrote more: the
index never grows faster than it is worked off). It runs on the event loop at each commit, at
~35 us per expired key through the SQLite store's access layer, so a backlog (a task that was
away) is worked off over several commits instead of stalling one; reads hide what is left."""

_INDEX = b"\x00"
_ROW = b"\x01"
_PAST_ROWS = b"\x02"
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_BIAS = 1 << 63
_HEADER = len(ROW_FORMAT) + _I64.size


def row_key(key: bytes) -> bytes:
    """The inner store's key of ``key``'s row."""
    return _ROW + key


def encode_row(written_at: int, value: bytes) -> bytes:
    """A row value (and changelog value): ``value`` written at stream time ``written_at``."""
    return ROW_FORMAT + _I64.pack(written_at) + value


def decode_row(row: bytes) -> tuple[int, bytes]:
    """``(written_at, value)`` of a row value; ValueError if ``row`` is not one."""
    if len(row) < _HEADER or row[:1] != ROW_FORMAT:
        raise ValueError(f"not a ttl row: {row[:_HEADER]!r}")
    return int(_I64.unpack_from(row, 1)[0]), row[_HEADER:]


def live_value(row: bytes | None, ttl_ms: int, stream_time: int) -> bytes | None:
    """The value of ``row`` unless it expired by ``stream_time`` (None: absent or expired)."""
    if row is None:
        return None
    written_at, value = decode_row(row)
    return None if written_at + ttl_ms <= stream_time else value


def _index_key(written_at: int, key: bytes) -> bytes:
    return _INDEX + _U64.pack(written_at + _BIAS) + key


def _not_ttl_rows(name: str, where: str) -> ConfigurationError:
    return ConfigurationError(
        f"table {name!r} has a ttl, but its {where} holds rows written without one: a ttl "
        "cannot be added to an existing table (its rows have no time of last write). Declare "
        "the table with ttl under a new name, which starts empty with a changelog of its own, "
        "or remove the ttl"
    )


class TtlStorePartition(Wrapped):
    """Keys of one (table, partition) that expire ``ttl_ms`` of stream time after their last
    write, kept in ``inner``. Transactions (seal, flush, discard, checkpoint) are ``inner``'s.

    Example::

        store = TtlStorePartition(InMemoryStorePartition(), ttl_ms=1000, name="seen")
        store.put(b"k", encode_row(5, b"v"))
        assert store.get(b"k", stream_time=1004) == b"v"
        assert store.get(b"k", stream_time=1005) is None
        store.expire(1005)
        assert store.pending_changelog() == [(b"k", None)]
    """

    def __init__(self, inner: StorePartition, *, ttl_ms: int, name: str) -> None:
        if ttl_ms <= 0:
            raise ConfigurationError(f"table {name!r}: ttl must be positive, got {ttl_ms} ms")
        self.inner = inner
        self.ttl_ms = ttl_ms
        self.name = name

    # -- Restorable ----------------------------------------------------------------------------

    def restore_batch(
        self, records: Sequence[tuple[bytes, bytes | None]], last_offset: int
    ) -> None:
        """Apply changelog records (``key -> row value``, None: a tombstone) with their index
        entries, and checkpoint ``last_offset``, in one inner transaction.

        Expired rows are restored too: they read as absent, and the next ``expire`` deletes them
        and sends their tombstones, so the changelog does not keep them for ever.
        """
        out: list[tuple[bytes, bytes | None]] = []
        for key, row in dict(records).items():
            if row is None:
                out.append((row_key(key), None))
                continue
            try:
                written_at, _ = decode_row(row)
            except ValueError:
                raise _not_ttl_rows(self.name, "changelog") from None
            out.append((row_key(key), row))
            out.append((_index_key(written_at, key), b""))
        self.inner.restore_batch(out, last_offset)

    def wipe(self) -> None:
        """Delete every row, the index and the checkpoint."""
        self.inner.wipe()

    def check_layout(self) -> None:
        """Raise ``ConfigurationError`` if the inner store holds rows of a table without ttl
        (keys outside this layout, or a row value without ``ROW_FORMAT``); reads a row or two."""
        stray = self.inner.range_items(_PAST_ROWS, b"\xff" * 16, include_pending=False, limit=1)
        first_row = self.inner.range_items(_ROW, _PAST_ROWS, include_pending=False, limit=1)
        first_entry = self.inner.range_items(_INDEX, _ROW, include_pending=False, limit=1)
        if (
            stray
            or any(not value.startswith(ROW_FORMAT) for _, value in first_row)
            or any(len(key) < 1 + _U64.size or value for key, value in first_entry)
        ):
            raise _not_ttl_rows(self.name, "store")

    # -- reads and writes ----------------------------------------------------------------------

    def get(self, key: bytes, stream_time: int) -> bytes | None:
        """``key``'s value through the open transaction, unless expired by ``stream_time``."""
        return live_value(self.inner.get(row_key(key)), self.ttl_ms, stream_time)

    def committed_get(self, key: bytes, stream_time: int) -> bytes | None:
        """``key``'s committed value unless expired by ``stream_time`` (for queries)."""
        return live_value(self.inner.committed_get(row_key(key)), self.ttl_ms, stream_time)

    def prefetch(self, keys: Iterable[bytes]) -> None:
        """Warm the inner store's read cache for ``keys`` (blocking)."""
        self.inner.prefetch(row_key(key) for key in keys)

    def put(self, key: bytes, row: bytes) -> None:
        """Buffer ``row`` (an ``encode_row`` value) under ``key``, with its index entry."""
        written_at, _ = decode_row(row)
        self.inner.put(row_key(key), row)
        self.inner.put(_index_key(written_at, key), b"")

    def delete(self, key: bytes) -> None:
        """Buffer deletion of ``key`` (a tombstone in the changelog); its index entry stays
        until ``expire`` passes it."""
        self.inner.delete(row_key(key))

    # -- commit --------------------------------------------------------------------------------

    def expire(self, stream_time: int, *, limit: int | None = None) -> int:
        """Buffer deletion of keys expired by ``stream_time``: those whose last write was at
        ``stream_time - ttl`` or before. Reads at most ``limit`` index entries (default: the
        larger of ``EXPIRE_BATCH`` and the open transaction's writes). Returns how many keys
        were deleted.

        One range read of the index, one bulk read of the rows it names, point deletes of the
        rows (tombstones in ``pending_changelog``), one range deletion of the entries read.
        """
        bound = stream_time - self.ttl_ms  # a key written at bound or before is expired
        if bound < -_BIAS:
            return 0
        hi = _INDEX + _U64.pack(bound + _BIAS + 1) if bound + 1 < _BIAS else _ROW
        if limit is None:
            limit = max(EXPIRE_BATCH, len(self.inner.pending()))
        entries = self.inner.range_items(_INDEX, hi, limit=limit)
        if not entries:
            return 0
        expired = [
            (int(_U64.unpack_from(entry, 1)[0]) - _BIAS, entry[1 + _U64.size :])
            for entry, _ in entries
            if len(entry) >= 1 + _U64.size
        ]
        self.inner.prefetch(row_key(key) for _, key in expired)
        deleted = 0
        for written_at, key in expired:
            row = self.inner.get(row_key(key))
            if row is not None and decode_row(row)[0] == written_at:
                self.inner.delete(row_key(key))
                deleted += 1
        self.inner.delete_range(_INDEX, entries[-1][0] + b"\x00")
        return deleted

    def pending_changelog(self) -> list[tuple[bytes, bytes | None]]:
        """The open transaction's rows as changelog records (``None`` = tombstone); index
        entries are left out."""
        return [(key[1:], row) for key, row in self.inner.pending().items() if key[:1] == _ROW]
