"""processors/page_views.py in the in-memory driver: clicks keyed by user are re-keyed by page
through the repartition topic (the hop runs in memory) and counted per page and minute."""

from __future__ import annotations

import random
from collections import Counter

from onceflow import App, ConfigurationError, Context
from onceflow.examples import page_views
from onceflow.testing import TestDriver

MIN = 60_000
T0 = 1_700_000_400_000 - 1_700_000_400_000 % MIN


async def test_clicks_are_counted_per_page_across_the_hop() -> None:
    async with TestDriver(page_views.app, partitions=3) as driver:
        for user, page in [("ann", "/a"), ("bob", "/a"), ("cid", "/b"), ("ann", "/a")]:
            await driver.send(page_views.clicks, user, page, timestamp=T0 + 5)
        out = [(o.key, o.value, o.timestamp) for o in driver.read(page_views.views)]
        assert sorted(out) == [("/a", 1, T0 + 5), ("/a", 2, T0 + 5), ("/a", 3, T0 + 5),
                               ("/b", 1, T0 + 5)]  # fmt: skip
        hop = driver.read(page_views.by_page)
        assert [(o.key, o.value) for o in hop][:2] == [("/a", "ann"), ("/a", "bob")]
        assert driver.table(page_views.per_page).windows("/a")[0].value == 3
        # The repartition topic is partitioned like the clicks (3) and keyed by page
        assert {o.partition for o in hop} <= {0, 1, 2}


async def test_random_clicks_match_a_model() -> None:
    rng = random.Random(5)
    clicks = [(f"u{rng.randrange(20)}", f"/p{rng.randrange(7)}", T0 + rng.randrange(3 * MIN))
              for _ in range(300)]  # fmt: skip
    clicks.sort(key=lambda c: c[2])  # in time order: no record is late
    async with TestDriver(page_views.app, partitions=4) as driver:
        for user, page, ts in clicks:
            await driver.send(page_views.clicks, user, page, timestamp=ts)
        finals: dict[tuple[str, int], int] = {}
        for o in driver.read(page_views.views):
            window = (o.timestamp - T0) // MIN
            assert o.value == finals.get((o.key, window), 0) + 1  # a running count, no gaps
            finals[(o.key, window)] = o.value
    assert finals == Counter((page, (ts - T0) // MIN) for _, page, ts in clicks)


def test_a_repartition_topic_needs_a_handler_and_a_plain_name() -> None:
    app = App("x")
    app.handler(app.topic("in"))(_noop)
    app.repartition("orphan")
    try:
        TestDriver(app)
    except ConfigurationError as exc:
        assert "has no handler" in str(exc)
    else:
        raise AssertionError("a repartition topic without a handler was accepted")
    for bad in ("", "a b", "a/b"):
        try:
            app.repartition(bad)
        except ConfigurationError:
            continue
        raise AssertionError(f"repartition name {bad!r} was accepted")


def test_a_repartition_topic_follows_the_app_id() -> None:
    app = App("first")
    hop = app.repartition("hop")
    app.handler(hop)(_noop)
    app.with_app_id("second")
    assert hop.name == "second-hop-repartition"
    assert list(app.handlers) == ["second-hop-repartition"]
    assert "second-hop-repartition" in app.topics


async def _noop(ctx: Context, key: object, value: object) -> None:
    pass
