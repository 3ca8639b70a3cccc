"""What every part of the accounts service shares: the unlocked account, the enrolment, the
password policy, the argon2id wrapping of keys and how a change to an account is recorded.
Imports nothing of ``mss.accounts``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from cryptography import x509
from sqlalchemy import select
from sqlmodel import Session, col

from mss import audit
from mss.addresses import normalise_address
from mss.crypto import keys
from mss.db import utcnow
from mss.errors import KeyUnwrapError, NoSuchAccount, PasswordPolicyError
from mss.models import Account
from mss.settings import Settings

MIN_PASSWORD_LENGTH = 12


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
    # What a login by password kept of that password (``standing.credential_stamp``): a mail
    # client's session, which lasts, ends when the password changes. None in the account a
    # web or API session rebuilds (``mss.web.sessions``): those sessions end with the change.
    credential: str | None = field(default=None, repr=False)

    @cached_property
    def private_key(self) -> keys.PrivateKey:
        """The key object, loaded once (an SMTP session signs every message with it)."""
        return keys.private_key_from_der(self.private_key_der, authenticated=True)


def check_password_policy(address: str, password: str) -> None:
    """Raise PasswordPolicyError unless the password is long enough, not the address, and
    text every door reads alike (bytes that are not UTF-8, piped to the command line, would
    open the account over IMAP only; a control character, NUL first, ends the password at
    SMTP AUTH PLAIN, or cannot be typed in a form)."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        raise PasswordPolicyError("the password must be text (UTF-8), as every mail client sends it") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise PasswordPolicyError("the password must not hold control characters (a tab, a NUL, a line end)")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if password.strip().lower() in {address.lower(), address.split("@")[0].lower()}:
        raise PasswordPolicyError("the password must not be the address")
    if len(set(password)) < 5:
        raise PasswordPolicyError("the password must not repeat the same few characters")


def get_account(session: Session, address: str) -> Account | None:
    """The account of ``address``, or None."""
    return session.execute(select(Account).where(col(Account.address) == normalise_address(address))).scalars().first()


def require_account(session: Session, address: str) -> Account:
    """The account of ``address``. Raises NoSuchAccount."""
    account = get_account(session, address)
    if account is None:
        raise NoSuchAccount(f"no account for {normalise_address(address)}")
    return account


def record_change(
    session: Session, account: Account, action: str, *, actor: str, request_id: str = "", **detail: object
) -> None:
    """``account`` changed now, by ``actor``: stamped, added to the caller's transaction and
    audited as ``action`` on the account, with ``detail``."""
    account.updated_at = utcnow()
    session.add(account)
    audit.record(
        session,
        actor=actor,
        action=action,
        object=account.address,
        request_id=request_id,
        # the detail fields are the change's, none named like record's own parameters
        **detail,  # type: ignore[arg-type]
    )


def wrap_keys(settings: Settings, key_der: bytes, password: str, past: tuple[bytes, ...] = ()) -> keys.WrappedKey:
    """The current key and the ``past`` ones wrapped under argon2id(``password``)."""
    return keys.wrap_private_key(
        key_der,
        password,
        opslimit=settings.security.argon2_opslimit,
        memlimit=settings.security.argon2_memlimit,
        past=past,
    )


def wrapped_keys_of(account: Account) -> keys.WrappedKey:
    """The wrapped keys as the account row stores them."""
    return keys.WrappedKey(
        account.key_salt, account.wrapped_key, account.key_opslimit, account.key_memlimit, account.past_keys_wrapped
    )


def open_keys(password_hash: str, wrapped: keys.WrappedKey, password: str) -> tuple[bytes, tuple[bytes, ...]] | None:
    """The account's private keys (the current one, the past ones) opened with ``password``,
    or None when it is not the account's password: one argon2id computation.

    Opening the wrapped keys is the password's check: SecretBox's authentication (Poly1305)
    fails for a wrong password after the same work a check of the password's hash costs,
    and for keys altered in the database. A closed mailbox has no keys left
    (``mss.lifecycle`` erases them): its password's hash is checked instead, and its keys
    come back empty.
    """
    if not wrapped.ciphertext:
        return (b"", ()) if keys.verify_password(password_hash, password) else None
    try:
        return keys.unwrap_private_keys(wrapped, password)
    except KeyUnwrapError:
        return None


def hash_password(settings: Settings, password: str) -> str:
    """The argon2id hash of ``password`` at the configured cost."""
    return keys.hash_password(
        password, opslimit=settings.security.argon2_opslimit, memlimit=settings.security.argon2_memlimit
    )
