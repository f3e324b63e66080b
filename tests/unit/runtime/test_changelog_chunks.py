"""The chunked changelog reader (``runtime/changelog_chunks``) yields exactly the records
aiokafka's own ``PartitionRecords`` yields, by the same ``read_committed`` rules, one list per
record batch; ``restore.take`` cuts fetched chunks at a restore's end offset."""

from __future__ import annotations

import struct
from typing import NamedTuple

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from onceflow.runtime import changelog_chunks
from onceflow.runtime.changelog_chunks import CHUNKED, Chunk
from onceflow.runtime.restore import _fetch, take

TP = TopicPartition("t-changelog", 0)
_CONTROL = 0x20
_ABORT, _COMMIT = b"\x00\x00\x00\x00", b"\x00\x00\x00\x01"


def batch(
    base: int,
    records: list[tuple[int, bytes | None, bytes | None]],
    *,
    pid: int = -1,
    control: bool = False,
) -> bytes:
    """A record batch at ``base`` of (offset delta, key, value), as the broker stores it."""
    builder = DefaultRecordBatchBuilder(2, 0, pid >= 0, pid, 0 if pid >= 0 else -1, 0, 2**20)
    for delta, key, value in records:
        builder.append(delta, 1_000, key, value, [])
    data = bytearray(builder.build())
    data[0:8] = struct.pack(">q", base)
    if control:
        data[22] |= _CONTROL  # attributes (int16 at byte 21): only brokers write control batches
    return bytes(data)


# pid 1 commits offsets 0-2 and 7-9 (8 compacted away); pid 2's 3-4 are aborted at offset 6.
BATCHES = [
    batch(0, [(0, b"a", b"1"), (1, b"b", b"2"), (2, b"c", b"3")], pid=1),
    batch(3, [(0, b"a", b"ABORTED"), (1, b"d", b"ABORTED")], pid=2),
    batch(5, [(0, _COMMIT, b"\x00\x00\x00\x00\x00\x00")], pid=1, control=True),
    batch(6, [(0, _ABORT, b"\x00\x00\x00\x00\x00\x00")], pid=2, control=True),
    batch(7, [(0, b"b", None), (2, b"e", b"5")], pid=1),
    batch(10, [(0, b"f", b"6")]),  # not transactional
]
FIRST = [0, 3, 5, 6, 7, 10]  # each batch's base offset
ABORTED = [(2, 3)]  # (producer id, first offset), as a fetch response lists them


def partition_records(fetch_offset: int, key_deserializer: object) -> fetcher.PartitionRecords:
    """What a fetch at ``fetch_offset`` returns: the log from the batch holding that offset."""
    changelog_chunks.install()
    first = max(i for i, base in enumerate(FIRST) if base <= fetch_offset)
    return fetcher.PartitionRecords(
        TP,
        MemoryRecords(b"".join(BATCHES[first:])),
        list(ABORTED),
        fetch_offset,
        key_deserializer,
        None,
        False,
        fetcher.READ_COMMITTED,
    )


def stock(fetch_offset: int) -> tuple[list[tuple[int, bytes | None, bytes | None]], int]:
    records = partition_records(fetch_offset, None)
    out = [(r.offset, r.key, r.value) for r in records]
    return out, records.next_fetch_offset


def chunked(fetch_offset: int) -> tuple[list[tuple[int, bytes | None, bytes | None]], int]:
    records = partition_records(fetch_offset, CHUNKED)
    chunks = list(records)
    assert all(isinstance(c, Chunk) for c in chunks)
    out = [(o, k, v) for c in chunks for o, (k, v) in zip(c.offsets, c.pairs, strict=True)]
    return out, records.next_fetch_offset


def test_chunks_hold_the_committed_records_as_aiokafka_yields_them() -> None:
    records, next_offset = chunked(0)
    assert records == [
        (0, b"a", b"1"),
        (1, b"b", b"2"),
        (2, b"c", b"3"),
        (7, b"b", None),
        (9, b"e", b"5"),
        (10, b"f", b"6"),
    ]
    assert next_offset == 11
    assert (records, next_offset) == stock(0)


def test_a_fetch_that_starts_inside_a_batch_skips_its_earlier_records() -> None:
    for offset in range(11):
        assert chunked(offset) == stock(offset), offset
    assert chunked(1)[0][:2] == [(1, b"b", b"2"), (2, b"c", b"3")]
    assert chunked(4) == ([(7, b"b", None), (9, b"e", b"5"), (10, b"f", b"6")], 11)
    assert chunked(8) == ([(9, b"e", b"5"), (10, b"f", b"6")], 11)


def test_other_consumers_still_get_consumer_records() -> None:
    first = next(iter(partition_records(0, None)))
    assert (first.topic, first.offset, first.key, first.value) == (TP.topic, 0, b"a", b"1")


def test_aiokafka_still_has_what_the_reader_relies_on() -> None:
    changelog_chunks.check()
    changelog_chunks.install()
    changelog_chunks.install()  # idempotent
    assert fetcher.PartitionRecords is changelog_chunks._PartitionRecords


def chunk(*records: tuple[int, bytes]) -> Chunk:
    return Chunk([(k, k) for _, k in records], [o for o, _ in records])


def test_take_cuts_the_fetched_chunks_at_the_end_offset() -> None:
    chunks = [
        chunk((3, b"a"), (5, b"b")),
        chunk((6, b"c"), (8, b"d"), (9, b"e")),
        chunk((10, b"f")),
    ]
    assert take(chunks, 100) == ([(k, k) for k in (b"a", b"b", b"c", b"d", b"e", b"f")], 10)
    assert take(chunks, 9) == ([(b"a", b"a"), (b"b", b"b"), (b"c", b"c"), (b"d", b"d")], 8)
    assert take(chunks, 6) == ([(b"a", b"a"), (b"b", b"b")], 5)
    assert take(chunks, 3) == ([], -1)
    assert take([], 3) == ([], -1)


def test_a_changed_aiokafka_falls_back_to_consumer_records(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expected = [(o, (k, v)) for o, k, v in chunked(0)[0]]
    monkeypatch.setattr(fetcher, "PartitionRecords", changelog_chunks._Base)
    monkeypatch.setattr(changelog_chunks, "_EXPECTED", ("self", "something", "else"))
    monkeypatch.setattr(changelog_chunks, "_refused", False)
    assert not changelog_chunks.install()
    assert not changelog_chunks.install()
    assert fetcher.PartitionRecords is changelog_chunks._Base
    assert caplog.text.count("restores read records one by one") == 1
    records = changelog_chunks._Base(
        TP, MemoryRecords(b"".join(BATCHES)), list(ABORTED), 0, None, None, False,
        fetcher.READ_COMMITTED,
    )  # fmt: skip
    as_chunk = changelog_chunks.as_chunk(list(records))
    assert list(zip(as_chunk.offsets, as_chunk.pairs, strict=True)) == expected


class FakeConsumer:
    """``getmany`` of a consumer holding ``items`` already fetched: up to ``max_records``."""

    def __init__(self, items: list[object]) -> None:
        self.items = items
        self.asked: list[int] = []

    async def getmany(
        self, tp: TopicPartition, *, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[object]]:
        self.asked.append(max_records)
        got, self.items = self.items[:max_records], self.items[max_records:]
        return {tp: got} if got else {}


async def test_a_fetch_takes_chunks_until_it_holds_a_batch() -> None:
    chunks = [chunk(*((10 * i + j, b"k") for j in range(10))) for i in range(10)]
    consumer = FakeConsumer(list(chunks))
    got, per_item = await _fetch(consumer, TP, 35, 0.0)  # type: ignore[arg-type]
    # One chunk first (its size unknown), then as many as make up the rest: 40 records.
    assert (got, per_item, consumer.asked) == (chunks[:4], 10.0, [1, 2, 1])
    got, _ = await _fetch(consumer, TP, 1_000, per_item)  # type: ignore[arg-type]
    assert got == chunks[4:]


class Record(NamedTuple):
    offset: int
    key: bytes
    value: bytes | None


async def test_a_fetch_of_consumer_records_makes_them_one_chunk_per_call() -> None:
    consumer = FakeConsumer([Record(o, b"k%d" % o, b"v") for o in range(50)])
    got, per_item = await _fetch(consumer, TP, 20, 0.0)  # type: ignore[arg-type]
    assert per_item == 1.0
    assert [c.offsets for c in got] == [[0], list(range(1, 20))]
    assert got[1].pairs[0] == (b"k1", b"v")
