"""Standby TLS sessions: a camera keeps a session with each node it is not on, so a failover resumes.

When a node dies, its cameras reconnect to the others at once, each with a
full TLS handshake unless it has a session with its new node: in ``make
bench``'s reconnect storm (10,000 cameras, kill -9 of the leader) some 3,300
of them, on two survivors and the cameras' side, on two shared cores.  A
resumed TLS 1.3 handshake costs a node about half of a full one and checks
no certificate chain on either side (:mod:`parkd.trust.tls`).  So a camera,
once connected, dials every other node in the background, one at a time,
only for a handshake and its session tickets (no ``Hello``: the node counts
no camera and logs nothing), and keeps each session for its next connection
to that node (the client endpoint's session slot).  The first round starts
at a random moment within ``spread`` seconds of connecting, so a fleet that
starts together does not triple its own handshake storm; the next ones come
every ``refresh`` seconds, inside the nodes' session lifetime.  On a 3-node
cluster that is two extra full handshakes per camera every 45 minutes.

A session made before a node reloads its certificates is not resumed there
(the node's new context does not know it), so a revoked camera cannot come
back on an old ticket; the camera then makes a full handshake, as without
standby sessions.
"""

from __future__ import annotations

from collections import Counter

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from zope.interface import implementer

STANDBY_SPREAD = 600.0  # seconds: the first round falls at random within this after connecting
STANDBY_REFRESH = 2700.0  # seconds between rounds (a node honours a session for SESSION_LIFETIME, 3600 s)


@implementer(IHandshakeListener)
class SessionWarmer(Protocol):
    """A connection only for a TLS session: closed once the handshake is done and the tickets are in."""

    TICKETS = 0.5  # seconds to wait for the session tickets after the handshake

    def __init__(self, clock):
        self.clock = clock
        self.ended = Deferred()
        self._handshaken = False

    def handshakeCompleted(self):
        self._handshaken = True
        self.clock.callLater(self.TICKETS, self.transport.loseConnection)

    def connectionLost(self, reason):
        self.ended.callback("resumed" if self._handshaken and self.transport.resumed else
                            "warmed" if self._handshaken else "failed")  # fmt: skip


class StandbySessions:
    """One camera's standby sessions: rounds of background dials to the nodes it is not connected to.

    ``client``: the :class:`~parkd.camera.client.CameraClient` (its ``reactor``,
    ``rng``, ``cluster``, ``running``, ``address`` of the current connection,
    and ``dial(address, protocol)``).  ``dials``: made so far; ``counts``: how
    those of the latest round ended ("warmed", "resumed", "failed").
    """

    def __init__(self, client, spread: float = STANDBY_SPREAD, refresh: float = STANDBY_REFRESH):
        self.client = client
        self.spread, self.refresh = spread, refresh
        self.counts: Counter = Counter()
        self.dials = 0
        self.rounds = 0
        self._call = None
        self._dialing = False

    def connected(self) -> None:
        """The camera's connection is up: plan the first round, unless one is planned or under way."""
        if self._call is None and not self._dialing:
            self._call = self.client.reactor.callLater(self.client.rng.uniform(0, self.spread), self._round)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _round(self) -> None:
        self._call = None
        if not self.client.running:
            return
        self._dialing = True
        self.counts = Counter()
        self._next([a for a in self.client.cluster if a != self.client.address])

    def _next(self, addresses: list) -> None:
        if not self.client.running:
            self._dialing = False
            return
        if not addresses:
            self._dialing = False
            self.rounds += 1
            self.client.log.info("camera {camera_id}: standby TLS sessions with the other nodes: {counts}",
                                 camera_id=self.client.camera_id, counts=dict(self.counts))
            self._call = self.client.reactor.callLater(self.refresh * self.client.rng.uniform(0.9, 1.0), self._round)
            return
        warmer = SessionWarmer(self.client.reactor)
        self.dials += 1
        dialed = self.client.dial(addresses.pop(0), warmer)
        dialed.addCallback(lambda _: warmer.ended).addErrback(lambda _: "failed")  # refused, or timed out
        dialed.addCallback(lambda how: self.counts.update([how]))
        dialed.addBoth(lambda _: self._next(addresses))
