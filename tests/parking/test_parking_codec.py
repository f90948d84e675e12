"""The frame result stored in a Raft entry: round trips and refusals."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parkd.parking.codec import VERSION, CodecError, FrameResult, decode, encode

results = st.builds(
    FrameResult,
    camera_id=st.integers(0, 2**32 - 1),
    lot=st.text(),
    seq=st.integers(0, 2**64 - 1),
    captured_at=st.floats(allow_nan=False),
    free=st.integers(0, 2**32 - 1),
    incarnation=st.integers(0, 2**64 - 1),
)


@given(results)
def test_round_trip(result):
    assert decode(encode(result)) == result


def test_encoding_is_compact_and_versioned():
    data = encode(FrameResult(7, "north", 42, 1_700_000_000.25, 13, incarnation=2**64 - 1))
    assert len(data) == 33 + len("north")
    assert data[0] == VERSION == 2


def test_incarnation_0_is_written_as_version_1_for_nodes_of_the_previous_release():
    data = encode(FrameResult(7, "north", 42, 1_700_000_000.25, 13))
    assert len(data) == 25 + len("north")
    assert data[0] == 1


def test_a_version_1_entry_of_the_previous_release_reads_as_incarnation_0():
    # entry 2 of data/node-parking-schema-1.sql, written by the previous release's encoder
    data = bytes.fromhex("010100000001000000000000000000000000408F400A0000006E6F727468")
    assert decode(data) == FrameResult(1, "north", 1, 1000.0, 10, incarnation=0)


def test_nan_capture_time_survives():
    assert math.isnan(decode(encode(FrameResult(1, "a", 1, math.nan, 0))).captured_at)


@pytest.mark.parametrize(
    "result",
    [
        FrameResult(-1, "north", 1, 0.0, 0),
        FrameResult(1, "north", 2**64, 0.0, 0),
        FrameResult(1, "north", 1, 0.0, -3),
        FrameResult(1, "\ud800", 1, 0.0, 0),  # a lone surrogate has no UTF-8 form
        FrameResult(1, "north", 1, 0.0, 0, incarnation=2**64),
        FrameResult(1, "north", 1, 0.0, 0, incarnation=-1),
    ],
    ids=["negative-camera", "seq-too-big", "negative-free", "unencodable-lot", "incarnation-too-big",
         "negative-incarnation"],
)
def test_unrepresentable_results_are_refused(result):
    with pytest.raises(CodecError):
        encode(result)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01" * 24,
        b"\x02" * 32,
        b"\x03" + encode(FrameResult(1, "a", 1, 0.0, 0, incarnation=5))[1:],
        encode(FrameResult(1, "", 1, 0.0, 0)) + b"\xff",
        encode(FrameResult(1, "", 1, 0.0, 0, incarnation=5)) + b"\xff",
    ],
    ids=["empty", "short", "short-v2", "unknown-version", "lot-not-utf8", "lot-not-utf8-v2"],
)
def test_undecodable_data_is_refused(data):
    with pytest.raises(CodecError):
        decode(data)
