"""Kafka's default key partitioner, in Python: where the Java client, aiokafka and librdkafka's
`murmur2_random` put a keyed message, so tools can find a tenant's partition without producing.

`murmur2_partition(key, n) == Utils.toPositive(Utils.murmur2(key)) % n` from
org.apache.kafka.common.utils.Utils (the Java producer's BuiltInPartitioner for keyed records).
"""

from __future__ import annotations

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of `data`, as the signed int Java's `Utils.murmur2` returns."""
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    end4 = length & ~3
    for i in range(0, end4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK32
        k ^= k >> 24
        k = (k * _M) & _MASK32
        h = (h * _M) & _MASK32
        h ^= k
    tail = length & 3
    # Java's switch falls through: 3 -> 2 -> 1.
    if tail >= 3:
        h ^= data[end4 + 2] << 16
    if tail >= 2:
        h ^= data[end4 + 1] << 8
    if tail >= 1:
        h ^= data[end4]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(n: int) -> int:
    """Java's `Utils.toPositive`: clear the sign bit (not abs(), which differs for negatives)."""
    return n & 0x7FFFFFFF


def murmur2_partition(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's murmur2 partitioner chooses for a non-null `key`."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be at least 1, got {num_partitions}")
    return to_positive(murmur2(key)) % num_partitions
