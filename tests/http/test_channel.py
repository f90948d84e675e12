"""The HTTP port's channel (parkd/http/channel.py): one write per response, sent at once, on a real socket pair."""

from __future__ import annotations

import socket

from twisted.internet import task, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.web import resource, server

from parkd.http.channel import EagerHTTPChannel
from parkd.http.errors import json_response
from parkd.http.site import ApiSite
from parkd.sockets import EagerWrites

from test_sockets import Reactor  # noqa: E402  (tests/ is on the path: conftest)


class Now(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return json_response(request, {"free": 7})


class Later(resource.Resource):
    """Answers from a Deferred, as a linearizable read does (NOT_DONE_YET, then write and finish)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.waiting = []

    def render_GET(self, request):
        self.waiting.append(request)
        return server.NOT_DONE_YET

    def answer(self):
        request = self.waiting.pop()
        request.write(json_response(request, {"free": 9}))
        request.finish()


class NoContent(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(204)
        return b""


def serve(root, transport):
    site = ApiSite(root, reactor=task.Clock())
    channel = site.buildProtocol(None)
    assert isinstance(channel, EagerHTTPChannel)
    channel.makeConnection(transport)
    return channel


class Connection(tcp.Connection):
    """A TCP connection as a listening port makes it (which knows both ends)."""

    def getPeer(self):
        return IPv4Address("TCP", *self.socket.getpeername())

    def getHost(self):
        return IPv4Address("TCP", *self.socket.getsockname())


def connected(root):
    """The site's channel on one end of a loopback TCP connection: (channel, the other end, the fake reactor)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        theirs = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    theirs.settimeout(1.0)
    reactor = Reactor()
    connection = Connection(ours, Protocol(), reactor)
    connection.connected = 1
    channel = serve(root, connection)
    connection.protocol = channel
    return channel, theirs, reactor


def tree(**children):
    root = resource.Resource()
    for name, child in children.items():
        root.putChild(name.encode(), child)
    return root


def test_a_response_is_sent_at_once_in_one_piece():
    channel, theirs, reactor = connected(tree(now=Now()))
    channel.dataReceived(b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = theirs.recv(65536)  # one send: the head and the body together
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b'\r\n\r\n{"free": 7}\n')
    assert reactor.writers == set()  # nothing left for the next poll


def test_an_answer_written_later_has_a_length_and_leaves_in_one_piece():
    later = Later()
    channel, theirs, reactor = connected(tree(later=later))
    channel.dataReceived(b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n")
    later.answer()
    answer = theirs.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Length: 12" in head.split(b"\r\n") and b"chunked" not in head
    assert body == b'{"free": 9}\n' and reactor.writers == set()


def test_a_head_without_a_body_is_sent_when_the_request_is_done():
    channel, theirs, reactor = connected(tree(now=Now(), empty=NoContent()))
    channel.dataReceived(b"HEAD /now HTTP/1.1\r\nHost: x\r\n\r\n")
    head = theirs.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert b"Content-Length: 12" in head.split(b"\r\n")  # the GET's length, no body
    channel.dataReceived(b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n")
    assert theirs.recv(65536).startswith(b"HTTP/1.1 204 No Content\r\n")


class TLSWrapper(EagerWrites, StringTransport):
    """What the channel sees under HTTPS: a TLS wrapper (counting its writes) that passes TCP_NODELAY on."""

    no_delay = False

    def __init__(self):
        super().__init__()
        self.writes = 0

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled

    def write(self, data):
        self.writes += 1
        super().write(data)


def test_under_tls_the_channel_asks_for_eager_writes_and_writes_each_response_once():
    wrapper = TLSWrapper()
    channel = serve(tree(now=Now()), wrapper)
    assert wrapper.eager_writes and wrapper.no_delay
    channel.dataReceived(b"GET /now HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wrapper.writes == 1 and wrapper.value().endswith(b'\r\n\r\n{"free": 7}\n')
