"""Records that cannot be produced: the dead letter of their input, cut to fit when needed;
through the test driver, the runtime's handling of a rejected output (no retries, no effects,
the next record goes on)."""

from __future__ import annotations

from typing import Any

from aiokafka.structs import ConsumerRecord

from onceflow import App, Context, Settings
from onceflow.errors import RecordTooLargeError
from onceflow.records import record_size
from onceflow.runtime.dead_letters import dead_letter
from onceflow.testing import TestDriver


def _input(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
    return ConsumerRecord("in", 2, 41, 1_000, 0, key, value, None, 0, 0, headers)


def test_a_dead_letter_that_fits_is_the_input_with_its_provenance() -> None:
    letter = dead_letter(
        _input(b"k", b"v", [("trace", b"t1")]),
        ValueError("bad"),
        "handler",
        topic="a-dlq",
        max_bytes=2**20,
    )
    headers = dict(letter.headers)
    assert (letter.topic, letter.key, letter.value, letter.timestamp_ms) == (
        "a-dlq",
        b"k",
        b"v",
        1000,
    )
    assert headers["onceflow.source.offset"] == b"41"
    assert headers["onceflow.error.stage"] == b"handler"
    assert headers["onceflow.original.trace"] == b"t1"
    assert "onceflow.truncated" not in headers


def test_a_dead_letter_too_large_is_cut_to_fit_and_says_so() -> None:
    value = b"v" * 50_000
    letter = dead_letter(
        _input(b"key", value, []), RecordTooLargeError("big"), "output", topic="d", max_bytes=10_000
    )
    assert record_size(letter.key, letter.value, letter.headers) <= 10_000
    assert letter.key == b"key"
    assert letter.value is not None and value.startswith(letter.value) and len(letter.value) > 9_000
    assert dict(letter.headers)["onceflow.truncated"] == b"key=3,value=50000"


def test_huge_source_headers_are_dropped_before_the_provenance() -> None:
    letter = dead_letter(
        _input(b"k" * 3000, b"v", [("blob", b"x" * 5000)]),
        ValueError("bad"),
        "handler",
        topic="d",
        max_bytes=2_000,
    )
    headers = dict(letter.headers)
    assert record_size(letter.key, letter.value, letter.headers) <= 2_000
    assert "onceflow.original.blob" not in headers
    assert headers["onceflow.source.partition"] == b"2"
    assert letter.key is not None and len(letter.key) < 3000


def _app(calls: list[str]) -> App:
    app = App("rejects")
    source = app.topic("in", key_serde="str", value_serde="str")
    out = app.topic("out", key_serde="str", value_serde="str", partitions=2)
    notes = app.table("notes", default="", value_serde="str")

    @app.handler(source, max_retries=3)
    async def handle(ctx: Context, key: str, value: str) -> None:
        calls.append(key)
        notes.set(ctx, key, value)
        if key == "huge":
            await ctx.send(out, key, "x" * 5000)
        elif key == "stray":
            await ctx.send(out, key, value, partition=7)
        else:
            await ctx.send(out, key, value)

    return app


async def test_rejected_outputs_are_dead_lettered_at_once_without_their_effects() -> None:
    calls: list[str] = []
    app = _app(calls)
    settings = Settings.model_construct(retry_backoff_ms=0, max_request_size=2_048)
    async with TestDriver(app, settings=settings) as driver:
        for key in ("a", "huge", "stray", "b"):
            await driver.send("in", key, f"{key}!")
        assert [o.key for o in driver.read("out")] == ["a", "b"]
        letters = driver.dead_letters
        assert [(d.key, d.headers["onceflow.error.type"]) for d in letters] == [
            (b"huge", "RecordTooLargeError"),
            (b"stray", "UnknownPartitionError"),
        ]
        assert {d.headers["onceflow.error.stage"] for d in letters} == {"output"}
        assert calls == ["a", "huge", "stray", "b"]  # no retries: they would fail alike
        notes = driver.table("notes")
        assert (notes.get("a"), notes.get("huge"), notes.get("stray")) == ("a!", None, None)


async def test_a_table_value_too_large_for_its_changelog_is_dead_lettered() -> None:
    app = App("big-state")
    source = app.topic("in", key_serde="str", value_serde="str")
    notes = app.table("notes", default="", value_serde="str")

    @app.handler(source)
    async def handle(ctx: Context, key: str, value: str) -> None:
        notes.set(ctx, key, value * 1000)

    settings = Settings.model_construct(retry_backoff_ms=0, max_request_size=2_048)
    async with TestDriver(app, settings=settings) as driver:
        await driver.send("in", "small", "s")
        await driver.send("in", "big", "0123456789")
        assert driver.table("notes").get("small") == "s" * 1000
        assert driver.table("notes").get("big") is None
        (letter,) = driver.dead_letters
        assert letter.headers["onceflow.error.type"] == "RecordTooLargeError"
        assert "table 'notes'" in letter.headers["onceflow.error.message"]
