"""Declaring an App: clear errors for mistakes, a stable public API."""

from __future__ import annotations

import pytest

import onceflow as onceflow
from onceflow import App, ConfigurationError, Context, Tumbling


def test_handler_must_be_a_coroutine() -> None:
    app = App("a")
    src = app.topic("in")
    with pytest.raises(ConfigurationError, match="async def"):
        app.handler(src)(lambda ctx, k, v: None)  # type: ignore[arg-type]


def test_one_handler_per_topic() -> None:
    app = App("a")
    src = app.topic("in")

    @app.handler(src)
    async def first(ctx: Context, key: bytes, value: bytes) -> None: ...

    with pytest.raises(ConfigurationError, match="already has handler"):

        @app.handler(src)
        async def second(ctx: Context, key: bytes, value: bytes) -> None: ...


def test_duplicate_and_bad_declarations() -> None:
    app = App("a")
    app.topic("in")
    with pytest.raises(ConfigurationError, match="declared twice"):
        app.topic("in")
    app.table("t")
    with pytest.raises(ConfigurationError, match="declared twice"):
        app.windowed_table("t", window=Tumbling(minutes=1))
    with pytest.raises(ConfigurationError, match="plain word"):
        app.table("../etc")
    with pytest.raises(ConfigurationError, match=r"unknown serde|accepted"):
        app.topic("x", key_serde="protobuf")
    with pytest.raises(ConfigurationError):
        App("has space")


def test_internal_topic_names_follow_the_app_id() -> None:
    app = App("eos-stream-app")
    counts = app.windowed_table("counts", window=Tumbling(minutes=5))
    assert counts.changelog_topic == "eos-stream-app-counts-changelog"
    assert app.dlq_topic == "eos-stream-app-dlq"
    app.with_app_id("renamed")
    assert counts.changelog_topic == "renamed-counts-changelog"
    assert app.dlq_topic == "renamed-dlq"


def test_windowed_retention_covers_window_and_grace() -> None:
    app = App("a")
    t = app.windowed_table("w", window=Tumbling(minutes=5), grace=60_000)
    assert t.retention_ms >= 5 * 60_000 + 60_000
