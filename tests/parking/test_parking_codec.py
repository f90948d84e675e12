"""The frame result stored in a Raft entry: round trips and refusals."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parkd.parking.codec import CodecError, FrameResult, decode, encode

results = st.builds(
    FrameResult,
    camera_id=st.integers(0, 2**32 - 1),
    lot=st.text(),
    seq=st.integers(0, 2**64 - 1),
    captured_at=st.floats(allow_nan=False),
    free=st.integers(0, 2**32 - 1),
)


@given(results)
def test_round_trip(result):
    assert decode(encode(result)) == result


def test_encoding_is_compact_and_versioned():
    data = encode(FrameResult(7, "north", 42, 1_700_000_000.25, 13))
    assert len(data) == 25 + len("north")
    assert data[0] == 1


def test_nan_capture_time_survives():
    assert math.isnan(decode(encode(FrameResult(1, "a", 1, math.nan, 0))).captured_at)


@pytest.mark.parametrize(
    "result",
    [
        FrameResult(-1, "north", 1, 0.0, 0),
        FrameResult(1, "north", 2**64, 0.0, 0),
        FrameResult(1, "north", 1, 0.0, -3),
        FrameResult(1, "\ud800", 1, 0.0, 0),  # a lone surrogate has no UTF-8 form
    ],
    ids=["negative-camera", "seq-too-big", "negative-free", "unencodable-lot"],
)
def test_unrepresentable_results_are_refused(result):
    with pytest.raises(CodecError):
        encode(result)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01" * 24,
        b"\x02" + encode(FrameResult(1, "a", 1, 0.0, 0))[1:],
        encode(FrameResult(1, "", 1, 0.0, 0)) + b"\xff",
    ],
    ids=["empty", "short", "unknown-version", "lot-not-utf8"],
)
def test_undecodable_data_is_refused(data):
    with pytest.raises(CodecError):
        decode(data)
