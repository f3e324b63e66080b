"""What the chaos tests' apps must output: inputs for the stateful app, and one oracle per app
for ``history.History`` (tests/apps/echo.py, tests/apps/aggregates.py, tests/apps/finals.py and
tests/apps/page_counts.py).

Neither app carries its input's offset to the output (no headers), so outputs are matched by
what they do carry: echo by its (key, value) bytes, aggregates by key and running count.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Hashable, Sequence

from history import Event, Expected, Report, check_run

KEYS = 20_000


def make_inputs(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    return [
        (
            f"key-{rng.randrange(KEYS)}".encode(),
            rng.randrange(-1000, 1000).to_bytes(8, "big", signed=True),
        )
        for _ in range(n)
    ]


def expected_by_key(inputs: list) -> dict[bytes, list[bytes]]:
    """The aggregates app's exact outputs per key (records with ``key`` and ``value``)."""
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for e in AggregatesOracle().expect([Event.of(r) for r in inputs]):
        out[e.input.key].append(e.value)
    return out


def outputs_by_key(records: list) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = defaultdict(list)
    for r in records:
        out[r.key].append(r.value)
    return out


class EchoOracle:
    """tests/apps/echo.py: every input once, unchanged, on its partition, in order. An output
    names its input by (key, value); equal inputs are matched in order."""

    name = "echo"

    def expect(self, inputs: Sequence[Event]) -> list[Expected]:
        return [Expected(e, (e.key, e.value), (e.key, e.value), e.value) for e in inputs]

    def identify(self, output: Event) -> tuple[Hashable, Hashable]:
        return (output.key, output.value), (output.key, output.value)

    def explain(self, output: Event, blamed: Expected | None) -> str:
        return "its bytes match no input"


class AggregatesOracle:
    """tests/apps/aggregates.py: after the n-th input of a key, ``"sum,count,min,max"`` of that
    key's first n inputs (one partition's order is each of its keys' order). An output names
    its input by (key, count); its other fields must agree."""

    name = "aggregates"

    def expect(self, inputs: Sequence[Event]) -> list[Expected]:
        state: dict[bytes | None, tuple[int, int, int, int]] = {}
        expected = []
        for e in inputs:
            value = int.from_bytes(e.value or b"", "big", signed=True)
            s, c, lo, hi = state.get(e.key, (0, 0, value, value))
            state[e.key] = now = (s + value, c + 1, min(lo, value), max(hi, value))
            expected.append(Expected(e, (e.key, c + 1), e.key, ",".join(map(str, now)).encode()))
        return expected

    def identify(self, output: Event) -> tuple[Hashable, Hashable]:
        return (output.key, _count(output.value)), output.key

    def explain(self, output: Event, blamed: Expected | None) -> str:
        if blamed is None:
            return "more outputs than inputs for this key"
        got, want = _count(output.value), _count(blamed.value)
        why = "the aggregate differs"
        if got is None:
            why = "not an aggregate"
        elif want is not None and got > want:
            why = f"count {got} > {want}: state of an aborted attempt leaked in"
        elif want is not None and got < want:
            why = f"count {got} < {want}: committed state went missing"
        return f"{why} (expected {blamed.value!r} for input {blamed.input})"


def _count(value: bytes | None) -> int | None:
    fields = (value or b"").split(b",")
    try:
        return int(fields[1]) if len(fields) == 4 else None
    except ValueError:
        return None


async def check_aggregates(
    bootstrap: str, source: str, sink: str, output: object = None, *, faults: int = 0
) -> Report:
    """Check a finished aggregates run from Kafka (``output`` is ignored: the sink is re-read
    whole, to see duplicates committed after the test stopped collecting)."""
    report = await check_run(bootstrap, source, sink, AggregatesOracle(), faults=faults)
    report.assert_clean()
    return report


# -- final window results (tests/apps/finals.py) ------------------------------------------------

FINALS_WINDOWS = {"T": (1000, 1000), "H": (2000, 1000)}  # kind -> (size, advance), ms
FINALS_GRACE = 200
TICK_EVERY = 3000


def _windows_for(ts: int, size: int, advance: int) -> list[int]:
    if ts < 0:
        return []
    first = max(0, ts - size + advance) // advance * advance
    return list(range(first, ts + 1, advance))


class FinalsOracle:
    """tests/apps/finals.py: one output per (key, window) that stream time closed, with the
    count of the records on time for it — the model replays each partition (one task) in offset
    order with its own stream time. An output is charged to the input that closed its window
    (same partition; outputs of one task come in the order of those inputs). It names its
    window by (key, kind, start); its count must agree."""

    name = "finals"

    def expect(self, inputs: Sequence[Event]) -> list[Expected]:
        expected: list[Expected] = []
        by_partition: dict[int, list[Event]] = defaultdict(list)
        for e in inputs:
            by_partition[e.partition].append(e)
        for events in by_partition.values():
            expected += self._partition(events)
        return expected

    def _partition(self, events: list[Event]) -> list[Expected]:
        stream_time = -1
        open_: dict[tuple[str, int], dict[bytes | None, int]] = {}  # (kind, start) -> counts
        out = []
        for e in events:
            ts = e.timestamp
            if ts > stream_time:
                stream_time = ts
                for kind, start in sorted(open_, key=lambda w: (w[1] + FINALS_WINDOWS[w[0]][0], w)):
                    size = FINALS_WINDOWS[kind][0]
                    if start + size + FINALS_GRACE <= stream_time:
                        for key, n in sorted(open_.pop((kind, start)).items()):
                            value = f"{kind}:{start}:{n}".encode()
                            out.append(Expected(e, (key, kind, start), key, value))
            for kind, (size, advance) in FINALS_WINDOWS.items():
                for start in _windows_for(ts, size, advance):
                    if stream_time < start + size + FINALS_GRACE:
                        counts = open_.setdefault((kind, start), {})
                        counts[e.key] = counts.get(e.key, 0) + 1
        return out

    def identify(self, output: Event) -> tuple[Hashable, Hashable]:
        fields = (output.value or b"").decode(errors="replace").split(":")
        if len(fields) != 3 or not fields[1].isdigit():
            return None, output.key
        return (output.key, fields[0], int(fields[1])), output.key

    def explain(self, output: Event, blamed: Expected | None) -> str:
        if blamed is None:
            return "a window the inputs never closed, or more finals than windows for this key"
        return f"expected {blamed.value!r} (closed by input {blamed.input})"


def expected_ticks(inputs: Sequence[Event], group: str = "0") -> dict[str, list[str]]:
    """The stream-time timer's firings per task id: a boundary each time a partition's stream
    time enters a new period of TICK_EVERY, in that partition's offset order."""
    ticks: dict[str, list[str]] = {}
    by_partition: dict[int, list[Event]] = defaultdict(list)
    for e in sorted(inputs, key=lambda e: (e.partition, e.offset)):
        by_partition[e.partition].append(e)
    for p, events in by_partition.items():
        stream_time, fired = -1, []
        for e in events:
            ts = e.timestamp
            if ts > stream_time:
                if ts // TICK_EVERY > stream_time // TICK_EVERY:
                    fired.append(str(ts // TICK_EVERY * TICK_EVERY))
                stream_time = ts
        ticks[f"{group}_{p}"] = fired
    return ticks


# -- re-keying across a repartition topic (tests/apps/page_counts.py) ---------------------------


class PageCountsOracle:
    """tests/apps/page_counts.py: inputs keyed by user carry a page; after the hop, each page's
    outputs are its running count 1..n, once each, in order, on the page's sink partition.

    Which input gets which count depends on how the hop interleaved the upstream partitions, so
    an output names (page, count), not an input; the expected "input" of count k is a stand-in
    on the output's partition, ordered by k within its page (``order_by_group``)."""

    name = "page-counts"
    order_by_group = True

    def __init__(self, sink_partitions: int) -> None:
        self.sink_partitions = sink_partitions

    def expect(self, inputs: Sequence[Event]) -> list[Expected]:
        from onceflow.partitioner import partition_for_key

        totals: dict[bytes | None, int] = defaultdict(int)
        for e in inputs:
            totals[e.value] += 1
        expected = []
        for page, n in sorted(totals.items(), key=lambda kv: kv[0] or b""):
            p = partition_for_key(page or b"", self.sink_partitions)
            for k in range(1, n + 1):
                stand_in = Event(p, k, page, str(k).encode())
                expected.append(Expected(stand_in, (page, k), page, str(k).encode()))
        return expected

    def identify(self, output: Event) -> tuple[Hashable, Hashable]:
        value = (output.value or b"").decode(errors="replace")
        return ((output.key, int(value)) if value.isdigit() else None), output.key

    def explain(self, output: Event, blamed: Expected | None) -> str:
        if blamed is None:
            return "more counts than this page had inputs"
        return f"count {output.value!r} is not the next one (expected {blamed.value!r})"
