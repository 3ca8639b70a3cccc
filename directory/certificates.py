"""The directory's certificates: issuance for an entry, revocation and the CRL, lookup, and
the operator's own receipt-signing identity.

The ``certificate`` table is the record of everything the operator's CA issued; the CRL file
(``ca.crl.pem``) is derived from it. A revocation rewrites the CRL only once its transaction
has committed, so a rolled-back revocation never reaches the file, and writers are
serialised (PostgreSQL advisory lock; SQLite's write lock) so the newest CRL always lists
every committed revocation.

Private keys are returned to the caller, never stored here in clear: the accounts service
wraps a user's key; the operator's key is sealed with the master key in ``sealed_secret``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import and_, bindparam, event, select, text
from sqlmodel import Session, col

from directory import service
from directory.models import ACTIVE, Certificate, DirectoryEntry
from mss import audit, standing
from mss.addresses import normalise_address
from mss.crypto import keys, pki
from mss.crypto.keys import PrivateKey
from mss.crypto.master import MasterKey
from mss.db import Reader, connection_of, table_of, utcnow
from mss.errors import ConfigError, DirectoryError, DomainNotServed, PkiError, RevokedAddress, UnknownAddress
from mss.models import SealedSecret
from mss.settings import Settings

SMIME = "smime"
OPERATOR = "operator"  # Certificate.address and usage of the operator's own certificate
OPERATOR_KEY_SECRET = "operator-signing-key"
# The CRL is refreshed when it has less than this left before its nextUpdate.
CRL_REFRESH_MARGIN = timedelta(days=1)
CRL_NEXT_UPDATE_DAYS = 7
# An operator certificate this close to its end is replaced before it is used again.
OPERATOR_RENEW_MARGIN = timedelta(days=30)

_CRL_LOCK = 74582
_OPERATOR_LOCK = 74583
_PENDING_CRL = "mss.pending_crl"
_CRL_HOOKED = "mss.crl_hooked"
_CRL_NOT_WRITTEN = "mss.crl_not_written"

log = logging.getLogger("mss.pki")


@dataclass(frozen=True)
class TrustMaterial:
    """What signature verification trusts: the CA certificates and their CRLs (DER)."""

    roots: list[x509.Certificate]
    crls: list[bytes]


def _normalise(address: str) -> str:
    """The stored form of ``address`` (mss.addresses), which must be an address or OPERATOR."""
    if not isinstance(address, str):
        raise UnknownAddress(str(address))
    address = normalise_address(address)
    if "@" not in address and address != OPERATOR:
        raise UnknownAddress(address)
    return address


def _lock(session: Session, key: int) -> None:
    # PostgreSQL: a transaction-scoped advisory lock. SQLite: every transaction already
    # begins IMMEDIATE (mss.db), which holds the database's single write lock.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _row(certificate: x509.Certificate, *, address: str, usage: str) -> Certificate:
    return Certificate(
        address=address,
        usage=usage,
        serial=pki.serial_hex(certificate.serial_number),
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        subject=certificate.subject.rfc4514_string()[:500],
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        der=certificate.public_bytes(serialization.Encoding.DER),
    )


class _Terms(TypedDict):
    """What this operator's settings fix for every S/MIME certificate its CA issues."""

    key_bits: int
    days: int
    crl_url: str


def _terms(settings: Settings) -> _Terms:
    return _Terms(key_bits=settings.pki.user_key_bits, days=settings.pki.certificate_days, crl_url=settings.pki.crl_url)


def _identity(entry: DirectoryEntry) -> tuple[str, str | None, str | None]:
    """Common name, organisation and national identifier for an entry's certificate."""
    organisation = entry.org_name or entry.org_trade_name or None
    if entry.kind == "PER":
        common_name = " ".join(p for p in (entry.first_name, entry.last_name) if p) or entry.address
        national_id = entry.national_id or (entry.rpps_type + entry.rpps if entry.rpps else "")
    else:
        # An organisation's mailbox: the service's name, its structure's identifier
        # (type prefix + number, like the national identifier of a person).
        common_name = entry.service or organisation or entry.address
        national_id = entry.org_id_type + entry.org_id if entry.org_id else ""
    return common_name, organisation, national_id or None


def issue_for_entry(
    session: Session,
    settings: Settings,
    address: str,
    *,
    actor: str,
    request_id: str = "",
    public_key: rsa.RSAPublicKey | None = None,
) -> tuple[rsa.RSAPrivateKey | None, Certificate]:
    """Issue an S/MIME certificate for an active directory entry of a served domain.

    A new key pair, unless ``public_key`` is given (a renewal keeps the key pair; the private
    key returned is then None). Stores the certificate row and an audit event ``pki.issue``
    in the caller's transaction and returns the private key (for the caller to wrap; it is
    not stored here) with the row. Earlier certificates of the address stay as they are:
    the newest is the current one. Raises DomainNotServed (another operator's address is
    never certified here), UnknownAddress, RevokedAddress, or PkiError when the CA is
    unavailable.
    """
    address = _normalise(address)
    if not settings.serves(address):
        raise DomainNotServed(
            f"{address} belongs to another operator's domain:"
            f" certificates are issued only for {', '.join(settings.domains)}"
        )
    entry = session.execute(select(DirectoryEntry).where(col(DirectoryEntry.address) == address)).scalars().first()
    if entry is None:
        raise UnknownAddress(address)
    if entry.status != ACTIVE:
        raise RevokedAddress(address, entry.status_reason or entry.status)
    common_name, organisation, national_id = _identity(entry)
    ca = pki.load_ca(settings)
    key, certificate = pki.issue_smime_certificate(
        ca,
        address=address,
        rpps_national_id=national_id,
        common_name=common_name,
        organisation=organisation,
        public_key=public_key,
        **_terms(settings),
    )
    row = _row(certificate, address=address, usage=SMIME)
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="pki.issue",
        object=address,
        request_id=request_id,
        serial=row.serial,
        usage=SMIME,
        renewal=public_key is not None,
    )
    return key, row


def _current_query(addresses: Iterable[str], usage: str):
    now = utcnow()
    return (
        select(Certificate)
        .where(col(Certificate.address).in_(list(addresses)))
        .where(col(Certificate.usage) == usage)
        .where(col(Certificate.revoked_at).is_(None))
        .where(col(Certificate.not_before) <= now)
        .where(col(Certificate.not_after) > now)
        .order_by(col(Certificate.not_before).desc(), col(Certificate.id).desc())
    )


def certificate_row(session: Session, address: str, *, usage: str = SMIME) -> Certificate | None:
    """The current certificate row of ``address``: the newest one neither revoked nor expired."""
    return session.execute(_current_query([_normalise(address)], usage).limit(1)).scalars().first()


def ever_issued(session: Session, address: str) -> bool:
    """True when ``address`` has, or had, a certificate here (revoked, expired or current)."""
    found = session.execute(select(col(Certificate.id)).where(col(Certificate.address) == _normalise(address)).limit(1))
    return found.first() is not None


def current_certificate(session: Session, address: str) -> x509.Certificate | None:
    """The current S/MIME certificate of ``address``, or None when it has none."""
    row = certificate_row(session, address)
    return None if row is None else x509.load_der_x509_certificate(row.der)


def current_certificates(session: Session, addresses: Iterable[str]) -> dict[str, x509.Certificate]:
    """The current S/MIME certificate of each address that has one, in one query."""
    wanted = {_normalise(a) for a in addresses}
    found: dict[str, x509.Certificate] = {}
    if not wanted:
        return found
    for row in session.execute(_current_query(wanted, SMIME)).scalars():
        if row.address not in found:  # rows come newest first
            found[row.address] = x509.load_der_x509_certificate(row.der)
    return found


# The conditions on a certificate row that make it current for the "usage" parameter at
# "now": issued for it, not revoked, within its validity.
_CERTIFICATES = table_of(Certificate)
_IS_CURRENT = and_(
    _CERTIFICATES.c.usage == bindparam("usage"),
    _CERTIFICATES.c.revoked_at.is_(None),
    _CERTIFICATES.c.not_before <= bindparam("now"),
    _CERTIFICATES.c.not_after > bindparam("now"),
)
_NEWEST_FIRST = (_CERTIFICATES.c.not_before.desc(), _CERTIFICATES.c.id.desc())
# The current certificates of some addresses for one usage, newest first, as columns:
# built once (statement construction costs more than running it on a look-up per
# recipient, or per receipt for the operator's own).
_CURRENT_CERTIFICATES = (
    select(_CERTIFICATES.c.address, _CERTIFICATES.c.der, _CERTIFICATES.c.not_after)
    .where(_CERTIFICATES.c.address.in_(bindparam("addresses", expanding=True)))
    .where(_IS_CURRENT)
    .order_by(*_NEWEST_FIRST)
)
# The directory entries of some addresses, each with the DER of a current certificate if it
# has one (newest first), as ``service.entry_verdicts`` reads them.
_ENTRIES = table_of(DirectoryEntry)
_ENTRIES_WITH_CURRENT = (
    select(_ENTRIES.c.address, _ENTRIES.c.status, _ENTRIES.c.status_reason, _CERTIFICATES.c.der)
    .select_from(_ENTRIES.outerjoin(_CERTIFICATES, and_(_CERTIFICATES.c.address == _ENTRIES.c.address, _IS_CURRENT)))
    .where(_ENTRIES.c.address.in_(bindparam("addresses", expanding=True)))
    .order_by(*_NEWEST_FIRST)
)


def _current_rows(session: Reader, addresses: list[str], usage: str) -> Iterable[tuple[str, bytes, datetime]]:
    """Address, DER and end of the current certificates of ``addresses`` for ``usage``,
    newest first."""
    now = utcnow()
    return connection_of(session).execute(_CURRENT_CERTIFICATES, {"addresses": addresses, "usage": usage, "now": now})


def active_with_certificate_ders(
    session: Reader, addresses: Iterable[str]
) -> tuple[dict[str, str | DirectoryError], dict[str, bytes]]:
    """For each of ``addresses``, what ``service.require_active_many`` says, and the DER of
    the current S/MIME certificate of each active entry that has one (by stored address):
    both in one query of four columns, without loading rows or parsing (a recipient check at
    each RCPT, and again at DATA)."""
    verdicts, rows = service.entry_verdicts(
        session, addresses, _ENTRIES_WITH_CURRENT, {"usage": SMIME, "now": utcnow()}
    )
    active = {verdict for verdict in verdicts.values() if isinstance(verdict, str)}
    ders = {address: row[3] for address, row in rows.items() if row[3] is not None and address in active}
    return verdicts, ders


def certificate_by_serial(session: Session, serial: int | str) -> Certificate | None:
    """The row of a certificate the operator issued, by serial: a number, or hex with or
    without colons (as openssl prints it). Raises PkiError for text that is not hex."""
    if isinstance(serial, str):
        try:
            serial = int(serial.replace(":", "").strip(), 16)
        except ValueError:
            raise PkiError(f"{serial!r} is not a hexadecimal serial number") from None
    serial_hex = pki.serial_hex(serial)
    return session.execute(select(Certificate).where(col(Certificate.serial) == serial_hex)).scalars().first()


# -- revocation and the CRL --------------------------------------------------------------


def listed_revocations(session: Reader) -> list[tuple[int, datetime, str]]:
    """What the CRL lists: ``(serial, revoked_at, reason)`` of every revoked certificate
    that has not expired (RFC 5280 3.3: an expired one may leave the list; it is refused
    anyway), in the order of their revocations."""
    rows = (
        connection_of(session)
        .execute(
            select(col(Certificate.serial), col(Certificate.revoked_at), col(Certificate.revocation_reason))
            .where(col(Certificate.revoked_at).is_not(None))
            .where(col(Certificate.not_after) > utcnow())
            .order_by(col(Certificate.revoked_at))
        )
        .all()
    )
    return [
        (int(serial, 16), revoked_at, reason or "unspecified")
        for serial, revoked_at, reason in rows
        if revoked_at is not None  # the query's own condition, for the type
    ]


def _build_crl_from_rows(session: Session, ca: pki.CertificateAuthority) -> x509.CertificateRevocationList:
    return pki.build_crl(ca, listed_revocations(session), next_update_days=CRL_NEXT_UPDATE_DAYS)


def _write_pending_crl(session: Session) -> None:
    """After the commit of a revocation: the CRL that lists it. The revocation holds by then
    (no door lets the certificate log in, send or be encrypted to): a CRL file that cannot
    be written is logged and noted for the caller (``crl_not_written``), not raised, which
    would report the committed revocation as failed; ``refresh_crl`` (`mss pki crl`) writes it
    later."""
    pending = session.info.pop(_PENDING_CRL, None)
    if pending is not None:
        settings, crl = pending
        try:
            pki.write_crl(settings, crl)
        except (OSError, PkiError) as exc:
            reason = exc.message if isinstance(exc, PkiError) else (exc.strerror or type(exc).__name__)
            session.info[_CRL_NOT_WRITTEN] = reason
            log.error("a revocation is committed but the CRL could not be written (%s): run `mss pki crl`", reason)


def crl_not_written(session: Session) -> str | None:
    """Why the CRL of a revocation this session committed could not be written, or None."""
    return session.info.get(_CRL_NOT_WRITTEN)


def _drop_pending_crl(session: Session, previous_transaction: object = None) -> None:
    session.info.pop(_PENDING_CRL, None)


def _write_crl_after_commit(session: Session, settings: Settings, crl: x509.CertificateRevocationList) -> None:
    session.info[_PENDING_CRL] = (settings, crl)
    if not session.info.get(_CRL_HOOKED):
        event.listen(session, "after_commit", _write_pending_crl)
        event.listen(session, "after_soft_rollback", _drop_pending_crl)
        session.info[_CRL_HOOKED] = True


def revoke_for_address(
    session: Session,
    settings: Settings,
    address: str,
    *,
    reason: str,
    actor: str,
    request_id: str = "",
    keep: Iterable[int] = (),
) -> list[Certificate]:
    """Revoke every unrevoked certificate of ``address`` (an RFC 5280 ``reason`` such as
    ``keyCompromise``, ``affiliationChanged``, ``cessationOfOperation``, ``superseded``),
    except the rows whose ids are in ``keep`` (a rekey keeps the certificate it just issued).

    Ends the address's web and API sessions, records an audit event ``pki.revoke`` and
    schedules the CRL rewrite for when the caller's transaction commits. Returns the revoked
    rows (empty when there was nothing to revoke; no event then). Raises PkiError for an
    unknown reason or an unavailable CA.
    """
    flag = pki.revocation_reason(reason)
    address = _normalise(address)
    _lock(session, _CRL_LOCK)
    query = select(Certificate).where(col(Certificate.address) == address).where(col(Certificate.revoked_at).is_(None))
    kept = list(keep)
    if kept:
        query = query.where(col(Certificate.id).not_in(kept))
    rows = list(session.execute(query).scalars())
    if not rows:
        return []
    standing.end_sessions(session, address)
    ca = pki.load_ca(settings)
    now = utcnow()
    for row in rows:
        row.revoked_at = now
        row.revocation_reason = flag.value
        session.add(row)
    session.flush()
    _write_crl_after_commit(session, settings, _build_crl_from_rows(session, ca))
    audit.record(
        session,
        actor=actor,
        action="pki.revoke",
        object=address,
        request_id=request_id,
        serials=[row.serial for row in rows],
        reason=flag.value,
    )
    return rows


def refresh_crl(session: Session, settings: Settings) -> x509.CertificateRevocationList:
    """Rebuild the CRL from the committed revocations and install it now.

    Raises PkiError when the CA key is unavailable or the CRL file cannot be written.
    """
    ca = pki.load_ca(settings)
    _lock(session, _CRL_LOCK)
    crl = _build_crl_from_rows(session, ca)
    try:
        pki.write_crl(settings, crl)
    except OSError as exc:
        path = pki.PkiPaths.from_settings(settings).crl
        raise PkiError(f"the CRL could not be written to {path}: {exc.strerror or type(exc).__name__}") from exc
    return crl


def trust_material(session: Session, settings: Settings) -> TrustMaterial:
    """The trust root and its CRL for :func:`mss.crypto.verify.verify_signed_data`.

    A missing CRL, or one within a day of its nextUpdate, is rebuilt first when the CA key
    is here (the development CA, or an operator CA kept by this service); otherwise the
    file is used as it is and a stale list makes signatures "untrusted", as it should.
    Raises PkiError when there is no CA certificate.
    """
    root = pki.load_ca_certificate(settings)
    crl = pki.load_crl(settings)
    stale = crl is None or crl.next_update_utc is None or crl.next_update_utc < utcnow() + CRL_REFRESH_MARGIN
    if stale and pki.PkiPaths.from_settings(settings).ca_key.exists():
        crl = refresh_crl(session, settings)
    crls = [crl.public_bytes(serialization.Encoding.DER)] if crl is not None else []
    return TrustMaterial(roots=[root], crls=crls)


# -- the operator's own identity ---------------------------------------------------------


def operator_address(settings: Settings) -> str:
    """The address in the operator's certificate: postmaster of the first served domain."""
    if not settings.domains:
        raise ConfigError("MSS_DOMAINS names no domain")
    return f"postmaster@{settings.domains[0]}"


def current_operator_identity(session: Session, master_key: MasterKey) -> tuple[PrivateKey, x509.Certificate] | None:
    """The operator's receipt-signing key and certificate as they stand, or None when they
    must be made (none yet, revoked, or within 30 days of the end). Reads only: it may run
    in a read-only transaction. Raises CryptoError when the sealed key does not open."""
    # Columns only, and what was opened and parsed kept by its bytes: a receipt is signed
    # with this identity, and loading ORM rows cost more than the signature.
    sealed = session.execute(_OPERATOR_SECRET_QUERY).scalar()
    if sealed is None:
        return None
    key = _operator_key(master_key, sealed)
    cutoff = utcnow() + OPERATOR_RENEW_MARGIN
    for _address, der, not_after in _current_rows(session, [OPERATOR], OPERATOR):
        certificate = _operator_certificate(key, der)
        if not_after > cutoff and certificate is not None:
            return key, certificate
    return None


_OPERATOR_SECRET_QUERY = select(col(SealedSecret.value)).where(col(SealedSecret.name) == OPERATOR_KEY_SECRET)
# The operator's certificates as parsed, by their DER, with whether each carries the public
# half of the key they were checked against (a new key is another entry).
_OPERATOR_CERTIFICATES: dict[tuple[PrivateKey, bytes], x509.Certificate | None] = {}


def _operator_certificate(key: PrivateKey, der: bytes) -> x509.Certificate | None:
    """The certificate of ``der`` when it carries ``key``'s public half, else None."""
    if (key, der) not in _OPERATOR_CERTIFICATES:
        certificate = x509.load_der_x509_certificate(der)
        if len(_OPERATOR_CERTIFICATES) >= 16:
            _OPERATOR_CERTIFICATES.clear()
        _OPERATOR_CERTIFICATES[(key, der)] = certificate if keys.key_matches_certificate(key, certificate) else None
    return _OPERATOR_CERTIFICATES[(key, der)]


# The operator's key as opened from its sealed form, by the master key that opened it and
# those sealed bytes (a new key is new bytes). Parsing an RSA key with its checks costs
# more than signing a receipt with it.
_OPENED_KEYS: dict[tuple[MasterKey, bytes], PrivateKey] = {}


def _operator_key(master_key: MasterKey, sealed: bytes) -> PrivateKey:
    key = _OPENED_KEYS.get((master_key, sealed))
    if key is None:
        opened = keys.private_key_from_der(master_key.open(sealed), authenticated=True)  # RSA or EC
        _OPENED_KEYS.clear()  # one operator key at a time
        key = _OPENED_KEYS[(master_key, sealed)] = opened
    return key


def operator_identity(
    session: Session, settings: Settings, master_key: MasterKey
) -> tuple[PrivateKey, x509.Certificate]:
    """The operator's receipt-signing key and certificate, created on first use.

    The key is kept in ``sealed_secret`` (``operator-signing-key``) sealed with the master
    key; a new pair replaces it when the certificate is revoked or within 30 days of its
    end. Raises PkiError when the CA is unavailable, CryptoError when the sealed key does
    not open with this master key.
    """
    _lock(session, _OPERATOR_LOCK)
    current = current_operator_identity(session, master_key)
    if current is not None:
        return current
    secret = session.get(SealedSecret, OPERATOR_KEY_SECRET)
    ca = pki.load_ca(settings)
    key, certificate = pki.issue_operator_certificate(
        ca, address=operator_address(settings), key_type=settings.pki.operator_key, **_terms(settings)
    )
    sealed = master_key.seal(keys.private_key_to_der(key))
    if secret is None:
        session.add(SealedSecret(name=OPERATOR_KEY_SECRET, value=sealed))
    else:
        secret.value = sealed
        secret.created_at = utcnow()
        session.add(secret)
    row = _row(certificate, address=OPERATOR, usage=OPERATOR)
    session.add(row)
    session.flush()
    audit.record(session, actor="system", action="pki.issue", object=OPERATOR, serial=row.serial, usage=OPERATOR)
    return key, certificate
