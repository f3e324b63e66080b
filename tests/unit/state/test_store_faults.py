"""Local faults of a store, for real: a disk that refuses writes (``RLIMIT_FSIZE`` in a child
process, so SQLite gets EFBIG) and a checkpoint beyond its changelog's end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from onceflow.errors import ChangelogMissingError
from onceflow.runtime.restore import RestoreProgress, start_offset
from onceflow.state.sqlite.partition import SqliteStorePartition

ROOT = Path(__file__).resolve().parents[3]

# In a child: fill a store past a 64 KiB file size limit; print the error and what survived.
FILL = """
    import resource, signal, sys
    from pathlib import Path
    from onceflow.errors import StateError
    from onceflow.state.sqlite.partition import SqliteStorePartition

    path = Path(sys.argv[1])
    with SqliteStorePartition(path) as store:
        store.put(b"kept", b"1")
        store.flush(checkpoint=7)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            for i in range(100):
                for j in range(100):
                    store.put(f"{i}-{j}".encode(), b"x" * 100)
                store.flush(checkpoint=100 + i)
        except StateError as exc:
            print(exc)
        print("checkpoint", store.checkpoint, "kept", store.get(b"kept"))
"""


def test_a_write_past_the_file_size_limit_fails_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "store" / "0"
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FILL), str(path)],
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (os.environ.get("PYTHONPATH"), str(ROOT)))),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    message, survived = done.stdout.strip().splitlines()
    assert message.startswith(f"SQLite failed while writing {str(path / 'data.sqlite')!r}: ")
    assert "SQLITE_IOERR" in message or "SQLITE_FULL" in message, message
    assert "RLIMIT_FSIZE" in message and "EFBIG (File too large)" in message, message
    assert done.stderr == ""  # sqlitedict's own error lines are silenced: one message, ours
    # The failed flush left durable state as it was before it: its checkpoint describes it.
    with SqliteStorePartition(path) as store:
        assert store.checkpoint == int(survived.split()[1]) >= 7
        assert store.get(b"kept") == b"1"


@pytest.fixture
def store(tmp_path: Path):
    with SqliteStorePartition(tmp_path / "sum" / "3") as store:
        yield store


def test_restore_starts_after_the_checkpoint(store: SqliteStorePartition) -> None:
    progress = RestoreProgress("sum", 3)
    assert start_offset(store, progress, "app-sum-changelog", 0, 10) == 0
    store.restore_batch([(b"k", b"v")], last_offset=4)
    assert start_offset(store, progress, "app-sum-changelog", 0, 10) == 5
    # Below the log start (retention removed the records): start at the log start.
    assert start_offset(store, progress, "app-sum-changelog", 8, 10) == 8


@pytest.mark.parametrize("end", [0, 4])
def test_a_checkpoint_beyond_the_changelog_end_is_fatal(
    store: SqliteStorePartition, end: int
) -> None:
    store.restore_batch([(b"k", b"v")], last_offset=4)
    with pytest.raises(ChangelogMissingError) as raised:
        start_offset(store, RestoreProgress("sum", 3), "app-sum-changelog", 0, end)
    message = str(raised.value)
    assert "store 'sum' partition 3 has checkpoint 4 but changelog topic 'app-sum-changelog' " in (
        message
    )
    assert f"partition 3 ends at offset {end}" in message
    assert store.get(b"k") == b"v"  # nothing wiped: the operator decides


OLD_ID, NEW_ID = "UghfcGq0S3-YOhw7sSOVbw", "IYR3A73PQyOrMjT-cibDYQ"


def test_a_checkpoint_of_a_recreated_changelog_is_fatal(store: SqliteStorePartition) -> None:
    progress = RestoreProgress("sum", 3)
    assert start_offset(store, progress, "app-sum-changelog", 0, 10, OLD_ID) == 0
    store.restore_batch([(b"k", b"v")], last_offset=4)  # the id is recorded with the checkpoint
    assert store.changelog_topic_id == OLD_ID
    assert start_offset(store, progress, "app-sum-changelog", 0, 10, OLD_ID) == 5
    # The topic was recreated and someone wrote more than the checkpoint to it: offsets fit.
    with pytest.raises(ChangelogMissingError) as raised:
        start_offset(store, progress, "app-sum-changelog", 0, 10, NEW_ID)
    message = str(raised.value)
    assert (
        f"store 'sum' partition 3 has checkpoint 4 of changelog topic 'app-sum-changelog' with "
        f"topic id {OLD_ID}, but the topic now has id {NEW_ID}: it was deleted and recreated"
    ) in message
    assert "delete the directory of store 'sum' partition 3 under ONCEFLOW_STATE_DIR" in message
    store.restore_batch([], last_offset=5)
    assert store.changelog_topic_id == OLD_ID  # nothing recorded for the refused topic
    # Without an id (a broker before Kafka 3.1) only the offsets are checked.
    assert start_offset(store, progress, "app-sum-changelog", 0, 10) == 6


def test_a_checkpoint_without_a_topic_id_adopts_the_current_one(
    store: SqliteStorePartition,
) -> None:
    store.restore_batch([(b"k", b"v")], last_offset=4)  # written by an older onceflow
    assert store.changelog_topic_id is None
    assert start_offset(store, RestoreProgress("sum", 3), "app-sum-changelog", 0, 10, NEW_ID) == 5
    assert (store.checkpoint, store.changelog_topic_id) == (4, NEW_ID)  # recorded at once
    assert store.get(b"k") == b"v"
