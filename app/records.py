"""Records as handlers hand them to the runtime: a leaf module every layer may import."""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

__all__ = ["ABSENT", "RECORD_OVERHEAD", "Absent", "Header", "OutgoingRecord", "record_size"]

Header = tuple[str, bytes]
"""A Kafka record header: name and raw value."""


class OutgoingRecord(NamedTuple):
    """A record a handler sent, serialized; ``partition`` None: murmur2 of the key (as Kafka's
    producers pick it); ``timestamp_ms`` None: the time it is sent."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[Header]
    partition: int | None = None
    timestamp_ms: int | None = None


class Absent(enum.Enum):
    """The type of ``ABSENT`` (an enum, so that ``x is ABSENT`` narrows a type)."""

    ABSENT = "ABSENT"


ABSENT: Final = Absent.ABSENT
"""What a staged-write lookup returns when the record staged nothing for the key (``None``
is a staged delete)."""


# A record batch's header (61 bytes) plus a record's own framing (attributes, timestamp and
# offset deltas, lengths: at most 5 varints of 5 bytes): an upper bound of aiokafka's
# ``DefaultRecordBatchBuilder.estimate_size_in_bytes`` for a batch of one.
RECORD_OVERHEAD = 61 + 5 * 5
_HEADER_OVERHEAD = 10  # a header's two length varints


def record_size(key: bytes | None, value: bytes | None, headers: list[Header] | None = None) -> int:
    """An upper bound of the bytes a record takes in a produce request (uncompressed): what the
    producer compares with ``max_request_size``."""
    size = RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
    if headers:
        size += sum(len(name.encode()) + len(data) + _HEADER_OVERHEAD for name, data in headers)
    return size
