"""What ``onceflow reset`` will do, decided before it does anything (``reset.py`` gathers the
facts and carries the plan out; docs/architecture.md, *Reprocessing*).

* **Source offsets**: the group's committed offset of every partition of every topic the group
  consumes, but repartition topics (deleted below): handler sources and source-table topics
  alike. A source table is restored at start up to its committed offset and fed from there,
  so resetting its topic with the streams' puts the table back where the streams restart (at
  the beginning: empty, as on a fresh run). Global tables have no committed offsets: a global
  table is its whole topic, reloaded at start into the wiped local state. The offsets are
  committed without metadata: no stream time, no table names (``checkpoint.offset_metadata``),
  as if the app had never run.
* **Internal topics** deleted: those the topology declares (``admin.internal_topics``) and those
  named like them (``cluster_check.named_like_internal``) but another app's; the dead-letter
  topic only with ``include_dlq``; never a topic the app reads as a source or global table. The
  broker drops a group's committed offsets of a topic it deletes (checked after deleting).
* **Local state**: ``ONCEFLOW_STATE_DIR/<app_id>`` (task stores, global stores, process id).

Every step compares with what is there, so a second reset finds nothing to do and says so.
"""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from onceflow.errors import ConfigurationError
from onceflow.runtime.cluster_check import foreign_topics, named_like_internal
from onceflow.topology import App

__all__ = [
    "Member",
    "OffsetMove",
    "ResetPlan",
    "Target",
    "internal_to_delete",
    "parse_datetime",
    "parse_duration",
    "source_topics",
]

TargetKind = Literal["earliest", "latest", "datetime", "duration"]
_DURATION = re.compile(
    r"P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)


@dataclass(frozen=True)
class Target:
    """Where to move the offsets: the log start or end, or the first record at or after
    ``timestamp_ms`` (a time, or now minus a duration; the log end if none is)."""

    kind: TargetKind = "earliest"
    timestamp_ms: int | None = None
    text: str = ""

    @classmethod
    def of(cls, latest: bool, to_datetime: str | None, by_duration: str | None) -> Target:
        """From the command line's flags (at most one is set: argparse sees to it)."""
        if to_datetime is not None:
            return cls("datetime", parse_datetime(to_datetime), to_datetime)
        if by_duration is not None:
            since = time.time() - parse_duration(by_duration).total_seconds()
            return cls("duration", int(since * 1000), by_duration)
        return cls("latest" if latest else "earliest")

    def describe(self) -> str:
        if self.timestamp_ms is None:
            return f"the {self.kind} offset"
        moment = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat()
        origin = f" ({self.text} before now)" if self.kind == "duration" else ""
        return f"the first offset at or after {moment}{origin}"


def parse_datetime(text: str) -> int:
    """ISO 8601 date-time -> epoch ms; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"--to-datetime {text!r} is not an ISO 8601 date-time "
            "(e.g. 2026-11-30T08:00:00Z or 2026-11-30T08:00:00+01:00; without a zone, UTC)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_duration(text: str) -> timedelta:
    """ISO 8601 duration without years or months (``PT1H``, ``P1D``, ``P1DT12H30M``)."""
    match = _DURATION.fullmatch(text.strip().upper())
    if match is None or text.strip().upper() in ("P", "PT") or text.strip().upper().endswith("T"):
        raise ConfigurationError(
            f"--by-duration {text!r} is not an ISO 8601 duration such as PT1H, P1D or "
            "P1DT12H30M (weeks, days, hours, minutes, seconds; no years or months)"
        )
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    return timedelta(**parts)


@dataclass(frozen=True)
class Member:
    """A live member of the group, as the broker describes it."""

    member_id: str
    client_id: str
    host: str
    group: str = ""

    def __str__(self) -> str:
        where = f" of group {self.group!r}" if self.group else ""
        return f"{self.client_id} on {self.host.lstrip('/')} (member {self.member_id}{where})"


@dataclass(frozen=True)
class OffsetMove:
    topic: str
    partition: int
    committed: int | None  # None: nothing committed
    target: int


@dataclass
class ResetPlan:
    """The facts ``reset.plan`` found and the steps they call for."""

    app_id: str
    target: Target
    local_state_only: bool
    state_dir: Path
    members: list[Member] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)  # local stores a live worker holds
    moves: list[OffsetMove] = field(default_factory=list)
    missing_sources: list[str] = field(default_factory=list)
    delete: dict[str, str] = field(default_factory=dict)  # topic -> why it goes
    keep: dict[str, str] = field(default_factory=dict)  # topic -> why it stays
    state_exists: bool = False

    @property
    def refused(self) -> list[str]:
        """Why the reset cannot run now (empty: it can)."""
        reasons = []
        if self.members:
            live = "; ".join(map(str, self.members))
            reasons.append(
                f"app {self.app_id!r} has live group members: {live}. Stop every worker "
                "of the app (and wait for the group to empty), then reset"
            )
        reasons.extend(self.locked)
        return reasons

    def lines(self) -> Iterator[str]:
        """The plan, one step per line."""
        yield f"reset of app {self.app_id!r}:"
        if not self.local_state_only:
            yield from self._offset_lines()
            for topic, why in self.delete.items():
                yield f"  delete topic {topic} ({why})"
            for topic, why in self.keep.items():
                yield f"  keep topic {topic} ({why})"
        what = "wipe" if self.state_exists else "nothing to wipe: no"
        yield f"  {what} local state directory {self.state_dir}"

    def _offset_lines(self) -> Iterator[str]:
        yield f"  committed offsets of group {self.app_id!r} -> {self.target.describe()}:"
        for m in self.moves:
            now = "nothing committed" if m.committed is None else f"at {m.committed}"
            same = " (already there)" if m.committed == m.target else ""
            yield f"    {m.topic}[{m.partition}]: {now} -> {m.target}{same}"
        for topic in self.missing_sources:
            yield f"    {topic}: does not exist, nothing to reset"
        if not self.moves and not self.missing_sources:
            yield "    (the app has no source topics)"


def source_topics(app: App) -> list[str]:
    """The topics whose committed offsets a reset moves (module docstring)."""
    internal = {t.name for t in app.repartition_topics}
    return [t for ts in app.groups().values() for t in ts if t not in internal]


def internal_to_delete(
    app: App,
    declared: Iterable[str],
    existing: Collection[str],
    groups: Collection[str],
    include_dlq: bool,
) -> tuple[dict[str, str], dict[str, str]]:
    """(topics to delete, topics kept) with why, among the ``existing`` topics: the
    ``declared`` internal ones and those named like them; ``groups``: the cluster's consumer
    groups (a name under another one's id is that app's)."""
    declared = [t for t in declared if t in existing]
    named = [t for t in named_like_internal(app.app_id, existing) if t not in declared]
    foreign = foreign_topics(app.app_id, named, groups)
    read = set(app.topics) - {t.name for t in app.repartition_topics}
    read |= {t.topic for t in app.global_tables.values()}
    delete: dict[str, str] = {}
    keep: dict[str, str] = {}
    for topic in [*declared, *named]:
        if topic in read:
            keep[topic] = "the app reads it: a source, not an internal topic"
        elif topic in foreign:
            keep[topic] = "named under another app's consumer group, not this app's"
        elif topic == app.dlq_topic and not include_dlq:
            keep[topic] = "the dead-letter topic: deleted with --include-dlq"
        else:
            delete[topic] = _why(app, topic, topic in declared)
    return delete, keep


def _why(app: App, topic: str, declared: bool) -> str:
    if topic == app.dlq_topic:
        return "dead-letter topic, --include-dlq"
    kind = "changelog" if topic.endswith("-changelog") else "repartition topic"
    return kind if declared else f"{kind} the topology no longer declares"
