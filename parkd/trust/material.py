"""Trust material: the CA, certificate, key and CRL files of one party, read and checked together.

:func:`load_material` reads all the files at once and checks that they fit:
the key is the certificate's, the certificate is issued by the CA (one of the
certificates in the CA file: a bundle lets a cluster roll over to a new CA),
valid now and names an identity (the expected one, if given), and the CRL is
signed by the CA and not past its nextUpdate.  Any problem is a
:class:`TrustError` whose text is one line naming the file.  A node that
starts with a bad file refuses to start; one that reloads a bad file keeps
the files it had (see :class:`parkd.trust.tls.Trust`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from parkd.trust.identity import Identity, identity_of_certificate


class TrustError(Exception):
    """Unusable trust files; ``str()`` is one line naming the file."""


@dataclass(frozen=True)
class TrustFiles:
    """Where one party's trust material lives; ``crl`` is optional."""

    ca: str
    cert: str
    key: str
    crl: str | None = None

    @classmethod
    def in_pki(cls, directory: str, identity: Identity | str, crl: bool = True) -> TrustFiles:
        """The files ``parkctl pki`` wrote in ``directory`` for ``identity`` (and its crl.pem)."""
        join = os.path.join
        return cls(join(directory, "ca.pem"), join(directory, f"{identity}.pem"), join(directory, f"{identity}.key"),
                   join(directory, "crl.pem") if crl else None)  # fmt: skip


@dataclass(frozen=True)
class Material:
    """One consistent reading of a party's trust files."""

    files: TrustFiles
    cas: tuple[x509.Certificate, ...]
    cert: x509.Certificate
    key: object  # a cryptography private key
    crl: x509.CertificateRevocationList | None
    identity: Identity


def load_material(files: TrustFiles, expect: Identity | None = None, now: datetime.datetime | None = None) -> Material:
    """Read and check ``files``; TrustError naming the file at fault if they do not fit."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cas = tuple(read_file(files.ca, x509.load_pem_x509_certificates, "PEM CA certificates"))
    cert = read_file(files.cert, x509.load_pem_x509_certificates, "a PEM certificate")[0]
    key = read_file(files.key, lambda data: serialization.load_pem_private_key(data, None),
                "an unencrypted PEM private key")  # fmt: skip
    identity = check_pair(files, cert, key, now, expect)
    if not any(_issued_by(cert, ca) for ca in cas):
        raise TrustError(f"{files.cert}: not issued by the CA in {files.ca}")
    crl = _load_crl(files.crl, cas, files.ca, now) if files.crl is not None else None
    return Material(files, cas, cert, key, crl, identity)


def load_authority(
    ca: str, crl: str | None, now: datetime.datetime | None = None
) -> tuple[tuple[x509.Certificate, ...], x509.CertificateRevocationList | None]:
    """The CA certificates of file ``ca``, and the CRL of file ``crl`` (if given) checked as in :func:`load_material`."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    cas = tuple(read_file(ca, x509.load_pem_x509_certificates, "PEM CA certificates"))
    return cas, _load_crl(crl, cas, ca, now) if crl is not None else None


def _load_crl(path: str, cas, ca_path: str, now: datetime.datetime) -> x509.CertificateRevocationList:
    crl = read_file(path, x509.load_pem_x509_crl, "a PEM certificate revocation list")
    if not any(crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key()) for ca in cas):
        raise TrustError(f"{path}: not signed by the CA in {ca_path}")
    if crl.next_update_utc is not None and now > crl.next_update_utc:
        raise TrustError(f"{path}: out of date since {crl.next_update_utc:%Y-%m-%d %H:%M:%S} UTC "
                         "(revoke again to re-sign it)")  # fmt: skip
    return crl


def check_pair(
    files: TrustFiles, cert: x509.Certificate, key, now: datetime.datetime, expect: Identity | None = None
) -> Identity:
    """The identity a certificate and its key stand for; TrustError if the key is not its own, or it is not valid now.

    (Whether the CA issued it is the caller's check: it costs a signature verification.)
    """
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey,
                            ed448.Ed448PrivateKey)):  # fmt: skip
        raise TrustError(f"{files.key}: unsupported key type")
    if key.public_key() != cert.public_key():
        raise TrustError(f"{files.key}: not the key of {files.cert}")
    if now < cert.not_valid_before_utc:
        raise TrustError(f"{files.cert}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC")
    if now > cert.not_valid_after_utc:
        raise TrustError(f"{files.cert}: expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    identity = identity_of_certificate(cert)
    if identity is None:
        raise TrustError(f"{files.cert}: names no parkd identity (CN node-ID, camera-ID or operator-NAME)")
    if expect is not None and identity != expect:
        raise TrustError(f"{files.cert}: is {identity}'s certificate, expected {expect}'s")
    return identity


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def read_file(path: str, parse, what: str):
    """``parse(bytes of path)``; TrustError naming the file if it cannot be read, or is not ``what``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TrustError(f"{path}: {e.strerror}") from None
    try:
        return parse(data)
    except (ValueError, TypeError):
        raise TrustError(f"{path}: not {what}") from None
