"""The camera's connection to the cluster: send, wait for acks, fail over.

One connection at a time, to any node.  ``Hello`` names the camera, its lot and
its incarnation (the outbox's, CONTRACT §9).  Unacknowledged frames are sent in seq
order, at most ``window`` in flight; an ack deletes the frame from the outbox
and logs ``frame_acked``.  Over TLS the camera says Hello and sends frames
once the handshake is done: the ack timeout counts from there, so a node slow
to answer handshakes (thousands of cameras failing over to it at once) is not
left, and its handshake work wasted, before it could see a frame; a handshake
that does not finish is cut by the TLS layer's deadline; once connected, the camera
keeps a TLS session with each other node, so that its next failover resumes one
(:mod:`parkd.camera.standby`).  A disconnect, an ack that takes longer than
``ack_timeout``, or ``Unavailable`` moves the camera to another node (any
other, at random: a dead node's cameras spread over the rest) after a
jittered exponential backoff; a ``Redirect`` names the node to try next.  The
camera never gives up.

An ``Error`` about a frame drops it from the outbox (the cluster refused it for
good), except ``PERMISSION_DENIED``: an operator disabled the camera, which pauses
it.  The frame stays in the outbox, the camera leaves the connection and tries
again with the same backoff (the node refuses its ``Hello`` while it is
disabled); once enabled, the outbox drains in seq order and exactly once.
"""

from __future__ import annotations

import random

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from zope.interface import implementer

from parkd.camera.standby import STANDBY_SPREAD, StandbySessions
from parkd.config import Address, parse_address
from parkd.events import FRAME_EVENTS, FrameEvents
from parkd.proto import parkd_pb2 as pb
from parkd.wire import CAMERA_SIDE, EnvelopeProtocol

BACKOFF_START = 0.05
BACKOFF_MAX = 5.0


class Backoff:
    """Full-jitter exponential backoff (reset after each success)."""

    def __init__(self, rng: random.Random, start: float = BACKOFF_START, cap: float = BACKOFF_MAX):
        self.rng, self.start, self.cap = rng, start, cap
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.start * 2**self.attempt)
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@implementer(IHandshakeListener)
class CameraConnection(EnvelopeProtocol):
    rules = CAMERA_SIDE
    # Set once the camera decided to leave this connection (it is being aborted).
    # What the node sent before it learns that is still read: acks and refusals
    # of frames are facts and count; Redirect and Unavailable are not acted on
    # again (the first decision stands).
    leaving = False
    greeted = False  # Hello sent: frames may follow

    def __init__(self, client: CameraClient, address: Address):
        self.client = client
        self.address = address  # the node dialed

    def connectionMade(self) -> None:
        self.client.connected(self)

    def handshakeCompleted(self) -> None:
        """TLS: the handshake is done (called by the TLS layer)."""
        self.client.handshake_done(self)

    def dataReceived(self, data: bytes) -> None:
        """Read what arrived, then write what the answers in it let out in one piece (:meth:`cork`).

        A camera with frames in flight sends the next for each ack, so the acks
        of one read (a node answers a batch at once) send their frames in one
        write and one TLS record instead of one each; with 16 cameras of 128
        frames in flight, the load generator spent a third of its CPU writing
        them one by one.
        """
        self.cork()
        try:
            super().dataReceived(data)
        finally:
            self.uncork()

    def envelopeReceived(self, kind, body) -> None:
        getattr(self.client, f"on_{kind}")(self, body)

    def connectionLost(self, reason) -> None:
        super().connectionLost(reason)
        self.client.disconnected(self, reason)


def _resumed(proto) -> bool:
    """Whether ``proto``'s TLS connection resumed a session (False without TLS)."""
    return bool(getattr(proto.transport, "resumed", False))


class _ThisProtocol(Factory):
    """A factory for one connection's protocol (``connectProtocol``'s, without its log line per connection)."""

    noisy = False

    def __init__(self, proto: CameraConnection):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


class CameraClient:
    """Delivers the outbox's frames to the cluster, exactly as acknowledged."""

    log = Logger()

    def __init__(
        self,
        camera_id: int,
        lot: str,
        outbox,
        cluster: tuple[Address, ...],
        reactor,
        ack_timeout: float,
        max_message_bytes: int,
        window: int = 64,
        rng: random.Random | None = None,
        connect=None,
        events: FrameEvents = FRAME_EVENTS,
        trust=None,
        endpoint=None,
        standby_spread: float = STANDBY_SPREAD,
    ):
        """``connect(address, proto)``: open a connection (default: through ``endpoint(address)``, a client
        endpoint to a node, HostnameEndpoint by default, wrapped in TLS when ``trust`` is given).

        ``standby_spread``: with TLS, the first round of standby sessions falls within this many
        seconds of connecting (:class:`~parkd.camera.standby.StandbySessions`); 0: none.
        """
        self.camera_id, self.lot, self.outbox = camera_id, lot, outbox
        self.incarnation: int = outbox.incarnation
        self.cluster = cluster
        self.reactor = reactor
        self.clock = reactor  # EnvelopeProtocol.reject finds its clock on the factory
        self.ack_timeout = ack_timeout
        self.max_message_bytes = max_message_bytes
        self.window = window
        self.rng = rng or random.Random()
        self.backoff = Backoff(self.rng)
        self._connect = connect or self._tcp_connect
        self._endpoint = endpoint or self._hostname_endpoint
        self.trust = trust  # TLS: the camera's certificate; any node-* of its CA may answer
        self._endpoints: dict[Address, object] = {}  # one per node: TLS sessions are resumed per node
        self.next_node = self.rng.randrange(len(cluster))
        self.redirect_to: Address | None = None
        self.proto: CameraConnection | None = None
        self.standby = StandbySessions(self, standby_spread) if trust is not None and standby_spread > 0 else None
        self.in_flight: dict[int, tuple[float, float]] = {}  # seq -> (time sent, captured_at)
        self.last_sent = 0
        self.running = False
        self._reconnect_call = None
        self._timer = None
        self.acked = 0
        self.events = events
        self.paused = False  # refused with PERMISSION_DENIED (disabled) since the last ack

    @property
    def address(self) -> Address | None:
        """The node of the current connection, if any."""
        return self.proto.address if self.proto is not None else None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.running = True
        self.connect()

    def stop(self) -> None:
        self.running = False
        if self.standby is not None:
            self.standby.stop()
        for call in (self._reconnect_call, self._timer):
            if call is not None and call.active():
                call.cancel()
        self._reconnect_call = self._timer = None
        if self.proto is not None:
            self.proto.transport.loseConnection()

    def connect(self) -> None:
        self._reconnect_call = None
        if not self.running or self.proto is not None:
            return
        address = self.redirect_to or self.cluster[self.next_node % len(self.cluster)]
        self.redirect_to = None
        # The next try goes to another node, chosen at random: when a node dies,
        # its cameras spread over the others instead of all landing on its successor.
        self.next_node += 1 + self.rng.randrange(max(1, len(self.cluster) - 1))
        self.log.debug("camera {camera_id} connecting to {address}", camera_id=self.camera_id, address=str(address))
        self.dial(address, CameraConnection(self, address)).addErrback(self._connect_failed, address)

    def dial(self, address: Address, proto):
        """Connect ``proto`` to the node at ``address`` (a Deferred firing with it once connected)."""
        return self._connect(address, proto)

    def _tcp_connect(self, address: Address, proto: CameraConnection):
        return self.endpoint(address).connect(_ThisProtocol(proto))

    def endpoint(self, address: Address):
        """The client endpoint to a node (over TLS: it keeps the camera's session with that node)."""
        endpoint = self._endpoints.get(address)
        if endpoint is None:
            endpoint = self._endpoint(address)
            if self.trust is not None:
                endpoint = self.trust.client_endpoint(endpoint, f"node at {address}", expect="node")
            self._endpoints[address] = endpoint
        return endpoint

    def _hostname_endpoint(self, address: Address):
        return HostnameEndpoint(self.reactor, address.host, address.port, timeout=max(1, int(self.ack_timeout)))

    def _connect_failed(self, failure, address) -> None:
        self.log.info("camera {camera_id}: cannot reach {address}: {error}",
                      camera_id=self.camera_id, address=str(address), error=failure.getErrorMessage())
        self._retry_later()

    def _retry_later(self, delay: float | None = None) -> None:
        if self.running and self._reconnect_call is None:
            self._reconnect_call = self.reactor.callLater(
                self.backoff.next() if delay is None else delay, self.connect
            )

    def connected(self, proto: CameraConnection) -> None:
        proto.MAX_LENGTH = self.max_message_bytes
        proto.factory = self
        self.proto = proto
        self.in_flight.clear()
        self.last_sent = 0
        peer = proto.transport.getPeer()
        self.log.info("camera {camera_id} connected to {host}:{port}",
                      camera_id=self.camera_id, host=peer.host, port=peer.port)
        if self.trust is None:
            self._greet(proto)

    def handshake_done(self, proto: CameraConnection) -> None:
        if proto is self.proto and not proto.leaving:
            self.log.info("camera {camera_id}: TLS with {address}: {how}", camera_id=self.camera_id,
                          address=str(proto.address), how="session resumed" if _resumed(proto) else "full handshake")
            self._greet(proto)
            if self.standby is not None:
                self.standby.connected()

    def _greet(self, proto: CameraConnection) -> None:
        proto.greeted = True
        hello = pb.Hello(camera_id=self.camera_id, lot=self.lot, incarnation=self.incarnation)
        proto.sendEnvelope(pb.Envelope(hello=hello))
        self.pump()

    def disconnected(self, proto: CameraConnection, reason) -> None:
        if proto is not self.proto:
            return
        self.proto = None
        self.in_flight.clear()
        if self.running:
            self.log.info("camera {camera_id} lost its node: {reason}",
                          camera_id=self.camera_id, reason=reason.getErrorMessage())
            self._retry_later(0 if self.redirect_to is not None else None)

    def _drop_connection(self, why: str) -> None:
        if self.proto is not None and not self.proto.leaving:
            self.proto.leaving = True
            self.log.info("camera {camera_id} leaving node: {why}", camera_id=self.camera_id, why=why)
            self.proto.transport.abortConnection()

    # ------------------------------------------------------------ sending

    def frame_added(self) -> None:
        """Called when the capture loop stored a new frame."""
        self.pump()

    def pump(self) -> None:
        """Send unacknowledged frames in seq order, up to the window."""
        if self.proto is None or self.proto.leaving or not self.proto.greeted:
            return
        room = self.window - len(self.in_flight)
        if room <= 0:
            return
        now = self.reactor.seconds()
        for frame in self.outbox.pending(after=self.last_sent, limit=room):
            self.proto.sendEnvelope(
                pb.Envelope(
                    submit_frame=pb.SubmitFrame(
                        camera_id=self.camera_id,
                        lot=self.lot,
                        seq=frame.seq,
                        captured_at=frame.captured_at,
                        payload=frame.payload,
                    )
                )
            )
            self.in_flight[frame.seq] = (now, frame.captured_at)
            self.last_sent = frame.seq
        self._watch_acks()

    def _watch_acks(self) -> None:
        """Check the ack timeout every quarter of it while frames are in flight, and only then.

        A frame is found late at most ``1.25 × ack_timeout`` after it was sent.  A
        camera with nothing in flight runs no timer: the load generator plays
        10,000 cameras in one process, whose timers running four times a second
        each (8,000 a second) kept its reactor from reading the acks it times.
        """
        if self._timer is None and self.in_flight and self.running:
            self._timer = self.reactor.callLater(self.ack_timeout / 4, self._check_timeouts)

    def _check_timeouts(self) -> None:
        self._timer = None
        if self.in_flight and self.reactor.seconds() - min(self.in_flight.values())[0] > self.ack_timeout:
            self._drop_connection(f"no ack within {self.ack_timeout:g}s")
        self._watch_acks()

    # ------------------------------------------------------------ answers

    def on_frame_ack(self, proto, ack) -> None:
        sent_at, captured_at = self.in_flight.pop(ack.seq, (None, None))
        if self.outbox.ack(ack.seq):
            self.acked += 1
            self.events.emit(
                "parkd.camera", "camera {camera_id} frame {seq} acked: index {index}, {free} free",
                parkd_event="frame_acked",
                camera_id=self.camera_id,
                incarnation=self.incarnation,
                seq=ack.seq,
                index=ack.index,
                free=ack.free,
                captured_at=captured_at,
                latency_ms=None if sent_at is None else round((self.reactor.seconds() - sent_at) * 1000, 3),
            )
        if self.paused:
            self.paused = False
            self.log.info("camera {camera_id} is enabled again: sending its {pending} waiting frames",
                          camera_id=self.camera_id, pending=len(self.outbox.pending()))  # fmt: skip
        self.backoff.reset()
        self.pump()

    def on_redirect(self, proto, redirect) -> None:
        if proto.leaving:
            return
        try:
            self.redirect_to = parse_address(redirect.address, "redirect")
        except Exception:
            self.redirect_to = None
        self._drop_connection(f"redirected to node {redirect.leader_id} at {redirect.address}")

    def on_unavailable(self, proto, unavailable) -> None:
        # A node without a leader answers every frame in flight with Unavailable,
        # often all in one read: that is one failed attempt, not one per frame
        # (each used to take another backoff step, to the 5 s cap at once).
        if proto.leaving:
            return
        delay = max(unavailable.retry_after_ms / 1000.0, self.backoff.next())
        self._drop_connection(f"node unavailable ({unavailable.reason}); retrying in {delay:.2f}s")
        if self._reconnect_call is None and self.running:
            self._reconnect_call = self.reactor.callLater(delay, self.connect)

    def on_error(self, proto, error) -> None:
        code = pb.Error.Code.Name(error.code)
        if error.code == pb.Error.PERMISSION_DENIED:
            self._paused(proto, error)
        elif error.seq and self.outbox.discard(error.seq):
            self.in_flight.pop(error.seq, None)
            self.log.error(
                "camera {camera_id}: frame {seq} refused ({code}: {message}); dropped",
                camera_id=self.camera_id, seq=error.seq, code=code, message=error.message,
            )
            self.pump()
        else:
            self.log.error("camera {camera_id}: node error {code}: {message}",
                           camera_id=self.camera_id, code=code, message=error.message)

    def _paused(self, proto, error) -> None:
        """Disabled by an operator: keep every frame, leave, and retry with backoff."""
        if proto.leaving:
            return
        if not self.paused:
            self.paused = True
            self.log.warn(
                "camera {camera_id} is refused by the cluster ({message}); keeping its frames and retrying",
                camera_id=self.camera_id, message=error.message,
            )  # fmt: skip
        self._drop_connection("refused (PERMISSION_DENIED)")
