"""Framing (CONTRACT §4): byte-at-a-time feeding, split frames, and every kind of bad input."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from parkd.node.ports import RaftPortFactory
from parkd.proto import parkd_pb2 as pb
from parkd.ratelimit import RateLimitedLog
from parkd.raft import messages as m
from parkd.raft.types import Entry, EntryKind
from parkd.wire import (
    CAMERA_SIDE,
    CLIENT_PORT,
    CLOSE_GRACE_SECONDS,
    RAFT_PORT,
    EnvelopeFactory,
    EnvelopeProtocol,
    MessageTooLarge,
    raft_from_envelope,
    frame_envelope,
    raft_to_envelope,
    split_envelopes,
)


class Recorder(EnvelopeProtocol):
    def __init__(self):
        self.received = []

    def envelopeReceived(self, kind, body):
        self.received.append((kind, body))


def connect(rules=CLIENT_PORT, max_length=1024):
    """A Recorder for ``rules`` on a StringTransport, with captured log events."""
    factory = EnvelopeFactory(Clock(), max_length)
    factory.protocol = Recorder
    proto = factory.buildProtocol(None)
    proto.rules = rules
    proto.events = []
    proto.log = Logger(observer=proto.events.append)
    factory.refusals = RateLimitedLog(proto.log, "{count} more in {window} s", clock=factory.clock)
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


frame = frame_envelope


def sent_envelopes(transport: StringTransport) -> list[pb.Envelope]:
    return split_envelopes(transport.value())


HELLO = pb.Envelope(hello=pb.Hello(camera_id=7, lot="north"))
FRAME = pb.Envelope(submit_frame=pb.SubmitFrame(camera_id=7, lot="north", seq=3, captured_at=1.5, payload=b"x" * 40))


def test_byte_at_a_time():
    proto, transport = connect()
    for byte in frame(HELLO):
        proto.dataReceived(bytes([byte]))
    assert proto.received == [("hello", HELLO.hello)]
    assert not transport.disconnecting


def test_two_frames_split_at_every_offset():
    stream = frame(HELLO) + frame(FRAME)
    for cut in range(len(stream) + 1):
        proto, _ = connect()
        proto.dataReceived(stream[:cut])
        proto.dataReceived(stream[cut:])
        assert [kind for kind, _ in proto.received] == ["hello", "submit_frame"], cut
        assert proto.received[1][1] == FRAME.submit_frame


def test_many_frames_in_one_chunk():
    proto, _ = connect()
    proto.dataReceived(frame(HELLO) * 50)
    assert len(proto.received) == 50


def test_truncated_body_delivers_nothing_and_keeps_waiting():
    proto, transport = connect()
    data = frame(FRAME)
    proto.dataReceived(data[:-1])
    assert proto.received == []
    assert not transport.disconnecting
    proto.dataReceived(data[-1:])
    assert len(proto.received) == 1


def test_garbage_body_is_answered_with_error_logged_once_and_closed():
    proto, transport = connect()
    garbage = b"\xff\xff\xff\xff\xff"
    proto.dataReceived(struct.pack("!I", len(garbage)) + garbage + frame(HELLO))
    proto.dataReceived(frame(HELLO))
    assert proto.received == []  # nothing after the bad message is read
    [error] = sent_envelopes(transport)
    assert error.error.code == pb.Error.MALFORMED
    assert transport.disconnecting
    assert len([e for e in proto.events if e["log_level"].name == "warn"]) == 1


def test_oversized_length_prefix_is_rejected_before_reading_the_body():
    proto, transport = connect(max_length=1024)
    proto.dataReceived(struct.pack("!I", 1025))
    [error] = sent_envelopes(transport)
    assert error.error.code == pb.Error.TOO_LARGE
    assert "1025" in error.error.message
    assert transport.disconnecting
    proto.dataReceived(b"\x00" * 2000 + frame(HELLO))
    assert proto.received == []
    assert len(proto.events) == 1


def test_huge_prefix_on_default_limit():
    factory = EnvelopeFactory(Clock())
    factory.protocol = Recorder
    proto = factory.buildProtocol(None)
    proto.rules = CLIENT_PORT
    transport = StringTransport()
    proto.makeConnection(transport)
    assert proto.MAX_LENGTH == 16 * 1024 * 1024
    proto.dataReceived(b"\xff\xff\xff\xff")
    assert sent_envelopes(transport)[0].error.code == pb.Error.TOO_LARGE


def test_empty_envelope_is_malformed():
    proto, transport = connect()
    proto.dataReceived(struct.pack("!I", 0))
    assert sent_envelopes(transport)[0].error.code == pb.Error.MALFORMED
    assert proto.received == []


def test_raft_message_on_client_port_gets_not_allowed():
    proto, transport = connect(CLIENT_PORT)
    proto.dataReceived(frame(raft_to_envelope(m.TimeoutNow(term=1, src=1, dst=2))))
    [error] = sent_envelopes(transport)
    assert error.error.code == pb.Error.NOT_ALLOWED
    assert "timeout_now" in error.error.message
    assert transport.disconnecting and proto.received == []


def test_client_message_on_raft_port_aborts_without_error():
    proto, transport = connect(RAFT_PORT)
    proto.dataReceived(frame(HELLO))
    assert transport.value() == b""  # the raft port has no Error message
    assert transport.disconnected  # aborted
    assert proto.received == []


def test_camera_side_refuses_frames():
    proto, transport = connect(CAMERA_SIDE)
    proto.dataReceived(frame(FRAME))
    assert transport.disconnected and proto.received == []


def test_peer_that_never_reads_the_error_is_aborted_after_grace():
    proto, transport = connect()
    proto.dataReceived(struct.pack("!I", 0))
    assert transport.disconnecting and not transport.disconnected
    proto.factory.clock.advance(CLOSE_GRACE_SECONDS)
    assert transport.disconnected


def test_send_checks_size():
    proto, transport = connect(max_length=64)
    proto.sendEnvelope(HELLO)
    with pytest.raises(MessageTooLarge):
        proto.sendEnvelope(pb.Envelope(submit_frame=pb.SubmitFrame(payload=b"x" * 100)))
    assert transport.value() == frame(HELLO)


def test_unknown_entry_kind_on_raft_port_aborts_and_delivers_nothing():
    delivered = []
    factory = RaftPortFactory(Clock(), 1024, delivered.append)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    envelope = raft_to_envelope(m.AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, EntryKind.NORMAL, b"x"),), 0))
    envelope.append_entries.entries[0].kind = 99
    proto.dataReceived(frame(envelope))
    assert delivered == [] and transport.disconnected


def test_raft_port_delivers_core_messages():
    delivered = []
    proto = RaftPortFactory(Clock(), 1024, delivered.append).buildProtocol(None)
    proto.makeConnection(StringTransport())
    message = m.VoteRequest(term=3, src=1, dst=2, last_log_index=9, last_log_term=2, pre_vote=True)
    for byte in frame(raft_to_envelope(message)):
        proto.dataReceived(bytes([byte]))
    assert delivered == [message]


# ------------------------------------------------------ conversion round trip

ids = st.integers(0, 2**32 - 1)
nums = st.integers(0, 2**63 - 1)
entries = st.lists(
    st.builds(Entry, nums, nums, st.sampled_from(list(EntryKind)), st.binary(max_size=64)), max_size=5
).map(tuple)
raft_messages = st.one_of(
    st.builds(m.VoteRequest, nums, ids, ids, nums, nums, st.booleans(), st.booleans()),
    st.builds(m.VoteResponse, nums, ids, ids, st.booleans(), st.booleans()),
    st.builds(m.AppendEntries, nums, ids, ids, nums, nums, entries, nums, nums),
    st.builds(m.AppendResponse, nums, ids, ids, st.booleans(), nums, nums, nums, nums),
    st.builds(
        m.InstallSnapshot,
        nums, ids, ids, nums, nums, nums, st.binary(max_size=64), st.booleans(),
        st.lists(ids, max_size=5).map(tuple), st.lists(ids, max_size=5).map(tuple),
    ),
    st.builds(m.SnapshotResponse, nums, ids, ids, nums, nums, st.booleans()),
    st.builds(m.TimeoutNow, nums, ids, ids),
    st.builds(m.Propose, nums, ids, ids, st.lists(st.binary(max_size=32), max_size=5).map(tuple)),
    st.builds(m.ReadIndexRequest, nums, ids, ids, nums),
    st.builds(m.ReadIndexResponse, nums, ids, ids, nums, nums),
)


@settings(max_examples=300, deadline=None)
@given(raft_messages)
def test_every_raft_message_survives_the_wire(message):
    envelope = pb.Envelope()
    envelope.ParseFromString(raft_to_envelope(message).SerializeToString())
    kind = envelope.WhichOneof("body")
    assert raft_from_envelope(kind, getattr(envelope, kind)) == message


def test_corked_messages_wait_and_leave_in_one_write_in_order():
    proto, transport = connect()
    writes, write = [], transport.write
    transport.write = lambda data: (writes.append(data), write(data))
    proto.cork()
    for seq in (1, 2):
        proto.sendEnvelope(pb.Envelope(frame_ack=pb.FrameAck(camera_id=7, seq=seq)))
    assert writes == []
    proto.uncork()
    assert len(writes) == 1 and [e.frame_ack.seq for e in sent_envelopes(transport)] == [1, 2]
    proto.sendEnvelope(pb.Envelope(frame_ack=pb.FrameAck(camera_id=7, seq=3)))
    assert len(writes) == 2  # uncorked: written at once again


def test_a_refusal_while_corked_sends_what_was_held_first():
    proto, transport = connect()
    proto.cork()
    proto.sendEnvelope(pb.Envelope(frame_ack=pb.FrameAck(camera_id=7, seq=1)))
    proto.reject(pb.Error.PERMISSION_DENIED, "camera 7 is disabled")
    [ack, error] = sent_envelopes(transport)
    assert ack.frame_ack.seq == 1 and error.error.code == pb.Error.PERMISSION_DENIED
    assert transport.disconnecting
