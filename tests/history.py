"""A Jepsen-style history of one chaos run, and its check.

A ``History`` holds what went into the app (every record of the source topic, as the app reads
it), what a ``read_committed`` reader sees on the sink, optionally what a ``read_uncommitted``
reader sees there, and the sink's end offsets at both isolation levels. An ``Oracle`` for the app
says which output each input must cause and how an output names its input. ``check()`` matches
outputs to inputs, in the sink's order, and counts per partition:

* **duplicates** — an output that matches an input whose output was already matched: the
  input's effect is committed more than once.
* **losses** — an input that no committed output matches.
* **aborted reads** — a committed output that the committed inputs cannot explain: bytes no
  input maps to (echo), or a running aggregate that is not the one over exactly the committed
  inputs of its key before it (stateful apps: state of an aborted attempt leaked in, or
  committed state went missing). It is blamed on the first unmatched input of its group, so
  one wrong output is not also counted as a loss.
* **out of order** — a matched output on another partition than its input, or one that comes,
  on its partition, after the output of a later input.
* **hanging** — a sink partition whose read_committed end is below its read_uncommitted end
  (a transaction left open).

Aborted writes (records the uncommitted reader sees and the committed one does not) are counted
for information: under chaos they are expected, and they must never be read as committed.

    report = await check_run(bootstrap, source, sink, EchoOracle(), faults=kills)
    print(report.summary())  # faults=6 records=100000 duplicates=0 losses=0 ...
    report.assert_clean()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kafka_helpers import end_offsets, read_to_end

KINDS = ("duplicates", "losses", "aborted_reads", "out_of_order", "hanging")
SHOWN_PER_KIND = 5


@dataclass(frozen=True)
class Event:
    """One record of the history: an input read from the source, or an output read from the sink."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = -1  # the record's, ms (what apps with windows and timers compute on)

    @classmethod
    def of(cls, record: Any) -> Event:
        """From an aiokafka ``ConsumerRecord`` (or anything with the same attributes)."""
        if isinstance(record, Event):
            return record
        headers = tuple((k, bytes(v)) for k, v in getattr(record, "headers", None) or ())
        timestamp = getattr(record, "timestamp", -1)
        return cls(record.partition, record.offset, record.key, record.value, headers, timestamp)

    def __str__(self) -> str:
        return f"p{self.partition}@{self.offset} key={self.key!r} value={self.value!r}"


@dataclass(frozen=True)
class Expected:
    """The output one input must cause.

    ``ident`` is what an output carries that names its input (echo: key and value; aggregates:
    key and count); several inputs may share one (echo of equal records), then they are matched
    in order. ``group`` is where an output that matches nothing is blamed (aggregates: its key).
    """

    input: Event
    ident: Hashable
    group: Hashable
    value: bytes | None


class Oracle(Protocol):
    """What one test app must output, and how its outputs name their inputs. An oracle may set
    ``order_by_group = True``: outputs are then in order within their group (and partition)
    only, for apps whose outputs of different groups interleave freely (a repartition hop)."""

    name: str

    def expect(self, inputs: Sequence[Event]) -> list[Expected]:
        """The expected outputs of ``inputs`` (sorted by partition, offset), in input order."""
        ...

    def identify(self, output: Event) -> tuple[Hashable, Hashable]:
        """``(ident, group)`` of an output; ``ident`` None when the output is unreadable."""
        ...

    def explain(self, output: Event, blamed: Expected | None) -> str:
        """Why ``output``, which matches no expected output, is wrong (``blamed``: the input
        of its group it stands in for, if any is left)."""
        ...


@dataclass(frozen=True)
class Anomaly:
    kind: str
    partition: int
    detail: str


@dataclass
class Report:
    """The result of ``History.check()``: counts per kind and partition, and the first cases."""

    oracle: str
    faults: int
    records: int  # inputs checked
    outputs: int  # committed outputs checked
    aborted_writes: int | None  # None: the uncommitted view was not read
    anomalies: list[Anomaly] = field(default_factory=list)
    produced: int | None = None  # acknowledged by the test's producer, if it said
    fault_kinds: dict[str, int] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(1 for a in self.anomalies if a.kind == kind)

    def by_partition(self, kind: str) -> dict[int, int]:
        counts: dict[int, int] = {}
        for a in self.anomalies:
            if a.kind == kind:
                counts[a.partition] = counts.get(a.partition, 0) + 1
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        """One line for the test log, e.g. ``faults=6 records=100000 duplicates=0 losses=0
        aborted_reads=0 out_of_order=0 aborted_writes=1234 hanging=0``."""
        writes = "?" if self.aborted_writes is None else str(self.aborted_writes)
        return (
            f"faults={self.faults} records={self.records} "
            f"duplicates={self.count('duplicates')} losses={self.count('losses')} "
            f"aborted_reads={self.count('aborted_reads')} "
            f"out_of_order={self.count('out_of_order')} aborted_writes={writes} "
            f"hanging={self.count('hanging')}"
        )

    def assert_clean(self, allow: Iterable[str] = ()) -> None:
        """Fail, listing the first few anomalies of each kind, unless there are none (kinds in
        ``allow`` are tolerated: at-least-once allows duplicates)."""
        allowed = set(allow)
        assert allowed <= set(KINDS), f"unknown anomaly kinds {allowed - set(KINDS)}"
        lines = []
        if self.produced is not None and self.produced != self.records:
            lines.append(
                f"the producer acknowledged {self.produced} inputs, the source holds "
                f"{self.records}: lost or duplicated before the app"
            )
        for kind in KINDS:
            cases = [a for a in self.anomalies if a.kind == kind]
            if not cases or kind in allowed:
                continue
            per = ", ".join(f"p{p}: {n}" for p, n in self.by_partition(kind).items())
            lines.append(f"{kind}: {len(cases)} ({per})")
            lines += [f"  {a.detail}" for a in cases[:SHOWN_PER_KIND]]
            if len(cases) > SHOWN_PER_KIND:
                lines.append(f"  ... and {len(cases) - SHOWN_PER_KIND} more")
        if lines:
            header = f"history check failed ({self.oracle}): {self.summary()}"
            raise AssertionError("\n".join([header, *lines]))


class History:
    """Everything one run put in and read back; ``check()`` judges it with ``oracle``."""

    def __init__(
        self,
        oracle: Oracle,
        *,
        faults: int | Mapping[str, int] = 0,
        produced: int | None = None,
    ) -> None:
        self.oracle = oracle
        self.fault_kinds = dict(faults) if isinstance(faults, Mapping) else {}
        self.faults = sum(faults.values()) if isinstance(faults, Mapping) else faults
        self.produced = produced
        self.inputs: list[Event] = []
        self.outputs: list[Event] = []  # read_committed
        self.uncommitted: list[Event] | None = None  # read_uncommitted, if read
        self.ends: tuple[dict[int, int], dict[int, int]] | None = None  # committed, uncommitted

    def add_inputs(self, records: Iterable[Any]) -> None:
        self.inputs += map(Event.of, records)

    def add_outputs(self, records: Iterable[Any]) -> None:
        """Outputs as a read_committed reader saw them."""
        self.outputs += map(Event.of, records)

    def add_uncommitted(self, records: Iterable[Any]) -> None:
        """The sink as a read_uncommitted reader saw it (aborted records included)."""
        self.uncommitted = [*(self.uncommitted or []), *map(Event.of, records)]

    def set_end_offsets(self, committed: dict[int, int], uncommitted: dict[int, int]) -> None:
        self.ends = (committed, uncommitted)

    async def load(
        self, bootstrap: str, source: str, sink: str, *, uncommitted: bool = True
    ) -> None:
        """Read the whole run back from Kafka; call it once the workers are stopped."""
        self.add_inputs(await read_to_end(bootstrap, source))
        self.add_outputs(await read_to_end(bootstrap, sink))
        if uncommitted:
            self.add_uncommitted(await read_to_end(bootstrap, sink, "read_uncommitted"))
        self.set_end_offsets(
            await end_offsets(bootstrap, sink, "read_committed"),
            await end_offsets(bootstrap, sink, "read_uncommitted"),
        )

    def check(self) -> Report:
        inputs = sorted(self.inputs, key=lambda e: (e.partition, e.offset))
        outputs = sorted(self.outputs, key=lambda e: (e.partition, e.offset))
        matcher = _Matcher(self.oracle, self.oracle.expect(inputs))
        matched = [pair for out in outputs if (pair := matcher.match(out)) is not None]
        by_group = getattr(self.oracle, "order_by_group", False)
        anomalies = [*matcher.anomalies, *matcher.losses(), *_out_of_order(matched, by_group)]
        anomalies += _hanging(self.ends)
        return Report(
            oracle=self.oracle.name,
            faults=self.faults,
            records=len(inputs),
            outputs=len(outputs),
            aborted_writes=self._aborted_writes(),
            anomalies=anomalies,
            produced=self.produced,
            fault_kinds=self.fault_kinds,
        )

    def _aborted_writes(self) -> int | None:
        if self.uncommitted is None:
            return None
        committed = {(e.partition, e.offset) for e in self.outputs}
        return sum(1 for e in self.uncommitted if (e.partition, e.offset) not in committed)


class _Matcher:
    """Matches outputs, in sink order, to the expected outputs of the inputs."""

    def __init__(self, oracle: Oracle, expected: list[Expected]) -> None:
        self.oracle = oracle
        self.expected = expected
        self.by_ident: dict[Hashable, list[int]] = {}
        self.pending: dict[Hashable, deque[int]] = {}  # per group, in input order
        for i, e in enumerate(expected):
            self.by_ident.setdefault(e.ident, []).append(i)
            self.pending.setdefault(e.group, deque()).append(i)
        self.matched_by: list[Event | None] = [None] * len(expected)
        self.anomalies: list[Anomaly] = []

    def match(self, out: Event) -> tuple[Event, Expected] | None:
        """The (output, expected) pair ``out`` is the first match of; None for an anomaly."""
        ident, group = self.oracle.identify(out)
        exact = [i for i in self.by_ident.get(ident, ()) if self.expected[i].value == out.value]
        free = next((i for i in exact if self.matched_by[i] is None), None)
        if free is not None:
            self.matched_by[free] = out
            return out, self.expected[free]
        if exact:
            first, expected = self.matched_by[exact[0]], self.expected[exact[0]]
            detail = f"{out}: again the output of input {expected.input}, first at {first}"
            self.anomalies.append(Anomaly("duplicates", out.partition, detail))
            return None
        blamed = self._first_pending(group)
        if blamed is not None:
            self.matched_by[blamed] = out
        expected = None if blamed is None else self.expected[blamed]
        detail = f"{out}: {self.oracle.explain(out, expected)}"
        self.anomalies.append(Anomaly("aborted_reads", out.partition, detail))
        return None

    def _first_pending(self, group: Hashable) -> int | None:
        queue = self.pending.get(group)
        while queue and self.matched_by[queue[0]] is not None:
            queue.popleft()
        return queue[0] if queue else None

    def losses(self) -> list[Anomaly]:
        return [
            Anomaly("losses", e.input.partition, f"input {e.input}: no output")
            for e, out in zip(self.expected, self.matched_by, strict=True)
            if out is None
        ]


def _out_of_order(matched: list[tuple[Event, Expected]], by_group: bool = False) -> list[Anomaly]:
    """Per partition (``by_group``: per partition and group), each matched output must come
    from a later input than the ones before."""
    anomalies = []
    latest: dict[Hashable, Event] = {}  # the latest input whose output was seen
    for out, expected in matched:
        source = expected.input
        if out.partition != source.partition:
            detail = f"{out}: output of input {source}, on another partition"
            anomalies.append(Anomaly("out_of_order", out.partition, detail))
            continue
        where = (out.partition, expected.group) if by_group else out.partition
        before = latest.get(where)
        if before is not None and source.offset < before.offset:
            detail = f"{out}: output of input {source}, after the output of input {before}"
            anomalies.append(Anomaly("out_of_order", out.partition, detail))
        else:
            latest[where] = source
    return anomalies


def _hanging(ends: tuple[dict[int, int], dict[int, int]] | None) -> list[Anomaly]:
    if ends is None:
        return []
    committed, uncommitted = ends
    return [
        Anomaly(
            "hanging",
            p,
            f"partition {p}: read_committed end {committed.get(p)} != read_uncommitted end {end}"
            " (a transaction left open)",
        )
        for p, end in sorted(uncommitted.items())
        if committed.get(p) != end
    ]


async def check_run(
    bootstrap: str,
    source: str,
    sink: str,
    oracle: Oracle,
    *,
    faults: int | Mapping[str, int] = 0,
    produced: int | None = None,
) -> Report:
    """Load a finished run's history from Kafka, check it and print the summary line."""
    history = History(oracle, faults=faults, produced=produced)
    await history.load(bootstrap, source, sink)
    report = history.check()
    kinds = f" ({', '.join(f'{k}={n}' for k, n in report.fault_kinds.items())})"
    print(f"history {oracle.name}: {report.summary()}{kinds if report.fault_kinds else ''}")
    return report
