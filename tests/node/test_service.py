"""The node service's planned stop (SIGTERM) on a MemoryReactorClock: no sockets, no sleeps."""

from __future__ import annotations


import pytest
from twisted.internet.testing import MemoryReactorClock, StringTransport

from parkd.config import load_config
from parkd.launcher import write_config
from parkd.wire import PROTOCOL_VERSION
from parkd.node.peers import PeerConnection
from doubles import InlineThread
from parkd.node.service import NodeService
from parkd.proto import parkd_pb2 as pb
from parkd.raft import messages as m
from parkd.raft.core import Role
from parkd.tap import NodeSettings
from parkd.wire import frame_envelope, raft_from_envelope, raft_to_envelope, split_envelopes

ME, PEERS = 2, (1, 3)


class Node:
    """Node 2 of a 3-node config; the test plays its peers and a camera."""

    def __init__(self, tmp_path, **service_options):
        path = write_config(str(tmp_path / "parkd.toml"), nodes=3, lots={"north": 100},
                            election_timeout_ms=500, heartbeat_ms=50)  # fmt: skip
        self.config = load_config(path)
        me = self.config.member(ME)
        listen = {f"listen_{kind}": f"tcp:{getattr(me, kind).port}:interface=127.0.0.1"
                  for kind in ("raft", "client", "http")}  # fmt: skip
        self.reactor = MemoryReactorClock()
        settings = NodeSettings(ME, self.config, str(tmp_path / "node-2"), **listen)
        self.service = NodeService(settings, self.reactor, snapshot_thread=InlineThread(), **service_options)
        self.service.startService()
        self.raft_port, self.client_port = (server[1] for server in self.reactor.tcpServers)
        self.peers = {peer: self.connect(self.raft_port) for peer in PEERS}  # each peer's connection
        for peer, proto in self.peers.items():  # opened as a peer opens it (CONTRACT §10)
            hello = pb.PeerHello(protocol_version=PROTOCOL_VERSION, node_id=peer, data_dir_id=f"{peer:032x}")
            proto.dataReceived(frame_envelope(pb.Envelope(peer_hello=hello)))
        self.camera = self.connect(self.client_port)
        self.camera.dataReceived(frame_envelope(pb.Envelope(hello=pb.Hello(camera_id=7, lot="north"))))
        self.core = self.service.driver
        self.raft = self.service.driver._core  # the core itself, for tests that read its log

    def connect(self, factory):
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport())
        return proto

    def run(self, seconds: float = 0.0) -> None:
        self.reactor.advance(0)
        for _ in range(round(seconds / 0.05)):
            self.reactor.advance(0.05)

    def deliver(self, message) -> None:
        self.peers[message.src].dataReceived(frame_envelope(raft_to_envelope(message)))
        self.run()

    def elect(self) -> None:
        for _ in range(60):
            if self.core.role is not Role.FOLLOWER:
                break
            self.run(0.05)
        for peer in PEERS:
            self.deliver(m.VoteResponse(self.core.term + 1, peer, ME, True, True))  # pre-vote
        for peer in PEERS:
            self.deliver(m.VoteResponse(self.core.term, peer, ME, True))
        assert self.core.role is Role.LEADER
        self.acknowledge()

    def acknowledge(self) -> None:
        for peer in PEERS:
            self.deliver(m.AppendResponse(self.core.term, peer, ME, True, self.core.last_index))

    def camera_received(self) -> list[pb.Envelope]:
        return split_envelopes(self.camera.transport.value())

    def follow(self, leader: int) -> None:
        self.deliver(m.AppendEntries(1, leader, ME, 0, 0, (), 0))
        assert self.core.leader_id == leader

    def link_up(self, peer: int) -> PeerConnection:
        """The connection the peer link's ClientService makes, on a StringTransport."""
        proto = PeerConnection()
        proto.factory = type("Factory", (), {"link": self.service.peers.links[peer], "max_length": 1 << 20,
                                             "hello": None})()  # fmt: skip
        proto.makeConnection(StringTransport())
        return proto

    def submit(self, seq: int) -> None:
        frame = pb.SubmitFrame(camera_id=7, lot="north", seq=seq, captured_at=1.7e9 + seq, payload=b"%d" % seq)
        self.camera.dataReceived(frame_envelope(pb.Envelope(submit_frame=frame)))
        self.run()


@pytest.fixture
def make_node(tmp_path):
    """A started Node; stopped afterwards (its snapshot thread pool too)."""
    made = []

    def make(**service_options):
        made.append(Node(tmp_path, **service_options))
        return made[-1]

    yield make
    for node in made:
        if node.service.running:
            done = []
            node.service.stopService().addBoth(done.append)
            for _ in range(100):
                if done:
                    break
                node.reactor.advance(0.1)


def proposals(proto) -> list[bytes]:
    """The frame results in the Propose messages sent on a peer connection."""
    messages = [raft_from_envelope(e.WhichOneof("body"), getattr(e, e.WhichOneof("body")))
                for e in split_envelopes(proto.transport.value())]  # fmt: skip
    return [data for message in messages if isinstance(message, m.Propose) for data in message.data]


def test_a_stopping_leader_sends_its_cameras_to_the_node_it_handed_over_to(make_node):
    # The handover ends when the target's election reaches this node: it then
    # knows the new term but not yet a leader of it.  The cameras used to be
    # closed without a Redirect (they searched with backoff, maybe trying this
    # very node again); the target is where the leader will be.
    node = make_node()
    node.elect()
    stopped = []
    node.service.stopService().addBoth(stopped.append)
    node.run()
    target = node.raft.transferee  # whom the core hands over to
    assert target in PEERS and not stopped
    node.deliver(m.VoteRequest(node.core.term + 1, target, ME, node.core.last_index, node.core.term, transfer=True))
    node.run(0.1)
    assert stopped == [None]
    redirects = [e.redirect for e in node.camera_received() if e.HasField("redirect")]
    assert [(r.leader_id, r.address) for r in redirects] == [(target, str(node.config.member(target).client))]
    assert node.camera.transport.disconnecting


def test_a_stopping_follower_sends_its_cameras_to_the_leader(make_node):
    node = make_node()
    node.deliver(m.AppendEntries(1, 3, ME, 0, 0, (), 0))
    assert node.core.leader_id == 3
    stopped = []
    node.service.stopService().addBoth(stopped.append)
    node.run(0.1)
    assert stopped == [None]
    redirects = [e.redirect for e in node.camera_received() if e.HasField("redirect")]
    assert [(r.leader_id, r.address) for r in redirects] == [(3, str(node.config.member(3).client))]


def test_frames_forwarded_while_the_link_to_the_leader_is_down_go_out_once_it_is_up(make_node):
    # A node that starts before the leader listens knows the leader (its appends
    # arrive) while its own link to it is still in reconnect backoff.  Results
    # forwarded meanwhile were dropped and proposed again only on a leader change:
    # the camera's first frames waited out its ack timeout while later ones were
    # applied before them.
    node = make_node()
    node.follow(3)
    node.submit(1)
    node.submit(2)
    assert not node.service.peers.connected(3)
    node.run(0.5)
    link = node.link_up(3)
    node.submit(3)  # goes straight out, after the held ones
    node.run(0.1)
    assert [codec_seq(data) for data in proposals(link)] == [1, 2, 3]


def test_held_frames_are_left_to_the_intake_when_the_leader_changes(make_node):
    node = make_node()
    node.follow(3)
    node.submit(1)
    node.deliver(m.AppendEntries(2, 1, ME, 0, 0, (), 0))  # a new leader: the intake proposes its frames again
    link_1, link_3 = node.link_up(1), node.link_up(3)
    node.run(0.2)
    assert [codec_seq(data) for data in proposals(link_1)] == [1]  # once, from the intake
    assert proposals(link_3) == []


def codec_seq(data: bytes) -> int:
    from parkd.parking import codec

    return codec.decode(data).seq
