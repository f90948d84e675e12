"""TLS for Twisted from one party's trust files, with reload (CONTRACT §9).

:class:`Trust` holds the checked material (:mod:`parkd.trust.material`) and
builds from it, lazily, one OpenSSL context per role:

- ``required``: a server that demands a client certificate (raft and client ports);
- ``optional``: a server where a client certificate may be absent but is verified if
  sent (HTTPS: public reads, operator-only admin);
- ``client``: presents our certificate and verifies the server's.

Every context: TLS 1.2 at least (1.3 preferred), ECDHE with AES-GCM or
ChaCha20 for 1.2, peers verified against the CA file only, the CRL checked
when one is configured (``X509StoreFlags.CRL_CHECK``), certificate purposes
enforced by OpenSSL (a camera's clientAuth-only certificate cannot serve),
and on servers session resumption (a session cache for TLS 1.2, tickets for
1.3; ``resume=False`` turns both off).  A reload builds new contexts: the
connections already open keep theirs, new ones use the new files, and sessions
made before the reload are not resumed (so a newly revoked certificate cannot
sneak back in on an old ticket).  Call ``reload`` from the reactor thread
(a SIGHUP handler: ``reactor.callFromThread(trust.reload)``).

Cost, measured on 2 shared cores (EC P-256, TLS 1.3, one Twisted server
process): a full mutual handshake takes about 2.4 ms of server CPU (about
400 per CPU-second), a resumed one about 1.3 ms (about 750); issuing tickets
adds about 0.1-0.2 ms to a full handshake (``benchmarks/handshakes.py``).
Resumption helps a client that reconnects to a node it had a session with;
cameras keep one with every node for that (:mod:`parkd.camera.standby`).

Memory: an open connection holds about 71 KB in OpenSSL (OpenSSL 4, TLS 1.3,
X25519MLKEM768, the peer's certificate kept), 44 KB with
``SSL_MODE_RELEASE_BUFFERS``, which every context sets: the record buffers
are freed while a connection is idle (a camera sends a frame every few
seconds), which matters with thousands of cameras per node.
"""

from __future__ import annotations

import ssl

from OpenSSL import SSL, crypto
from twisted.logger import Logger

from parkd.ratelimit import RateLimitedLog
from parkd.trust.gate import HandshakeGate
from parkd.trust.guard import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    Admission,
    GuardedTLSFactory,
    SessionSlot,
    TLSClientEndpoint,
    info_callback,
    verify_callback,
)
from parkd.trust.identity import Identity
from parkd.trust.material import Material, TrustError, TrustFiles, load_material

ROLES = ("required", "optional", "client")
SESSION_LIFETIME = 3600  # seconds a server honours a session or ticket
_CIPHERS_TLS12 = b"ECDHE+AESGCM:ECDHE+CHACHA20"
REFUSALS_SUMMARY = "{count} more failed TLS handshakes in the last {window} s"


class Dialer:
    """The client side of TLS (links to nodes): what :class:`Trust` and a fleet's cameras (:mod:`.fleet`) share.

    A subclass gives ``refusals``, ``_resume``, ``_handshake_timeout``, ``_clock``
    and ``_client_context()``; ``_credentials`` is the (certificate, key) each
    connection presents when the context has none, ``_gate`` the
    :class:`~parkd.trust.gate.HandshakeGate` many clients in one process share.
    """

    _credentials: tuple | None = None
    _gate: HandshakeGate | None = None

    def client(
        self, factory, name: str, expect: Identity | str, session: SessionSlot | None = None
    ) -> GuardedTLSFactory:
        """Wrap a connecting factory; the server must be ``expect`` (an Identity, or a kind: "node").

        ``session``: where to keep the TLS session for resumption (one slot per destination).
        """
        return GuardedTLSFactory(self._client_context, True, factory, Admission.of(expect), self.refusals, name,
                                 self._handshake_timeout, session=session, clock=self._clock,
                                 credentials=self._credentials, gate=self._gate)  # fmt: skip

    def client_endpoint(self, endpoint, name: str, expect: Identity | str) -> TLSClientEndpoint:
        """A client endpoint speaking TLS over ``endpoint`` (e.g. ``clientFromString``), resuming sessions."""
        slot = SessionSlot() if self._resume else None
        return TLSClientEndpoint(endpoint, lambda factory: self.client(factory, name, expect, slot))

    def _client_context(self) -> SSL.Context:
        raise NotImplementedError


class Trust(Dialer):
    """One party's certificates, and the TLS factories of its ports and links."""

    log = Logger()

    def __init__(
        self,
        files: TrustFiles,
        expect: Identity | None = None,
        resume: bool = True,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        clock=None,
        refusals: RateLimitedLog | None = None,
    ):
        """Read ``files`` now (TrustError if unusable; ``expect``: the identity they must name).

        ``refusals``: where failed handshakes are logged (default: 10 lines per 10 s, then a summary).
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.files = files
        self._expect = expect
        self._resume = resume
        self._handshake_timeout = handshake_timeout
        self._clock = clock
        self._material = load_material(files, expect)
        self._contexts: dict[str, SSL.Context] = {}
        self.refusals = refusals or RateLimitedLog(self.log, REFUSALS_SUMMARY, clock=clock)

    @property
    def identity(self) -> Identity:
        """Who our own certificate says we are."""
        return self._material.identity

    @property
    def material(self) -> Material:
        return self._material

    def reload(self) -> bool:
        """Re-read every file (on SIGHUP); True if the new files are in use.

        A file that cannot be used (missing, unreadable, not matching the
        others, expired) leaves everything as it was and logs one line saying so.
        """
        try:
            material = load_material(self.files, self._expect)
            contexts = {role: _context(material, role, self._resume) for role in self._contexts}
        except (TrustError, SSL.Error) as e:
            self.log.error("TLS reload failed, still using the previous files: {error}", error=str(e))
            return False
        self._material, self._contexts = material, contexts
        cert = material.cert
        self.log.info("TLS reloaded: {identity}, certificate serial {serial:x} valid until {until}{crl}",
                      identity=str(material.identity), serial=cert.serial_number,
                      until=f"{cert.not_valid_after_utc:%Y-%m-%d}",
                      crl=f", {len(material.crl)} revoked" if material.crl is not None else "")  # fmt: skip
        return True

    def context(self, role: str) -> SSL.Context:
        """The current OpenSSL context for ``role`` (see the module docstring)."""
        context = self._contexts.get(role)
        if context is None:
            if role not in ROLES:
                raise ValueError(f"unknown TLS role {role!r}")
            context = self._contexts[role] = _context(self._material, role, self._resume)
        return context

    # ------------------------------------------------------------ factories

    def server(self, factory, name: str, clients: str = "required", allow=None) -> GuardedTLSFactory:
        """Wrap a listening factory: ``clients`` is "required" (mutual TLS) or "optional" (HTTPS).

        ``allow``: the identity kinds admitted (e.g. ``("node",)`` on the raft
        port), default any identity from the CA.  Its handshakes take turns
        through a :class:`~parkd.trust.gate.HandshakeGate` of their own.
        """
        if clients not in ("required", "optional"):
            raise ValueError(f"clients must be 'required' or 'optional', not {clients!r}")
        admission = Admission() if allow is None else Admission.kinds_of(allow)
        return GuardedTLSFactory(lambda: self.context(clients), False, factory, admission, self.refusals, name,
                                 self._handshake_timeout, clock=self._clock,
                                 gate=HandshakeGate(self._clock))  # fmt: skip

    def _client_context(self) -> SSL.Context:
        return self.context("client")


def _context(material: Material, role: str, resume: bool) -> SSL.Context:
    context = authority_context(material.cas, material.crl, role, resume)
    context.use_certificate(material.cert)
    context.use_privatekey(material.key)
    context.check_privatekey()
    return context


def authority_context(cas, crl, role: str, resume: bool = True) -> SSL.Context:
    """A context for ``role`` that trusts ``cas`` (and checks ``crl``), with no certificate of its own yet."""
    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    context.set_cipher_list(_CIPHERS_TLS12)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)  # an idle connection keeps no 16 KB record buffers (see above)
    store = context.get_cert_store()
    for ca in cas:
        store.add_cert(crypto.X509.from_cryptography(ca))
    if crl is not None:
        store.add_crl(crl)
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)
    mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if role == "required" else 0)
    context.set_verify(mode, verify_callback)
    context.set_verify_depth(4)
    context.set_info_callback(info_callback)
    if role == "client":
        return context
    for ca in cas:
        context.add_client_ca(ca)  # tells clients (curl, browsers) which certificate to send
    if resume:
        context.set_session_id(f"parkd-{role}".encode())
        context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        context.set_timeout(SESSION_LIFETIME)
    else:
        context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        context.set_options(SSL.OP_NO_TICKET)
    return context


def https_client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A standard-library context for parkctl's HTTPS requests: the CA's server, host name checked.

    ``cert``/``key``: the operator's certificate for admin requests (optional
    for public reads).  TrustError naming the file if one is unusable.
    """
    if (cert is None) != (key is None):
        raise TrustError("give both a certificate and its key, or neither")
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError:
        raise TrustError(f"{ca}: not PEM CA certificates") from None
    except OSError as e:
        raise TrustError(f"{ca}: {e.strerror}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError:  # (a subclass of OSError)
            raise TrustError(f"{cert}, {key}: not a PEM certificate and its key") from None
        except OSError as e:
            raise TrustError(f"{e.filename or cert}: {e.strerror}") from None
    return context
