"""What the directory publishes: the current S/MIME certificate of an active entry, so that a
colleague's mail client can encrypt to it end to end (RFC 8551 needs the recipient's
certificate before the first message).

Only an active entry's current certificate (neither revoked nor expired) is published: one
that may no longer receive, or a revoked certificate, is "not found", so no client keeps
encrypting to a key that should not read any more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlmodel import Session

from directory import certificates, service
from mss.crypto import pki
from mss.errors import RecipientHasNoCertificate


@dataclass(frozen=True)
class PublishedCertificate:
    """An entry's current certificate, with what a person checks before trusting it."""

    address: str
    name: str
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        """The certificate in DER (``.cer``, ``application/pkix-cert``, RFC 2585)."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> str:
        """The certificate in PEM (RFC 7468)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")

    @property
    def subject(self) -> str:
        """The subject as RFC 4514 text."""
        return self.certificate.subject.rfc4514_string()

    @property
    def issuer(self) -> str:
        """The issuer as RFC 4514 text."""
        return self.certificate.issuer.rfc4514_string()

    @property
    def serial(self) -> str:
        """The serial number in hex."""
        return pki.serial_hex(self.certificate.serial_number)

    @property
    def not_before(self) -> datetime:
        """Start of validity (UTC)."""
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        """End of validity (UTC)."""
        return self.certificate.not_valid_after_utc

    @property
    def fingerprint_sha256(self) -> str:
        """SHA-256 of the DER, as colon-separated hex pairs (how mail clients show it)."""
        return ":".join(f"{b:02X}" for b in self.certificate.fingerprint(hashes.SHA256()))


def published_certificate(session: Session, address: str) -> PublishedCertificate:
    """The current certificate of the active entry ``address``.

    Raises UnknownAddress, RevokedAddress (the entry may no longer receive),
    RecipientHasNoCertificate (no certificate, or none neither revoked nor expired).
    """
    entry = service.require_active(session, address)
    certificate = certificates.current_certificate(session, entry.address)
    if certificate is None:
        raise RecipientHasNoCertificate(f"{entry.address} has no valid certificate")
    return PublishedCertificate(address=entry.address, name=entry.display_name, certificate=certificate)


def certificate_for(engine, address: str) -> PublishedCertificate:  # type: ignore[no-untyped-def]
    """:func:`published_certificate` in a read-only transaction of its own (for the web and
    the API, which open none). Raises the same errors."""
    from mss.db import session_scope

    with session_scope(engine, readonly=True) as session:
        return published_certificate(session, address)
