"""The state package exports exactly its public names."""

from onceflow import state


def test_public_names() -> None:
    assert set(state.__all__) == {
        "InMemoryStorePartition",
        "SqliteStorePartition",
        "StorePartition",
        "StorePartitionOpener",
        "TaskLock",
        "WindowedStorePartition",
        "open_store",
    }
    for name in state.__all__:
        assert getattr(state, name) is not None
