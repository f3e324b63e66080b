"""The oracle of a stream-table join (tests/apps/enrich.py) for ``history.History``.

Each order must have one output, ``<order>|<customer value>``, with the value the customers
table held for the order's key *as of the order's place in its task*: the state after the table
records of the same partition with offsets below some position ``q`` (``<absent>`` when the key
has no value there: never written, or deleted by a tombstone). A task applies its table records
and handles its orders each in offset order, so along a partition's orders the positions never
go back. Which position an order gets depends on how the task interleaved the two partitions
(fetch order; issue 15 item 4 makes it time order), so the oracle takes the positions the
outputs show and checks they are possible: for each order, in offset order, the first output of
the order must show a value the key held at some position at or after the previous order's. The
expected output is that value; if there is no such position, the state at the previous position,
which the output then fails to match (an aborted read: an uncommitted table update leaked in,
or committed ones went missing).

Table values must be unique (``<key>#<n>``), so a value names the table record it came from.

``by_time=True`` fixes each order's position by time instead (Kafka Streams' semantics, for a
task that takes its records in timestamp order: issue 15 item 4): the table as of the order's
timestamp, every table record of the partition with a timestamp at or before it applied (the
table's timestamps must not go back within a partition).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Hashable, Sequence

from history import Event, Expected

ABSENT = "<absent>"
INFINITY = 2**63


class JoinOracle:
    """tests/apps/enrich.py: orders joined with the customers table as of their place."""

    name = "join"

    def __init__(
        self, table: Sequence[Event], outputs: Sequence[Event] = (), *, by_time: bool = False
    ) -> None:
        self.by_time = by_time
        self._times: dict[int, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        # (partition, key) -> the key's table records, in offset order: offsets, values
        self._offsets: dict[tuple[int, bytes | None], list[int]] = defaultdict(list)
        self._values: dict[tuple[int, bytes | None], list[str | None]] = defaultdict(list)
        for e in sorted(table, key=lambda e: (e.partition, e.offset)):
            self._times[e.partition][0].append(e.timestamp)
            self._times[e.partition][1].append(e.offset)
            self._offsets[(e.partition, e.key)].append(e.offset)
            self._values[(e.partition, e.key)].append(None if e.value is None else e.value.decode())
        self._shown: dict[bytes, str] = {}  # order -> the customer value of its first output
        for out in sorted(outputs, key=lambda e: (e.partition, e.offset)):
            order, customer = _parse(out.value)
            self._shown.setdefault(order, customer)
        self.positions: dict[int, list[int]] = defaultdict(list)  # chosen, per partition

    def expect(self, inputs: Sequence[Event]) -> list[Expected]:
        expected = []
        position: dict[int, int] = defaultdict(int)  # per partition, the last order's
        for e in inputs:
            order = e.value or b""
            if self.by_time:  # the one position its time gives
                at = self.position_at_time(e.partition, e.timestamp)
                want = self.value_at(e.partition, e.key, at).encode()
                expected.append(Expected(e, order, e.key, order + b"|" + want))
                continue
            at = position[e.partition]
            shown = self._shown.get(order)
            q = None if shown is None else self.earliest(e.partition, e.key, shown, at)
            if q is None:
                shown = self.value_at(e.partition, e.key, at)
            else:
                position[e.partition] = q
                self.positions[e.partition].append(q)
            expected.append(Expected(e, order, e.key, order + b"|" + shown.encode()))
        return expected

    def identify(self, output: Event) -> tuple[Hashable, Hashable]:
        order, _ = _parse(output.value)
        return order, output.key

    def explain(self, output: Event, blamed: Expected | None) -> str:
        if blamed is None:
            return "more outputs than orders for this customer"
        _, got = _parse(output.value)
        _, want = _parse(blamed.value)
        return (
            f"joined with {got!r}, which the table did not hold for key {output.key!r} at any "
            f"position from that of the previous order's join on (there: {want!r})"
        )

    def position_at_time(self, partition: int, timestamp: int) -> int:
        """The position after every table record of ``partition`` stamped at or before
        ``timestamp`` (the offset of the first one stamped after it)."""
        times, offsets = self._times[partition]
        i = bisect.bisect_right(times, timestamp)
        return offsets[i] if i < len(offsets) else INFINITY

    def value_at(self, partition: int, key: bytes | None, q: int) -> str:
        """The key's value after the partition's table records below offset ``q``."""
        offsets = self._offsets.get((partition, key), [])
        i = bisect.bisect_left(offsets, q) - 1
        value = self._values[(partition, key)][i] if i >= 0 else None
        return ABSENT if value is None else value

    def earliest(self, partition: int, key: bytes | None, shown: str, at: int) -> int | None:
        """The first position ``q >= at`` where the key's value is ``shown``; None if none."""
        offsets = self._offsets.get((partition, key), [])
        values = self._values.get((partition, key), [])
        # Where each value holds: [record offset + 1, next record's offset]; absent before all.
        spans = [(0, offsets[0] if offsets else INFINITY, None)]
        for i, (offset, value) in enumerate(zip(offsets, values, strict=True)):
            until = offsets[i + 1] if i + 1 < len(offsets) else INFINITY
            spans.append((offset + 1, until, value))
        wanted = None if shown == ABSENT else shown
        starts = [max(lo, at) for lo, hi, value in spans if value == wanted and hi >= at]
        return min(starts, default=None)


def _parse(value: bytes | None) -> tuple[bytes, str]:
    order, _, customer = (value or b"").partition(b"|")
    return order, customer.decode(errors="replace")
