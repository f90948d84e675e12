"""Who may use the HTTP port (CONTRACT §9): admin needs an operator, reads as configured.

Over HTTPS a client certificate is optional but verified when sent (the trust
layer refuses a bad one at the handshake).  Admin requests need an
``operator-<name>`` certificate: 401 without a client certificate, 403 with
another identity.  Reads (the read API, the dashboard, ``/metrics``) need none
while ``public_reads`` is true, else any certificate of the cluster's CA.  On a
plaintext (``insecure``) node there is no identity to check: everything is open.
"""

from __future__ import annotations

from dataclasses import dataclass

from parkd.http.errors import ApiError
from parkd.trust import peer_identity


@dataclass(frozen=True)
class Access:
    tls: bool = False
    public_reads: bool = True

    def admin_refusal(self, request) -> ApiError | None:
        if not self.tls:
            return None
        identity = peer_identity(request)
        if identity is None:
            return ApiError(401, "admin requests need an operator certificate (parkctl --cert/--key)")
        if identity.kind != "operator":
            return ApiError(403, f"{identity} is not an operator; admin requests need an operator certificate")
        return None

    def read_refusal(self, request) -> ApiError | None:
        if not self.tls or self.public_reads or peer_identity(request) is not None:
            return None
        return ApiError(401, "reads need a client certificate of this cluster (public_reads = false)")
