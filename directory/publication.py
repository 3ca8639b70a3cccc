"""What the directory publishes: the current S/MIME certificate of an active entry, so that a
colleague's mail client can encrypt to it end to end (RFC 8551 needs the recipient's
certificate before the first message).

Only an active entry's current certificate (neither revoked nor expired) is published: one
that may no longer receive, or a revoked certificate, is "not found", so no client keeps
encrypting to a key that should not read any more.

An entry's card (:func:`entry_card`) is what the web's directory page shows of it: names,
organisation, postal address, the other mailboxes of the same professional or organisation,
and that certificate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from sqlalchemy.engine import Engine
from sqlmodel import Session

from directory import certificates, service
from directory.listing import mailboxes_of
from directory.models import ACTIVE, DirectoryEntry
from mss.crypto import pki
from mss.db import session_scope
from mss.errors import RecipientHasNoCertificate, UnknownAddress


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


def certificate_for(engine: Engine, address: str) -> PublishedCertificate:
    """:func:`published_certificate` in a read-only transaction of its own (for the web and
    the API, which open none). Raises the same errors."""
    with session_scope(engine, readonly=True) as session:
        return published_certificate(session, address)


# The extract's street type codes (NL4TYPEVOIE) as people write them.
STREET_TYPES = {
    "R": "rue",
    "RUE": "rue",
    "AV": "avenue",
    "BD": "boulevard",
    "PL": "place",
    "CHE": "chemin",
    "RTE": "route",
    "IMP": "impasse",
    "ALL": "allée",
    "QUAI": "quai",
    "CRS": "cours",
    "SQ": "square",
    "PASS": "passage",
    "FG": "faubourg",
    "LOT": "lotissement",
    "RES": "résidence",
    "ZA": "zone d’activité",
    "ZI": "zone industrielle",
}


@dataclass(frozen=True)
class EntryCard:
    """An entry as a professional browsing the directory sees it."""

    entry: DirectoryEntry
    postal_address: tuple[str, ...]
    mailboxes: tuple[DirectoryEntry, ...]
    """The other active mailboxes of the same professional or organisation."""
    certificate: PublishedCertificate | None
    """The current certificate, when the entry is active and has one."""


def postal_address(entry: DirectoryEntry) -> tuple[str, ...]:
    """The entry's postal address, line by line, as an envelope would carry it."""
    street_type = STREET_TYPES.get(entry.addr_street_type.strip().upper(), entry.addr_street_type.strip().lower())
    street = " ".join(
        p for p in (entry.addr_number, entry.addr_number_ext, street_type, entry.addr_street) if p.strip()
    )
    lines = (entry.addr_l2, entry.addr_l3, street, entry.addr_l5, entry.addr_l6)
    return tuple(line.strip() for line in lines if line and line.strip())


def entry_card(session: Session, address: str) -> EntryCard:
    """The card of ``address``, whatever its status. Raises UnknownAddress."""
    entry = service.get_entry(session, address)
    if entry is None:
        raise UnknownAddress(address.strip().lower()[:254])
    certificate = None
    if entry.status == ACTIVE:
        current = certificates.current_certificate(session, entry.address)
        if current is not None:
            certificate = PublishedCertificate(address=entry.address, name=entry.display_name, certificate=current)
    return EntryCard(
        entry=entry,
        postal_address=postal_address(entry),
        mailboxes=tuple(mailboxes_of(session, entry)),
        certificate=certificate,
    )
