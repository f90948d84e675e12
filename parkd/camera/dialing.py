"""How the load generator's cameras dial: counted connection attempts, and a direct
connect for IP literals.

``gen`` below is the :class:`~parkd.camera.loadgen.LoadGenerator`: its
``connects`` counter and its ``reactor``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory
from zope.interface import implementer


class _OneConnection(ClientFactory):
    """``connectTCP`` for one camera connection, quietly (no "Starting factory" log line)."""

    noisy = False

    def __init__(self, factory, result: Deferred):
        self.factory, self.result = factory, result

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        proto = self.factory.buildProtocol(addr)
        self.result.callback(proto)
        return proto

    def clientConnectionFailed(self, connector, reason):
        self.result.errback(reason)


@implementer(IStreamClientEndpoint)
class DirectEndpoint:
    """What HostnameEndpoint does, minus a name lookup in a thread per connection for an IP literal."""

    def __init__(self, gen, address):
        self.gen, self.address = gen, address

    def connect(self, factory) -> Deferred:
        self.gen.connects += 1
        result = Deferred()
        self.gen.reactor.connectTCP(self.address.host, self.address.port, _OneConnection(factory, result), timeout=5)
        return result


@implementer(IStreamClientEndpoint)
class CountedEndpoint:
    """Another endpoint, counting its connection attempts."""

    def __init__(self, gen, endpoint):
        self.gen, self.endpoint = gen, endpoint

    def connect(self, factory) -> Deferred:
        self.gen.connects += 1
        return self.endpoint.connect(factory)
