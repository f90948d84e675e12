"""Trust: the PKI, TLS for every port and link, and who is on the other end (CONTRACT §9).

Nothing outside this package touches certificates.  The layer's API, for the
node's ports, its HTTP site, the camera and parkctl:

**Identities** (:mod:`.identity`).  ``Identity(kind, id)`` is a frozen
dataclass: ``kind`` is "node", "camera" or "operator"; ``id`` an int (nodes,
cameras) or a name (operators); ``str()`` gives ``node-3``.  A certificate's
subject CN is its identity (parsed strictly: ``camera-007``, ``node-0``,
``camera-1x`` name no one) and its URI SAN ``parkd:node/3`` says the same.

**One Trust per process** (:mod:`.tls`)::

    trust = Trust(TrustFiles(ca, cert, key, crl), expect=Identity("node", 3))   # TrustError: one line
    # or TrustFiles.in_pki("pki", "node-3") for the files `parkctl pki` wrote

    # listeners keep their endpoint strings; wrap the application's factory
    serverFromString(reactor, "tcp:7101:interface=127.0.0.1:backlog=1024").listen(
        trust.server(raft_factory, "raft port", allow=("node",)))          # mutual TLS, nodes only
    serverFromString(reactor, client_endpoint).listen(
        trust.server(client_factory, "client port"))                        # mutual TLS, any identity
    serverFromString(reactor, http_endpoint).listen(
        trust.server(site, "https", clients="optional"))                    # client certificate optional

    # dialing: the server's certificate must name the expected identity
    endpoint = trust.client_endpoint(clientFromString(reactor, "tcp:127.0.0.1:7103"),
                                     "peer 3", expect=Identity("node", 3))  # a camera: expect="node"
    ClientService(endpoint, factory)                                        # resumes TLS sessions

    peer_identity(self.transport)     # in a protocol, once data arrives: Identity or None
    peer_identity(request)            # in a twisted.web resource: None without a client certificate
    trust.reload()                    # on SIGHUP: new connections use the new files, open ones stay;
                                      # a bad file keeps the old ones and logs one line
    trust.refusals                    # the rate-limited log of failed handshakes; .stop() on shutdown
    https_client_context(ca, cert, key)   # a stdlib ssl.SSLContext for parkctl (host name checked)

Every connection's handshake must finish within ``handshake_timeout`` seconds
(default 10) or it is cut; each failed handshake is one log line ("raft port:
TLS with 127.0.0.1:50708 failed: certificate revoked (CN=camera-2)"), and
under a flood a summary line replaces the rest (:mod:`.ratelimit`, reusable
for the ports' own refusals).  Peers are identified when the handshake
completes; the application's protocol gets ``connectionMade`` before that and
data only after it (:mod:`.guard`).

**PKI** (:mod:`.pki`, behind ``parkctl pki``, :mod:`.cli`): ``init``,
``issue`` (nodes with host SANs, cameras by ranges, operators) and
``revoke`` (into ``crl.pem``).
"""

from parkd.trust.guard import DEFAULT_HANDSHAKE_TIMEOUT, peer_identity
from parkd.trust.identity import Identity, IdentityError, parse_identity
from parkd.trust.material import TrustError, TrustFiles
from parkd.ratelimit import RateLimitedLog
from parkd.trust.tls import Trust, https_client_context

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "Identity",
    "IdentityError",
    "RateLimitedLog",
    "Trust",
    "TrustError",
    "TrustFiles",
    "https_client_context",
    "parse_identity",
    "peer_identity",
]
