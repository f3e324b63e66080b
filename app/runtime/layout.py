"""Store layouts: a store whose rows were laid out for another table definition is rebuilt.

A table's ``layout()`` (``onceflow.tables``) names everything that decides which rows its store
holds and under which keys: for a windowed table the window size and advance, the retention and
the segment interval (the first field of every store key). Each store partition records it
(``mlayout``) in the SQLite transaction that writes rows under it. At open
(``stores.open_in_sync``), ``reconcile`` compares it with the table's (docs/architecture.md,
*State*, *Layout changes*):

* **the same**: nothing to do;
* **none recorded**: the store is adopted as it is, and the layout written at once with its
  unchanged checkpoint (so a later change is seen). Either the store is empty, or it was written
  by a version that did not record layouts, with the rows of the table as it was declared then.
  That is wrong only if the definition changed in the same restart as the upgrade: a windowed
  store's first row is checked against the segment interval (the change that hides
  rows), and one laid out for another is rebuilt; a retention change alone cannot be seen;
* **another ``kind``**: ``ConfigurationError``. The kind names the changelog's record format
  (a windowed changelog's keys end with the window start): no restore can read the old records
  as the new kind's;
* **anything else**: the store is wiped and restored from the beginning of its changelog, whose
  keys (``key | window_start``) do not depend on the layout, so the rebuild lays every window out
  anew; windows the new retention expired are left out (``WindowsFrom``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from onceflow.errors import ConfigurationError
from onceflow.state.sqlite.partition import SqliteStorePartition
from onceflow.state.windowed import WindowedStorePartition
from onceflow.state.wrapped import WrappedRestorable

__all__ = ["WindowsFrom", "decode", "describe_change", "encode", "reconcile"]


def encode(layout: Mapping[str, Any]) -> bytes:
    """The layout as the store records it: canonical JSON (sorted keys, no spaces)."""
    return json.dumps(layout, sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes) -> dict[str, Any] | None:
    """A recorded layout; None if it cannot be read as one."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What changed, for operators: ``window size 300000 -> 600000 ms, retention ...``."""
    parts = []
    for name in [*new, *(n for n in old if n not in new)]:
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        label = name.removesuffix("_ms").replace("_", " ")
        unit = " ms" if name.endswith("_ms") else ""
        parts.append(f"{label} {_show(before)} -> {_show(after)}{unit}")
    return ", ".join(parts)


def reconcile(store: SqliteStorePartition, layout: Mapping[str, Any], *, table: str) -> str | None:
    """Make ``store`` hold rows laid out as ``layout`` says (see the module docstring): returns
    why it was wiped (to restore from the beginning), None if it was kept. Blocking."""
    wanted = encode(layout)
    raw = store.layout
    if raw == wanted:
        return None
    store.set_layout(wanted)
    checkpoint = store.checkpoint
    if raw is None:
        if _misplaced(store, layout):
            store.wipe()
            return (
                "its rows, written without a recorded layout, are not laid out for segment "
                f"interval {layout['segment_interval_ms']} ms: rebuilding the store from its "
                "changelog"
            )
        if checkpoint is not None:
            store.restore_batch([], checkpoint)  # records the layout, checkpoint unchanged
        return None
    recorded = decode(raw)
    if recorded is None:
        change = f"recorded layout {raw[:100]!r} unreadable"
    else:
        _check_kind(recorded, layout, table)
        change = describe_change(recorded, layout)
    store.wipe()
    return f"table layout changed ({change}): rebuilding the store from its changelog"


def _misplaced(store: SqliteStorePartition, layout: Mapping[str, Any]) -> bool:
    """Whether a windowed store's first row sits under another segment than the one
    ``layout``'s segment interval gives its window start (one indexed read; a segment id is
    ``start // interval``, so with epoch timestamps two intervals agree on none)."""
    if layout.get("kind") not in ("windowed", "session", "sliding"):
        return False
    windowed = WindowedStorePartition(store, segment_interval_ms=layout["segment_interval_ms"])
    for key, _ in store.range_items(b"", b"\xff" * 9, include_pending=False, limit=1):
        if windowed.store_key(*WindowedStorePartition.parse_store_key(key)) != key:
            return True
    return False


def _check_kind(recorded: Mapping[str, Any], layout: Mapping[str, Any], table: str) -> None:
    old, new = recorded.get("kind"), layout.get("kind")
    if old != new:
        raise ConfigurationError(
            f"table {table!r} was declared as kind {old!r} and is now kind {new!r}: its "
            f"changelog holds {old!r} records, which a {new!r} table cannot read. Declare the "
            "new table under a new name (the old changelog topic and state stay until you "
            "delete them), or declare it as before"
        )


class WindowsFrom(WrappedRestorable):
    """A windowed store as a changelog restore drives it (``Restorable``), leaving out the
    windows that start before ``min_start``: those the table's retention has expired at the
    task's stream time (a commit would drop them; the changelog keeps them a day longer)."""

    def __init__(self, store: WindowedStorePartition, min_start: int) -> None:
        self.inner = self.store = store
        self.min_start = min_start

    def restore_batch(
        self, records: Sequence[tuple[bytes, bytes | None]], last_offset: int
    ) -> None:
        self.store.restore_batch(records, last_offset, min_start=self.min_start)

    def wipe(self) -> None:
        self.store.wipe()
