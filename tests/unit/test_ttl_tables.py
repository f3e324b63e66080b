"""Tables with TTL through the in-memory test driver (the runtime's own Task): handlers see a key
expire by the task's stream time whatever the commit timing, committed reads by the committed
stream time, and each commit tombstones expired keys in the changelog, so replaying the
changelog gives the same table."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from onceflow import App, Context
from onceflow.errors import ConfigurationError
from onceflow.state.memory import InMemoryStorePartition
from onceflow.state.ttl import TtlStorePartition, decode_row
from onceflow.testing import TestDriver

TTL = timedelta(seconds=10)
S = 1_000


def build() -> tuple[App, Any, Any]:
    """Counts per key that forget a key 10 s of stream time after its last count; a value
    "-" deletes the key, "?" only reads it."""
    app = App("ttl-test")
    source = app.topic("in", key_serde="str", value_serde="str")
    out = app.topic("out", key_serde="str", value_serde="json")
    counts = app.table("counts", default=0, value_serde="json", ttl=TTL)

    @app.handler(source)
    async def count(ctx: Context, key: str, value: str) -> None:
        if value == "-":
            counts.delete(ctx, key)
        elif value == "?":
            await ctx.send(out, key, counts.get(ctx, key))
        else:
            await ctx.send(out, key, counts.add(ctx, key, 1))

    return app, counts, source


INPUT = [
    ("a", "x", 0),
    ("b", "x", 1 * S),
    ("a", "x", 5 * S),  # a: 2, last written at 5 s
    ("c", "x", 9 * S),
    ("b", "?", 11 * S),  # b written at 1 s: expired at 11 s (1 + 10 <= 11) -> 0
    ("a", "?", 14 * S),  # a written at 5 s: still there until 15 s -> 2
    ("c", "x", 15 * S),  # refreshes c: 2
    ("a", "x", 15 * S),  # a expired exactly now: starts again at 1
    ("x", "x", 30 * S),  # moves stream time past everything but x
    ("c", "?", 30 * S),  # c written at 15 s: gone -> 0
]
EXPECTED = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("b", 0), ("a", 2), ("c", 2), ("a", 1)]
EXPECTED += [("x", 1), ("c", 0)]


async def run(auto_commit: bool, commit_every: int = 1) -> tuple[list[tuple[str, int]], Any]:
    app, counts, source = build()
    driver = TestDriver(app, auto_commit=auto_commit)
    for i, (key, value, ts) in enumerate(INPUT):
        await driver.send(source, key, value, timestamp=ts)
        if not auto_commit and i % commit_every == commit_every - 1:
            await driver.commit()
    await driver.commit()
    outputs = [(o.key, o.value) for o in driver.read("out")]
    return outputs, (driver, counts)


async def test_handlers_see_keys_expire_by_stream_time() -> None:
    outputs, (driver, counts) = await run(auto_commit=True)
    assert outputs == EXPECTED
    view = driver.table(counts)
    assert [view.get(k) for k in "abcx"] == [None, None, None, 1]
    await driver.close()


@pytest.mark.parametrize("commit_every", [2, 3, 100])
async def test_what_handlers_see_does_not_depend_on_commit_timing(commit_every: int) -> None:
    outputs, (driver, _) = await run(auto_commit=False, commit_every=commit_every)
    assert outputs == EXPECTED
    await driver.close()


async def test_committed_reads_filter_by_the_committed_stream_time() -> None:
    app, counts, source = build()
    async with TestDriver(app, auto_commit=False) as driver:
        await driver.send(source, "a", "x", timestamp=0)
        await driver.commit()
        await driver.send(source, "z", "x", timestamp=20 * S)  # not committed yet
        assert driver.table(counts).get("a") == 1  # as of the committed stream time, 0
        await driver.commit()
        assert driver.table(counts).get("a") is None


async def test_each_commit_tombstones_expired_keys_in_the_changelog() -> None:
    _, (driver, counts) = await run(auto_commit=True)
    changelog = [(o.key, o.value) for o in driver.read(counts.changelog_topic)]
    tombstones = [key for key, value in changelog if value is None]
    # b expired when c's write moved stream time to 11 s, a at 15 s (and again at 30 s: its
    # rewrite at 15 s), c at 30 s; the index entries never reach the changelog.
    assert sorted(tombstones) == [b"a", b"a", b"b", b"c"]
    assert all(decode_row(v)[0] >= 0 for _, v in changelog if v is not None)
    # Replaying the changelog (a restore) gives the committed table, expired keys gone.
    restored = TtlStorePartition(InMemoryStorePartition(), ttl_ms=10 * S, name="counts")
    restored.restore_batch(changelog, last_offset=len(changelog) - 1)
    stream_time = driver.stream_time()
    for key in "abcx":
        raw = restored.committed_get(key.encode(), stream_time)
        assert (None if raw is None else counts.value_serde.deserialize(raw)) == (
            driver.table(counts).get(key)
        )
    await driver.close()


async def test_a_deleted_key_is_a_tombstone_and_reads_the_default() -> None:
    app, counts, source = build()
    async with TestDriver(app) as driver:
        await driver.send(source, "a", "x", timestamp=0)
        await driver.send(source, "a", "-", timestamp=1)
        await driver.send(source, "a", "?", timestamp=2)
        assert [o.value for o in driver.read("out")] == [1, 0]
        assert driver.read(counts.changelog_topic)[-1].value is None
        assert driver.table(counts).get("a") is None


@pytest.mark.parametrize(
    "ttl", [timedelta(0), timedelta(seconds=-1), timedelta(microseconds=10), 0, -5, True, "10s"]
)
def test_ttl_must_be_a_positive_duration(ttl: Any) -> None:
    app = App("ttl-config")
    with pytest.raises(ConfigurationError, match="table 'seen': ttl must be a positive timedelta"):
        app.table("seen", ttl=ttl)


def test_ttl_is_taken_as_a_timedelta_or_milliseconds() -> None:
    app = App("ttl-config")
    assert app.table("a", ttl=timedelta(minutes=1)).ttl_ms == 60_000
    assert app.table("b", ttl=1_500).ttl_ms == 1_500
    assert app.table("c").ttl_ms is None
