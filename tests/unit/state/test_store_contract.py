"""The StorePartition contract, run over every implementation (SQLite files and in-memory)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from onceflow.errors import StateError
from onceflow.state.buffer import WriteBatch
from onceflow.state.memory import InMemoryStorePartition
from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.typing import StorePartition

Factory = Callable[[], StorePartition]
BACKENDS = ["sqlite", "memory"]


def make_factory(backend: str, directory: Path) -> Factory:
    if backend == "sqlite":
        return lambda: SqliteStorePartition(directory / "store", cache_size=4)
    return lambda: InMemoryStorePartition("test")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorePartition]:
    with make_factory(request.param, tmp_path)() as opened:
        yield opened


def committed(store: StorePartition) -> list[tuple[bytes, bytes]]:
    return store.range_items(b"", b"\xff" * 4, include_pending=False)


def visible(store: StorePartition) -> list[tuple[bytes, bytes]]:
    return store.range_items(b"", b"\xff" * 4)


def test_writes_are_buffered_until_flush(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.delete(b"b")
    assert store.get(b"a") == b"1"
    assert store.committed_get(b"a") is None
    assert dict(store.pending()) == {b"a": b"1", b"b": None}
    assert store.has_pending
    store.flush(7)
    assert store.committed_get(b"a") == b"1"
    assert store.checkpoint == 7
    assert dict(store.pending()) == {}
    assert not store.has_pending


def test_pending_keeps_the_last_value_per_key(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.put(b"a", b"2")
    store.delete(b"c")
    store.put(b"c", b"3")
    store.put(b"d", b"4")
    store.delete(b"d")
    assert dict(store.pending()) == {b"a": b"2", b"c": b"3", b"d": None}


def test_committed_get_never_sees_pending_writes(store: StorePartition) -> None:
    store.put(b"a", b"old")
    store.flush(1)
    store.put(b"a", b"new")
    store.delete_range(b"a", b"b")
    store.put(b"z", b"new")
    assert store.committed_get(b"a") == b"old"
    assert store.committed_get(b"z") is None
    assert committed(store) == [(b"a", b"old")]
    assert store.get(b"a") is None  # the range deletion came after the put
    assert visible(store) == [(b"z", b"new")]


def test_discard_drops_the_open_transaction_only(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.flush(3)
    store.put(b"a", b"2")
    store.put(b"b", b"2")
    store.delete_range(b"", b"\xff")
    store.discard()
    assert store.get(b"a") == b"1"
    assert store.get(b"b") is None
    assert not store.has_pending
    assert store.checkpoint == 3
    store.flush(None)
    assert committed(store) == [(b"a", b"1")]


def test_flush_applies_data_and_checkpoint_together(store: StorePartition) -> None:
    assert store.checkpoint is None
    store.put(b"a", b"1")
    store.flush(None)  # data, checkpoint unchanged
    assert (store.committed_get(b"a"), store.checkpoint) == (b"1", None)
    store.flush(5)  # checkpoint only
    assert store.checkpoint == 5
    store.put(b"b", b"2")
    store.flush(None)
    assert store.checkpoint == 5
    store.flush(5)  # nothing to do
    assert committed(store) == [(b"a", b"1"), (b"b", b"2")]


def test_deletes_and_empty_values(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.put(b"empty", b"")
    store.flush(1)
    assert store.get(b"empty") == b""
    store.delete(b"a")
    store.delete(b"never-existed")
    assert store.get(b"a") is None
    assert store.committed_get(b"a") == b"1"
    store.flush(2)
    assert store.committed_get(b"a") is None
    assert store.committed_get(b"empty") == b""
    assert committed(store) == [(b"empty", b"")]


def test_range_items_merges_committed_and_buffered(store: StorePartition) -> None:
    for key in (b"a", b"b", b"c", b"d"):
        store.put(key, b"c-" + key)
    store.flush(1)
    store.put(b"b", b"new")
    store.delete(b"c")
    store.put(b"bb", b"ins")
    store.put(b"e", b"outside")
    got = store.range_items(b"b", b"d")
    assert got == [(b"b", b"new"), (b"bb", b"ins")]
    assert store.range_items(b"b", b"d", include_pending=False) == [
        (b"b", b"c-b"),
        (b"c", b"c-c"),
    ]
    assert store.range_items(b"d", b"b") == []
    assert store.range_items(b"a", b"a") == []


def test_range_items_limit_skips_hidden_rows(store: StorePartition) -> None:
    keys = [b"k%03d" % i for i in range(100)]
    for key in keys:
        store.put(key, key)
    store.flush(1)
    for key in keys[:60]:
        store.delete(key)  # hides the first 60 committed rows
    store.put(b"k0605", b"ins")
    store.delete_range(b"k070", b"k080")
    got = store.range_items(b"k", b"l", limit=5)
    assert got == [(b"k060", b"k060"), (b"k0605", b"ins"), (b"k061", b"k061"),
                   (b"k062", b"k062"), (b"k063", b"k063")]  # fmt: skip
    everything = store.range_items(b"k", b"l")
    assert store.range_items(b"k", b"l", limit=1000) == everything
    assert len(everything) == 31
    assert store.range_items(b"k", b"l", limit=0) == []
    assert store.range_items(b"k", b"l", include_pending=False, limit=2) == [
        (b"k000", b"k000"),
        (b"k001", b"k001"),
    ]


def test_delete_range_hides_keys_before_flush_and_is_not_logged(store: StorePartition) -> None:
    for key in (b"a", b"b1", b"b2", b"c"):
        store.put(key, key)
    store.flush(1)
    store.put(b"b3", b"pending")
    store.delete_range(b"b", b"c")
    assert store.get(b"b1") is None
    assert store.get(b"b3") is None
    assert b"b3" not in store.pending()  # deleted by the range; ranges are not listed
    store.put(b"b2", b"after")  # a write after the range deletion survives it
    assert store.has_pending
    assert visible(store) == [(b"a", b"a"), (b"b2", b"after"), (b"c", b"c")]
    assert committed(store) == [(b"a", b"a"), (b"b1", b"b1"), (b"b2", b"b2"), (b"c", b"c")]
    store.flush(2)
    assert committed(store) == [(b"a", b"a"), (b"b2", b"after"), (b"c", b"c")]
    assert store.committed_get(b"b1") is None


def test_restore_batch_applies_records_in_order(store: StorePartition) -> None:
    store.put(b"gone", b"1")
    store.flush(0)
    records: list[tuple[bytes, bytes | None]] = [
        (b"a", b"1"),
        (b"b", b"1"),
        (b"a", b"2"),
        (b"b", None),
        (b"gone", None),
        (b"c", None),
    ]
    store.restore_batch(records, 42)
    assert store.checkpoint == 42
    assert committed(store) == [(b"a", b"2")]
    assert store.get(b"gone") is None
    store.restore_batch([], 43)
    assert store.checkpoint == 43


def test_restore_batch_refuses_while_writes_are_buffered(store: StorePartition) -> None:
    store.put(b"a", b"1")
    with pytest.raises(StateError, match="unflushed writes"):
        store.restore_batch([(b"b", b"1")], 1)
    with pytest.raises(ValueError, match="last_offset"):
        store.restore_batch([], -1)


def test_wipe_deletes_data_buffer_and_checkpoint(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.flush(9)
    store.put(b"b", b"1")
    store.wipe()
    assert store.checkpoint is None
    assert not store.has_pending
    assert visible(store) == []
    assert store.get(b"a") is None
    store.put(b"c", b"1")
    store.flush(0)
    assert committed(store) == [(b"c", b"1")]


def test_the_changelog_topic_id_is_recorded_with_a_checkpoint(store: StorePartition) -> None:
    assert store.changelog_topic_id is None
    store.set_changelog_topic_id(TOPIC_IDS[0])
    assert store.changelog_topic_id is None  # recorded with the next checkpoint, not before
    store.put(b"a", b"1")
    store.flush(None)  # data without a checkpoint: nothing recorded
    assert store.changelog_topic_id is None
    store.flush(3)
    assert (store.checkpoint, store.changelog_topic_id) == (3, TOPIC_IDS[0])
    store.set_changelog_topic_id(TOPIC_IDS[1])
    store.restore_batch([(b"b", b"1")], 4)
    assert (store.checkpoint, store.changelog_topic_id) == (4, TOPIC_IDS[1])
    store.wipe()  # the checkpoint goes, and the id that described it
    assert (store.checkpoint, store.changelog_topic_id) == (None, None)
    store.restore_batch([], 0)  # the current id is still known: recorded again
    assert store.changelog_topic_id == TOPIC_IDS[1]


class FullDisk(InMemoryStorePartition):
    fail = True

    def _commit(self, batch: WriteBatch, checkpoint: int | None) -> list[bytes]:
        if self.fail:
            raise StateError("disk full")
        return super()._commit(batch, checkpoint)


def test_a_failed_checkpoint_write_records_no_topic_id() -> None:
    store = FullDisk("test")
    store.set_changelog_topic_id(TOPIC_IDS[0])
    store.put(b"a", b"1")
    with pytest.raises(StateError):
        store.flush(1)
    assert (store.checkpoint, store.changelog_topic_id) == (None, None)
    store.fail = False
    store.flush(1)
    assert (store.checkpoint, store.changelog_topic_id) == (1, TOPIC_IDS[0])


def test_the_changelog_topic_id_survives_reopen(tmp_path: Path) -> None:
    factory = make_factory("sqlite", tmp_path)
    with factory() as store:
        store.set_changelog_topic_id(TOPIC_IDS[0])
        store.put(b"a", b"1")
        store.flush(7)
    with factory() as store:
        assert (store.checkpoint, store.changelog_topic_id) == (7, TOPIC_IDS[0])
        store.flush(8)  # a checkpoint without a current id keeps the recorded one
    with factory() as store:
        assert (store.checkpoint, store.changelog_topic_id) == (8, TOPIC_IDS[0])


def test_sealed_writes_are_committed_state(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.seal()
    store.put(b"b", b"next-transaction")
    assert store.committed_get(b"a") == b"1"  # sealed: its Kafka transaction committed
    assert dict(store.pending()) == {b"b": b"next-transaction"}
    store.discard()  # aborts the next transaction, not the sealed one
    store.flush(1, seal=False)
    assert committed(store) == [(b"a", b"1")]
    store.put(b"c", b"1")
    store.seal()
    store.put(b"d", b"1")
    store.seal()  # sealed batches merge
    store.flush(2, seal=False)
    assert committed(store) == [(b"a", b"1"), (b"c", b"1"), (b"d", b"1")]


def test_a_cut_batch_is_read_through_the_open_transaction_and_sealed_alone(
    store: StorePartition,
) -> None:
    store.put(b"a", b"1")
    store.put(b"b", b"1")
    store.cut()  # its Kafka commit begins; later writes are the next transaction's
    store.put(b"a", b"2")
    store.delete_range(b"b", b"c")
    assert (store.get(b"a"), store.get(b"b")) == (b"2", None)
    assert store.committed_get(b"a") is None and committed(store) == []
    assert dict(store.pending()) == {b"a": b"2"}
    with pytest.raises(StateError, match="cut batch already"):
        store.cut()
    with pytest.raises(StateError, match="unflushed"):
        store.restore_batch([(b"x", b"1")], 1)
    store.seal()  # the commit returned: the cut batch is committed state, nothing more
    assert committed(store) == [(b"a", b"1"), (b"b", b"1")]
    assert visible(store) == [(b"a", b"2")]
    store.flush(5, seal=False)
    assert store.checkpoint == 5 and committed(store) == [(b"a", b"1"), (b"b", b"1")]
    store.cut()  # the next commit
    store.seal()
    store.flush(6, seal=False)
    assert committed(store) == [(b"a", b"2")]


def test_discard_drops_the_cut_batch_too(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.flush(1)
    store.put(b"a", b"2")
    store.cut()
    store.put(b"b", b"1")
    store.discard()  # the commit failed: the task starts again from committed state
    assert visible(store) == [(b"a", b"1")]
    store.seal()
    store.flush(2, seal=False)
    assert committed(store) == [(b"a", b"1")]


def test_close_is_idempotent_and_final(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.close()
    store.close()
    assert store.closed
    for call in (
        lambda: store.get(b"a"),
        lambda: store.put(b"a", b"1"),
        lambda: store.flush(1),
        lambda: store.range_items(b"", b"z"),
    ):
        with pytest.raises(StateError, match="closed"):
            call()


def test_only_bytes_are_stored(store: StorePartition) -> None:
    with pytest.raises(TypeError, match="bytes keys and values"):
        store.put(b"a", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        store.put(bytearray(b"a"), b"1")  # type: ignore[arg-type]


def test_approximate_size_counts_committed_keys(store: StorePartition) -> None:
    assert store.approximate_size() == 0
    for i in range(10):
        store.put(b"%d" % i, b"x")
    assert store.approximate_size() == 0
    store.flush(1)
    assert store.approximate_size() == 10
    store.delete(b"0")
    store.flush(2)
    assert store.approximate_size() == 9


def test_prefetch_changes_no_result(store: StorePartition) -> None:
    store.put(b"a", b"1")
    store.put(b"b", b"1")
    store.flush(1)
    store.put(b"a", b"2")
    store.prefetch([b"a", b"b", b"missing", b"a"])
    assert [store.get(k) for k in (b"a", b"b", b"missing")] == [b"2", b"1", None]
    assert store.committed_get(b"a") == b"1"
    store.prefetch([])


KEYS = [b"", b"\x00", b"a", b"ab", b"b", b"ba", b"\xff"]
# Topic ids as Kafka prints them (URL-safe base64 of 16 bytes).
TOPIC_IDS = ["UghfcGq0S3-YOhw7sSOVbw", "IYR3A73PQyOrMjT-cibDYQ"]
keys = st.sampled_from(KEYS)
values = st.binary(max_size=3)


class StoreMachine(RuleBasedStateMachine):
    """Random writes, cuts, seals, flushes, discards and restores against a model made of dicts.

    ``durable``: flushed state; ``committed``: durable + sealed (what queries see);
    ``view``: committed + the cut batch + the open transaction (what ``get`` sees); ``cut``:
    what ``committed`` becomes when the cut batch is sealed (None: no cut).
    """

    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="onceflow-state-"))
        self.factory = make_factory(self.backend, self.directory)
        self.store = self.factory()
        self.durable: dict[bytes, bytes] = {}
        self.committed: dict[bytes, bytes] = {}
        self.view: dict[bytes, bytes] = {}
        self.pending: dict[bytes, bytes | None] = {}
        self.buffered = self.sealed = False
        self.cut: dict[bytes, bytes] | None = None
        self.cut_buffered = False
        self.checkpoint: int | None = None
        self.current_topic_id: str | None = None  # set by the task at start
        self.topic_id: str | None = None  # recorded with the checkpoint
        self.next_offset = 0

    def _offset(self) -> int:
        self.next_offset += 3
        return self.next_offset

    @rule(key=keys, value=values)
    def put(self, key: bytes, value: bytes) -> None:
        self.store.put(key, value)
        self.view[key] = self.pending[key] = value
        self.buffered = True

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self.store.delete(key)
        self.view.pop(key, None)
        self.pending[key] = None
        self.buffered = True

    @rule(lo=keys, hi=keys)
    def delete_range(self, lo: bytes, hi: bytes) -> None:
        self.store.delete_range(lo, hi)
        for model in (self.view, self.pending):
            for key in [k for k in model if lo <= k < hi]:
                del model[key]
        self.buffered = self.buffered or lo < hi

    @precondition(lambda self: self.cut is None)
    @rule()
    def cut_batch(self) -> None:
        self.store.cut()
        self.cut = dict(self.view)
        self.cut_buffered, self.buffered = self.buffered, False
        self.pending = {}

    @rule()
    def seal(self) -> None:
        self.store.seal()
        self._sealed()

    def _sealed(self) -> None:
        if self.cut is not None:  # the cut batch only: the open transaction stays open
            self.committed, self.cut = self.cut, None
            self.sealed = self.sealed or self.cut_buffered
            return
        self.committed = dict(self.view)
        self.pending = {}
        self.sealed = self.sealed or self.buffered
        self.buffered = False

    @rule(with_checkpoint=st.booleans(), seal=st.booleans())
    def flush(self, with_checkpoint: bool, seal: bool) -> None:
        checkpoint = self._offset() if with_checkpoint else None
        self.store.flush(checkpoint, seal=seal)
        if seal:
            self._sealed()
        self.durable = dict(self.committed)
        self.sealed = False
        if checkpoint is not None:
            self.checkpoint = checkpoint
            self.topic_id = self.current_topic_id or self.topic_id

    @rule(topic_id=st.sampled_from(TOPIC_IDS))
    def set_changelog_topic_id(self, topic_id: str) -> None:
        self.store.set_changelog_topic_id(topic_id)
        self.current_topic_id = topic_id

    @rule()
    def discard(self) -> None:
        self.store.discard()
        self.view = dict(self.committed)
        self.pending = {}
        self.buffered = False
        self.cut = None

    @precondition(lambda self: not self.buffered and not self.sealed and self.cut is None)
    @rule(records=st.lists(st.tuples(keys, st.none() | values), max_size=6))
    def restore(self, records: list[tuple[bytes, bytes | None]]) -> None:
        offset = self._offset()
        self.store.restore_batch(records, offset)
        for key, value in records:
            if value is None:
                self.durable.pop(key, None)
            else:
                self.durable[key] = value
        self.committed = dict(self.durable)
        self.view = dict(self.durable)
        self.checkpoint = offset
        self.topic_id = self.current_topic_id or self.topic_id

    @invariant()
    def matches_model(self) -> None:
        for key in KEYS:
            assert self.store.get(key) == self.view.get(key)
            assert self.store.committed_get(key) == self.committed.get(key)
        assert self.store.range_items(b"", b"\xff\xff") == sorted(self.view.items())
        assert self.store.range_items(b"", b"\xff\xff", include_pending=False) == sorted(
            self.committed.items()
        )
        assert dict(self.store.pending()) == self.pending
        assert self.store.checkpoint == self.checkpoint
        assert self.store.changelog_topic_id == self.topic_id

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class SqliteStoreMachine(StoreMachine):
    backend = "sqlite"

    @rule()
    def reopen(self) -> None:
        """Close and reopen, as after a crash: only flushed state survives."""
        self.store.close()
        self.store = self.factory()
        self.committed = dict(self.durable)
        self.view = dict(self.durable)
        self.pending = {}
        self.cut = None
        self.buffered = self.sealed = False
        self.current_topic_id = None  # a new task sets it again


_machine_settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestInMemoryStoreMatchesModel = StoreMachine.TestCase
TestInMemoryStoreMatchesModel.settings = _machine_settings
TestSqliteStoreMatchesModel = SqliteStoreMachine.TestCase
TestSqliteStoreMatchesModel.settings = _machine_settings
