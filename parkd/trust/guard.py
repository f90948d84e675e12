"""Guarded TLS connections: who may connect, handshake deadline, one log line per failure.

:class:`GuardedTLSFactory` is a ``TLSMemoryBIOFactory`` (so a listener keeps
its endpoint string: ``serverFromString(...).listen(guarded)``) whose
connections

- admit only the identities their :class:`Admission` allows: a node dialing
  node 3 requires ``node-3``, the raft port only ``node-*``; the check runs in
  the certificate verification, so a refused peer gets a TLS alert (the
  "internal error" alert: pyOpenSSL offers no way to choose another; the
  refusing side's log line says what was wrong);
- are cut when the handshake has not finished within ``handshake_timeout``
  seconds (a silent or slow client, "slowloris"), by a timer on the reactor:
  nothing blocks;
- log each failed handshake as one line through a shared
  :class:`~parkd.trust.ratelimit.RateLimitedLog` (so a flood is summed up),
  with the best reason known: the certificate check's verdict ("certificate
  has expired (CN=camera-9)"), the TLS alert sent or received, "no client
  certificate", "not TLS", or the deadline;
- remember the peer's :class:`~parkd.trust.identity.Identity` once the
  handshake is done (``protocol.peer_identity``);
- take turns through a :class:`~parkd.trust.gate.HandshakeGate`, if the
  factory has one (why and how: :mod:`parkd.trust.gate`): a handshake step
  the gate does not admit waits, unread, for a later reactor turn;
- on the client side, keep the last TLS session in a :class:`SessionSlot` to
  offer it on the next connection (resumption), as long as it came from the
  current context.

The application's protocol sees ``connectionMade`` before the handshake (that
is how ``TLSMemoryBIOProtocol`` works; its writes wait for the handshake) and
``dataReceived`` only after it: ask for the peer's identity when data arrives,
or in ``handshakeCompleted()`` (``IHandshakeListener``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

from parkd.ratelimit import RateLimitedLog
from parkd.sockets import EagerWrites, send_eagerly
from parkd.trust.gate import HandshakeGate
from parkd.trust.identity import KINDS, Identity, identity_of_certificate

DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds

log = Logger()

# OpenSSL's X509_V_ERR_* codes a peer's certificate most often fails with.
_X509_ERRORS = {
    2: "unable to get issuer certificate", 3: "unable to get certificate CRL", 7: "certificate signature failure",
    8: "CRL signature failure", 9: "certificate is not yet valid", 10: "certificate has expired",
    11: "CRL is not yet valid", 12: "CRL has expired", 18: "self-signed certificate",
    19: "self-signed certificate in certificate chain", 20: "unable to get local issuer certificate (another CA?)",
    21: "unable to verify the first certificate", 22: "certificate chain too long", 23: "certificate revoked",
    24: "invalid CA certificate", 25: "path length constraint exceeded", 26: "unsupported certificate purpose",
}  # fmt: skip
# TLS alert descriptions (RFC 8446 §6).
_ALERTS = {
    10: "unexpected message", 20: "bad record mac", 22: "record overflow", 40: "handshake failure",
    42: "bad certificate", 43: "unsupported certificate", 44: "certificate revoked", 45: "certificate expired",
    46: "certificate unknown", 47: "illegal parameter", 48: "unknown CA", 49: "access denied", 50: "decode error",
    51: "decrypt error", 70: "protocol version", 71: "insufficient security", 80: "internal error",
    86: "inappropriate fallback", 90: "user canceled", 109: "missing extension", 110: "unsupported extension",
    112: "unrecognized name", 113: "bad certificate status response", 115: "unknown PSK identity",
    116: "certificate required", 120: "no application protocol",
}  # fmt: skip
_FATAL = 2  # alert level
_INTERESTING = SSL.SSL_CB_HANDSHAKE_DONE | SSL.SSL_CB_ALERT


@dataclass(frozen=True)
class Admission:
    """Which peer identities a connection accepts: any of ``kinds``, or exactly ``exact``."""

    kinds: frozenset[str] = frozenset(KINDS)
    exact: Identity | None = None

    @classmethod
    def of(cls, who: Identity | str | None) -> Admission:
        """``None``: anyone with a certificate from the CA; ``"node"``: any node; ``Identity``: exactly that one."""
        if who is None:
            return cls()
        if isinstance(who, Identity):
            return cls(frozenset([who.kind]), who)
        return cls.kinds_of([who])

    @classmethod
    def kinds_of(cls, kinds) -> Admission:
        kinds = frozenset(kinds)
        if not kinds or not kinds <= set(KINDS):
            raise ValueError(f"bad identity kinds {sorted(kinds)!r} (expected some of {', '.join(KINDS)})")
        return cls(kinds)

    def refuses(self, identity: Identity | None) -> str | None:
        """Why ``identity`` may not connect here, or None if it may."""
        if identity is None:
            return "the certificate names no parkd identity"
        if self.exact is not None:
            return None if identity == self.exact else f"{identity} is not {self.exact}"
        if identity.kind not in self.kinds:
            return f"{identity} may not connect here (only {', '.join(sorted(k + '-*' for k in self.kinds))})"
        return None


# ------------------------------------------------------------------ OpenSSL callbacks (set on every context)


def verify_callback(connection: SSL.Connection, cert, errno: int, depth: int, ok: int) -> bool:
    """Certificate verification: OpenSSL's verdict, then the factory's admission of the identity."""
    protocol = connection.get_app_data()
    try:
        if not ok:
            subject = cert.to_cryptography().subject.rfc4514_string() or "no subject"
            protocol.note_problem(f"{_X509_ERRORS.get(errno, f'X.509 error {errno}')} ({subject})")
            return False
        if depth > 0:
            return True
        identity = identity_of_certificate(cert.to_cryptography())
        refusal = protocol.factory.admission.refuses(identity)
        if refusal is not None:
            protocol.note_problem(refusal)
            return False
        protocol.note_verified(identity)
        return True
    except Exception:  # never let an exception escape into OpenSSL: refuse and say why
        log.failure("certificate verification failed")
        return False


def info_callback(connection: SSL.Connection, where: int, value: int) -> None:
    """Handshake progress: note when it is done, and any fatal alert sent or received."""
    if not where & _INTERESTING:  # most calls: a step of the handshake state machine
        return
    try:
        protocol = connection.get_app_data()
        if not isinstance(protocol, GuardedTLSProtocol):
            return
        if where & SSL.SSL_CB_HANDSHAKE_DONE:
            protocol.handshake_done()
        elif value >> 8 == _FATAL:
            name = _ALERTS.get(value & 0xFF, f"alert {value & 0xFF}")
            if not where & SSL.SSL_CB_WRITE:
                protocol.note_problem(f"refused by the peer (alert: {name})")
            elif value & 0xFF == 116:
                protocol.note_problem("no client certificate")
            else:
                protocol.note_problem(f"sent alert: {name}")
    except Exception:
        log.failure("TLS info callback failed")


# ------------------------------------------------------------------ protocol and factory


class GuardedTLSProtocol(EagerWrites, TLSMemoryBIOProtocol):
    """One TLS connection with a handshake deadline, a failure reason and the peer's identity.

    Each write goes out at once as a TLS record, not held for the next reactor
    turn as Twisted's default (``BufferingTLSTransport``) does.  Two TLS
    clusters side by side on 2 shared cores, 3 rounds of two runs each
    (medians of the rounds): low-load ack latency p50 11.1 -> 8.4 ms with the
    camera on the leader, 13.0 -> 9.0 ms on a follower; durable throughput
    3,740 -> 5,020 frames/s (noisy, but no worse).  Once the protocol above
    asks for it (``eager_writes``, :mod:`parkd.sockets`), a record is also
    ``send`` at once when the TCP connection has nothing queued.
    """

    factory: GuardedTLSFactory
    # Class defaults: ProtocolWrapper hands unknown attributes to the transport.
    _deadline = None
    _handshaken = False
    _got_bytes = False
    _problem: str | None = None
    _identity: Identity | None = None
    _verified = False
    _waiting: list[bytes] | None = None  # bytes read while waiting for the gate
    _stepped = False  # a handshake step ran (the next one continues it)
    closed = False

    def makeConnection(self, transport):
        self._deadline = self.factory.clock.callLater(self.factory.handshake_timeout, self._too_slow)
        super().makeConnection(transport)

    def _flushSendBIO(self):
        # TLSMemoryBIOProtocol's one write to the TCP connection, made eagerly when asked to.
        if not self.eager_writes:
            return super()._flushSendBIO()
        try:
            data = self._tlsConnection.bio_read(2**15)
        except SSL.WantReadError:
            return  # nothing in the send BIO right now
        send_eagerly(self.transport, data)

    def dataReceived(self, data):
        self._got_bytes = True
        gate = self.factory.gate
        if gate is None or self._handshaken:
            super().dataReceived(data)
        elif self._waiting is not None:
            self._waiting.append(data)
        elif gate.admit(self._stepped):
            self._step(data)
        else:
            self._waiting = [data]
            self.transport.pauseProducing()  # read nothing more until our turn
            gate.wait(self, self._stepped)

    def take_turn(self) -> None:
        """The gate's turn for this handshake: what was read meanwhile, then read again."""
        data, self._waiting = b"".join(self._waiting), None
        self.transport.resumeProducing()
        self._step(data)

    def _step(self, data: bytes) -> None:
        self._stepped = True
        started = time.perf_counter()
        try:
            super().dataReceived(data)
        finally:
            self.factory.gate.ran(time.perf_counter() - started)

    @property
    def handshaken(self) -> bool:
        """Whether the TLS handshake is done (on a client, TLS 1.3: before the server checks our certificate)."""
        return self._handshaken

    @property
    def peer_identity(self) -> Identity | None:
        """The peer's identity, once the handshake is done; None before, or if it sent no certificate."""
        return self._identity

    @property
    def resumed(self) -> bool:
        """Whether the handshake resumed an earlier session (no certificate was checked this time)."""
        return self._handshaken and not self._verified and self._identity is not None

    def note_verified(self, identity: Identity) -> None:
        """The peer's certificate passed verification and admission (not called on resumption)."""
        self._verified = True
        self._identity = identity

    def handshake_done(self) -> None:
        if self._handshaken:
            return
        self._handshaken = True
        self._cancel_deadline()
        if not self._verified:  # resumed, or no certificate sent: ask the session
            cert = self.getHandle().get_peer_certificate(as_cryptography=True)
            self._identity = identity_of_certificate(cert) if cert is not None else None

    def note_problem(self, problem: str) -> None:
        """Remember why this connection fails (the first, most precise reason wins)."""
        if self._problem is None:
            self._problem = problem

    def _too_slow(self) -> None:
        self._deadline = None
        self.note_problem(f"TLS handshake not finished within {self.factory.handshake_timeout:g} s")
        self.abortConnection()

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _tlsShutdownFinished(self, reason):
        # Twisted makes ``reason`` inside an ``except`` block from the OpenSSL
        # error (most often a peer gone without a TLS close: "Unexpected EOF").
        # Its traceback holds the frame that holds it: a reference cycle of some
        # twenty objects per lost connection, left to the garbage collector.  A
        # node whose thousands of cameras drop at once (a switch reboots, the
        # load generator stops) then stopped for 52-384 ms in each of two or
        # three young collections.  The traceback shows only Twisted's and
        # pyOpenSSL's frames; the reason's message stays.
        if reason is not None:
            forget_traceback(reason)
        super()._tlsShutdownFinished(reason)

    def connectionLost(self, reason):
        self.closed = True
        self._cancel_deadline()
        if not self._handshaken and self._problem is None and not self.disconnecting:  # (not closed by us)
            self._problem = "not TLS, or closed during the TLS handshake" if self._got_bytes else (
                "closed before the TLS handshake")
        self.factory.connection_ended(self)
        super().connectionLost(reason)

    def describe_problem(self) -> str | None:
        return self._problem


def forget_traceback(failure: Failure) -> None:
    """Let go of ``failure``'s traceback and its exception's (and with them the frames they hold).

    What ``Failure.cleanFailure`` does, without keeping the frames as text:
    pytest-twisted replaces ``cleanFailure`` with a no-op, and the tests must
    see the same objects freed as the daemon does.
    """
    failure.tb = None
    if failure.value is not None:
        failure.value.__traceback__ = None


def peer_identity(connection) -> Identity | None:
    """Who is on the other end of a guarded TLS connection, once its handshake is done.

    ``connection``: the transport a protocol was given (``self.transport``), an
    HTTP request, or its channel.  None when the peer sent no certificate
    (HTTPS without one), before the handshake, or on a connection without TLS.
    """
    for _ in range(3):  # request -> channel's transport; channel -> transport
        if isinstance(connection, GuardedTLSProtocol):
            return connection.peer_identity
        connection = getattr(connection, "transport", None)
    return None


class GuardedTLSFactory(TLSMemoryBIOFactory):
    """Wraps an application's factory in TLS for one port or one destination (see the module docstring)."""

    protocol = GuardedTLSProtocol

    def __init__(
        self,
        context: Callable[[], SSL.Context],
        is_client: bool,
        wrapped,
        admission: Admission,
        refusals: RateLimitedLog,
        name: str,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        session: SessionSlot | None = None,
        clock=None,
        credentials: tuple | None = None,
        gate: HandshakeGate | None = None,
    ):
        """``context()`` gives the current SSL context (it changes on reload); ``name`` labels log lines.

        ``session`` (clients only): where the last TLS session to this
        destination is kept for resumption; None to resume nothing.
        ``credentials``: the (certificate, key) each connection presents, when
        not the context's (many cameras sharing one context: :mod:`.fleet`).
        ``gate``: the :class:`HandshakeGate` its handshakes take turns through, if any.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        if handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        super().__init__(_Creator(self), is_client, wrapped, clock=clock)
        self.context = context
        self.is_client = is_client
        self.admission = admission
        self.refusals = refusals
        self.name = name
        self.handshake_timeout = handshake_timeout
        self.session = session if is_client else None
        self.clock = clock
        self.credentials = credentials
        self.gate = gate

    def new_connection(self, protocol: GuardedTLSProtocol) -> SSL.Connection:
        context = self.context()
        connection = SSL.Connection(context, None)
        connection.set_app_data(protocol)
        if self.credentials is not None:
            connection.use_certificate(self.credentials[0])
            connection.use_privatekey(self.credentials[1])
        if self.is_client:
            connection.set_connect_state()
            if self.session is not None:
                self.session.offer(connection)
        else:
            connection.set_accept_state()
        return connection

    def connection_ended(self, protocol: GuardedTLSProtocol) -> None:
        problem = protocol.describe_problem()
        if problem is not None:
            peer = protocol.getPeer()
            where = f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}"
            self.refusals.emit("{name}: TLS with {peer} failed: {problem}", name=self.name, peer=where, problem=problem)
        elif self.session is not None and protocol.handshaken:
            self.session.keep(protocol.getHandle())


class SessionSlot:
    """The last TLS session with one destination, offered on the next connection to it (resumption).

    A session is only offered through the context it was made with: after a
    reload (new files, perhaps a new CRL) every connection starts afresh.
    """

    def __init__(self):
        self._session: SSL.Session | None = None
        self._context: SSL.Context | None = None

    def keep(self, connection: SSL.Connection) -> None:
        self._session, self._context = connection.get_session(), connection.get_context()

    def offer(self, connection: SSL.Connection) -> None:
        if self._session is not None and self._context is connection.get_context():
            connection.set_session(self._session)


@implementer(IStreamClientEndpoint)
class TLSClientEndpoint:
    """A client endpoint that speaks TLS over another one (like ``wrapClientTLS``, but guarded).

    ``wrap(factory)`` makes the :class:`GuardedTLSFactory` for each attempt; the
    connection's Deferred fires with the application's protocol.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, wrap: Callable[[object], GuardedTLSFactory]):
        self._endpoint = endpoint
        self._wrap = wrap

    def connect(self, factory):
        return self._endpoint.connect(self._wrap(factory)).addCallback(lambda protocol: protocol.wrappedProtocol)


@implementer(IOpenSSLServerConnectionCreator, IOpenSSLClientConnectionCreator)
class _Creator:
    """What TLSMemoryBIOFactory asks for each new connection's ``SSL.Connection``."""

    def __init__(self, factory: GuardedTLSFactory):
        self._factory = factory

    def serverConnectionForTLS(self, protocol):
        return self._factory.new_connection(protocol)

    def clientConnectionForTLS(self, protocol):
        return self._factory.new_connection(protocol)
