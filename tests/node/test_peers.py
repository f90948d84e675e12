"""Outgoing raft links: a broken connection to a peer is reported once, as a hint."""

from twisted.internet.testing import MemoryReactorClock, StringTransport

from parkd.config import Address, Member
from parkd.node.peers import PeerConnection, PeerService


def member(i: int) -> Member:
    return Member(i, Address("127.0.0.1", 7100 + i), Address("127.0.0.1", 7200 + i), Address("127.0.0.1", 7300 + i))


def connect(service: PeerService, peer_id: int) -> PeerConnection:
    """The connection ClientService would make, on a StringTransport."""
    link = service.links[peer_id]
    proto = PeerConnection()
    proto.factory = type("Factory", (), {"link": link, "max_length": 1 << 20})()
    proto.makeConnection(StringTransport())
    return proto


def make():
    lost = []
    service = PeerService(1, (member(1), member(2), member(3)), MemoryReactorClock(), 1 << 20, on_lost=lost.append)
    return service, lost


def test_a_broken_connection_to_a_peer_is_reported():
    service, lost = make()
    proto = connect(service, 2)
    assert service.connected(2)
    proto.connectionLost(None)
    assert lost == [2] and not service.connected(2)


def test_a_link_that_never_connected_or_that_we_closed_reports_nothing():
    service, lost = make()
    proto = connect(service, 3)
    service.remove_peer(3)
    proto.connectionLost(None)  # our own close, as the link is removed
    assert lost == []


def test_a_stale_connection_of_a_replaced_link_reports_nothing():
    """A member that moved gets a new link; the old one's close is not news."""
    service, lost = make()
    old = connect(service, 2)
    moved = Member(2, Address("127.0.0.1", 9102), Address("127.0.0.1", 9202), Address("127.0.0.1", 9302))
    service.add_peer(moved)
    old.connectionLost(None)
    assert lost == []


def test_a_connection_opens_with_the_peer_hello_before_any_raft_message():
    """CONTRACT §10: the dialing side says who it is (cluster, data dir, protocol) first."""
    from parkd.proto import parkd_pb2 as pb
    from parkd.raft import messages as m
    from parkd.wire import split_envelopes

    hello = pb.PeerHello(protocol_version=100, node_id=1, cluster_id="c" * 32, data_dir_id="1" * 32)
    service = PeerService(1, (member(1), member(2)), MemoryReactorClock(), 1 << 20, hello=lambda: hello)
    link = service.links[2]
    proto = PeerConnection()
    proto.factory = type("Factory", (), {"link": link, "max_length": 1 << 20, "hello": staticmethod(service.hello)})()
    proto.makeConnection(StringTransport())
    service.send(m.TimeoutNow(term=1, src=1, dst=2))
    first, second = split_envelopes(proto.transport.value())
    assert first.peer_hello == hello and second.WhichOneof("body") == "timeout_now"
