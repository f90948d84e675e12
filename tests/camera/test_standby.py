"""Standby TLS sessions: a connected camera dials each other node in the background, for a session only."""

import random

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from doubles import Network
from parkd.camera.client import CameraClient
from parkd.camera.memory_outbox import MemoryOutbox
from parkd.camera.standby import SessionWarmer
from parkd.config import Address

NODES = (Address("127.0.0.1", 1), Address("127.0.0.1", 2), Address("127.0.0.1", 3))


class TLSTransport(StringTransport):
    """What the client and a SessionWarmer read of a TLS transport: whether the session was resumed."""

    def __init__(self, resumed=False):
        super().__init__()
        self.resumed = resumed


def warmers(net):
    return [(address, proto) for address, proto in net.attempts if isinstance(proto, SessionWarmer)]


def make(spread=30.0):
    clock, net = Clock(), Network(TLSTransport)
    client = CameraClient(7, "north", MemoryOutbox(lambda *a: None, lambda *a: None), NODES, clock, ack_timeout=2.0,
                          max_message_bytes=1 << 20, rng=random.Random(3), connect=net.connect, trust=object(),
                          standby_spread=spread)  # fmt: skip
    return client, clock, net


def finish(clock, warmer, resumed=False):
    """The warmer's handshake completes; it closes once the tickets had time to come."""
    warmer.transport.resumed = resumed
    warmer.handshakeCompleted()
    clock.advance(SessionWarmer.TICKETS)
    assert warmer.transport.disconnecting
    warmer.connectionLost(Failure(ConnectionDone()))


def test_once_connected_a_camera_gets_a_session_with_each_other_node_one_at_a_time():
    client, clock, net = make(spread=30.0)
    client.start()
    (home, proto), = net.attempts
    assert clock.getDelayedCalls() == []  # nothing before the camera's own handshake is done
    proto.handshakeCompleted()
    (first_round,) = clock.getDelayedCalls()
    assert 0 <= first_round.getTime() <= 30.0  # at random within the spread
    clock.advance(first_round.getTime())
    (address, warmer), = warmers(net)  # one at a time
    assert address != home
    finish(clock, warmer)
    (address2, warmer2) = warmers(net)[1]
    assert {home, address, address2} == set(NODES)  # every other node, never its own
    finish(clock, warmer2, resumed=True)
    assert client.standby.counts == {"warmed": 1, "resumed": 1} and client.standby.rounds == 1
    assert len(warmers(net)) == 2 and [p for _, p in net.attempts if not isinstance(p, SessionWarmer)] == [proto]
    assert not proto.transport.disconnected  # the camera's own connection is left alone


def test_the_rounds_come_again_inside_the_nodes_session_lifetime_and_skip_the_current_node():
    client, clock, net = make(spread=1.0)
    client.start()
    net.attempts[0][1].handshakeCompleted()
    clock.advance(1.0)
    for _ in range(2):
        finish(clock, warmers(net)[-1][1])
    (refresh,) = clock.getDelayedCalls()
    assert 0.9 * 2700 <= refresh.getTime() - clock.seconds() <= 2700 < 3600  # SESSION_LIFETIME on the nodes
    home = net.attempts[0][0]
    client.proto.transport.loseConnection()  # the camera moves to another node meanwhile
    client.disconnected(client.proto, Failure(ConnectionDone()))
    clock.advance(0.1)
    (new_home, proto) = net.attempts[-1]
    proto.handshakeCompleted()
    assert clock.getDelayedCalls() == [refresh]  # connecting again plans no extra round
    assert new_home != home
    clock.advance(refresh.getTime() - clock.seconds())
    finish(clock, warmers(net)[-1][1])
    assert {a for a, _ in warmers(net)[-2:]} == set(NODES) - {new_home}  # now the old home, not the new one
    assert client.standby.rounds == 1 and len(warmers(net)) == 4


def test_a_node_that_cannot_be_reached_or_finishes_no_handshake_counts_failed_and_the_round_goes_on():
    client, clock, net = make(spread=1.0)
    client.start()
    home = net.attempts[0][0]
    others = [a for a in NODES if a != home]
    net.refuse.add(others[0])
    net.attempts[0][1].handshakeCompleted()
    clock.advance(1.0)
    assert [a for a, _ in warmers(net)] == others  # the refused one, then at once the next
    warmers(net)[1][1].connectionLost(Failure(ConnectionDone()))  # closed before its handshake
    assert client.standby.counts == {"failed": 2} and client.standby.rounds == 1


def test_stopping_the_camera_stops_its_standby_sessions():
    client, clock, net = make(spread=5.0)
    client.start()
    net.attempts[0][1].handshakeCompleted()
    client.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(10.0)
    assert warmers(net) == []


def test_no_standby_sessions_without_tls_or_with_a_spread_of_zero():
    assert make(spread=0)[0].standby is None
    clock = Clock()
    plain = CameraClient(7, "north", MemoryOutbox(lambda *a: None, lambda *a: None), NODES, clock, ack_timeout=2.0,
                         max_message_bytes=1 << 20, connect=Network(TLSTransport).connect)  # fmt: skip
    assert plain.standby is None
