"""The cluster's PKI: a CA and the certificates of nodes, cameras and operators (CONTRACT §9).

Everything lives in one directory::

    DIR/ca.pem  DIR/ca.key         the CA (EC P-256, self-signed, 10 years by default)
    DIR/crl.pem                    the revocation list, signed by the CA (empty after init)
    DIR/<identity>.pem  .key       one pair per identity: node-3, camera-7, operator-alice

Keys are EC P-256 (fast to make: the 10,000-camera benchmark needs 10,000 pairs),
PKCS#8 PEM without a passphrase, written mode 0600; certificates mode 0644.  No
existing file is ever overwritten: a command that would do so is refused before
it writes anything, naming the file.  ``crl.pem`` is the exception: it is replaced
atomically by each revocation.

Certificates: the subject CN is the identity and a URI SAN ``parkd:<kind>/<id>``
repeats it (see :mod:`parkd.trust.identity`).  Nodes also get the hosts they are
reached at as DNS or IP SANs (default 127.0.0.1 and localhost) so that curl and
parkctl can check the host name, and the extended key usages serverAuth and
clientAuth (they serve and they dial their peers); cameras and operators get
clientAuth only.  Validity starts an hour in the past (clock skew) and lasts
``days`` (leaves 730 by default).  The CRL's nextUpdate is the CA's own expiry,
so a CRL never goes stale while its CA is valid.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parkd.trust.identity import Identity, IdentityError, parse_identity, parse_number

CA_CERT, CA_KEY, CRL = "ca.pem", "ca.key", "crl.pem"
DEFAULT_CA_DAYS = 3650
DEFAULT_DAYS = 730
DEFAULT_HOSTS = ("127.0.0.1", "localhost")
MAX_RANGE = 100_000  # cameras per command
BACKDATE = datetime.timedelta(hours=1)
KEY_MODE, CERT_MODE = 0o600, 0o644
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


class PKIError(Exception):
    """A refused PKI operation; ``str()`` is one line naming the file or value at fault."""


@dataclass(frozen=True)
class Issued:
    """One identity's files, as written."""

    identity: Identity
    cert: str
    key: str


def cert_path(directory: str, identity: Identity) -> str:
    return os.path.join(directory, f"{identity}.pem")


def key_path(directory: str, identity: Identity) -> str:
    return os.path.join(directory, f"{identity}.key")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


# ------------------------------------------------------------------ CA


def init(directory: str, days: int = DEFAULT_CA_DAYS, name: str | None = None) -> list[str]:
    """Make ``DIR/ca.pem``, ``DIR/ca.key`` and an empty ``DIR/crl.pem``; the paths written.

    The directory is created (mode 0700) if missing.  ``name`` is the CA's CN
    (default ``parkd CA <random hex>``, so that two CAs never share a name).
    """
    _check_days(days)
    paths = [os.path.join(directory, n) for n in (CA_CERT, CA_KEY, CRL)]
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise PKIError(f"{directory}: cannot create directory: {e.strerror}") from None
    _refuse_existing(paths)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or f"parkd CA {os.urandom(4).hex()}")])
    start = _now() - BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + BACKDATE + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(paths[1], _key_pem(key), KEY_MODE)
    _write_new(paths[0], cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
    _write_new(paths[2], _crl_pem(cert, key, [], number=1), CERT_MODE)
    return paths


@dataclass(frozen=True)
class _CA:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    aki: x509.AuthorityKeyIdentifier


def _load_ca(directory: str) -> _CA:
    cert_file, key_file = os.path.join(directory, CA_CERT), os.path.join(directory, CA_KEY)
    hint = " (run parkctl pki init first?)"
    cert = _load(cert_file, x509.load_pem_x509_certificate, "a PEM certificate", hint)
    key = _load(key_file, lambda data: serialization.load_pem_private_key(data, None), "a PEM private key", hint)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PKIError(f"{key_file}: not the private key of {cert_file}")
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return _CA(cert, key, x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski))


def _load(path: str, parse, what: str, hint: str = ""):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PKIError(f"{path}: no such file{hint}") from None
    except OSError as e:
        raise PKIError(f"{path}: {e.strerror}") from None
    try:
        return parse(data)
    except (ValueError, TypeError):
        raise PKIError(f"{path}: not {what}") from None


# ------------------------------------------------------------------ leaves


def identities(kind: str, what: str) -> list[Identity]:
    """The identities a command line names: ``node 3``, ``camera 7``, ``camera 1-10000``, ``operator alice``.

    IdentityError (a usage error) if ``what`` names none.
    """
    if kind == "camera" and "-" in what:
        first_text, _, last_text = what.partition("-")
        first, last = parse_number(first_text, "camera"), parse_number(last_text, "camera")
        if last < first:
            raise IdentityError(f"bad camera range {what!r} (the first id must not exceed the last)")
        if last - first + 1 > MAX_RANGE:
            raise IdentityError(f"camera range {what!r} too large (at most {MAX_RANGE:,} per command)")
        return [Identity("camera", i) for i in range(first, last + 1)]
    return [parse_identity(f"{kind}-{what}")]


def issue(
    directory: str,
    who: Sequence[Identity],
    hosts: Iterable[str] | None = None,
    days: int = DEFAULT_DAYS,
    not_before: datetime.datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Issued]:
    """Make a key pair and certificate for each identity in ``who``; what was written.

    ``hosts`` (nodes only; default 127.0.0.1 and localhost) become DNS or IP SANs.
    ``not_before`` (default an hour ago) may lie in the past, e.g. to make an
    expired certificate for a test.  ``progress(done, total)`` is called every
    500 certificates and at the end.  Nothing is written if any target file exists.
    """
    _check_days(days)
    if hosts is not None and any(i.kind != "node" for i in who):
        raise PKIError("hosts are for node certificates only")
    sans = _host_sans(DEFAULT_HOSTS if hosts is None else hosts)
    ca = _load_ca(directory)
    _refuse_existing(p for i in who for p in (cert_path(directory, i), key_path(directory, i)))
    now = _now()
    start = now - BACKDATE if not_before is None else not_before
    end = min((now if not_before is None else not_before) + datetime.timedelta(days=days),
              ca.cert.not_valid_after_utc)  # a leaf never outlives its CA  # fmt: skip
    issued = []
    for n, identity in enumerate(who, 1):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _leaf(ca, identity, key.public_key(), sans if identity.kind == "node" else [], start, end)
        paths = Issued(identity, cert_path(directory, identity), key_path(directory, identity))
        _write_new(paths.key, _key_pem(key), KEY_MODE)
        _write_new(paths.cert, cert.public_bytes(serialization.Encoding.PEM), CERT_MODE)
        issued.append(paths)
        if progress is not None and (n % 500 == 0 or n == len(who)):
            progress(n, len(who))
    return issued


def _leaf(ca: _CA, identity: Identity, public_key, hosts: list, start, end) -> x509.Certificate:
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.kind == "node":
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(identity))]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName([*hosts, x509.UniformResourceIdentifier(identity.uri)]),
                       critical=False)
        .add_extension(ca.aki, critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def host_san(host: str) -> x509.GeneralName:
    """The SAN for a host a node is reached at: an IP address, else a DNS name; IdentityError if neither."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or not all(_DNS_LABEL.match(label) for label in labels):
        raise IdentityError(f"bad host {host!r} (a DNS name or an IP address)")
    return x509.DNSName(host.lower())


def _host_sans(hosts: Iterable[str]) -> list[x509.GeneralName]:
    try:
        return [host_san(h) for h in hosts]
    except IdentityError as e:
        raise PKIError(str(e)) from None


def _key_usage(cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False,
    )  # fmt: skip


# ------------------------------------------------------------------ revocation


def revoke(directory: str, what: str) -> bool:
    """Add the certificate of identity ``what`` (or the certificate file ``what``) to ``DIR/crl.pem``.

    True if it was added, False if it was already revoked (nothing written).
    IdentityError if ``what`` names no identity, PKIError if refused.  The CRL
    is made if missing, and re-signed with a fresh lastUpdate on each change.
    """
    path = what if what.endswith(".pem") else cert_path(directory, parse_identity(what))
    ca = _load_ca(directory)
    cert = _load(path, x509.load_pem_x509_certificate, "a PEM certificate")
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PKIError(f"{path}: not issued by {os.path.join(directory, CA_CERT)}") from None
    crl_file = os.path.join(directory, CRL)
    revoked, number = [], 1
    if os.path.exists(crl_file):
        crl = _load(crl_file, x509.load_pem_x509_crl, "a PEM certificate revocation list")
        if not crl.is_signature_valid(ca.key.public_key()):
            raise PKIError(f"{crl_file}: not signed by {os.path.join(directory, CA_CERT)}")
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            return False
        revoked = list(crl)
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        except x509.ExtensionNotFound:
            number = 1
    entry = x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(_now()).build()
    _replace(crl_file, _crl_pem(ca.cert, ca.key, [*revoked, entry], number))
    return True


def _crl_pem(ca_cert: x509.Certificate, ca_key, revoked: list[x509.RevokedCertificate], number: int) -> bytes:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(_now() - BACKDATE)
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# ------------------------------------------------------------------ files


def _check_days(days: int) -> None:
    if not isinstance(days, int) or days < 1:
        raise PKIError(f"bad validity {days!r} (a whole number of days, at least 1)")


def _key_pem(key) -> bytes:
    pem, pkcs8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
    return key.private_bytes(pem, pkcs8, serialization.NoEncryption())


def _refuse_existing(paths: Iterable[str]) -> None:
    for path in paths:
        if os.path.lexists(path):
            raise PKIError(f"{path}: already exists (refusing to overwrite it; move it away first)")


def _write_new(path: str, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PKIError(f"{path}: already exists (refusing to overwrite it; move it away first)") from None
    except OSError as e:
        raise PKIError(f"{path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT's mode is filtered by the umask


def _replace(path: str, data: bytes) -> None:
    """Write ``path`` atomically: a reader (a node reloading on SIGHUP) sees the old file or the new one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, CERT_MODE)
        os.replace(tmp, path)
    except OSError as e:
        raise PKIError(f"{path}: {e.strerror}") from None
