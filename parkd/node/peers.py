"""Outgoing Raft connections: one per peer, reconnecting with backoff.

Raft messages are one-way and the core re-sends what is lost, so a message for
a peer that is down, or whose socket buffer is full (a slow peer), is dropped
rather than queued: one bad peer never holds up the others or grows memory.

Frame results forwarded to the leader (``Propose``) are the exception: nothing
proposes them again while the leader stays the same (the node's FrameIntake
does on a leader change), so a camera would wait out its ack timeout while its
later frames, forwarded once the link is up, overtook them.  They are held
(bounded) while the link to their leader is down or full, and sent in order
once it can take them; a Propose for another node means the leader changed,
and the held ones are dropped.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from twisted.application import service
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from parkd.config import Member
from parkd.proto import parkd_pb2 as pb
from parkd.raft.messages import Message, Propose
from parkd.trust import Identity, Trust
from parkd.wire import RAFT_PORT, EnvelopeFactory, EnvelopeProtocol, raft_to_envelope

HELD_PROPOSALS_LIMIT = 10_000  # frame results kept for a leader this node cannot reach yet


def _small_jitter() -> float:
    return random.uniform(0, 0.05)


@implementer(IPushProducer)
class PeerConnection(EnvelopeProtocol):
    """Our side of a connection to a peer's raft port (we only write)."""

    rules = RAFT_PORT
    writable = False

    def connectionMade(self) -> None:
        hello = getattr(self.factory, "hello", None)
        if hello is not None:  # before any raft message (parkd/node/cluster_identity.py)
            self.sendEnvelope(pb.Envelope(peer_hello=hello()))
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
        self.factory.link.writable_again(self)

    def stopProducing(self) -> None:
        self.writable = False

    def release(self) -> None:
        """Before this end closes the connection: a TLS transport waits for its
        producer to leave before it shuts TLS down, so leave now."""
        self.writable = False
        if self.transport is not None:
            self.transport.unregisterProducer()


class PeerLink:
    """Everything about one peer: its address and the current connection."""

    log = Logger()

    def __init__(self, member: Member, on_lost: Callable[[PeerLink], None] | None = None):
        self.member = member
        self.on_lost = on_lost
        self.proto: PeerConnection | None = None
        self.sent = 0
        self.dropped = 0
        self.held: list[Propose] = []  # forwarded frame results waiting for the link
        self._held_count = 0

    def connected(self, proto: PeerConnection) -> None:
        self.proto = proto
        self.log.info("connected to peer {peer_id} at {address}", peer_id=self.member.id, address=str(self.member.raft))
        self._send_held()

    def writable_again(self, proto: PeerConnection) -> None:
        if self.proto is proto:
            self._send_held()

    def disconnected(self, proto: PeerConnection) -> None:
        if self.proto is proto:
            self.proto = None
            if self.on_lost is not None:
                self.on_lost(self)

    def send(self, data: bytes) -> None:
        proto = self.proto
        if proto is None or not proto.writable:
            self.dropped += 1
            return
        proto.sendEncoded(data)
        self.sent += 1

    def forward(self, message: Propose) -> None:
        """Send ``message`` now if the link takes it, else hold it (the oldest go past the limit)."""
        if not self.held and self.proto is not None and self.proto.writable:
            self.send(raft_to_envelope(message).SerializeToString())
            return
        self.held.append(message)
        self._held_count += len(message.data)
        while self._held_count > HELD_PROPOSALS_LIMIT and len(self.held) > 1:
            self._held_count -= len(self.held.pop(0).data)  # their cameras time out and re-send

    def drop_held(self) -> None:
        self.held, self._held_count = [], 0

    def _send_held(self) -> None:
        while self.held and self.proto is not None and self.proto.writable:
            message = self.held.pop(0)
            self._held_count -= len(message.data)
            self.send(raft_to_envelope(message).SerializeToString())


class PeerService(service.MultiService):
    """A ``ClientService`` per peer, and :meth:`send` to route core messages.

    The set of peers changes at runtime (membership changes): :meth:`set_peers`
    connects to new members and drops the links of members that left.  A
    message for a node without a link is dropped, but if ``resolve`` knows the
    node's addresses a link is made for the next message (the core re-sends):
    that is how a joining node, which has no configuration yet, answers the
    leader that added it.
    """

    log = Logger()

    def __init__(
        self,
        node_id: int,
        members: tuple[Member, ...],
        reactor,
        max_message_bytes: int,
        resolve: Callable[[int], Member | None] | None = None,
        on_lost: Callable[[int], None] | None = None,
        trust: Trust | None = None,
        hello: Callable[[], pb.PeerHello] | None = None,
    ):
        super().__init__()
        self.hello = hello  # the PeerHello each connection opens with (None: none is sent)
        self.node_id = node_id
        self.reactor = reactor
        self.max_message_bytes = max_message_bytes
        self.resolve = resolve
        self.trust = trust  # TLS: each link must reach the node it names (mutual, CONTRACT §9)
        self.links: dict[int, PeerLink] = {}
        self._clients: dict[int, ClientService] = {}
        self.unroutable = 0  # messages for nodes whose address nobody knows
        # Called with a peer's id when an established connection to it breaks
        # (the driver tells the core: a killed leader is noticed at once).
        self.on_lost = on_lost
        self.set_peers(members)

    # -- membership

    def set_peers(self, members) -> None:
        """Keep exactly one link per member of ``members`` (other than this node)."""
        wanted = {m.id: m for m in members if m.id != self.node_id}
        for peer_id in [p for p in self.links if p not in wanted]:
            self.remove_peer(peer_id)
        for member in wanted.values():
            self.add_peer(member)

    def add_peer(self, member: Member) -> PeerLink:
        """Connect to ``member`` (a no-op if connected to the same addresses)."""
        link = self.links.get(member.id)
        if link is not None:
            if link.member == member:
                return link
            self.remove_peer(member.id)  # it moved: reconnect to its new raft address
        link = PeerLink(member, self._lost)
        factory = EnvelopeFactory(self.reactor, self.max_message_bytes)
        factory.protocol = PeerConnection
        factory.link = link
        factory.hello = self.hello
        endpoint = HostnameEndpoint(self.reactor, member.raft.host, member.raft.port, timeout=2)
        if self.trust is not None:
            endpoint = self.trust.client_endpoint(endpoint, f"peer {member.id}", expect=Identity("node", member.id))
        client = ClientService(
            endpoint,
            factory,
            # Twisted's default jitter adds up to a whole second to every retry: a
            # restarted peer then stayed unreachable from here for up to 2 s, long
            # enough for a handover to it to end in an election.
            retryPolicy=backoffPolicy(initialDelay=0.05, maxDelay=0.5, factor=2.0, jitter=_small_jitter),
            clock=self.reactor,
        )
        client.setName(f"peer-{member.id}")
        self.links[member.id] = link
        self._clients[member.id] = client
        client.setServiceParent(self)  # starts it if we are running
        return link

    def remove_peer(self, peer_id: int):
        """Close the link to ``peer_id``; a Deferred that fires once it is closed."""
        link = self.links.pop(peer_id, None)
        client = self._clients.pop(peer_id, None)
        if client is None:
            return defer.succeed(None)
        self.log.info("closing the connection to peer {peer_id}", peer_id=peer_id)
        if link is not None and link.proto is not None:
            link.proto.release()
        return defer.maybeDeferred(client.disownServiceParent)

    def stopService(self):
        for link in self.links.values():
            if link.proto is not None:
                link.proto.release()
        return super().stopService()

    def _lost(self, link: PeerLink) -> None:
        peer_id = link.member.id
        if self.links.get(peer_id) is link and self.on_lost is not None:  # not a link we closed ourselves
            self.on_lost(peer_id)

    def connected(self, peer_id: int) -> bool:
        link = self.links.get(peer_id)
        return link is not None and link.proto is not None

    # -- messages

    def send(self, message: Message) -> None:
        link = self.links.get(message.dst)
        if link is None:
            member = self.resolve(message.dst) if self.resolve is not None else None
            if member is None:
                self.unroutable += 1
                return
            link = self.add_peer(member)
        if type(message) is Propose:
            for other in self.links.values():
                if other is not link and other.held:
                    other.drop_held()  # for an old leader: the intake proposes them again
            link.forward(message)
        else:
            link.send(raft_to_envelope(message).SerializeToString())
