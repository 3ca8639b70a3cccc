"""Accounts: a login for a directory address, its wrapped private key and its second factor.

An account's S/MIME private key never rests in clear: it is wrapped with a key derived from
the password (argon2id) and sealed to the offline recovery public key. ``authenticate``
unwraps it in memory for the caller (the relay signs with it; the web keeps it encrypted
under a per-session key). Every change and every login outcome is audited.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property, lru_cache
from pathlib import Path

import pyotp
from cryptography import x509
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from directory import certificates, service
from directory.models import Certificate
from mss import audit
from mss.crypto import keys
from mss.crypto.master import MasterKey
from mss.db import session_scope, utcnow
from mss.errors import (
    AccountDisabled,
    AccountExists,
    AccountLocked,
    BadCredentials,
    BadTotp,
    NoSuchAccount,
    PasswordPolicyError,
)
from mss.models import Account, WebSession
from mss.settings import Settings

MIN_PASSWORD_LENGTH = 12
TOTP_STEP = 30
# Failures that count towards the lockout (a locked or disabled account does not re-lock).
COUNTED_FAILURES = frozenset({"bad-password", "bad-totp", "bad-recovery-code"})


@dataclass(frozen=True)
class Enrolment:
    """What a person needs to enrol their authenticator app (shown once, never stored in clear)."""

    address: str
    otpauth_uri: str


@dataclass(frozen=True)
class UnlockedAccount:
    """An authenticated account with its private key opened in memory."""

    address: str
    private_key_der: bytes = field(repr=False)  # never in a log line or a traceback
    certificate: x509.Certificate

    @cached_property
    def private_key(self) -> keys.PrivateKey:
        """The key object, loaded once (an SMTP session signs every message with it)."""
        return keys.private_key_from_der(self.private_key_der, authenticated=True)


def check_password_policy(address: str, password: str) -> None:
    """Raise PasswordPolicyError unless the password is long enough and not the address."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if password.strip().lower() in {address.lower(), address.split("@")[0].lower()}:
        raise PasswordPolicyError("the password must not be the address")
    if len(set(password)) < 5:
        raise PasswordPolicyError("the password must not repeat the same few characters")


def _normalise(address: str) -> str:
    return address.strip().lower()


def get_account(session: Session, address: str) -> Account | None:
    return session.execute(select(Account).where(Account.address == _normalise(address))).scalars().first()


def _require_account(session: Session, address: str) -> Account:
    account = get_account(session, address)
    if account is None:
        raise NoSuchAccount(f"no account for {_normalise(address)}")
    return account


def _new_totp(master_key: MasterKey) -> tuple[str, bytes]:
    secret = pyotp.random_base32(32)
    return secret, master_key.seal(secret.encode("ascii"))


def _enrolment(settings: Settings, address: str, secret: str) -> Enrolment:
    uri = pyotp.TOTP(secret).provisioning_uri(name=address, issuer_name=settings.security.totp_issuer)
    return Enrolment(address=address, otpauth_uri=uri)


def _wrap(settings: Settings, key_der: bytes, password: str) -> keys.WrappedKey:
    return keys.wrap_private_key(
        key_der,
        password,
        opslimit=settings.security.argon2_opslimit,
        memlimit=settings.security.argon2_memlimit,
    )


def _hash(settings: Settings, password: str) -> str:
    return keys.hash_password(
        password, opslimit=settings.security.argon2_opslimit, memlimit=settings.security.argon2_memlimit
    )


def create_account(
    session: Session, settings: Settings, master_key: MasterKey, address: str, password: str, *, actor: str
) -> Enrolment:
    """Create the account of an active directory entry; return its TOTP enrolment.

    Issues a key pair and certificate when the entry has none usable. Raises UnknownAddress,
    RevokedAddress, AccountExists, PasswordPolicyError.
    """
    entry = service.require_active(session, address)
    address = entry.address
    if get_account(session, address) is not None:
        raise AccountExists(f"an account already exists for {address}")
    check_password_policy(address, password)
    private_key, cert_row = certificates.issue_for_entry(session, settings, address, actor=actor)
    key_der = keys.private_key_to_der(private_key)
    wrapped = _wrap(settings, key_der, password)
    recovery_public = keys.load_recovery_public_key(settings.pki.recovery_public_key)
    secret, sealed_secret = _new_totp(master_key)
    session.add(
        Account(
            address=address,
            password_hash=_hash(settings, password),
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
    return _enrolment(settings, address, secret)


@lru_cache(maxsize=4)
def _dummy_hash(opslimit: int, memlimit: int) -> str:
    # Checked against when the address has no account, so that "no such account" costs
    # the same argon2id work as "wrong password" and timing tells nothing.
    return keys.hash_password(secrets.token_urlsafe(24), opslimit=opslimit, memlimit=memlimit)


def _record_failure(engine: Engine, settings: Settings, address: str, channel: str, request_id: str, why: str) -> None:
    record_failure(engine, settings, address, action=f"{channel}.login", reason=why, request_id=request_id)


def record_failure(engine: Engine, settings: Settings, address: str, *, action: str, reason: str,
                   request_id: str = "") -> None:
    """Audit a failed authentication step; a wrong secret counts towards the lockout.

    ``reason`` in COUNTED_FAILURES increments the account's failures and locks it for
    ``lockout_seconds`` after ``max_login_failures`` of them (the one lockout rule for
    passwords, TOTP codes and recovery codes, whatever the door).
    """
    with session_scope(engine) as session:
        account = get_account(session, address)
        locked = False
        if account is not None and reason in COUNTED_FAILURES:
            account.failed_logins += 1
            if account.failed_logins >= settings.security.max_login_failures:
                account.locked_until = utcnow() + timedelta(seconds=settings.security.lockout_seconds)
                account.failed_logins = 0
                locked = True
            account.updated_at = utcnow()
            session.add(account)
        audit.record(
            session,
            actor=address or "-",
            action=action,
            object=address,
            outcome=audit.FAILURE,
            request_id=request_id,
            reason=reason,
        )
        if locked:
            audit.record(
                session, actor="system", action="account.lock", object=address, request_id=request_id,
                seconds=settings.security.lockout_seconds,
            )


def authenticate(
    engine: Engine, settings: Settings, address: str, password: str, *, channel: str, request_id: str = ""
) -> UnlockedAccount:
    """Check the password and open the private key in memory.

    ``channel`` names the door (``smtp``, ``web``, ``cli``) for the audit trail. Raises
    BadCredentials (unknown address or wrong password alike), AccountLocked, AccountDisabled.
    """
    address = _normalise(address)
    ops, mem = settings.security.argon2_opslimit, settings.security.argon2_memlimit
    with session_scope(engine, readonly=True) as session:
        account = get_account(session, address)
        snapshot = None
        if account is not None:
            snapshot = (account.password_hash, account.disabled, account.locked_until, account.certificate_id,
                        keys.WrappedKey(account.key_salt, account.wrapped_key, account.key_opslimit, account.key_memlimit))
    if snapshot is None:
        keys.verify_password(_dummy_hash(ops, mem), password)
        _record_failure(engine, settings, address, channel, request_id, "unknown-account")
        raise BadCredentials()
    password_hash, disabled, locked_until, certificate_id, wrapped = snapshot
    password_ok = keys.verify_password(password_hash, password)
    if disabled:
        _record_failure(engine, settings, address, channel, request_id, "disabled")
        raise AccountDisabled()
    if locked_until is not None and locked_until > utcnow():
        _record_failure(engine, settings, address, channel, request_id, "locked")
        raise AccountLocked(locked_until)
    if not password_ok:
        _record_failure(engine, settings, address, channel, request_id, "bad-password")
        raise BadCredentials()
    key_der = keys.unwrap_private_key(wrapped, password)
    with session_scope(engine) as session:
        account = _require_account(session, address)
        account.failed_logins = 0
        account.locked_until = None
        session.add(account)
        cert_row = session.get(Certificate, certificate_id) if certificate_id else None
        cert = x509.load_der_x509_certificate(cert_row.der) if cert_row else None
        audit.record(session, actor=address, action=f"{channel}.login", object=address, request_id=request_id)
    if cert is None:
        raise BadCredentials()
    return UnlockedAccount(address=address, private_key_der=key_der, certificate=cert)


def verify_totp(
    engine: Engine, settings: Settings, master_key: MasterKey, address: str, code: str, *, request_id: str = "",
    at: float | None = None,
) -> None:
    """Accept a TOTP code once (RFC 6238, one step of clock drift either way).

    A code already used, or any earlier one, is refused (replay guard). Failures count
    towards the lockout. Raises BadTotp, AccountLocked.
    """
    address = _normalise(address)
    now = time.time() if at is None else at
    code = code.strip().replace(" ", "")
    with session_scope(engine) as session:
        account = _require_account(session, address)
        if account.locked_until is not None and account.locked_until > utcnow():
            raise AccountLocked(account.locked_until)
        totp = pyotp.TOTP(master_key.open(account.totp_secret_sealed).decode("ascii"))
        current = int(now // TOTP_STEP)
        accepted = None
        for step in (current - 1, current, current + 1):
            if hmac.compare_digest(totp.at(step * TOTP_STEP), code) and step > account.totp_last_step:
                accepted = step
                break
        if accepted is not None:
            account.totp_last_step = accepted
            account.totp_confirmed = True
            account.failed_logins = 0
            session.add(account)
            audit.record(session, actor=address, action="totp.verify", object=address, request_id=request_id)
            return
    _record_failure(engine, settings, address, "totp", request_id, "bad-totp")
    raise BadTotp("the code is wrong, expired or already used")


def change_password(
    session: Session, settings: Settings, address: str, old_password: str, new_password: str, *, actor: str
) -> None:
    """Re-wrap the private key under the new password. Raises BadCredentials, PasswordPolicyError."""
    account = _require_account(session, address)
    if not keys.verify_password(account.password_hash, old_password):
        raise BadCredentials()
    check_password_policy(account.address, new_password)
    key_der = keys.unwrap_private_key(
        keys.WrappedKey(account.key_salt, account.wrapped_key, account.key_opslimit, account.key_memlimit), old_password
    )
    _set_password(session, settings, account, key_der, new_password)
    audit.record(session, actor=actor, action="account.passwd", object=account.address)


def _end_sessions(session: Session, address: str) -> None:
    # After a recovery, a 2FA reset or a disable, no web or API session opened before it
    # may live on (each holds the private key, sealed under its cookie's key).
    session.execute(delete(WebSession).where(WebSession.address == address))


def _set_password(session: Session, settings: Settings, account: Account, key_der: bytes, password: str) -> None:
    wrapped = _wrap(settings, key_der, password)
    account.password_hash = _hash(settings, password)
    account.key_salt = wrapped.salt
    account.key_opslimit = wrapped.opslimit
    account.key_memlimit = wrapped.memlimit
    account.wrapped_key = wrapped.ciphertext
    account.failed_logins = 0
    account.locked_until = None
    account.updated_at = utcnow()
    session.add(account)


def recover_account(
    session: Session, settings: Settings, address: str, recovery_private_key_file: Path, new_password: str, *, actor: str
) -> None:
    """Open the escrowed private key with the offline recovery key and set a new password.

    Raises NoSuchAccount, CryptoError (wrong recovery key), PasswordPolicyError.
    """
    account = _require_account(session, address)
    check_password_policy(account.address, new_password)
    recovery_private = keys.load_recovery_private_key(recovery_private_key_file)
    key_der = keys.open_recovery(account.recovery_sealed_key, recovery_private)
    _set_password(session, settings, account, key_der, new_password)
    _end_sessions(session, account.address)
    audit.record(session, actor=actor, action="account.recover", object=account.address)


def reset_2fa(
    session: Session, settings: Settings, master_key: MasterKey, address: str, *, actor: str, end_sessions: bool = True
) -> Enrolment:
    """Replace the TOTP secret; the next login enrols again. Raises NoSuchAccount.

    Every web and API session of the account ends, unless ``end_sessions`` is false (the
    web's own reset keeps the session it is running in and ends the others itself).
    """
    account = _require_account(session, address)
    secret, sealed = _new_totp(master_key)
    account.totp_secret_sealed = sealed
    account.totp_confirmed = False
    account.totp_last_step = 0
    account.recovery_codes = ""
    account.updated_at = utcnow()
    session.add(account)
    if end_sessions:
        _end_sessions(session, account.address)
    audit.record(session, actor=actor, action="account.reset-2fa", object=account.address)
    return _enrolment(settings, account.address, secret)


def set_disabled(session: Session, address: str, disabled: bool, *, actor: str) -> None:
    """Disable (or enable again) an account. Raises NoSuchAccount."""
    account = _require_account(session, address)
    account.disabled = disabled
    account.updated_at = utcnow()
    session.add(account)
    if disabled:
        _end_sessions(session, account.address)
    audit.record(session, actor=actor, action="account.disable" if disabled else "account.enable", object=account.address)


def export_key(
    engine: Engine, settings: Settings, address: str, password: str, export_password: str, *, actor: str,
    profile: str = keys.PKCS12_STRONG,
) -> bytes:
    """The account's key and certificate as PKCS#12 under ``export_password``, in the
    ``profile`` of ``keys.export_pkcs12`` (``strong`` or ``compatible``).

    Authenticates with the account password first (audited, counts towards lockout).
    Raises BadCredentials, AccountLocked, AccountDisabled, PasswordPolicyError.
    """
    if len(export_password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the export password must have at least {MIN_PASSWORD_LENGTH} characters")
    unlocked = authenticate(engine, settings, address, password, channel="cli")
    from mss.crypto import pki

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
    session: Session, settings: Settings, address: str, export_password: str, *, actor: str,
    profile: str = keys.PKCS12_STRONG,
) -> tuple[Certificate, bytes]:
    """Issue a certificate for an entry whose owner keeps the key in their own mail client.

    Returns the stored certificate row and the key with its chain as PKCS#12 under
    ``export_password`` (the key is not kept here). An address with an account is refused:
    its key is the account's. Raises AccountExists, UnknownAddress, RevokedAddress,
    PasswordPolicyError.
    """
    from mss.crypto import pki

    if len(export_password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the export password must have at least {MIN_PASSWORD_LENGTH} characters")
    if get_account(session, address) is not None:
        raise AccountExists(
            f"{_normalise(address)} has an account, which holds its key: use `mss account export-key`"
        )
    private_key, row = certificates.issue_for_entry(session, settings, address, actor=actor)
    blob = keys.export_pkcs12(
        private_key,
        x509.load_der_x509_certificate(row.der),
        pki.load_ca_certificate(settings),
        export_password,
        friendly_name=row.address,
        profile=profile,
    )
    return row, blob
