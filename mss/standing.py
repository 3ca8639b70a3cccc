"""The trust boundary for one account: may it log in and send, now?

An account stands when its address is in a served domain (``MSS_DOMAINS``), its directory
entry is active, the account is enabled and its signing certificate is neither revoked nor
expired. Every door asks :func:`check` at every step where it acts for the account: SMTP
AUTH and each MAIL and DATA of an authenticated session, web and API logins and every
request of their sessions, and the pipeline itself before it signs. A revocation therefore
takes effect at the next step of every open session, whatever the door.

:func:`end_sessions` deletes an account's web and API sessions (each holds its private key,
sealed under its cookie's key); the services that revoke, disable or rekey call it in the
same transaction, so a session ends at the moment of the change.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

from cryptography import x509
from sqlalchemy import Select, bindparam, delete, select
from sqlmodel import Session, col

from directory.models import ACTIVE, INACTIVE, INACTIVE_REASON, Certificate, DirectoryEntry
from mss.crypto.pki import serial_hex
from mss.db import Reader, connection_of, rowcount, utcnow
from mss.errors import (
    AccountDisabled,
    AddressNotServed,
    CertificateExpired,
    CertificateRevoked,
    CredentialsChanged,
    EntryRevoked,
    StandingError,
)
from mss.models import Account, WebSession
from mss.settings import Settings


@dataclass(frozen=True)
class Standing:
    """An account found in standing, with the certificate that was checked."""

    address: str
    certificate_serial: str
    certificate_not_after: datetime


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _standing_of(certificate_join) -> Select:
    """Everything ``check`` reads of the account at ``:address``, joined to a certificate."""
    return (
        select(
            col(Account.password_hash),
            col(Account.disabled),
            col(DirectoryEntry.status),
            col(DirectoryEntry.status_reason),
            col(DirectoryEntry.status_changed_at),
            col(Certificate.serial),
            col(Certificate.revoked_at),
            col(Certificate.revocation_reason),
            col(Certificate.not_after),
        )
        .select_from(Account)
        .join(DirectoryEntry, col(DirectoryEntry.address) == col(Account.address), isouter=True)
        .join(Certificate, certificate_join, isouter=True)
        .where(col(Account.address) == bindparam("address"))
    )


# Built once (each call at every MAIL and DATA would build and key it again): the account's
# current certificate, or the one a session signs with (``:serial``).
_BY_CURRENT_CERTIFICATE: Final = _standing_of(col(Certificate.id) == col(Account.certificate_id))
_BY_SESSION_CERTIFICATE: Final = _standing_of(
    (col(Certificate.serial) == bindparam("serial")) & (col(Certificate.address) == col(Account.address))
)


def credential_stamp(password_hash: str) -> str:
    """What a session keeps of the password it logged in with (``check``'s ``credential``):
    a digest of its argon2id hash, which every change of the password replaces."""
    return hashlib.sha256(password_hash.encode("utf-8")).hexdigest()[:32]


class LoggedIn(Protocol):
    """What a session that logged in holds of its account (``accounts.UnlockedAccount``)."""

    @property
    def address(self) -> str: ...
    @property
    def certificate(self) -> x509.Certificate: ...
    @property
    def credential(self) -> str | None: ...


def check_session(session: Reader, settings: Settings, account: LoggedIn) -> Standing:
    """``check`` for a session that logged in: the certificate it signs with and the
    password it logged in with, as they were then (a rekey, a revocation or a new password
    ends it). Raises what ``check`` raises."""
    return check(
        session,
        settings,
        account.address,
        certificate_serial=serial_hex(account.certificate.serial_number),
        credential=account.credential,
    )


def check(
    session: Reader,
    settings: Settings,
    address: str,
    *,
    certificate_serial: str | None = None,
    credential: str | None = None,
) -> Standing:
    """Raise a StandingError subclass unless ``address`` may log in and send now.

    ``certificate_serial`` (hex) names the certificate a session signs with (an SMTP
    session keeps the one it opened at AUTH); without it the account's current certificate
    is checked. ``credential`` (``credential_stamp``) is what a mail client's session kept
    of the password it logged in with: a password changed since ends the session. Raises
    AddressNotServed, AccountDisabled, CredentialsChanged, EntryRevoked, CertificateRevoked
    (also for a certificate replaced by a rekey, or none at all), CertificateExpired, and
    StandingError when there is no account.
    """
    address = address.strip().lower()
    if not settings.serves(address):
        raise AddressNotServed(f"{address} is not in a domain served here")
    if certificate_serial is None:
        statement, params = _BY_CURRENT_CERTIFICATE, {"address": address}
    else:
        statement, params = _BY_SESSION_CERTIFICATE, {"address": address, "serial": certificate_serial}
    # A Core statement on the session's connection: the ORM adds nothing to reading columns.
    row = connection_of(session).execute(statement, params).first()
    if row is None:
        raise StandingError(f"there is no account for {address}")
    password_hash, disabled, status, status_reason, status_changed_at, serial, revoked_at, revoked_why, not_after = row
    if disabled:
        raise AccountDisabled()
    if status != ACTIVE:
        if status is None:
            raise EntryRevoked(f"{address} is no longer in the directory")
        reason = status_reason or (INACTIVE_REASON if status == INACTIVE else "")
        since = f" since {_day(status_changed_at)}" if status_changed_at else ""
        raise EntryRevoked(
            f"the directory entry of {address} is revoked{since}" + (f": {reason}" if reason else ""), reason=reason
        )
    if serial is None:
        raise CertificateRevoked(f"{address} has no signing certificate: it must be rekeyed")
    if revoked_at is not None:
        raise CertificateRevoked(
            f"the signing certificate {serial} was revoked on {_day(revoked_at)} ({revoked_why or 'unspecified'})",
            serial=serial,
            revoked_at=revoked_at,
        )
    if not_after <= utcnow():
        raise CertificateExpired(
            f"the signing certificate {serial} expired on {_day(not_after)}: it must be renewed", serial=serial
        )
    # Last: a rekey also stores the password anew, and says more (the certificate).
    if credential is not None and credential_stamp(password_hash) != credential:
        raise CredentialsChanged("the password was changed since this session logged in: log in again")
    return Standing(address=address, certificate_serial=serial, certificate_not_after=not_after)


def end_sessions(session: Session, address: str) -> int:
    """Delete every web and API session of ``address`` (in the caller's transaction)."""
    result = session.execute(delete(WebSession).where(col(WebSession.address) == address.strip().lower()))
    return rowcount(result)
