"""murmur2 and the default partitioner, bit for bit as Kafka's Java client and aiokafka."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from onceflow.errors import ConfigurationError
from onceflow.partitioner import murmur2, partition_for_key

# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (Java's signed ints).
JAVA_UTILS_TEST = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]

# librdkafka's unittest_murmur2 (src/rdmurmur2.c), checked there against the Java client; these
# cover every tail length (len % 4 = 0..3) and the empty key.
LIBRDKAFKA = [
    (b"kafka", 0xD067CF64),
    (b"giberish123456789", 0x8F552B0C),
    (b"1234", 0x9FC97B14),
    (b"234", 0xE7C009CA),
    (b"34", 0x873930DA),
    (b"4", 0x5A4B5CA1),
    (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424F1C),
    (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4A62B377),
    (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xE0E4E09E),
    (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62B8B43F),
    (b"", 0x106E08D9),
]


@pytest.mark.parametrize(("data", "expected"), JAVA_UTILS_TEST)
def test_murmur2_matches_kafkas_java_test_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


@pytest.mark.parametrize(("data", "unsigned"), LIBRDKAFKA)
def test_murmur2_matches_librdkafkas_java_compatible_vectors(data: bytes, unsigned: int) -> None:
    assert murmur2(data) & 0xFFFFFFFF == unsigned
    assert -(2**31) <= murmur2(data) < 2**31


@given(st.binary(max_size=300))
def test_murmur2_agrees_with_aiokafka(data: bytes) -> None:
    # aiokafka returns the same 32 bits as an unsigned int; Java (and we) return them signed.
    ours = murmur2(data)
    assert -(2**31) <= ours < 2**31
    assert ours & 0xFFFFFFFF == aiokafka_murmur2(data)


@given(st.binary(max_size=100), st.integers(min_value=1, max_value=10_000))
def test_partition_for_key_agrees_with_aiokafkas_default_partitioner(
    key: bytes, num_partitions: int
) -> None:
    partitions = list(range(num_partitions))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert partition_for_key(key, num_partitions) == expected


def test_partition_for_key_is_java_to_positive_modulo() -> None:
    # murmur2(b"foobar") is negative: toPositive masks the sign bit rather than taking abs().
    assert murmur2(b"foobar") < 0
    assert partition_for_key(b"foobar", 50) == (-790332482 & 0x7FFFFFFF) % 50 == 16
    assert partition_for_key(b"kafka", 12) == (0xD067CF64 & 0x7FFFFFFF) % 12


@pytest.mark.parametrize("num_partitions", [0, -1])
def test_partition_for_key_rejects_a_topic_without_partitions(num_partitions: int) -> None:
    with pytest.raises(ConfigurationError, match=f"got num_partitions={num_partitions}"):
        partition_for_key(b"key", num_partitions)
