"""The PKI: file names and modes, no overwriting, certificate contents, ranges, revocation."""

import datetime
import ipaddress
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from parkd.trust import pki
from parkd.trust.identity import Identity, IdentityError, identity_of_certificate


def load(path) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def load_crl(directory) -> x509.CertificateRevocationList:
    with open(os.path.join(directory, "crl.pem"), "rb") as f:
        return x509.load_pem_x509_crl(f.read())


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def ca(tmp_path):
    directory = str(tmp_path / "pki")
    pki.init(directory)
    return directory


def test_init_makes_an_ec_ca_with_its_key_0600_and_an_empty_crl(tmp_path):
    directory = str(tmp_path / "new" / "pki")
    old = os.umask(0o077)  # the modes must not depend on the umask
    try:
        paths = pki.init(directory)
    finally:
        os.umask(old)
    assert paths == [os.path.join(directory, n) for n in ("ca.pem", "ca.key", "crl.pem")]
    assert [mode(p) for p in paths] == [0o644, 0o600, 0o644]
    assert mode(directory) == 0o700
    cert = load(paths[0])
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    years = (cert.not_valid_after_utc - cert.not_valid_before_utc).days / 365
    assert 9.9 < years < 10.1
    crl = load_crl(directory)
    assert len(crl) == 0 and crl.is_signature_valid(cert.public_key())
    assert crl.next_update_utc == cert.not_valid_after_utc


def test_init_refuses_to_overwrite_and_names_the_file(ca):
    before = open(os.path.join(ca, "ca.pem"), "rb").read()
    with pytest.raises(pki.PKIError, match=r"ca\.pem: already exists"):
        pki.init(ca)
    assert open(os.path.join(ca, "ca.pem"), "rb").read() == before
    os.remove(os.path.join(ca, "ca.pem"))
    with pytest.raises(pki.PKIError, match=r"ca\.key: already exists"):
        pki.init(ca)


def test_a_node_certificate_serves_and_dials_with_its_hosts_and_identity(ca):
    [issued] = pki.issue(ca, [Identity("node", 3)])
    assert issued.cert == os.path.join(ca, "node-3.pem") and issued.key == os.path.join(ca, "node-3.key")
    assert mode(issued.key) == 0o600 and mode(issued.cert) == 0o644
    cert = load(issued.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-3"
    assert cert.issuer == load(os.path.join(ca, "ca.pem")).subject
    cert.verify_directly_issued_by(load(os.path.join(ca, "ca.pem")))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["parkd:node/3"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert identity_of_certificate(cert) == Identity("node", 3)
    assert 729 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 731


def test_node_hosts_become_ip_or_dns_sans(ca):
    [issued] = pki.issue(ca, [Identity("node", 1)], hosts=["10.0.0.7", "::1", "Node1.Example.org"])
    sans = load(issued.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("::1")]
    assert sans.get_values_for_type(x509.DNSName) == ["node1.example.org"]
    with pytest.raises(pki.PKIError, match="bad host"):
        pki.issue(ca, [Identity("node", 2)], hosts=["no spaces"])
    with pytest.raises(pki.PKIError, match="node certificates only"):
        pki.issue(ca, [Identity("camera", 2)], hosts=["10.0.0.7"])


def test_cameras_and_operators_are_clients_only(ca):
    issued = pki.issue(ca, [Identity("camera", 7), Identity("operator", "alice")], days=30)
    for paths, uri in zip(issued, ["parkd:camera/7", "parkd:operator/alice"]):
        cert = load(paths.cert)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(n.value) for n in sans] == [uri]
        assert 29 <= (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 30


def test_a_range_makes_one_pair_per_camera_with_distinct_keys_and_serials(ca):
    who = pki.identities("camera", "8-12")
    assert [str(i) for i in who] == ["camera-8", "camera-9", "camera-10", "camera-11", "camera-12"]
    seen = []
    issued = pki.issue(ca, who, progress=lambda done, total: seen.append((done, total)))
    certs = [load(i.cert) for i in issued]
    assert [identity_of_certificate(c) for c in certs] == who
    assert len({c.serial_number for c in certs}) == 5
    assert len({c.public_key().public_numbers().x for c in certs}) == 5
    assert seen == [(5, 5)]


@pytest.mark.parametrize("what", ["0-3", "3-1", "1-x", "01-3", "1-200001", "1--3"])
def test_bad_ranges_are_usage_errors(what):
    with pytest.raises(IdentityError):
        pki.identities("camera", what)


def test_a_range_that_would_overwrite_one_file_writes_nothing(ca):
    pki.issue(ca, [Identity("camera", 5)])
    with pytest.raises(pki.PKIError, match=r"camera-5\.pem: already exists"):
        pki.issue(ca, pki.identities("camera", "1-10"))
    assert sorted(os.listdir(ca)) == ["ca.key", "ca.pem", "camera-5.key", "camera-5.pem", "crl.pem"]


def test_issuing_needs_the_ca_and_its_key(tmp_path, ca):
    with pytest.raises(pki.PKIError, match="ca.pem: no such file"):
        pki.issue(str(tmp_path / "nowhere"), [Identity("node", 1)])
    other = str(tmp_path / "other")
    pki.init(other)
    os.replace(os.path.join(other, "ca.key"), os.path.join(ca, "ca.key"))
    with pytest.raises(pki.PKIError, match="not the private key of"):
        pki.issue(ca, [Identity("node", 1)])


def test_a_leaf_never_outlives_its_ca_and_may_start_in_the_past(tmp_path):
    directory = str(tmp_path / "short")
    pki.init(directory, days=10)
    [issued] = pki.issue(directory, [Identity("camera", 1)], days=730)
    assert load(issued.cert).not_valid_after_utc == load(os.path.join(directory, "ca.pem")).not_valid_after_utc
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    [old] = pki.issue(directory, [Identity("camera", 2)], days=1, not_before=start)
    assert load(old.cert).not_valid_before_utc == start
    assert load(old.cert).not_valid_after_utc == start + datetime.timedelta(days=1)


def test_revoke_adds_the_serial_to_a_signed_crl_once(ca):
    issued = pki.issue(ca, [Identity("camera", 7), Identity("camera", 8)])
    ca_cert = load(os.path.join(ca, "ca.pem"))
    assert pki.revoke(ca, "camera-7") is True
    assert pki.revoke(ca, "camera-7") is False
    assert pki.revoke(ca, issued[1].cert) is True  # a certificate file will do too
    crl = load_crl(ca)
    assert {r.serial_number for r in crl} == {load(i.cert).serial_number for i in issued}
    assert crl.is_signature_valid(ca_cert.public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert crl.next_update_utc == ca_cert.not_valid_after_utc
    assert mode(os.path.join(ca, "crl.pem")) == 0o644


def test_revoke_makes_a_missing_crl(ca):
    pki.issue(ca, [Identity("operator", "bob")])
    os.remove(os.path.join(ca, "crl.pem"))
    assert pki.revoke(ca, "operator-bob")
    assert len(load_crl(ca)) == 1


def test_revoke_refuses_what_it_cannot_revoke(tmp_path, ca):
    with pytest.raises(pki.PKIError, match=r"camera-9\.pem: no such file"):
        pki.revoke(ca, "camera-9")
    with pytest.raises(IdentityError):
        pki.revoke(ca, "camera-09")
    other = str(tmp_path / "other")
    pki.init(other)
    [foreign] = pki.issue(other, [Identity("camera", 9)])
    with pytest.raises(pki.PKIError, match="not issued by"):
        pki.revoke(ca, foreign.cert)
    os.replace(os.path.join(other, "crl.pem"), os.path.join(ca, "crl.pem"))
    pki.issue(ca, [Identity("camera", 9)])
    with pytest.raises(pki.PKIError, match="crl.pem: not signed by"):
        pki.revoke(ca, "camera-9")
