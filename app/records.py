"""Records as handlers hand them to the runtime: a leaf module every layer may import."""

from __future__ import annotations

import enum
from typing import Final, NamedTuple

__all__ = ["ABSENT", "Absent", "Header", "OutgoingRecord"]

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
