"""The camera registry on a node (CONTRACT §9): operations, events, refusals at the client port,
and a disabled camera's outbox draining once enabled (the real camera client against the real intake)."""

from __future__ import annotations

import random

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.test import iosim

from parkd.camera.client import CameraClient
from parkd.camera.outbox import Outbox
from parkd.config import Address
from parkd.db import open_engine
from parkd.events import FrameEvents, list_sink
from parkd.node.frames import FrameIntake
from parkd.node.events import SnapshotInstalled
from parkd.node.membership import ChangeLost, ChangeTimeout
from parkd.node.ports import ClientPortFactory
from parkd.node.registry import CameraRegistry, RegistryChange, UnknownCamera
from parkd.parking.analyzer import HashAnalyzer
from parkd.parking.state import ParkingState
from parkd.proto import parkd_pb2 as pb
from parkd.raft.core import NotLeader
from parkd.raft.types import SnapshotMeta
from parkd.wire import frame_envelope, split_envelopes
from doubles import Proposals

LOTS = {"north": 100}


class Node:
    """A node's client side on doubles: Raft is ``Proposals``, the rest is real."""

    def __init__(self, close_on_disable=True):
        self.clock = Clock()
        self.state = ParkingState(open_engine("sqlite://"), LOTS)
        self.cluster = Proposals()
        self.registry = CameraRegistry(self.cluster, self.state, self.clock)
        self.intake = FrameIntake(self.cluster, self.state, HashAnalyzer(), LOTS, self.clock, self.registry)
        self.factory = ClientPortFactory(self.clock, 4 << 20, self.intake)
        if close_on_disable:  # as the node service wires it
            self.registry.when_disabled(self.factory.close_disabled)
        self.events = []
        self.registry.log = Logger(observer=self.events.append)

    def commit(self):
        self.cluster.commit(self.state)

    def connect(self):
        proto = self.factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        return proto

    def set_enabled(self, camera_id, enabled):
        done = self.registry.set_enabled(camera_id, enabled)
        self.commit()
        return done


def send(proto, **body):
    proto.dataReceived(frame_envelope(pb.Envelope(**body)))


def received(proto):
    out = split_envelopes(proto.transport.value())
    proto.transport.clear()
    return out


def frame(seq, camera_id=7):
    return pb.SubmitFrame(camera_id=camera_id, lot="north", seq=seq, captured_at=100.0 + seq, payload=b"p%d" % seq)


def hello(camera_id=7):
    return pb.Hello(camera_id=camera_id, lot="north", incarnation=42)


@pytest.fixture
def node():
    node = Node()
    proto = node.connect()
    send(proto, hello=hello())
    send(proto, submit_frame=frame(1))
    node.commit()
    return node


# -- the operation --------------------------------------------------------------------------------


def test_disable_fires_once_applied_and_every_node_logs_the_event(node):
    done = node.registry.set_enabled(7, False)
    assert not done.called  # proposed, not yet committed
    node.commit()
    assert done.result == RegistryChange(7, False, 2)
    assert node.state.camera(7).enabled is False and node.registry.is_disabled(7)
    [event] = [e for e in node.events if e.get("parkd_event")]
    assert (event["parkd_event"], event["camera_id"], event["index"]) == ("camera_disabled", 7, 2)
    enabled = node.set_enabled(7, True)
    assert enabled.result == RegistryChange(7, True, 3) and not node.registry.is_disabled(7)
    assert [e["parkd_event"] for e in node.events if e.get("parkd_event")] == ["camera_disabled", "camera_enabled"]


def test_a_follower_refuses_and_names_the_leader(node):
    node.cluster.leader = False
    forwarded = []
    node.cluster.propose = forwarded.append  # a follower's core would forward it to the leader
    failures = []
    node.registry.set_enabled(7, False).addErrback(failures.append)
    assert failures[0].check(NotLeader) and forwarded == []


def test_an_unknown_camera_is_refused(node):
    failed = []
    node.registry.set_enabled(8, False).addErrback(failed.append)
    assert failed[0].check(UnknownCamera) and "camera 8 has sent no frame" in failed[0].getErrorMessage()
    assert node.cluster.pending == []


def test_an_entry_lost_to_a_new_leader_fails_and_one_not_committed_in_time_times_out(node):
    lost = node.registry.set_enabled(7, False)
    node.cluster.term = 2  # a new leader overwrote index 2 with an entry of its term
    node.commit()
    failures = []
    lost.addErrback(failures.append)
    assert failures[0].check(ChangeLost)
    slow = node.registry.set_enabled(7, False)
    node.clock.advance(10.5)
    slow.addErrback(failures.append)
    assert failures[1].check(ChangeTimeout) and "did not commit within 10 s" in failures[1].getErrorMessage()


# -- refusals at the client port ----------------------------------------------------------------


def test_disabling_closes_the_cameras_connection_and_refuses_its_hello(node):
    [proto] = list(node.factory.connections)
    received(proto)
    other = node.connect()
    send(other, hello=hello(camera_id=8))
    node.set_enabled(7, False)
    [error] = received(proto)
    assert error.error.code == pb.Error.PERMISSION_DENIED and proto.transport.disconnecting
    assert not other.transport.disconnecting  # another camera is not touched
    again = node.connect()
    send(again, hello=hello())
    [error] = received(again)
    assert error.error.code == pb.Error.PERMISSION_DENIED and again.transport.disconnecting
    assert "parkctl camera enable 7" in error.error.message


def test_a_frame_that_commits_after_the_disable_entry_is_refused_and_not_recorded(node):
    [proto] = list(node.factory.connections)
    received(proto)
    node.registry.set_enabled(7, False)  # proposed first ...
    send(proto, submit_frame=frame(2))  # ... so this one commits after it: the intake did not know yet
    assert len(node.cluster.pending) == 2
    node.commit()
    [error] = received(proto)
    assert error.error.code == pb.Error.PERMISSION_DENIED and proto.transport.disconnecting
    assert [f.seq for f in node.state.frames(7)] == [1]
    node.set_enabled(7, True)
    retry = node.connect()
    send(retry, hello=hello())
    send(retry, submit_frame=frame(2))
    node.commit()
    [ack] = received(retry)
    assert ack.frame_ack.seq == 2 and [f.seq for f in node.state.frames(7)] == [1, 2]


def test_a_frame_rejected_at_apply_closes_its_connection_through_the_intake_alone():
    """Without the registry's listener (which also closes it) the intake's own refusal holds."""
    node = Node(close_on_disable=False)
    proto = node.connect()
    send(proto, hello=hello())
    send(proto, submit_frame=frame(1))
    node.commit()
    received(proto)
    node.registry.set_enabled(7, False)
    send(proto, submit_frame=frame(2))
    node.commit()
    [error] = received(proto)
    assert error.error.code == pb.Error.PERMISSION_DENIED and proto.transport.disconnecting


def test_after_a_snapshot_is_installed_the_disabled_set_is_read_again(node):
    node.set_enabled(7, False)
    assert node.registry.is_disabled(7)
    with node.state.engine.begin() as conn:  # what installing a snapshot taken before the entry does
        conn.exec_driver_sql("DELETE FROM camera_registry")
    node.cluster._publish(SnapshotInstalled(SnapshotMeta(1, 1, (1,))))
    assert not node.registry.is_disabled(7)


def test_a_frame_of_a_disabled_camera_on_an_open_connection_is_refused_at_once(node):
    node.registry.set_enabled(7, False)
    node.commit()
    late = node.factory.buildProtocol(None)  # connected before the intake learnt of it: Hello accepted
    late.makeConnection(StringTransport())
    late.camera_id, late.lot, late.incarnation = 7, "north", 42
    send(late, submit_frame=frame(2))
    [error] = received(late)
    assert error.error.code == pb.Error.PERMISSION_DENIED and late.transport.disconnecting
    assert node.cluster.pending == []


# -- the camera client against the node -------------------------------------------------------


class Wire:
    """Connects camera connections to the node's client port in memory (iosim)."""

    def __init__(self, node):
        self.node = node
        self.pumps = []

    def connect(self, address, proto):
        server = self.node.factory.buildProtocol(None)
        peer = IPv4Address("TCP", address.host, address.port)
        client_side = iosim.FakeTransport(proto, isServer=False, peerAddress=peer)
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True), proto, client_side,
                             greet=True, clock=self.node.clock)  # fmt: skip
        self.pumps.append(pump)
        return defer.succeed(proto)

    def flush(self):
        for pump in self.pumps:
            pump.flush(advanceClock=False)


def test_a_disabled_camera_keeps_its_frames_and_once_enabled_drains_them_in_order_exactly_once(tmp_path):
    node = Node()
    wire = Wire(node)
    box = Outbox(str(tmp_path / "outbox.db"), limit=100)
    events = []
    frame_events = FrameEvents()
    frame_events.sink = list_sink(events)
    camera = CameraClient(7, "north", box, (Address("127.0.0.1", 1),), node.clock, ack_timeout=5.0,
                          max_message_bytes=1 << 20, window=4, rng=random.Random(3), connect=wire.connect,
                          events=frame_events)  # fmt: skip

    def capture(n):
        for _ in range(n):
            box.add(b"picture %d" % box.counter("next_seq"), node.clock.seconds())
        camera.frame_added()

    def settle():  # deliver everything, commit what was proposed, deliver the answers
        for _ in range(3):
            wire.flush()
            node.commit()
        wire.flush()

    camera.start()
    capture(2)
    settle()
    assert box.pending() == [] and [f.seq for f in node.state.frames(7)] == [1, 2]

    node.registry.set_enabled(7, False)
    capture(1)  # seq 3 reaches the node before the disable entry applies: proposed after it
    settle()
    assert camera.paused and [f.seq for f in box.pending()] == [3]
    for _ in range(20):  # disabled for a while: the camera keeps trying, the node keeps refusing
        capture(1)
        node.clock.advance(1.0)
        settle()
    assert [f.seq for f in box.pending()] == list(range(3, 24))
    assert [f.seq for f in node.state.frames(7)] == [1, 2]
    attempts = len(wire.pumps)
    assert 4 <= attempts <= 15  # with backoff, not once per second

    node.set_enabled(7, True)
    for _ in range(12):
        node.clock.advance(1.0)
        settle()
    assert box.pending() == [] and not camera.paused
    assert [f.seq for f in node.state.frames(7)] == list(range(1, 24))  # each exactly once
    acked = [e["seq"] for e in events if e.get("parkd_event") == "frame_acked"]
    assert acked == list(range(1, 24))
    camera.stop()
