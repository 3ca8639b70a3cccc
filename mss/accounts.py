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
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from directory import certificates, service
from directory.models import Certificate
from mss import audit, standing, throttle
from mss.crypto import keys, pki
from mss.crypto.master import MasterKey
from mss.db import session_scope, utcnow
from mss.errors import (
    AccountExists,
    AccountLocked,
    BadCredentials,
    BadTotp,
    CertificateExpired,
    DomainNotServed,
    NoSuchAccount,
    PasswordPolicyError,
    StandingError,
    TooManyAttempts,
)
from mss.models import Account
from mss.settings import Settings

MIN_PASSWORD_LENGTH = 12
TOTP_STEP = 30
# Failures that count towards the lockouts (a locked or disabled account does not re-lock):
# wrong passwords by client address and account (mss.throttle), wrong second factors on
# the account alone (only someone who knows the password gets that far).
PASSWORD_FAILURES = frozenset({"bad-password", "unknown-account"})
FACTOR_FAILURES = frozenset({"bad-totp", "bad-recovery-code"})
COUNTED_FAILURES = PASSWORD_FAILURES | FACTOR_FAILURES


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
    # Earlier keys of the account (kept after a rekey) to open mail encrypted to them.
    past_keys_der: tuple[bytes, ...] = field(default=(), repr=False)

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


def _wrap(settings: Settings, key_der: bytes, password: str, past: tuple[bytes, ...] = ()) -> keys.WrappedKey:
    return keys.wrap_private_key(
        key_der,
        password,
        opslimit=settings.security.argon2_opslimit,
        memlimit=settings.security.argon2_memlimit,
        past=past,
    )


def _wrapped(account: Account) -> keys.WrappedKey:
    return keys.WrappedKey(
        account.key_salt, account.wrapped_key, account.key_opslimit, account.key_memlimit, account.past_keys_wrapped
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
    if not settings.serves(address):
        raise DomainNotServed(
            f"{_normalise(address)} belongs to another operator's domain: accounts are opened only for "
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


def _record_failure(
    engine: Engine, settings: Settings, address: str, channel: str, request_id: str, why: str, client: str
) -> None:
    record_failure(engine, settings, address, action=f"{channel}.login", reason=why, request_id=request_id, client=client)


def record_failure(engine: Engine, settings: Settings, address: str, *, action: str, reason: str,
                   request_id: str = "", client: str = "") -> None:
    """Audit a failed authentication step and count it towards the lockouts.

    The one lockout rule for passwords, TOTP codes and recovery codes, whatever the door:
    a wrong password (or an unknown address) counts for ``client`` and for the account from
    ``client`` (``mss.throttle``), and for the account from everywhere
    (``MSS_ACCOUNT_MAX_FAILURES``); a wrong second factor counts on the account and locks it
    after ``MSS_MAX_LOGIN_FAILURES``, whatever the first factor did in between.
    """
    now = utcnow()
    window = timedelta(seconds=settings.security.lockout_seconds)
    locks: list[dict[str, object]] = []
    with session_scope(engine) as session:
        account = get_account(session, address)
        if reason in PASSWORD_FAILURES:
            counted = throttle.record_failure(session, settings, address, client, now, pair=account is not None)
            if counted.pair_locked_until is not None:
                locks.append({"scope": "client", "client": client or "local"})
            if counted.client_blocked_until is not None:
                audit.record(
                    session, actor="system", action="login.throttle", object=client, request_id=request_id,
                    seconds=settings.security.lockout_seconds, failures=settings.security.client_max_failures,
                )
        if account is not None and reason in COUNTED_FAILURES:
            if account.last_failure_at is None or now - account.last_failure_at >= window:
                account.failed_logins = 0
            if reason == "bad-password":
                account.failed_logins += 1
                if account.failed_logins >= settings.security.account_max_failures:
                    account.failed_logins = 0
                    locks.append({"scope": "account", "cause": "password"})
            else:
                account.factor_failures += 1
                if account.factor_failures >= settings.security.max_login_failures:
                    account.factor_failures = 0
                    locks.append({"scope": "account", "cause": "second-factor"})
            if any(lock["scope"] == "account" for lock in locks):
                account.locked_until = now + window
            account.last_failure_at = now
            account.updated_at = now
            session.add(account)
        audit.record(
            session,
            actor=address or "-",
            action=action,
            object=address,
            outcome=audit.FAILURE,
            request_id=request_id,
            reason=reason,
            client=client or "local",
        )
        for lock in locks:
            audit.record(
                session, actor="system", action="account.lock", object=address, request_id=request_id,
                seconds=settings.security.lockout_seconds, **lock,
            )


def authenticate(
    engine: Engine,
    settings: Settings,
    address: str,
    password: str,
    *,
    channel: str,
    request_id: str = "",
    client: str = "",
    completes_login: bool = True,
) -> UnlockedAccount:
    """Check the password, the account's standing, and open its private keys in memory.

    ``channel`` names the door (``smtp``, ``web``, ``api``, ``cli``) for the audit trail and
    ``client`` the client's IP address (empty for a local command). ``completes_login`` is
    false where a second factor follows (web, API): the failure counts of this client are
    then cleared only once that succeeds. Raises TooManyAttempts (this client address must
    wait; no password is checked), AccountLocked, BadCredentials (unknown address or wrong
    password alike), and, after a right password only, a StandingError subclass:
    AccountDisabled, EntryRevoked, AddressNotServed, CertificateRevoked, CertificateExpired.
    """
    address = _normalise(address)
    now = utcnow()
    ops, mem = settings.security.argon2_opslimit, settings.security.argon2_memlimit
    with session_scope(engine, readonly=True) as session:
        verdict = throttle.verdict(session, settings, address, client, now)
        account = get_account(session, address)
        snapshot = None
        if account is not None:
            snapshot = (account.password_hash, account.locked_until, account.certificate_id, _wrapped(account))
    if verdict.retry_after:
        raise TooManyAttempts(verdict.retry_after)
    if verdict.locked_until is not None and snapshot is not None:
        _record_failure(engine, settings, address, channel, request_id, "locked", client)
        raise AccountLocked(verdict.locked_until)
    if snapshot is None:
        keys.verify_password(_dummy_hash(ops, mem), password)
        _record_failure(engine, settings, address, channel, request_id, "unknown-account", client)
        raise BadCredentials()
    password_hash, locked_until, certificate_id, wrapped = snapshot
    if locked_until is not None and locked_until > now:
        _record_failure(engine, settings, address, channel, request_id, "locked", client)
        raise AccountLocked(locked_until)
    if not keys.verify_password(password_hash, password):
        _record_failure(engine, settings, address, channel, request_id, "bad-password", client)
        raise BadCredentials()
    try:
        with session_scope(engine, readonly=True) as session:
            standing.check(session, settings, address)
    except StandingError as exc:
        _record_failure(engine, settings, address, channel, request_id, exc.code, client)
        raise
    key_der, past = keys.unwrap_private_keys(wrapped, password)
    with session_scope(engine) as session:
        if completes_login:
            throttle.clear_pair(session, address, client)
        cert_row = session.get(Certificate, certificate_id) if certificate_id else None
        cert = x509.load_der_x509_certificate(cert_row.der) if cert_row else None
        audit.record(
            session, actor=address, action=f"{channel}.login", object=address, request_id=request_id,
            client=client or "local",
        )
    if cert is None:
        raise BadCredentials()
    return UnlockedAccount(address=address, private_key_der=key_der, certificate=cert, past_keys_der=past)


def second_factor_passed(session: Session, account: Account, client: str = "") -> None:
    """A login completed by its second factor: its failure counts of this client start over."""
    account.factor_failures = 0
    account.updated_at = utcnow()
    session.add(account)
    throttle.clear_pair(session, account.address, client)


def verify_totp(
    engine: Engine, settings: Settings, master_key: MasterKey, address: str, code: str, *, request_id: str = "",
    at: float | None = None, client: str = "",
) -> None:
    """Accept a TOTP code once (RFC 6238, one step of clock drift either way).

    A code already used, or any earlier one, is refused (replay guard). Failures count
    towards the lockout whatever the password step did. Raises BadTotp, AccountLocked.
    """
    address = _normalise(address)
    now = time.time() if at is None else at
    code = code.strip().replace(" ", "")
    with session_scope(engine) as session:
        account = _require_account(session, address)
        if is_locked(account):
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
            second_factor_passed(session, account, client)
            audit.record(session, actor=address, action="totp.verify", object=address, request_id=request_id)
            return
    _record_failure(engine, settings, address, "totp", request_id, "bad-totp", client)
    raise BadTotp("the code is wrong, expired or already used")


def is_locked(account: Account) -> bool:
    """True while the account is locked for every client (``Account.locked_until``)."""
    return account.locked_until is not None and account.locked_until > utcnow()


def change_password(
    session: Session, settings: Settings, address: str, old_password: str, new_password: str, *, actor: str
) -> None:
    """Re-wrap the private keys (current and past) under the new password.

    Raises BadCredentials, PasswordPolicyError.
    """
    account = _require_account(session, address)
    if not keys.verify_password(account.password_hash, old_password):
        raise BadCredentials()
    check_password_policy(account.address, new_password)
    key_der, past = keys.unwrap_private_keys(_wrapped(account), old_password)
    _set_password(session, settings, account, key_der, new_password, past)
    audit.record(session, actor=actor, action="account.passwd", object=account.address)


def _set_password(
    session: Session, settings: Settings, account: Account, key_der: bytes, password: str, past: tuple[bytes, ...]
) -> None:
    wrapped = _wrap(settings, key_der, password, past)
    account.password_hash = _hash(settings, password)
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
    past = ()
    if account.past_keys_recovery_sealed:
        past = keys.unpack_keys(keys.open_recovery(account.past_keys_recovery_sealed, recovery_private))
    return key_der, past


def recover_account(
    session: Session, settings: Settings, address: str, recovery_private_key_file: Path, new_password: str, *, actor: str
) -> None:
    """Open the escrowed private keys with the offline recovery key and set a new password.

    Raises NoSuchAccount, CryptoError (wrong recovery key), PasswordPolicyError.
    """
    account = _require_account(session, address)
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
    account = _require_account(session, address)
    if password is not None:
        if not keys.verify_password(account.password_hash, password):
            raise BadCredentials()
        key_der, past = keys.unwrap_private_keys(_wrapped(account), password)
        wrap_password = password
    else:
        if recovery_private_key_file is None or new_password is None:
            raise PasswordPolicyError("a rekey needs the account password, or the recovery key and a new password")
        check_password_policy(account.address, new_password)
        key_der, past = _open_escrow(account, recovery_private_key_file)
        wrap_password = new_password
    private_key, row = certificates.issue_for_entry(session, settings, account.address, actor=actor,
                                                    request_id=request_id)
    assert private_key is not None  # a new key pair was asked for
    new_der = keys.private_key_to_der(private_key)
    revoked = certificates.revoke_for_address(
        session, settings, account.address, reason=flag.value, actor=actor, request_id=request_id, keep=(row.id,)
    )
    past = (key_der, *past)
    _set_password(session, settings, account, new_der, wrap_password, past)
    _escrow(settings, account, new_der, past)
    account.certificate_id = row.id
    session.add(account)
    standing.end_sessions(session, account.address)
    audit.record(
        session, actor=actor, action="account.rekey", object=account.address, request_id=request_id,
        serial=row.serial, revoked=[r.serial for r in revoked], reason=flag.value,
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
        .join(Certificate, Certificate.id == Account.certificate_id)
        .where(Certificate.not_after <= cutoff)
        .order_by(Account.address)
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
        _none, row = certificates.issue_for_entry(session, settings, account.address, actor=actor,
                                                  public_key=public_key)
        account.certificate_id = row.id
        account.updated_at = utcnow()
        session.add(account)
        audit.record(session, actor=actor, action="pki.renew", object=account.address, serial=row.serial,
                     previous=current.serial)
        renewed.append((account.address, row.serial, row.not_after))
    held = set(session.execute(select(Account.address)).scalars())
    external = session.execute(
        select(Certificate.address, Certificate.serial)
        .where(Certificate.usage == certificates.SMIME, Certificate.revoked_at.is_(None))
        .where(Certificate.not_after <= cutoff, Certificate.not_after > utcnow())
        .order_by(Certificate.address)
    ).all()
    newest: dict[str, str] = {}
    for address, serial in external:
        if address not in held:
            newest[address] = serial
    for address, serial in newest.items():
        skipped.append((address, f"certificate {serial}: its key is held by its owner; issue a new one with `mss pki issue`"))
    session.flush()
    return Renewal(tuple(renewed), tuple(skipped))


def expiring_certificates(session: Session, settings: Settings) -> list[tuple[str, object]]:
    """Accounts whose current certificate ends within ``MSS_CERT_WARNING_DAYS``: (address, end)."""
    cutoff = utcnow() + timedelta(days=settings.pki.expiry_warning_days)
    return [
        (address, not_after)
        for address, not_after in session.execute(
            select(Account.address, Certificate.not_after)
            .join(Certificate, Certificate.id == Account.certificate_id)
            .where(Certificate.not_after <= cutoff, Certificate.revoked_at.is_(None))
            .order_by(Certificate.not_after)
        )
    ]


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
        standing.end_sessions(session, account.address)
    audit.record(session, actor=actor, action="account.reset-2fa", object=account.address)
    return _enrolment(settings, account.address, secret)


def set_disabled(session: Session, address: str, disabled: bool, *, actor: str) -> None:
    """Disable (or enable again) an account. Raises NoSuchAccount."""
    account = _require_account(session, address)
    account.disabled = disabled
    account.updated_at = utcnow()
    session.add(account)
    if disabled:
        standing.end_sessions(session, account.address)
    audit.record(session, actor=actor, action="account.disable" if disabled else "account.enable", object=account.address)


def export_key(
    engine: Engine, settings: Settings, address: str, password: str, export_password: str, *, actor: str
) -> bytes:
    """The account's key and certificate as PKCS#12 under ``export_password``.

    Authenticates with the account password first (audited, counts towards lockout).
    Raises BadCredentials, AccountLocked, AccountDisabled, PasswordPolicyError.
    """
    if len(export_password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the export password must have at least {MIN_PASSWORD_LENGTH} characters")
    unlocked = authenticate(engine, settings, address, password, channel="cli")
    ca = pki.load_ca(settings)
    blob = keys.export_pkcs12(
        unlocked.private_key,
        unlocked.certificate,
        ca.certificate,
        export_password,
        friendly_name=unlocked.address,
    )
    with session_scope(engine) as session:
        audit.record(session, actor=actor, action="account.export-key", object=unlocked.address)
    return blob


def issue_external_certificate(
    session: Session, settings: Settings, address: str, export_password: str, *, actor: str
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
            f"{_normalise(address)} has an account, which holds its key: use `mss account export-key`, "
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
    )
    return row, blob
