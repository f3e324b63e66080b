"""Changelog records fetched as one ``(key, value)`` list per record batch, for restores.

aiokafka's consumer turns every fetched record into a ``ConsumerRecord`` (a dataclass of eleven
fields, a headers tuple, sizes): ~2.5 us of the ~4 us a restore spent per record in the worker,
for two fields a restore reads. A consumer made by ``chunked_reader`` gets, from ``getmany``,
one ``Chunk`` per record batch the broker sent instead: the batch's ``(key, value)`` pairs, their
offsets, and nothing else. The records are still parsed by aiokafka's own (C) batch reader, and
everything else stays aiokafka's: fetching, positions, errors, retries, and ``read_committed``:
batches of aborted transactions are skipped and control batches dropped by the same rules (the
code below follows ``PartitionRecords._unpack_records`` line for line but for what it yields).

How: aiokafka's fetcher builds a ``PartitionRecords`` per fetched partition, passing it the
consumer's key deserializer. ``install()`` replaces that class, in aiokafka's fetcher module,
with a subclass that behaves exactly like it unless that deserializer is ``CHUNKED`` (which no
other consumer passes; it is never called). ``check()`` fails loudly if a later aiokafka changed
what this relies on (run by the unit tests, and at first use: restores then fall back to
``ConsumerRecord``s, with a warning).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from typing import Any, NamedTuple

from aiokafka.consumer import fetcher as _fetcher

__all__ = ["CHUNKED", "Chunk", "as_chunk", "check", "install"]

log = logging.getLogger("onceflow.restore")

_READ_COMMITTED = _fetcher.READ_COMMITTED
_ABORT_MARKER = _fetcher.ABORT_MARKER
_ControlRecord = _fetcher.ControlRecord
_CorruptRecord = _fetcher.Errors.CorruptRecordException
_KafkaError = _fetcher.Errors.KafkaError


class Chunk(NamedTuple):
    """The records of one fetched record batch, in offset order (a compacted topic's batch may
    have gaps; ``offsets[i]`` is the offset of ``pairs[i]``)."""

    pairs: list[tuple[bytes, bytes | None]]
    offsets: list[int]


def CHUNKED(data: bytes | None) -> Any:
    """The key deserializer that marks a chunked consumer (see the module's docstring); never
    called."""
    raise AssertionError("onceflow's chunked changelog reader was not installed")


_Base: Any = _fetcher.PartitionRecords


class _PartitionRecords(_Base):  # type: ignore[misc]
    def __init__(
        self,
        tp: Any,
        records: Any,
        aborted_transactions: Any,
        fetch_offset: int,
        key_deserializer: Any,
        *args: Any,
    ) -> None:
        super().__init__(tp, records, aborted_transactions, fetch_offset, key_deserializer, *args)
        if key_deserializer is CHUNKED:
            self._records_iterator = self._unpack_chunks()

    def _unpack_chunks(self) -> Iterator[Chunk]:
        # PartitionRecords._unpack_records, yielding a Chunk per batch instead of a
        # ConsumerRecord per record.
        records = self._records
        while records.has_next():
            next_batch = records.next_batch()
            if self._check_crcs and not next_batch.validate_crc():
                raise _CorruptRecord(f"Invalid CRC - {self._tp}")
            if self._isolation_level == _READ_COMMITTED and next_batch.producer_id is not None:
                self._consume_aborted_up_to(next_batch.base_offset)
                if next_batch.is_control_batch and self._contains_abort_marker(next_batch):
                    self._aborted_producers.discard(next_batch.producer_id)
                if (
                    next_batch.is_transactional
                    and next_batch.producer_id in self._aborted_producers
                ):
                    self.next_fetch_offset = next_batch.next_offset
                    continue
            if next_batch.is_control_batch:
                self.next_fetch_offset = next_batch.next_offset
                continue
            start = self.next_fetch_offset
            pairs: list[tuple[bytes, bytes | None]] = []
            offsets: list[int] = []
            add_pair, add_offset = pairs.append, offsets.append
            for record in next_batch:
                offset = record.offset
                if offset < start:  # the fetch started inside this batch
                    continue
                add_pair((record.key, record.value))
                add_offset(offset)
            # Past the batch's last offset even if compaction removed its last records (as
            # aiokafka does): the position a getmany leaves behind.
            self.next_fetch_offset = next_batch.next_offset
            if pairs:
                yield Chunk(pairs, offsets)


_EXPECTED = (
    "self",
    "tp",
    "records",
    "aborted_transactions",
    "fetch_offset",
    "key_deserializer",
    "value_deserializer",
    "check_crcs",
    "isolation_level",
)
_USED = ("_unpack_records", "_consume_aborted_up_to", "_contains_abort_marker")


def check() -> None:
    """Raise RuntimeError unless aiokafka's fetcher still has what ``install`` relies on."""
    base = _Base
    params = tuple(inspect.signature(base.__init__).parameters)
    missing = [name for name in _USED if not callable(getattr(base, name, None))]
    try:
        builds = "PartitionRecords(" in inspect.getsource(_fetcher.Fetcher._proc_fetch_request)
    except OSError:  # no source to read (a frozen install): the signature must do
        builds = True
    if params != _EXPECTED or missing or not builds:
        raise RuntimeError(
            "aiokafka's fetcher changed (PartitionRecords"
            f"{params}, missing {missing}): onceflow's chunked changelog reader needs updating"
        )


def install() -> bool:
    """Make aiokafka's fetcher build ``_PartitionRecords`` (idempotent); False (and a warning,
    once) if ``check`` fails: restores then read ``ConsumerRecord``s, slower. Consumers without
    the ``CHUNKED`` key deserializer are unaffected."""
    global _refused
    if _fetcher.PartitionRecords is _PartitionRecords:
        return True
    if _refused:
        return False
    try:
        check()
    except RuntimeError as exc:
        _refused = True
        log.warning("restores read records one by one: %s", exc)
        return False
    _fetcher.PartitionRecords = _PartitionRecords
    return True


_refused = False


def as_chunk(records: list[Any]) -> Chunk:
    """``ConsumerRecord``s (of a consumer without ``CHUNKED``) as one chunk."""
    return Chunk([(r.key, r.value) for r in records], [r.offset for r in records])
