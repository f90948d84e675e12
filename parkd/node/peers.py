"""Outgoing Raft connections: one per peer, reconnecting with backoff.

Raft messages are one-way and the core re-sends what is lost, so a message for
a peer that is down, or whose socket buffer is full (a slow peer), is dropped
rather than queued: one bad peer never holds up the others or grows memory.
"""

from __future__ import annotations

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from parkd.config import Member
from parkd.raft.messages import Message
from parkd.wire import RAFT_PORT, EnvelopeFactory, EnvelopeProtocol, raft_to_envelope


@implementer(IPushProducer)
class PeerConnection(EnvelopeProtocol):
    """Our side of a connection to a peer's raft port (we only write)."""

    rules = RAFT_PORT
    writable = False

    def connectionMade(self) -> None:
        self.writable = True
        self.transport.registerProducer(self, True)
        self.factory.link.connected(self)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.writable = False
        self.factory.link.disconnected(self)

    def envelopeReceived(self, kind, body) -> None:
        """Peers answer on their own connections; nothing is expected here."""

    # IPushProducer: the transport tells us when its buffer is full.
    def pauseProducing(self) -> None:
        self.writable = False

    def resumeProducing(self) -> None:
        self.writable = True

    def stopProducing(self) -> None:
        self.writable = False


class PeerLink:
    """Everything about one peer: its address and the current connection."""

    log = Logger()

    def __init__(self, member: Member):
        self.member = member
        self.proto: PeerConnection | None = None
        self.sent = 0
        self.dropped = 0

    def connected(self, proto: PeerConnection) -> None:
        self.proto = proto
        self.log.info("connected to peer {peer_id} at {address}", peer_id=self.member.id, address=str(self.member.raft))

    def disconnected(self, proto: PeerConnection) -> None:
        if self.proto is proto:
            self.proto = None

    def send(self, data: bytes) -> None:
        proto = self.proto
        if proto is None or not proto.writable:
            self.dropped += 1
            return
        proto.sendEncoded(data)
        self.sent += 1


class PeerService(service.MultiService):
    """A ``ClientService`` per peer, and :meth:`send` to route core messages."""

    def __init__(self, node_id: int, members: tuple[Member, ...], reactor, max_message_bytes: int):
        super().__init__()
        self.links: dict[int, PeerLink] = {}
        for member in members:
            if member.id == node_id:
                continue
            link = PeerLink(member)
            factory = EnvelopeFactory(reactor, max_message_bytes)
            factory.protocol = PeerConnection
            factory.link = link
            endpoint = HostnameEndpoint(reactor, member.raft.host, member.raft.port, timeout=2)
            ClientService(
                endpoint,
                factory,
                retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=1.0, factor=2.0),
                clock=reactor,
            ).setServiceParent(self)
            self.links[member.id] = link

    def send(self, message: Message) -> None:
        link = self.links.get(message.dst)
        if link is not None:
            link.send(raft_to_envelope(message).SerializeToString())
