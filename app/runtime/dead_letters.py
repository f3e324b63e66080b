"""The dead-letter record of an input that could not be processed.

It carries the input's key, value and headers, and headers naming where it came from and why
it failed (``onceflow.naming``). A dead letter that would be larger than a produce request
allows (a ~1 MB input plus the headers) is cut to fit, with a header giving the original
sizes: a dead letter that cannot be sent would stop its partition for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from onceflow import naming
from onceflow.records import Header, OutgoingRecord, record_size

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

__all__ = ["CallbackSource", "callback_dead_letter", "dead_letter"]

ERROR_MESSAGE_CHARS = 4000


def dead_letter(
    record: ConsumerRecord[Any, Any], exc: BaseException, stage: str, *, topic: str, max_bytes: int
) -> OutgoingRecord:
    """The record to send to the dead-letter ``topic`` for ``record``, at most ``max_bytes``."""
    headers: list[Header] = [
        (naming.DLQ_SOURCE_TOPIC, record.topic.encode()),
        (naming.DLQ_SOURCE_PARTITION, str(record.partition).encode()),
        (naming.DLQ_SOURCE_OFFSET, str(record.offset).encode()),
        (naming.DLQ_SOURCE_TIMESTAMP, str(record.timestamp).encode()),
        (naming.DLQ_ERROR_STAGE, stage.encode()),
        (naming.DLQ_ERROR_TYPE, type(exc).__name__.encode()),
        (naming.DLQ_ERROR_MESSAGE, str(exc)[:ERROR_MESSAGE_CHARS].encode("utf-8", "replace")),
        *[(naming.DLQ_ORIGINAL_PREFIX + k, v) for k, v in (record.headers or ())],
    ]
    key, value = record.key, record.value
    if record_size(key, value, headers) > max_bytes:
        key, value, headers = _truncated(key, value, headers, max_bytes)
    return OutgoingRecord(topic, key, value, headers, None, record.timestamp)


@dataclass(frozen=True, slots=True)
class CallbackSource:
    """What a callback that handles no record was called for: a window's final result
    (``stage="on_close"``: table, key, value, window start) or a timer (``stage="timer"``)."""

    stage: str
    name: str
    timestamp: int
    key: bytes | None = None
    value: bytes | None = None
    window_start: int | None = None


def callback_dead_letter(
    source: CallbackSource, exc: BaseException, *, topic: str, max_bytes: int
) -> OutgoingRecord:
    """The dead letter of a failed ``on_close`` or timer callback: the window's key and value
    (none for a timer), and headers naming the table or timer, the window and the error."""
    where = naming.DLQ_SOURCE_TABLE if source.stage == "on_close" else naming.DLQ_SOURCE_TIMER
    headers: list[Header] = [
        (where, source.name.encode()),
        (naming.DLQ_SOURCE_TIMESTAMP, str(source.timestamp).encode()),
        (naming.DLQ_ERROR_STAGE, source.stage.encode()),
        (naming.DLQ_ERROR_TYPE, type(exc).__name__.encode()),
        (naming.DLQ_ERROR_MESSAGE, str(exc)[:ERROR_MESSAGE_CHARS].encode("utf-8", "replace")),
    ]
    if source.window_start is not None:
        headers.append((naming.DLQ_SOURCE_WINDOW_START, str(source.window_start).encode()))
    key, value = source.key, source.value
    if record_size(key, value, headers) > max_bytes:
        key, value, headers = _truncated(key, value, headers, max_bytes)
    return OutgoingRecord(topic, key, value, headers, None, source.timestamp)


def _truncated(
    key: bytes | None, value: bytes | None, headers: list[Header], max_bytes: int
) -> tuple[bytes | None, bytes | None, list[Header]]:
    """Cut the value, then the key, then the source record's own headers, until it fits."""
    sizes = f"key={len(key or b'')},value={len(value or b'')}".encode()
    headers = [*headers, (naming.DLQ_TRUNCATED, sizes)]
    room = max_bytes - record_size(None, None, headers)
    if room < 0:  # the source's own headers alone are too large: drop them
        headers = [h for h in headers if not h[0].startswith(naming.DLQ_ORIGINAL_PREFIX)]
        room = max(0, max_bytes - record_size(None, None, headers))
    if key is not None and len(key) > room:
        key = key[:room]
    room -= len(key or b"")
    if value is not None and len(value) > room:
        value = value[: max(room, 0)]
    return key, value, headers
