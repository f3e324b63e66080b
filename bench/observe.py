"""Watching a running app from its output: when each partition's records arrive, how late.

``OutputLog`` reads the output topic ``read_committed`` (``fetch_max_wait_ms`` 10, like
``bench.latency``) and keeps, per partition, each record's arrival time and its send stamp
(``time.time_ns()`` written by the paced producer at the head of the value, carried through by
the app). Arrival and stamp are wall-clock seconds of this process's clock, the producer's too.

The pure functions below turn that into the HA figures: the longest stop of a partition's
output (a task not processing: under exactly-once its output appears at each commit, so a
partition with input flowing shows a record every commit interval), and latency percentiles of
the records sent in a window.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.latency import percentiles, produce_paced

__all__ = ["Gap", "OutputLog", "Traffic", "latency_in", "latency_timeline", "longest_gap"]


@dataclass
class OutputLog:
    """Arrivals on ``topic``'s ``partitions``: ``arrivals[p]`` is a list of (received, sent)."""

    bootstrap: str
    topic: str
    partitions: int
    arrivals: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    count: int = 0

    async def run(self, until: asyncio.Future[int]) -> None:
        """Read from the beginning until ``until`` is done and that many records were seen."""
        tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
        for p in range(self.partitions):
            self.arrivals.setdefault(p, [])
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not until.done() or self.count < until.result():
                batches = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for tp, records in batches.items():
                    out = self.arrivals[tp.partition]
                    out.extend((now, int(r.value.split(b" ", 1)[0]) / 1e9) for r in records)
                    self.count += len(records)
        finally:
            await consumer.stop()

    def all(self) -> list[tuple[float, float]]:
        return [a for arrivals in self.arrivals.values() for a in arrivals]


@dataclass(frozen=True)
class Gap:
    """The longest time between two arrivals on a partition: ``start`` (the last arrival
    before; or the window's start) to ``end`` (the first arrival after)."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def longest_gap(received: Iterable[float], since: float, until: float) -> Gap:
    """The longest stretch without an arrival within [``since``, ``until``]. The window's edges
    count as arrivals: a partition silent from ``since`` on has a gap from ``since``, one silent
    at the end a gap up to ``until``."""
    times = sorted(t for t in received if since <= t <= until)
    edges = [since, *times, until]
    best = Gap(since, since)
    for a, b in itertools.pairwise(edges):
        if b - a > best.seconds:
            best = Gap(a, b)
    return best


def latency_in(
    arrivals: Iterable[tuple[float, float]], sent_from: float, sent_to: float
) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/count of end-to-end latency (ms) of the records sent in
    [``sent_from``, ``sent_to``)."""
    samples = [(r - s) * 1000 for r, s in arrivals if sent_from <= s < sent_to]
    if not samples:
        return {"count": 0}
    return {**percentiles(samples), "max": max(samples), "count": len(samples)}


def latency_timeline(
    arrivals: list[tuple[float, float]], origin: float, start: float, stop: float, step: float
) -> list[dict[str, float]]:
    """``latency_in`` of consecutive send-time windows of ``step`` seconds from ``origin +
    start`` to ``origin + stop``, each labelled with its start relative to ``origin`` (``at_s``):
    the shape of a latency spike around an event at ``origin``."""
    out = []
    at = start
    while at < stop:
        stats = latency_in(arrivals, origin + at, origin + at + step)
        out.append({"at_s": at, **stats})
        at += step
    return out


class Traffic:
    """Stamped input at a steady ``rate`` (``bench.latency.produce_paced``) and the output's
    ``OutputLog``, from ``start()`` to ``finish()``."""

    def __init__(self, bootstrap: str, inp: str, out: str, partitions: int, rate: float) -> None:
        self.bootstrap = bootstrap
        self.inp = inp
        self.rate = rate
        self.output = OutputLog(bootstrap, out, partitions)
        self.started_at = 0.0
        self.stopped_at = 0.0
        self._stop = asyncio.Event()
        self._sent: asyncio.Future[int] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._producer: asyncio.Task[int] | None = None

    async def start(self) -> None:
        self._sent = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self.output.run(self._sent))
        self._producer = asyncio.create_task(
            produce_paced(self.bootstrap, self.inp, self.rate, math.inf, self._stop)
        )
        self.started_at = time.time()

    def check(self) -> None:
        """Raise what the producer or the output reader died of."""
        for task in (self._reader, self._producer):
            if task is not None and task.done() and (exc := task.exception()) is not None:
                raise exc

    async def finish(self, timeout: float) -> int:
        """Stop the input; wait (up to ``timeout``) until every record sent has its output."""
        assert self._sent is not None and self._reader is not None and self._producer is not None
        self._stop.set()
        self.stopped_at = time.time()
        sent = await self._producer
        self._sent.set_result(sent)
        async with asyncio.timeout(timeout):
            await self._reader
        return sent

    async def close(self) -> None:
        """Cancel what still runs (a run that failed before ``finish``); safe twice."""
        for task in (self._reader, self._producer):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
