"""Eager writes on a real TCP socket pair: sent at once when nothing is queued, queued otherwise, order kept."""

from __future__ import annotations

import socket

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from OpenSSL import SSL

from parkd.sockets import EagerWrites, send_eagerly
from parkd.trust.guard import GuardedTLSProtocol


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
    send_eagerly(connection, b"ack-1")
    assert theirs.recv(100) == b"ack-1"
    assert reactor.writers == set()  # no writability poll asked for


def test_while_something_is_queued_writes_queue_behind_it_in_order():
    connection, theirs, reactor = pair()
    connection.write(b"first ")  # queued the usual way
    send_eagerly(connection, b"second")
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
    blob = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once
    send_eagerly(connection, blob)
    connection.doWrite()  # some more leaves; the rest waits in the connection's own buffer
    assert connection._tempDataLen == 0 and len(connection.dataBuffer) > connection.offset
    received = theirs.recv(1 << 20)  # the socket has room again, but the connection's buffer comes first
    send_eagerly(connection, b"tail")
    assert reactor.writers == {connection}
    while len(received) < len(blob) + 4:
        connection.doWrite()
        received += theirs.recv(1 << 20)
    assert received == blob + b"tail"


def test_anything_but_a_tcp_connection_gets_a_plain_write():
    transport = StringTransport()
    send_eagerly(transport, b"ack-1")
    assert transport.value() == b"ack-1"


class BIO:
    """The TLS connection's send BIO as _flushSendBIO reads it: one record, then nothing."""

    def __init__(self, record: bytes):
        self.records = [record]

    def bio_read(self, size):
        if not self.records:
            raise SSL.WantReadError()
        return self.records.pop()


def tls_wrapper_on(connection, eager: bool) -> GuardedTLSProtocol:
    wrapper = GuardedTLSProtocol.__new__(GuardedTLSProtocol)  # as wired once connected
    wrapper.transport, wrapper._tlsConnection = connection, BIO(b"record")
    if eager:
        wrapper.eager_writes = True
    return wrapper


def test_a_tls_wrapper_asked_for_eager_writes_sends_its_records_at_once():
    connection, theirs, reactor = pair()
    tls_wrapper_on(connection, eager=True)._flushSendBIO()
    assert theirs.recv(100) == b"record" and reactor.writers == set()
    connection, theirs, reactor = pair()
    tls_wrapper_on(connection, eager=False)._flushSendBIO()  # Twisted's way: queued for the next poll
    assert reactor.writers == {connection}
    connection.doWrite()
    assert theirs.recv(100) == b"record"


def test_both_ports_framing_writes_eagerly_on_a_tcp_connection():
    from parkd.wire import EnvelopeFactory, EnvelopeProtocol

    connection, theirs, reactor = pair()
    factory = EnvelopeFactory(None, 1024)
    factory.protocol = EnvelopeProtocol
    proto = factory.buildProtocol(None)
    proto.makeConnection(connection)
    proto.sendEncoded(b"hello")
    assert theirs.recv(100) == b"\x00\x00\x00\x05hello" and reactor.writers == set()


def test_the_framing_protocol_asks_a_tls_wrapper_under_it_for_eager_writes():
    from parkd.wire import EnvelopeFactory, EnvelopeProtocol

    factory = EnvelopeFactory(None, 1024)
    factory.protocol = EnvelopeProtocol
    wrapper = EagerWrites()
    factory.buildProtocol(None).makeConnection(wrapper)
    assert wrapper.eager_writes
