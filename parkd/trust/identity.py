"""Identities: who a certificate names (CONTRACT §9), parsed strictly.

An identity is ``node-<id>``, ``camera-<id>`` (ids are whole numbers in
1..4294967295 written without a sign or leading zero) or ``operator-<name>``
(letters, digits, ``.``, ``_``, ``-``; starting with a letter or digit; at
most 55 characters, so that the CN fits X.509's 64).  The certificate's
subject CN is the identity; its URI SAN ``parkd:<kind>/<id>`` (``parkd:node/3``,
``parkd:camera/7``, ``parkd:operator/alice``) says the same thing for tools
that read SANs.  When both are present they must agree.

``camera-007``, ``node-0``, ``camera-1x``, ``Node-1`` and ``operator-`` name
no one: :func:`parse_identity` raises :class:`IdentityError`, and
:func:`identity_of_certificate` answers None.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

KINDS = ("node", "camera", "operator")
MAX_ID = (1 << 32) - 1
MAX_NAME = 64 - len("operator-")
URI_PREFIX = "parkd:"

_NUMBER = re.compile(r"[1-9][0-9]{0,9}\Z")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")


class IdentityError(ValueError):
    """Text that names no identity; ``str()`` says why, in one line."""


@dataclass(frozen=True, order=True)
class Identity:
    """Who is on the other end: ``kind`` is node, camera or operator; ``id`` an int or a name."""

    kind: str
    id: int | str

    def __post_init__(self):
        _check(self.kind, self.id)

    def __str__(self) -> str:
        return f"{self.kind}-{self.id}"

    @property
    def uri(self) -> str:
        """The URI SAN of this identity's certificate, e.g. ``parkd:node/3``."""
        return f"{URI_PREFIX}{self.kind}/{self.id}"


def _check(kind: str, value) -> None:
    if kind not in KINDS:
        raise IdentityError(f"unknown kind {kind!r} (expected node, camera or operator)")
    if kind == "operator":
        if not isinstance(value, str) or not _NAME.match(value) or len(value) > MAX_NAME:
            raise IdentityError(
                f"bad operator name {value!r} (letters, digits, '.', '_', '-', starting with a letter or digit, "
                f"at most {MAX_NAME} characters)"
            )
    elif isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise IdentityError(f"bad {kind} id {value!r} (a whole number in 1..{MAX_ID})")


def parse_number(text: str, what: str) -> int:
    """A node or camera id written strictly: ``7``, not ``07``, ``+7``, ``7 `` or ``0``."""
    if not _NUMBER.match(text) or int(text) > MAX_ID:
        raise IdentityError(f"bad {what} id {text!r} (a whole number in 1..{MAX_ID}, no leading zero)")
    return int(text)


def parse_identity(text: str) -> Identity:
    """``node-3`` -> Identity("node", 3); anything not written exactly so raises IdentityError."""
    kind, sep, rest = text.partition("-")
    if not sep or kind not in KINDS:
        raise IdentityError(f"bad identity {text!r} (expected node-ID, camera-ID or operator-NAME)")
    if kind == "operator":
        return Identity(kind, rest)
    return Identity(kind, parse_number(rest, kind))


def identity_of_certificate(cert: x509.Certificate) -> Identity | None:
    """The identity a certificate names, or None if it names none (or CN and URI SAN disagree)."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or not isinstance(cns[0].value, str):
        return None
    try:
        identity = parse_identity(cns[0].value)
    except IdentityError:
        return None
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return identity
    uris = [u for u in sans.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URI_PREFIX)]
    if uris and uris != [identity.uri]:
        return None
    return identity
