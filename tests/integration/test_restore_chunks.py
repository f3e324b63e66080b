"""A restore through the chunked changelog reader (``runtime/changelog_chunks``) and the restore
writer's children yields exactly the committed values, on a real broker: an aborted
transaction's records never reach the store, tombstones delete, the checkpoint is the last
restored record's offset, a restore ``until`` an offset stops before it, and a second restore
goes on from the checkpoint."""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka_helpers import end_offsets, unique_name

from onceflow.runtime.restore import RESTORE_FETCH_BYTES, RestoreProgress, restore_partition
from onceflow.state.sqlite.file import CHILD_MIN_ROWS
from onceflow.state.sqlite.partition import SqliteStorePartition


async def _transaction(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes | None]], *, commit: bool
) -> list[int]:
    """Write ``records`` to partition 0 in one transaction; their offsets."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=unique_name("restore-chunks")
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        futures = [await producer.send(topic, v, key=k, partition=0) for k, v in records]
        offsets = [(await f).offset for f in futures]
        if commit:
            await producer.commit_transaction()
        else:
            await producer.abort_transaction()
        return offsets
    finally:
        await producer.stop()


async def _restore(bootstrap: str, topic: str, path: Path, until: int | None = None) -> int:
    def factory(**kwargs: object) -> AIOKafkaConsumer:
        # Every restoring partition holds a few fetches' bytes: a restore's memory (restore.py).
        assert kwargs["max_partition_fetch_bytes"] == kwargs["fetch_max_bytes"]
        assert kwargs["fetch_max_bytes"] == RESTORE_FETCH_BYTES < 2**20
        return AIOKafkaConsumer(bootstrap_servers=bootstrap, **kwargs)

    with SqliteStorePartition(path) as store:
        progress = RestoreProgress("t", 0)
        await restore_partition(factory, topic, 0, store, progress, batch_records=1500, until=until)
        return progress.restored


BIG_BATCH = CHILD_MIN_ROWS * 16  # written by a store I/O child


def _contents(path: Path) -> tuple[dict[bytes, bytes], int | None]:
    with SqliteStorePartition(path) as store:
        keys = [b"k%05d" % i for i in range(3 * BIG_BATCH)]
        values = {k: v for k in keys if (v := store.get(k)) is not None}
        return values, store.checkpoint


async def test_a_restore_applies_committed_records_only(
    bootstrap_servers: str, new_topic, tmp_path: Path
) -> None:
    topic = await new_topic("restore-chunks", config={"cleanup.policy": "compact"})
    n = 2 * BIG_BATCH  # big batches: written by the restore writer's children
    first = await _transaction(
        bootstrap_servers, topic, [(b"k%05d" % i, b"a%d" % i) for i in range(n)], commit=True
    )
    await _transaction(
        bootstrap_servers, topic, [(b"k%05d" % i, b"ABORTED") for i in range(n + 10)], commit=False
    )
    tail = [(b"k00001", None), (b"k00002", b"b2"), (b"k%05d" % (n + 5), b"new")]
    last = await _transaction(bootstrap_servers, topic, tail, commit=True)

    # Up to the aborted transaction: the first one only.
    restored = await _restore(bootstrap_servers, topic, tmp_path / "until", until=first[-1] + 1)
    assert restored == n
    values, checkpoint = _contents(tmp_path / "until")
    assert values == {b"k%05d" % i: b"a%d" % i for i in range(n)}
    assert checkpoint == first[-1]

    # To the end: the aborted transaction skipped, the tombstone deletes, later values win.
    assert await _restore(bootstrap_servers, topic, tmp_path / "all") == n + len(tail)
    expected = {b"k%05d" % i: b"a%d" % i for i in range(n)}
    del expected[b"k00001"]
    expected[b"k00002"] = b"b2"
    expected[b"k%05d" % (n + 5)] = b"new"
    values, checkpoint = _contents(tmp_path / "all")
    assert values == expected
    assert checkpoint == last[-1]

    # The store restored up to the first transaction goes on from its checkpoint.
    assert await _restore(bootstrap_servers, topic, tmp_path / "until") == len(tail)
    assert _contents(tmp_path / "until") == (expected, last[-1])
    assert (await end_offsets(bootstrap_servers, topic, "read_committed"))[0] > last[-1]
