"""Many cameras' certificates in one process (the load generator): one TLS context, a certificate per connection.

A camera daemon has one :class:`~parkd.trust.tls.Trust`: its files, checked,
and an OpenSSL context holding its certificate.  A process that plays 10,000
cameras cannot afford that: 10,000 Trusts took 16 s and 430 MB to build (2
shared cores), most of it the contexts.  A :class:`CameraFleet` reads the CA
and CRL of a ``parkctl pki`` directory once, builds one client context with
no certificate, and keeps each camera's certificate and key; every connection
of camera ``<id>`` presents ``camera-<id>``'s (``SSL_use_certificate`` on the
connection, not the context), so the nodes check each camera's identity
exactly as with a daemon.  Loading costs about 0.25 ms of CPU per camera
(8 s for 10,000 on 2 busy cores).  Their handshakes take turns through one
:class:`~parkd.trust.gate.HandshakeGate`, so that a thousand reconnecting at
once do not stall the process for seconds.

    fleet = CameraFleet("run/bench-pki", range(100000, 110000))   # TrustError: one line naming the file
    camera = fleet.camera(100000)     # has client_endpoint() and client(), like a Trust
    CameraClient(..., trust=camera)   # sessions are kept per camera and node, as a daemon does

Each camera's certificate must name it, be valid now and match its key; that
the CA issued it is left to the nodes (checking 10,000 signatures here would
double the cost): a camera with a foreign certificate is refused at its
handshake and the fleet's ``refusals`` log says so.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.logger import Logger

from parkd.ratelimit import RateLimitedLog
from parkd.trust.gate import HandshakeGate
from parkd.trust.guard import DEFAULT_HANDSHAKE_TIMEOUT
from parkd.trust.identity import Identity
from parkd.trust.material import TrustError, TrustFiles, check_pair, load_authority, read_file
from parkd.trust.tls import REFUSALS_SUMMARY, Dialer, authority_context


class CameraFleet:
    """The certificates of many cameras from one PKI directory, sharing one client context."""

    log = Logger()

    def __init__(
        self,
        directory: str,
        camera_ids: Iterable[int],
        resume: bool = True,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        clock=None,
        refusals: RateLimitedLog | None = None,
    ):
        """Read the CA, the CRL (if the directory has one) and each camera's pair now; TrustError if unusable.

        ``refusals``: where failed handshakes are logged (default: 10 lines per 10 s, then a summary).
        """
        if clock is None:
            from twisted.internet import reactor as clock
        crl = os.path.join(directory, "crl.pem")
        cas, revoked = load_authority(os.path.join(directory, "ca.pem"), crl if os.path.exists(crl) else None)
        self._context = authority_context(cas, revoked, "client")
        self._resume = resume
        self._handshake_timeout = handshake_timeout
        self._clock = clock
        self.refusals = refusals or RateLimitedLog(self.log, REFUSALS_SUMMARY, clock=clock)
        self.gate = HandshakeGate(clock)  # all the cameras' handshakes take turns in this process
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cameras = {i: FleetCamera(self, *_credentials(directory, Identity("camera", i), now)) for i in camera_ids}

    def __len__(self) -> int:
        return len(self._cameras)

    def camera(self, camera_id: int) -> FleetCamera:
        """Camera ``camera_id`` of the fleet (KeyError if it was not loaded)."""
        return self._cameras[camera_id]


class FleetCamera(Dialer):
    """One camera of a :class:`CameraFleet`: dials like a Trust, presenting its own certificate."""

    def __init__(self, fleet: CameraFleet, identity: Identity, credentials: tuple[crypto.X509, crypto.PKey]):
        self.identity = identity
        self._fleet = fleet
        self._credentials = credentials
        self.refusals = fleet.refusals
        self._resume = fleet._resume
        self._handshake_timeout = fleet._handshake_timeout
        self._clock = fleet._clock
        self._gate = fleet.gate

    def _client_context(self) -> SSL.Context:
        return self._fleet._context


def _credentials(directory: str, identity: Identity, now: datetime.datetime) -> tuple[Identity, tuple]:
    files = TrustFiles.in_pki(directory, identity, crl=False)
    cert = read_file(files.cert, x509.load_pem_x509_certificate, "a PEM certificate")
    key = read_file(files.key, lambda data: serialization.load_pem_private_key(data, None),
                    "an unencrypted PEM private key")  # fmt: skip
    check_pair(files, cert, key, now, expect=identity)
    try:
        return identity, (crypto.X509.from_cryptography(cert), crypto.PKey.from_cryptography_key(key))
    except (TypeError, ValueError) as e:
        raise TrustError(f"{files.key}: {e}") from None
