"""Regression tests for what the hostile-input fuzzers found (issue 7).

Each test names the finding; the fuzzers in this directory found them first.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from fuzzkit import captured_logs, envelopes_in, frame
from parkd.config import DEFAULT_MAX_MESSAGE_BYTES
from parkd.node.frames import FrameIntake
from parkd.node.ports import ClientPortFactory
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.state import ParkingState
from parkd.proto import parkd_pb2 as pb
from parkd.raft.storage import open_engine

LOTS = {"north": 100}


def client_port(max_length=DEFAULT_MAX_MESSAGE_BYTES):
    state = ParkingState(open_engine("sqlite://"), LOTS)
    intake = FrameIntake(lambda data: None, state, HashAnalyzer(), LOTS)
    return ClientPortFactory(Clock(), max_length, intake)


def connect(factory):
    proto = factory.buildProtocol(None)
    proto.makeConnection(StringTransport())
    return proto


# A lot id whose repr() is four times its length: quoted in an Error, it used to
# exceed the message limit, so sending the Error raised MessageTooLarge out of the
# protocol handler (an Unhandled Error with a traceback in the node's log).
HUGE_LOT = "\x00" * (DEFAULT_MAX_MESSAGE_BYTES // 4 + 1000)


def test_a_hello_with_a_huge_unknown_lot_gets_a_short_error_and_is_closed():
    factory = client_port()
    proto = connect(factory)
    with captured_logs() as logs:
        proto.dataReceived(frame(pb.Envelope(hello=pb.Hello(camera_id=7, lot=HUGE_LOT))))
    [answer] = envelopes_in(proto.transport.value())
    assert answer.error.code == pb.Error.UNKNOWN_LOT
    assert len(answer.error.message) < 1000 and "more characters" in answer.error.message
    assert proto.transport.disconnecting
    assert logs.errors() == [] and len(logs.closing()) == 1
    assert len(logs.closing()[0]["reason"]) < 1000


def test_a_frame_with_a_huge_wrong_lot_is_refused_with_a_short_error_and_the_camera_stays():
    factory = client_port()
    proto = connect(factory)
    proto.dataReceived(frame(pb.Envelope(hello=pb.Hello(camera_id=7, lot="north"))))
    with captured_logs() as logs:
        proto.dataReceived(frame(pb.Envelope(submit_frame=pb.SubmitFrame(camera_id=7, lot=HUGE_LOT, seq=1))))
    [answer] = envelopes_in(proto.transport.value())
    assert answer.error.code == pb.Error.LOT_MISMATCH and answer.error.seq == 1
    assert len(answer.error.message) < 1000
    assert not proto.transport.disconnecting
    assert logs.errors() == []
    assert all(len(text) < 2000 for text in logs.warnings())
