"""Eager writes on a real TCP socket pair: sent at once when nothing is queued, queued otherwise, order kept."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol

from parkd.sockets import tcp_transport_of, write_eagerly


class Reactor:
    """What a tcp.Connection asks of its reactor here: to be polled for writability, or not."""

    def __init__(self):
        self.writers = set()

    def addWriter(self, w):
        self.writers.add(w)

    def removeWriter(self, w):
        self.writers.discard(w)

    def addReader(self, r):
        pass

    def removeReader(self, r):
        pass


def pair():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(1.0)
    reactor = Reactor()
    connection = tcp.Connection(ours, Protocol(), reactor)
    connection.connected = 1
    return connection, theirs, reactor


def test_a_write_with_nothing_queued_is_sent_at_once_without_polling():
    connection, theirs, reactor = pair()
    write_eagerly(connection)
    connection.write(b"ack-1")
    assert theirs.recv(100) == b"ack-1"
    assert reactor.writers == set()  # no writability poll asked for


def test_while_something_is_queued_writes_queue_behind_it_in_order():
    connection, theirs, reactor = pair()
    tcp.Connection.write(connection, b"first ")  # queued the usual way
    write_eagerly(connection)
    connection.write(b"second")
    assert reactor.writers == {connection}
    theirs.settimeout(0.05)
    try:
        assert theirs.recv(100) == b""
    except TimeoutError:
        pass  # nothing sent yet
    connection.doWrite()
    theirs.settimeout(1.0)
    assert theirs.recv(100) == b"first second"


def test_what_the_socket_does_not_take_is_queued_and_follows():
    connection, theirs, reactor = pair()
    connection.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    write_eagerly(connection)
    blob = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    connection.write(blob)
    connection.write(b"tail")
    assert reactor.writers == {connection}
    received = b""
    while len(received) < len(blob) + 4:
        connection.doWrite()
        received += theirs.recv(1 << 20)
    assert received == blob + b"tail"


def test_the_tcp_connection_is_found_under_a_tls_wrapper_and_not_in_a_test_double():
    connection, _, _ = pair()
    assert tcp_transport_of(connection) is connection
    wrapper = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)  # as wired once connected
    wrapper.transport = connection
    assert tcp_transport_of(wrapper) is connection
    assert tcp_transport_of(StringTransport()) is None


def test_both_ports_framing_writes_eagerly_on_a_tcp_connection():
    from parkd.wire import EnvelopeFactory, EnvelopeProtocol

    connection, theirs, reactor = pair()
    factory = EnvelopeFactory(None, 1024)
    factory.protocol = EnvelopeProtocol
    proto = factory.buildProtocol(None)
    proto.makeConnection(connection)
    proto.sendEncoded(b"hello")
    assert theirs.recv(100) == b"\x00\x00\x00\x05hello" and reactor.writers == set()
