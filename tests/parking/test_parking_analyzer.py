"""The hash rule of CONTRACT §5, checked against values worked out by hand."""

import pytest

from parkd.parking.analyzer import Analyzer, HashAnalyzer


@pytest.mark.parametrize(
    ("payload", "capacity", "free"),
    [
        # sha256(b"") starts e3b0: 0xe3b0 = 58288 = 577 * 101 + 11 = 955 * 61 + 33
        (b"", 100, 11),
        (b"", 60, 33),
        # sha256(b"abc") starts ba78: 0xba78 = 47736 = 472 * 101 + 64 = 782 * 61 + 34
        (b"abc", 100, 64),
        (b"abc", 60, 34),
        # sha256(b"hello world") starts b94d: 0xb94d = 47437 = 469 * 101 + 68
        (b"hello world", 100, 68),
        (b"hello world", 0, 0),
    ],
)
def test_hash_rule(payload, capacity, free):
    assert HashAnalyzer().free_spaces(payload, capacity) == free


def test_result_never_exceeds_capacity():
    analyzer: Analyzer = HashAnalyzer()
    assert all(0 <= analyzer.free_spaces(bytes([i]), 7) <= 7 for i in range(256))


def test_negative_capacity_is_refused():
    with pytest.raises(ValueError, match="capacity"):
        HashAnalyzer().free_spaces(b"x", -1)
