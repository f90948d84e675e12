"""Fuzzing the framing (CONTRACT §4): any bytes, split anywhere, on every port's rules.

A reference model parses the whole stream the way the contract says; the real
``EnvelopeProtocol`` on a StringTransport must agree with it whether the bytes
arrive whole, one at a time or split at random places: the same messages
delivered, then (for bad input) exactly one 'closing' warning, an ``Error``
where the port answers with one, the connection closed, and nothing read after.
"""

from __future__ import annotations

import struct

from google.protobuf.message import DecodeError
from hypothesis import event, given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from fuzzkit import captured_logs, envelopes, envelopes_in, feed, frame, fuzz, hostile_stream
from parkd.proto import parkd_pb2 as pb
from parkd.wire import CAMERA_SIDE, CLIENT_PORT, CLOSE_GRACE_SECONDS, RAFT_PORT, EnvelopeFactory, EnvelopeProtocol

MAX_LENGTH = 2048
RULES = {"raft": RAFT_PORT, "client": CLIENT_PORT, "camera": CAMERA_SIDE}


class Recorder(EnvelopeProtocol):
    def __init__(self):
        self.received = []

    def envelopeReceived(self, kind, body):
        self.received.append((kind, body.SerializeToString()))


def connect(rules):
    factory = EnvelopeFactory(Clock(), MAX_LENGTH)
    factory.protocol = Recorder
    proto = factory.buildProtocol(None)
    proto.rules = rules
    proto.log = Logger(namespace="fuzz.framing")
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def model(data: bytes, rules) -> tuple[list[tuple[str, bytes]], int | None]:
    """(messages delivered, Error code of the rejection or None) per CONTRACT §4."""
    delivered, pos = [], 0
    while len(data) - pos >= 4:
        (length,) = struct.unpack("!I", data[pos : pos + 4])
        if length > MAX_LENGTH:
            return delivered, pb.Error.TOO_LARGE
        if len(data) - pos - 4 < length:
            break
        body, pos = data[pos + 4 : pos + 4 + length], pos + 4 + length
        envelope = pb.Envelope()
        try:
            envelope.ParseFromString(body)
        except DecodeError:
            return delivered, pb.Error.MALFORMED
        kind = envelope.WhichOneof("body")
        if kind is None:
            return delivered, pb.Error.MALFORMED
        if kind not in rules.accepts:
            return delivered, pb.Error.NOT_ALLOWED
        delivered.append((kind, getattr(envelope, kind).SerializeToString()))
    return delivered, None


def check_against_model(rules, data, cuts, logs):
    """Feed ``data`` split at ``cuts``, then an empty frame (a bad message if it is read);
    the protocol, once checked against the model."""
    proto, transport = connect(rules)
    full = data + b"\x00\x00\x00\x00"
    feed(proto, full, cuts)
    proto.dataReceived(b"\x00\x00\x00\x07garbage")  # never read once rejected
    expected, code = model(full + b"\x00\x00\x00\x07garbage", rules)
    assert proto.received == expected
    assert logs.errors() == []
    if code is None:  # the stream ends inside a frame: still waiting for the rest
        assert not proto.rejected and not transport.disconnecting and logs.closing() == []
        return proto
    assert proto.rejected
    [warning] = logs.closing()
    assert warning["port"] == rules.name
    assert warning["code"] == pb.Error.Code.Name(code)
    sent = envelopes_in(transport.value())
    if rules.answers_with_error:
        assert [e.error.code for e in sent] == [code]
        assert transport.disconnecting and not transport.disconnected  # time to read the Error ...
        proto.factory.clock.advance(CLOSE_GRACE_SECONDS)
        assert transport.disconnected  # ... then cut off
    else:
        assert sent == [] and transport.disconnected
    return proto


ports = st.sampled_from(sorted(RULES))

# Who may send what to whom, written out here rather than read from parkd.wire (the
# model above uses the port's rules, so it cannot notice wrong rules): peers send
# raft messages (after a PeerHello); cameras and tools send hello and frames; nodes answer cameras.
RAFT_KINDS = {"vote_request", "vote_response", "append_entries", "append_response", "install_snapshot",
              "snapshot_response", "timeout_now", "propose", "read_index_request", "read_index_response",
              "peer_hello"}  # fmt: skip
ACCEPTED = {
    "raft": RAFT_KINDS,
    "client": {"hello", "submit_frame"},
    "camera": {"frame_ack", "redirect", "unavailable", "error"},
}


def delivered_before_refusal(port, batch):
    """(the bodies a side must deliver, the Error code of the first envelope it must refuse)
    for a batch of well-formed envelopes followed by an empty frame."""
    delivered = []
    for envelope in batch:
        kind = envelope.WhichOneof("body")
        if envelope.ByteSize() > MAX_LENGTH:
            return delivered, "TOO_LARGE"
        if kind not in ACCEPTED[port]:
            return delivered, "NOT_ALLOWED"
        delivered.append((kind, getattr(envelope, kind).SerializeToString()))
    return delivered, "MALFORMED"  # the empty frame after the batch


@fuzz(600)
@given(ports, st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes_agree_with_the_model(port, data, cuts):
    with captured_logs() as logs:
        check_against_model(RULES[port], data, cuts, logs)


@fuzz(400)
@given(ports, st.data())
def test_hostile_streams_agree_with_the_model_whole_split_and_byte_by_byte(port, data):
    rules = RULES[port]
    stream = data.draw(hostile_stream(envelopes(limit=600), MAX_LENGTH))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    for split in ([], cuts, list(range(len(stream))) if len(stream) <= 400 else cuts[:1]):
        with captured_logs() as logs:
            check_against_model(rules, stream, split, logs)


@fuzz(300)
@given(ports, st.data(), st.lists(st.integers(0, 5000), max_size=5))
def test_valid_envelopes_of_any_field_values_are_delivered_or_refused_as_not_allowed(port, data, cuts):
    """Each side delivers exactly the envelopes it accepts, in order, up to the first it
    must refuse, and refuses that one with the right code."""
    rules = RULES[port]
    # Half of the envelopes of a kind this side accepts, so that long runs get delivered.
    any_kind = st.one_of(envelopes(limit=900), envelopes(kinds=sorted(ACCEPTED[port]), limit=900))
    batch = data.draw(st.lists(any_kind, min_size=1, max_size=5))
    stream = b"".join(frame(envelope) for envelope in batch)
    with captured_logs() as logs:
        proto = check_against_model(rules, stream, cuts, logs)
    delivered, refusal = delivered_before_refusal(port, batch)
    event(f"{port} port: {min(len(delivered), 2)}{'+' if len(delivered) >= 2 else ''} delivered, then {refusal}")
    assert proto.received == delivered
    [closing] = logs.closing()
    assert closing["code"] == refusal
