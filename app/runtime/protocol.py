"""Kafka protocol messages aiokafka does not define, built from its own protocol types.

Checked against aiokafka 0.14.0 (``aiokafka/protocol``: ``Request``, ``RequestStruct`` and
``Response`` in api.py; ``CompactString``, ``CompactArray``, ``TaggedFields`` in types.py) and
Kafka's message definitions (``MetadataRequest.json``, ``MetadataResponse.json``) as Kafka 3.9 and
4.x accept them. Sent like any aiokafka request: ``compat.send_admin_request``. When aiokafka is
upgraded, prefer its own message if it gained one; when Kafka is, check the versions below.

**Metadata v12** (api key 3): aiokafka 0.14 stops at v5, and topic ids (KIP-516, Kafka 2.8) are
in the response from v10 on. Kafka 3.9.1 advertises Metadata v0-v12 and Kafka 4.1.0 v0-v13
(ApiVersions, asked of both); 4.0 added v13 (a top-level error code, KIP-1102), and KIP-896's
removals for 4.0 reach at most v3. v12 is the newest version 3.9 speaks, the first whose topic-id
handling the broker implements fully (Kafka 3.1), and in every 4.x range. It is a flexible
version: request header v2 (``FLEXIBLE_VERSION``: aiokafka then writes ``RequestHeader_v2`` and
reads ``ResponseHeader_v1``, both with tagged fields), compact strings and arrays, and a
tagged-field section closing every struct.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from io import BytesIO
from typing import TYPE_CHECKING, Any

from aiokafka.errors import IncompatibleBrokerVersion, for_code
from aiokafka.protocol.abstract import AbstractType
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

from onceflow.runtime.compat import send_admin_request

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

__all__ = [
    "ZERO_UUID",
    "MetadataRequestV12",
    "MetadataResponseV12",
    "TopicIdMetadataRequest",
    "TopicIdsUnsupportedError",
    "Uuid",
    "ids_of",
    "topic_ids",
]

_METADATA = 3
_VERSION = 12
_UNKNOWN_TOPIC = 3
ZERO_UUID = "AAAAAAAAAAAAAAAAAAAAAA"
"""Kafka's ``Uuid.ZERO_UUID`` in its string form: no topic id."""


class TopicIdsUnsupportedError(IncompatibleBrokerVersion):  # type: ignore[misc]
    """The broker does not speak Metadata v12 (Kafka before 3.1): no topic ids. A
    ``KafkaError``, as aiokafka's own ``IncompatibleBrokerVersion``."""


class Uuid(AbstractType[str]):  # type: ignore[misc]
    """Kafka's ``uuid`` type: 16 bytes on the wire. In Python the string Kafka prints for it
    (``Uuid.toString``, as in ``kafka-topics.sh --describe``): URL-safe base64, no padding."""

    @classmethod
    def encode(cls, value: str) -> bytes:
        raw = base64.urlsafe_b64decode(value + "==")
        if len(raw) != 16:
            raise ValueError(f"not a Kafka uuid: {value!r}")
        return raw

    @classmethod
    def decode(cls, data: BytesIO) -> str:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding uuid")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


_STRING = CompactString("utf-8")


class MetadataResponseV12(Response):  # type: ignore[misc]
    """Metadata response v12 (``MetadataResponse.json``; ``name`` is nullable from v12 on)."""

    API_KEY = _METADATA
    API_VERSION = _VERSION
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "brokers",
            CompactArray(
                ("node_id", Int32),
                ("host", _STRING),
                ("port", Int32),
                ("rack", _STRING),
                ("tags", TaggedFields),
            ),
        ),
        ("cluster_id", _STRING),
        ("controller_id", Int32),
        (
            "topics",
            CompactArray(
                ("error_code", Int16),
                ("name", _STRING),
                ("topic_id", Uuid),
                ("is_internal", Boolean),
                (
                    "partitions",
                    CompactArray(
                        ("error_code", Int16),
                        ("partition_index", Int32),
                        ("leader_id", Int32),
                        ("leader_epoch", Int32),
                        ("replica_nodes", CompactArray(Int32)),
                        ("isr_nodes", CompactArray(Int32)),
                        ("offline_replicas", CompactArray(Int32)),
                        ("tags", TaggedFields),
                    ),
                ),
                ("topic_authorized_operations", Int32),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class MetadataRequestV12(RequestStruct):  # type: ignore[misc]
    """Metadata request v12 (``MetadataRequest.json``): topics by name (``topic_id`` zero)."""

    FLEXIBLE_VERSION = True
    API_KEY = _METADATA
    API_VERSION = _VERSION
    RESPONSE_TYPE = MetadataResponseV12
    SCHEMA = Schema(
        ("topics", CompactArray(("topic_id", Uuid), ("name", _STRING), ("tags", TaggedFields))),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicIdMetadataRequest(Request[MetadataRequestV12]):  # type: ignore[misc]
    """Metadata of ``topics`` (by name) with their topic ids; never creates a topic."""

    API_KEY = _METADATA

    def __init__(self, topics: list[str]) -> None:
        self._topics = topics

    def prepare(self, versions: dict[int, tuple[int, int]]) -> MetadataRequestV12:
        # aiokafka's own prepare() would say "Support for ... has not yet been added".
        low, high = versions.get(_METADATA, (0, -1))
        if not low <= _VERSION <= high:
            raise TopicIdsUnsupportedError(
                f"the broker speaks Metadata v{low}-v{high}; topic ids need v{_VERSION} "
                "(Kafka 3.1 or later)"
            )
        return self.build(MetadataRequestV12)

    def build(self, request_struct_class: type[MetadataRequestV12]) -> MetadataRequestV12:
        no_tags: dict[int, bytes] = {}
        topics = [(ZERO_UUID, name, no_tags) for name in self._topics]
        return request_struct_class(topics, False, False, no_tags)


async def topic_ids(client: AIOKafkaAdminClient, names: Iterable[str]) -> dict[str, str]:
    """The topic id of each of ``names`` that exists (Kafka's string form); missing topics are
    left out, and never auto-created. One Metadata v12 request through the admin client.

    Raises ``TopicIdsUnsupportedError`` on a broker before Kafka 3.1, aiokafka's error for any
    topic error other than "unknown topic" (e.g. not authorized).
    """
    wanted = sorted(set(names))
    if not wanted:
        return {}
    response: Any = await send_admin_request(client, TopicIdMetadataRequest(wanted))
    return ids_of(response)


def ids_of(response: MetadataResponseV12) -> dict[str, str]:
    """Topic name -> topic id of a Metadata v12 response."""
    found: dict[str, str] = {}
    for meta in response.to_object()["topics"]:
        code, name, topic_id = meta["error_code"], meta["name"], meta["topic_id"]
        if code == 0 and name is not None and topic_id != ZERO_UUID:
            found[name] = topic_id
        elif code not in (0, _UNKNOWN_TOPIC):
            raise for_code(code)(f"describing topic {name!r}")
    return found
