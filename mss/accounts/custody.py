"""An account's life and its keys: creation, passwords, recovery, rekey, renewal, export.

An account's S/MIME private key never rests in clear: it is wrapped with a key derived from
the password (argon2id) and sealed to the offline recovery public key; its past keys (after
a rekey) are kept the same way so older mail stays readable. Every change is audited in the
caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from directory import certificates, service
from directory.models import Certificate
from mss import audit, standing, throttle
from mss.accounts._common import (
    MIN_PASSWORD_LENGTH,
    Enrolment,
    check_password_policy,
    get_account,
    hash_password,
    open_keys,
    record_change,
    require_account,
    wrap_keys,
    wrapped_keys_of,
)
from mss.accounts.lockout import LOCAL
from mss.accounts.login import authenticate
from mss.accounts.twofactor import enrolment_of, new_totp
from mss.addresses import normalise_address
from mss.crypto import keys, pki
from mss.crypto.master import MasterKey
from mss.db import key_of, session_scope, utcnow
from mss.errors import (
    AccountExists,
    BadCredentials,
    CertificateExpired,
    DomainNotServed,
    KeyUnwrapError,
    PasswordPolicyError,
    StandingError,
)
from mss.models import Account
from mss.settings import Settings


def create_account(
    session: Session, settings: Settings, master_key: MasterKey, address: str, password: str, *, actor: str
) -> Enrolment:
    """Create the account of an active directory entry; return its TOTP enrolment.

    Issues a key pair and certificate when the entry has none usable. Raises UnknownAddress,
    RevokedAddress, AccountExists, PasswordPolicyError.
    """
    address = normalise_address(address)
    if not settings.serves(address):
        raise DomainNotServed(
            f"{address} belongs to another operator's domain: accounts are opened only for "
            f"{', '.join(settings.domains)}"
        )
    entry = service.require_active(session, address)
    address = entry.address
    if get_account(session, address) is not None:
        raise AccountExists(f"an account already exists for {address}")
    check_password_policy(address, password)
    private_key, cert_row = certificates.issue_for_entry(session, settings, address, actor=actor)
    assert private_key is not None  # a new key pair was asked for
    key_der = keys.private_key_to_der(private_key)
    wrapped = wrap_keys(settings, key_der, password)
    recovery_public = keys.load_recovery_public_key(settings.pki.recovery_public_key)
    secret, sealed_secret = new_totp(master_key)
    session.add(
        Account(
            address=address,
            password_hash=hash_password(settings, password),
            key_salt=wrapped.salt,
            key_opslimit=wrapped.opslimit,
            key_memlimit=wrapped.memlimit,
            wrapped_key=wrapped.ciphertext,
            recovery_sealed_key=keys.seal_for_recovery(key_der, recovery_public),
            certificate_id=cert_row.id,
            totp_secret_sealed=sealed_secret,
        )
    )
    audit.record(session, actor=actor, action="account.create", object=address, serial=cert_row.serial)
    session.flush()
    return enrolment_of(settings, address, secret)


def change_password(
    session: Session, settings: Settings, address: str, old_password: str, new_password: str, *, actor: str
) -> None:
    """Re-wrap the private keys (current and past) under the new password.

    Raises BadCredentials, PasswordPolicyError.
    """
    account = require_account(session, address)
    key_der, past = _keys_opened(account, old_password)
    check_password_policy(account.address, new_password)
    _set_password(session, settings, account, key_der, new_password, past)
    audit.record(session, actor=actor, action="account.passwd", object=account.address)


def _keys_opened(account: Account, password: str) -> tuple[bytes, tuple[bytes, ...]]:
    """The account's keys opened with its ``password`` (``open_keys``: one argon2id
    computation). Raises BadCredentials for a wrong password, KeyUnwrapError for a closed
    mailbox (its keys erased)."""
    opened = open_keys(account.password_hash, wrapped_keys_of(account), password)
    if opened is None:
        raise BadCredentials()
    if not opened[0]:
        raise KeyUnwrapError("the account has no keys left: its mailbox was closed")
    return opened


def _set_password(
    session: Session, settings: Settings, account: Account, key_der: bytes, password: str, past: tuple[bytes, ...]
) -> None:
    wrapped = wrap_keys(settings, key_der, password, past)
    account.password_hash = hash_password(settings, password)
    account.key_salt = wrapped.salt
    account.key_opslimit = wrapped.opslimit
    account.key_memlimit = wrapped.memlimit
    account.wrapped_key = wrapped.ciphertext
    account.past_keys_wrapped = wrapped.past_ciphertext
    account.failed_logins = 0
    account.factor_failures = 0
    account.locked_until = None
    account.updated_at = utcnow()
    session.add(account)
    throttle.clear_account(session, account.address)


def _escrow(settings: Settings, account: Account, key_der: bytes, past: tuple[bytes, ...]) -> None:
    """Seal the current and past keys to the offline recovery public key."""
    recovery_public = keys.load_recovery_public_key(settings.pki.recovery_public_key)
    account.recovery_sealed_key = keys.seal_for_recovery(key_der, recovery_public)
    account.past_keys_recovery_sealed = keys.seal_for_recovery(keys.pack_keys(past), recovery_public) if past else b""


def _open_escrow(account: Account, recovery_private_key_file: Path) -> tuple[bytes, tuple[bytes, ...]]:
    recovery_private = keys.load_recovery_private_key(recovery_private_key_file)
    key_der = keys.open_recovery(account.recovery_sealed_key, recovery_private)
    past: tuple[bytes, ...] = ()
    if account.past_keys_recovery_sealed:
        past = keys.unpack_keys(keys.open_recovery(account.past_keys_recovery_sealed, recovery_private))
    return key_der, past


def recover_account(
    session: Session,
    settings: Settings,
    address: str,
    recovery_private_key_file: Path,
    new_password: str,
    *,
    actor: str,
) -> None:
    """Open the escrowed private keys with the offline recovery key and set a new password.

    Raises NoSuchAccount, CryptoError (wrong recovery key), PasswordPolicyError.
    """
    account = require_account(session, address)
    check_password_policy(account.address, new_password)
    key_der, past = _open_escrow(account, recovery_private_key_file)
    _set_password(session, settings, account, key_der, new_password, past)
    standing.end_sessions(session, account.address)
    audit.record(session, actor=actor, action="account.recover", object=account.address)


@dataclass(frozen=True)
class Rekeyed:
    """A rekey's outcome: the new certificate and the ones it revoked."""

    address: str
    serial: str
    not_after: object
    revoked_serials: tuple[str, ...]


def rekey(
    session: Session,
    settings: Settings,
    address: str,
    *,
    actor: str,
    password: str | None = None,
    recovery_private_key_file: Path | None = None,
    new_password: str | None = None,
    reason: str = "superseded",
    request_id: str = "",
) -> Rekeyed:
    """A new key pair and certificate for the account; the old certificates are revoked.

    The account's keys are opened with its ``password``, or with the offline recovery key
    (``recovery_private_key_file``, then ``new_password`` becomes the password). The old
    key joins the account's past keys (wrapped and escrowed like the current one), so mail
    encrypted to it stays readable; the old certificates are revoked with ``reason``
    (``superseded`` by default, ``keyCompromise`` after a compromise) and published in the
    CRL. Every web and API session ends; an SMTP session that authenticated with the old
    certificate is refused at its next MAIL. Raises NoSuchAccount, BadCredentials,
    PasswordPolicyError, CryptoError (wrong recovery key), DomainNotServed, RevokedAddress,
    PkiError.
    """
    flag = pki.revocation_reason(reason)
    account = require_account(session, address)
    if password is not None:
        key_der, past = _keys_opened(account, password)
        wrap_password = password
    else:
        if recovery_private_key_file is None or new_password is None:
            raise PasswordPolicyError("a rekey needs the account password, or the recovery key and a new password")
        check_password_policy(account.address, new_password)
        key_der, past = _open_escrow(account, recovery_private_key_file)
        wrap_password = new_password
    private_key, row = certificates.issue_for_entry(
        session, settings, account.address, actor=actor, request_id=request_id
    )
    assert private_key is not None  # a new key pair was asked for
    new_der = keys.private_key_to_der(private_key)
    revoked = certificates.revoke_for_address(
        session, settings, account.address, reason=flag.value, actor=actor, request_id=request_id, keep=(key_of(row),)
    )
    past = (key_der, *past)
    _set_password(session, settings, account, new_der, wrap_password, past)
    _escrow(settings, account, new_der, past)
    account.certificate_id = row.id
    session.add(account)
    standing.end_sessions(session, account.address)
    audit.record(
        session,
        actor=actor,
        action="account.rekey",
        object=account.address,
        request_id=request_id,
        serial=row.serial,
        revoked=[r.serial for r in revoked],
        reason=flag.value,
        with_recovery_key=password is None,
    )
    session.flush()
    return Rekeyed(account.address, row.serial, row.not_after, tuple(r.serial for r in revoked))


@dataclass(frozen=True)
class Renewal:
    """What ``renew_certificates`` did: renewed accounts, and those it could not renew."""

    renewed: tuple[tuple[str, str, object], ...]  # (address, new serial, new end)
    skipped: tuple[tuple[str, str], ...]  # (address or serial, why)


def renew_certificates(session: Session, settings: Settings, *, within_days: int, actor: str) -> Renewal:
    """Renew the certificates that end within ``within_days``, keeping each key pair.

    An account in standing gets a new certificate for its current key (no password is
    needed: the public key is in the certificate), published and made current; the old one
    stays valid until it ends. Accounts that may not have one (disabled, revoked entry,
    revoked certificate: those need ``mss account rekey``) and certificates whose key is
    not held here (``mss pki issue``: issue a new one) are listed with the reason.
    """
    cutoff = utcnow() + timedelta(days=within_days)
    renewed: list[tuple[str, str, object]] = []
    skipped: list[tuple[str, str]] = []
    due = session.execute(
        select(Account, Certificate)
        .join(Certificate, col(Certificate.id) == col(Account.certificate_id))
        .where(col(Certificate.not_after) <= cutoff)
        .order_by(col(Account.address))
    ).all()
    for account, current in due:
        try:
            standing.check(session, settings, account.address, certificate_serial=current.serial)
        except StandingError as exc:
            if not isinstance(exc, CertificateExpired):
                skipped.append((account.address, exc.message))
                continue
        certificate = x509.load_der_x509_certificate(current.der)
        public_key = certificate.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            skipped.append((account.address, "the key is not an RSA key: rekey it"))
            continue
        _none, row = certificates.issue_for_entry(
            session, settings, account.address, actor=actor, public_key=public_key
        )
        account.certificate_id = row.id
        record_change(session, account, "pki.renew", actor=actor, serial=row.serial, previous=current.serial)
        renewed.append((account.address, row.serial, row.not_after))
    held = set(session.execute(select(col(Account.address))).scalars())
    external = session.execute(
        select(col(Certificate.address), col(Certificate.serial))
        .where(col(Certificate.usage) == certificates.SMIME, col(Certificate.revoked_at).is_(None))
        .where(col(Certificate.not_after) <= cutoff, col(Certificate.not_after) > utcnow())
        .order_by(col(Certificate.address))
    ).all()
    newest: dict[str, str] = {}
    for address, serial in external:
        if address not in held:
            newest[address] = serial
    for address, serial in newest.items():
        skipped.append(
            (address, f"certificate {serial}: its key is held by its owner; issue a new one with `mss pki issue`")
        )
    session.flush()
    return Renewal(tuple(renewed), tuple(skipped))


def expiring_certificates(session: Session, settings: Settings) -> list[tuple[str, object]]:
    """Accounts whose current certificate ends within ``MSS_CERT_WARNING_DAYS``: (address, end)."""
    cutoff = utcnow() + timedelta(days=settings.pki.expiry_warning_days)
    return [
        (address, not_after)
        for address, not_after in session.execute(
            select(col(Account.address), col(Certificate.not_after))
            .join(Certificate, col(Certificate.id) == col(Account.certificate_id))
            .where(col(Certificate.not_after) <= cutoff, col(Certificate.revoked_at).is_(None))
            .order_by(col(Certificate.not_after))
        )
    ]


def set_disabled(session: Session, address: str, disabled: bool, *, actor: str) -> None:
    """Disable (or enable again) an account. Raises NoSuchAccount."""
    account = require_account(session, address)
    account.disabled = disabled
    if disabled:
        standing.end_sessions(session, account.address)
    record_change(session, account, "account.disable" if disabled else "account.enable", actor=actor)


def set_admin(session: Session, address: str, admin: bool, *, actor: str) -> None:
    """Grant (or withdraw) the administrator role: the activity pages under ``/admin``.
    Raises NoSuchAccount."""
    account = require_account(session, address)
    account.is_admin = admin
    record_change(session, account, "account.admin" if admin else "account.admin-withdrawn", actor=actor)


def is_admin(session: Session, address: str) -> bool:
    """True when ``address`` has an open, enabled account with the administrator role."""
    account = get_account(session, address)
    return account is not None and account.is_admin and not account.disabled and account.closed_at is None


def export_key(
    engine: Engine,
    settings: Settings,
    address: str,
    password: str,
    export_password: str,
    *,
    actor: str,
    profile: str = keys.PKCS12_STRONG,
) -> bytes:
    """The account's key and certificate as PKCS#12 under ``export_password``, in the
    ``profile`` of ``keys.export_pkcs12`` (``strong`` or ``compatible``).

    Authenticates with the account password first (audited, counts towards lockout).
    Raises BadCredentials, AccountLocked, AccountDisabled, PasswordPolicyError.
    """
    if len(export_password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the export password must have at least {MIN_PASSWORD_LENGTH} characters")
    unlocked = authenticate(engine, settings, address, password, LOCAL)
    ca = pki.load_ca(settings)
    blob = keys.export_pkcs12(
        unlocked.private_key,
        unlocked.certificate,
        ca.certificate,
        export_password,
        friendly_name=unlocked.address,
        profile=profile,
    )
    with session_scope(engine) as session:
        audit.record(session, actor=actor, action="account.export-key", object=unlocked.address)
    return blob


def issue_external_certificate(
    session: Session,
    settings: Settings,
    address: str,
    export_password: str,
    *,
    actor: str,
    profile: str = keys.PKCS12_STRONG,
) -> tuple[Certificate, bytes]:
    """Issue a certificate for an entry whose owner keeps the key in their own mail client.

    Returns the stored certificate row and the key with its chain as PKCS#12 under
    ``export_password`` (the key is not kept here). An address with an account is refused:
    its key is the account's. Raises AccountExists, DomainNotServed, UnknownAddress,
    RevokedAddress, PasswordPolicyError.
    """
    if len(export_password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the export password must have at least {MIN_PASSWORD_LENGTH} characters")
    if get_account(session, address) is not None:
        raise AccountExists(
            f"{normalise_address(address)} has an account, which holds its key: use `mss account export-key`, "
            "or `mss account rekey` for a new key and certificate"
        )
    private_key, row = certificates.issue_for_entry(session, settings, address, actor=actor)
    assert private_key is not None  # a new key pair was asked for
    blob = keys.export_pkcs12(
        private_key,
        x509.load_der_x509_certificate(row.der),
        pki.load_ca_certificate(settings),
        export_password,
        friendly_name=row.address,
        profile=profile,
    )
    return row, blob
