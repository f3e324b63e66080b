"""Which partition a key lives on: Kafka's murmur2 default partitioner.

The producer (aiokafka's ``DefaultPartitioner``), the Java client and the HTTP owner lookup must
agree on this to the bit, or a query would be sent to an instance that does not hold the key::

    >>> partition_for_key(b"foobar", 50)
    16
"""

from __future__ import annotations

import functools
import struct

from onceflow.errors import ConfigurationError

__all__ = ["cached_partition_for_key", "murmur2", "partition_for_key"]

_SEED = 0x9747B28C
_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_WORDS = struct.Struct("<I")  # Java reads each 4-byte block little-endian


def _murmur2_unsigned(data: bytes) -> int:
    """Kafka's murmur2 as an unsigned 32-bit integer.

    Java works in wrapping 32-bit ints; here every product is masked back to 32 bits instead, and
    Java's ``>>>`` is Python's ``>>`` on the non-negative masked value.
    """
    m, mask = _M, _MASK  # locals: a global lookup per use would cost more than the arithmetic
    length = len(data)
    h = _SEED ^ length
    tail = length & ~3
    # iter_unpack decodes all the blocks in C; the loop body is then only the mixing.
    for (k,) in _WORDS.iter_unpack(data[:tail]):
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k

    extra = length & 3
    if extra:
        # Java's fall-through switch over the 1-3 trailing bytes.
        if extra == 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h ^= data[tail]
        h = (h * m) & mask

    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def murmur2(data: bytes) -> int:
    """Return Kafka's ``Utils.murmur2(data)``: a signed 32-bit int, exactly as Java returns it.

    >>> murmur2(b"21")
    -973932308
    """
    h = _murmur2_unsigned(data)
    return h - 0x1_0000_0000 if h & 0x8000_0000 else h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """Return the partition Kafka's default partitioner picks for a non-null serialized ``key``.

    That is ``toPositive(murmur2(key)) % num_partitions``, as in the Java producer and aiokafka.
    Raises :class:`ConfigurationError` if ``num_partitions`` is less than 1.
    """
    if num_partitions < 1:
        raise ConfigurationError(
            f"a topic has at least 1 partition, got num_partitions={num_partitions}"
        )
    return (_murmur2_unsigned(key) & 0x7FFF_FFFF) % num_partitions


@functools.lru_cache(maxsize=1 << 16)
def cached_partition_for_key(key: bytes, num_partitions: int) -> int:
    """``partition_for_key`` memoized (bounded LRU, in C): the hot path asks it once per record
    and table access, keys repeat, and murmur2 is pure Python (~2 us for a short key)."""
    return partition_for_key(key, num_partitions)
