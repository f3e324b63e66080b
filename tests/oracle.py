"""What the chaos tests' apps must output: inputs for the stateful app, and one oracle per app
for ``history.History`` (tests/apps/echo.py and tests/apps/aggregates.py).

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
