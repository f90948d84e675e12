"""Fuzzing the client port: hostile cameras next to an honest one.

``ClientPortProtocol`` + ``FrameIntake`` on a real ``ParkingState`` (in-memory
SQLite); proposals are recorded by a stand-in for the driver and committed
(applied) when the fuzzer says so.  Hostile connections send anything: random
bytes, any envelope with fields at their extremes, a plausible Hello followed by
adversarial frames.  Meanwhile the leader comes and goes and connections drop.

Properties: no exception leaves a protocol handler and nothing is logged at
error level; a bad message closes only its own connection; everything proposed
is a frame result the state machine accepts as valid; the honest camera on the
same factory still gets its FrameAcks.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from fuzzkit import (
    U32_EDGES,
    blobs,
    captured_logs,
    doubles,
    envelopes,
    envelopes_in,
    frame,
    fuzz,
    hostile_stream,
    texts,
    u64,
)
from parkd.db import open_engine
from parkd.node.frames import FrameIntake
from parkd.node.ports import ClientPortFactory
from parkd.parking import codec
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.state import FrameRejected, ParkingState
from parkd.proto import parkd_pb2 as pb
from doubles import Proposals

LOTS = {"north": 100, "south": 60, "": 5}  # an empty lot id is legal in the config format
MAX_LENGTH = 4096
MAX_PAYLOAD = 600
HONEST = 7


class Harness:
    def __init__(self):
        self.state = ParkingState(open_engine("sqlite://"), LOTS, max_payload=MAX_PAYLOAD)
        self.proposals = Proposals()
        self.clock = Clock()
        self.intake = FrameIntake(self.proposals, self.state, HashAnalyzer(), LOTS, self.clock)
        self.factory = ClientPortFactory(self.clock, MAX_LENGTH, self.intake)

    def connect(self):
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        proto.seen = b""
        return proto

    def received(self, proto) -> list[pb.Envelope]:
        data = proto.transport.value()
        proto.transport.clear()
        proto.seen += data
        return envelopes_in(data)

    def lose(self, proto) -> None:
        if not getattr(proto, "lost", False):
            proto.lost = True
            proto.connectionLost(Failure(ConnectionDone()))


# ------------------------------------------------------------------ strategies

camera_ids = st.one_of(st.sampled_from([c for c in U32_EDGES if c != HONEST]), st.integers(8, 2**32 - 1))
lots = st.one_of(st.sampled_from(sorted(LOTS)), texts(LOTS, limit=MAX_LENGTH))


def often(value, strategy):
    """``value`` about two times in three, else anything ``strategy`` draws."""
    return st.one_of(st.just(value), st.just(value), strategy)


@st.composite
def plausible_camera(draw):
    """A Hello (usually for a known lot), then frames with adversarial fields, mostly
    of that camera, so that many get past the first checks and some are proposed."""
    camera_id = draw(camera_ids)
    lot = draw(st.one_of(st.sampled_from(sorted(LOTS)), st.sampled_from(sorted(LOTS)), lots))
    out = [pb.Envelope(hello=pb.Hello(camera_id=camera_id, lot=lot))]
    for _ in range(draw(st.integers(0, 6))):
        frame_ = pb.SubmitFrame(
            camera_id=draw(often(camera_id, camera_ids)),
            lot=draw(often(lot, lots)),
            seq=draw(st.one_of(st.integers(0, 5), st.integers(0, 5), u64)),
            captured_at=draw(often(1.0e9, doubles)),
            payload=draw(st.one_of(st.binary(max_size=16), blobs(MAX_PAYLOAD + 64))),
        )
        out.append(pb.Envelope(submit_frame=frame_))
    return b"".join(frame(e) for e in out)


client_envelopes = envelopes(["hello", "submit_frame"], lots=tuple(LOTS), limit=MAX_LENGTH)
any_envelopes = envelopes(lots=tuple(LOTS), limit=1024)
streams = st.one_of(
    plausible_camera(),
    plausible_camera(),
    hostile_stream(client_envelopes, MAX_LENGTH),
    hostile_stream(any_envelopes, MAX_LENGTH),
    st.tuples(plausible_camera(), hostile_stream(any_envelopes, MAX_LENGTH)).map(b"".join),
)
feed = st.tuples(st.just("feed"), st.integers(0, 3), streams, st.integers(1, 64))
actions = st.one_of(
    feed,
    feed,
    feed,
    st.tuples(st.just("commit")),
    st.tuples(st.just("leader"), st.booleans()),
    st.tuples(st.just("leader_changed")),
    st.tuples(st.just("lose"), st.integers(0, 3)),
)


# ------------------------------------------------------------------ checks


def check_proposal(state, data: bytes) -> None:
    """What the node proposes must be a frame result that would be applied if its lot is right."""
    result = codec.decode(data)
    capacity = state.check(result.camera_id, result.lot, result.seq, result.captured_at, b"", None)
    assert 0 <= result.free <= capacity
    assert math.isfinite(result.captured_at)
    assert result.camera_id == HONEST or result.camera_id != 0


def honest_frame(seq: int) -> pb.Envelope:
    return pb.Envelope(submit_frame=pb.SubmitFrame(camera_id=HONEST, lot="north", seq=seq, captured_at=1.7e9 + seq,
                                                   payload=b"honest picture %d" % seq))  # fmt: skip


def acks(envelopes_):
    return {e.frame_ack.seq: e.frame_ack for e in envelopes_ if e.WhichOneof("body") == "frame_ack"}


# ------------------------------------------------------------------ the fuzzer


@fuzz(200)
@given(st.lists(actions, max_size=12))
def test_hostile_cameras_cannot_crash_the_port_propose_garbage_or_starve_an_honest_camera(steps):
    h = Harness()
    with captured_logs() as logs:
        honest = h.connect()
        honest.dataReceived(frame(pb.Envelope(hello=pb.Hello(camera_id=HONEST, lot="north"))))
        honest.dataReceived(frame(honest_frame(1)))
        hostile = [h.connect() for _ in range(4)]
        for step in steps:
            if step[0] == "feed":
                _, which, data, chunk = step
                proto = hostile[which]
                if not getattr(proto, "lost", False):
                    for start in range(0, len(data), chunk):
                        proto.dataReceived(data[start : start + chunk])
            elif step[0] == "commit":
                h.proposals.commit(h.state)
            elif step[0] == "leader":
                h.proposals.leader = step[1]
            elif step[0] == "leader_changed":
                h.proposals.new_leader(1)
            elif step[0] == "lose":
                h.lose(hostile[step[1]])
            for proto in hostile:
                h.received(proto)
        # The honest camera is still served: its frames are acked once committed.
        h.proposals.leader = True
        h.proposals.new_leader(1)  # re-proposes seq 1 if refused before
        honest.dataReceived(frame(honest_frame(2)))
        h.proposals.commit(h.state)
        got = acks(h.received(honest))
        assert sorted(got) == [1, 2], h.received(honest)
        assert not honest.transport.disconnecting and not honest.rejected

        assert logs.errors() == []
        assert logs.formats(LogLevel.warn) <= {"closing {port} connection from {peer}: {reason}",
                                               "refused frame {seq} of camera {camera_id}: {message}"}  # fmt: skip
        # Each bad connection was closed, once, and only that one.
        closing = logs.closing()
        assert len(closing) == sum(p.rejected for p in hostile)
        for proto in hostile:
            if proto.rejected:
                assert proto.transport.disconnecting
                errors = [e for e in envelopes_in(proto.seen) if e.WhichOneof("body") == "error"]
                assert errors and errors[-1].error.code in (
                    pb.Error.MALFORMED, pb.Error.TOO_LARGE, pb.Error.NOT_ALLOWED, pb.Error.UNKNOWN_LOT
                )
            for envelope in envelopes_in(proto.seen):  # answers stay within the wire limit
                assert envelope.ByteSize() <= MAX_LENGTH
        h.clock.advance(60)  # grace periods end: every rejected connection is aborted
        assert all(p.transport.disconnected or getattr(p, "lost", False) for p in hostile if p.rejected)
    for data in h.proposals.all:
        check_proposal(h.state, data)
    # Only valid frames were applied: the tables hold what the state machine allows.
    for camera in h.state.cameras():
        assert camera.lot in LOTS and 1 <= camera.camera_id <= 2**32 - 1
        assert 0 <= camera.free <= LOTS[camera.lot] and math.isfinite(camera.last_seen)
        for f in h.state.frames(camera.camera_id, limit=10_000):
            assert 1 <= f.seq <= 2**63 - 1 and 0 <= f.free <= LOTS[camera.lot]


def test_proposals_from_the_fuzzer_are_checked():
    """The checker itself refuses what must never be proposed."""
    state = ParkingState(open_engine("sqlite://"), LOTS)
    for bad in (
        codec.FrameResult(0, "north", 1, 1.0, 1),
        codec.FrameResult(7, "west", 1, 1.0, 1),
        codec.FrameResult(7, "north", 0, 1.0, 1),
        codec.FrameResult(7, "north", 1, math.nan, 1),
    ):
        try:
            check_proposal(state, codec.encode(bad))
        except (FrameRejected, AssertionError):
            continue
        raise AssertionError(f"{bad} passed the check")
