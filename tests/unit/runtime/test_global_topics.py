"""When a global table's store cannot go on from its positions (and is reloaded at start)."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.structs import TopicPartition

from onceflow import App
from onceflow.runtime.global_topics import layout_of, mismatch
from onceflow.state.sqlite.global_store import GlobalStorePartition, open_global_store

TOPIC = "countries"


@pytest.fixture
def store(tmp_path: Path) -> GlobalStorePartition:
    table = App("a").global_table(TOPIC)
    store, _ = open_global_store(tmp_path)
    store.set_layout(layout_of(table))
    store.set_changelog_topic_id("id-1")
    store.set_positions({0: 10, 1: 5})
    store.restore_batch([(b"fr", b'"France"')], 15)
    return store


def ends(*offsets: int) -> dict[TopicPartition, int]:
    return {TopicPartition(TOPIC, p): o for p, o in enumerate(offsets)}


def test_a_store_that_matches_goes_on(store: GlobalStorePartition) -> None:
    table = App("a").global_table(TOPIC)
    assert mismatch(table, store, 2, ends(10, 7), "id-1") is None
    assert mismatch(table, store, 3, ends(12, 5, 0), None) is None  # a new partition; no ids
    store.close()


@pytest.mark.parametrize(
    ("count", "end_offsets", "topic_id", "why"),
    [
        (2, (10, 7), "id-2", "was recreated (topic id id-1 -> id-2)"),
        (2, (9, 7), "id-1", "position 10 of partition 0 is beyond the topic's end offset 9"),
        (1, (10,), "id-1", "has 1 partitions, the store read partition 1"),
    ],
)
def test_what_reloads_the_store(
    store: GlobalStorePartition,
    count: int,
    end_offsets: tuple[int, ...],
    topic_id: str,
    why: str,
) -> None:
    table = App("a").global_table(TOPIC)
    found = mismatch(table, store, count, ends(*end_offsets), topic_id)
    assert found is not None and why in found
    store.close()


def test_another_layout_reloads_the_store(store: GlobalStorePartition) -> None:
    other = App("a").global_table("other-topic", name=TOPIC)
    found = mismatch(other, store, 2, {TopicPartition("other-topic", p): 10 for p in (0, 1)}, None)
    assert found is not None and found.startswith("layout changed")
    store.close()
