"""``runtime.protocol``: Metadata v12 on the wire, checked against bytes written by hand from
Kafka's message definitions (not from aiokafka's types, which the code under test uses). The same
request against a real broker: tests/integration/test_changelog_topic_ids.py."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from aiokafka.errors import TopicAuthorizationFailedError

from onceflow.runtime.protocol import (
    ZERO_UUID,
    MetadataResponseV12,
    TopicIdMetadataRequest,
    TopicIdsUnsupportedError,
    Uuid,
    ids_of,
)

# A topic id as Kafka's own AdminClient prints it (TopicDescription.topicId()), and its 16 bytes.
TOPIC_ID = "UghfcGq0S3-YOhw7sSOVbw"
TOPIC_ID_BYTES = bytes.fromhex("52085f706ab44b7f983a1c3bb123956f")


def varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def compact(text: str | None) -> bytes:
    if text is None:
        return varint(0)
    data = text.encode()
    return varint(len(data) + 1) + data


def i16(n: int) -> bytes:
    return struct.pack(">h", n)


def i32(n: int) -> bytes:
    return struct.pack(">i", n)


NO_TAGS = varint(0)


def test_uuid_uses_kafkas_string_form() -> None:
    assert Uuid.decode(BytesIO(TOPIC_ID_BYTES)) == TOPIC_ID
    assert Uuid.encode(TOPIC_ID) == TOPIC_ID_BYTES
    assert Uuid.encode(ZERO_UUID) == bytes(16)
    with pytest.raises(ValueError):
        Uuid.encode("AAAA")
    with pytest.raises(ValueError, match="underrun"):
        Uuid.decode(BytesIO(b"short"))


# Kafka 3.9.1, Kafka 4.1.0 (as they advertise Metadata), a broker without v0-v3 (KIP-896).
@pytest.mark.parametrize("versions", [(0, 12), (0, 13), (4, 13)])
def test_the_request_is_metadata_v12_with_a_flexible_header(versions: tuple[int, int]) -> None:
    request = TopicIdMetadataRequest(["app-sum-changelog", "x"]).prepare({3: versions})
    header = request.build_request_header(correlation_id=7, client_id="onceflow")
    assert header.encode() == (
        i16(3) + i16(12) + i32(7) + i16(8) + b"onceflow" + NO_TAGS  # request header v2
    )
    assert request.encode() == (
        varint(3)  # compact array: length + 1
        + bytes(16)  # topic_id: zero, the topic is named
        + compact("app-sum-changelog")
        + NO_TAGS
        + bytes(16)
        + compact("x")
        + NO_TAGS
        + b"\x00"  # allow_auto_topic_creation: false
        + b"\x00"  # include_topic_authorized_operations: false
        + NO_TAGS
    )


def test_a_broker_without_metadata_v12_is_refused_clearly() -> None:
    with pytest.raises(TopicIdsUnsupportedError, match=r"Metadata v0-v11; topic ids need v12"):
        TopicIdMetadataRequest(["t"]).prepare({3: (0, 11)})
    with pytest.raises(TopicIdsUnsupportedError):
        TopicIdMetadataRequest(["t"]).prepare({})


def _partition(index: int) -> bytes:
    return (
        i16(0)  # error_code
        + i32(index)
        + i32(1)  # leader_id
        + i32(0)  # leader_epoch
        + varint(2)
        + i32(1)  # replica_nodes [1]
        + varint(2)
        + i32(1)  # isr_nodes [1]
        + varint(1)  # offline_replicas []
        + NO_TAGS
    )


def _topic(code: int, name: str | None, topic_id: bytes, partitions: int) -> bytes:
    return (
        i16(code)
        + compact(name)
        + topic_id
        + b"\x00"  # is_internal
        + varint(partitions + 1)
        + b"".join(_partition(i) for i in range(partitions))
        + i32(-(2**31))  # topic_authorized_operations: not asked for
        + NO_TAGS
    )


RESPONSE = (
    i32(7)  # response header v1: correlation id, tagged fields
    + NO_TAGS
    + i32(0)  # throttle_time_ms
    + varint(2)  # brokers: one
    + i32(1)
    + compact("127.0.0.1")
    + i32(9092)
    + compact(None)  # rack
    + NO_TAGS
    + compact("cluster-1")
    + i32(1)  # controller_id
    + varint(4)  # topics: three
    + _topic(0, "app-sum-changelog", TOPIC_ID_BYTES, 2)
    + _topic(3, "missing", bytes(16), 0)  # UNKNOWN_TOPIC_OR_PARTITION
    + _topic(0, "no-id", bytes(16), 1)  # a topic without an id (zero): left out
    + NO_TAGS
)


def test_the_response_decodes_to_topic_ids() -> None:
    names = ["app-sum-changelog", "missing", "no-id"]
    request = TopicIdMetadataRequest(names).prepare({3: (0, 12)})
    data = BytesIO(RESPONSE)
    assert request.parse_response_header(data).correlation_id == 7
    response = request.RESPONSE_TYPE.decode(data)
    assert data.read() == b""  # every byte consumed
    assert isinstance(response, MetadataResponseV12)
    topic = response.to_object()["topics"][0]
    assert (topic["name"], topic["topic_id"], len(topic["partitions"])) == (
        "app-sum-changelog",
        TOPIC_ID,
        2,
    )
    assert ids_of(response) == {"app-sum-changelog": TOPIC_ID}


def test_other_topic_errors_raise() -> None:
    body = (
        i32(0)
        + varint(1)  # no brokers
        + compact(None)
        + i32(-1)
        + varint(2)
        + _topic(29, "secret", bytes(16), 0)  # TOPIC_AUTHORIZATION_FAILED
        + NO_TAGS
    )
    with pytest.raises(TopicAuthorizationFailedError, match="secret"):
        ids_of(MetadataResponseV12.decode(body))
