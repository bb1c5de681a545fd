"""murmur2 partitioning against the values Kafka's own tests pin (clients UtilsTest.testMurmur2)."""

from __future__ import annotations

import pytest

from ledgergate.partitioning import murmur2, murmur2_partition, to_positive

# org.apache.kafka.common.utils.UtilsTest#testMurmur2: Java's signed 32-bit results.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), list(JAVA_MURMUR2.items()))
def test_murmur2_matches_java(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), list(JAVA_MURMUR2.items()))
def test_partition_is_java_to_positive_mod_n(key: bytes, expected: int) -> None:
    for n in (1, 3, 6, 12, 256):
        assert murmur2_partition(key, n) == (expected & 0x7FFFFFFF) % n


def test_to_positive_clears_the_sign_bit_rather_than_negating() -> None:
    assert to_positive(-1) == 0x7FFFFFFF
    assert to_positive(-(2**31)) == 0
    assert to_positive(5) == 5


def test_every_tail_length_and_non_ascii_bytes() -> None:
    # Results stay in Java's int range and are stable for 0..3 tail bytes and high bytes.
    for key in (b"", b"\xff", b"\xff\xfe", b"\xff\xfe\xfd", b"\xff\xfe\xfd\xfc", "tënant-ü".encode()):
        value = murmur2(key)
        assert -(2**31) <= value < 2**31
        assert murmur2(key) == value


def test_bad_partition_count() -> None:
    with pytest.raises(ValueError):
        murmur2_partition(b"acme", 0)
