"""Identities are parsed strictly: one spelling per identity, nothing else names anyone."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from parkd.trust.identity import Identity, IdentityError, identity_of_certificate, parse_identity


@pytest.mark.parametrize(
    "text, kind, id_",
    [("node-3", "node", 3), ("camera-7", "camera", 7), ("camera-4294967295", "camera", 4294967295),
     ("operator-alice", "operator", "alice"), ("operator-ops.team_2-b", "operator", "ops.team_2-b")],
)  # fmt: skip
def test_identities_parse_and_print_back(text, kind, id_):
    identity = parse_identity(text)
    assert identity == Identity(kind, id_)
    assert str(identity) == text


@pytest.mark.parametrize(
    "text",
    ["camera-007", "node-0", "camera-1x", "camera-+1", "camera- 1", "camera-1 ", "camera-1\n", "node-4294967296",
     "Node-1", "node_1", "node", "node-", "robot-1", "operator-", "operator--x", "operator-a b", "operator-é",
     "operator-" + "a" * 56, "camera-١", ""],
)  # fmt: skip
def test_anything_else_names_no_one(text):
    with pytest.raises(IdentityError):
        parse_identity(text)


def test_identities_are_checked_when_made_directly():
    with pytest.raises(IdentityError):
        Identity("node", 0)
    with pytest.raises(IdentityError):
        Identity("camera", True)
    with pytest.raises(IdentityError):
        Identity("node", "3")
    assert Identity("operator", "a" * 55).uri == "parkd:operator/" + "a" * 55


def _cert(cn: str | None, uris=()) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))  # fmt: skip
    if uris:
        sans = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris])
        builder = builder.add_extension(sans, False)
    return builder.sign(key, hashes.SHA256())


def test_a_certificate_names_its_cn_and_its_uri_san_must_agree():
    assert identity_of_certificate(_cert("camera-7")) == Identity("camera", 7)
    assert identity_of_certificate(_cert("camera-7", ["parkd:camera/7"])) == Identity("camera", 7)
    assert identity_of_certificate(_cert("camera-7", ["https://example.com/"])) == Identity("camera", 7)
    assert identity_of_certificate(_cert("camera-7", ["parkd:camera/8"])) is None
    assert identity_of_certificate(_cert("camera-7", ["parkd:camera/7", "parkd:node/1"])) is None
    assert identity_of_certificate(_cert("camera-007")) is None
    assert identity_of_certificate(_cert(None)) is None
