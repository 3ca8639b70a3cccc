"""The second factor: TOTP (RFC 6238) enrolment and codes, and one-time recovery codes.

A TOTP secret is sealed with the master key; its enrolment URI is built here only. A code
works once (replay guard: the last accepted 30-second step is kept). Recovery codes are 12
random base32 characters (60 bits); only their SHA-256 (salted with the address) is kept,
in ``Account.recovery_codes`` as JSON; one works once, in place of a TOTP code. Wrong codes
of either kind count towards the same lockout (``mss.accounts.lockout``).

A code accepted and what it lets in (a session that moves on, new recovery codes) are one
transaction: the ``then`` of ``verify_totp``, ``use_recovery_code`` and
``check_second_factor`` runs in it, so that a login that fails there has not used up its
code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import TypeVar, overload

import pyotp
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mss import audit, standing
from mss.accounts._common import Enrolment, get_account, record_change, require_account
from mss.accounts.lockout import LOCAL, Origin, is_locked, login_completed, record_failure
from mss.addresses import normalise_address
from mss.crypto.master import MasterKey
from mss.db import session_scope
from mss.errors import AccountLocked, BadTotp
from mss.settings import Settings

TOTP_STEP = 30
RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud or copied by hand
_TOTP_CODE = re.compile(r"^[0-9]{6}$")

T = TypeVar("T")
Then = Callable[[Session], T]
"""What an accepted code lets in, written in the transaction that accepts the code."""


def new_totp(master_key: MasterKey) -> tuple[str, bytes]:
    """A fresh TOTP secret (base32) and its sealed form for ``Account.totp_secret_sealed``."""
    secret = pyotp.random_base32(32)
    return secret, master_key.seal(secret.encode("ascii"))


def enrolment_of(settings: Settings, address: str, secret: str) -> Enrolment:
    """The enrolment of ``secret`` for ``address``: its otpauth URI (the QR code's content)."""
    uri = pyotp.TOTP(secret).provisioning_uri(name=address, issuer_name=settings.security.totp_issuer)
    return Enrolment(address=address, otpauth_uri=uri)


def totp_confirmed(engine: Engine, address: str) -> bool:
    """True once the account's authenticator is enrolled. Raises NoSuchAccount."""
    with session_scope(engine, readonly=True) as session:
        return require_account(session, address).totp_confirmed


def pending_enrolment(engine: Engine, settings: Settings, master_key: MasterKey, address: str) -> Enrolment:
    """The pending TOTP enrolment of ``address``, for the QR code.

    Raises NoSuchAccount, and BadTotp when the account is already enrolled (the secret is
    shown once; a new one needs ``reset_2fa``).
    """
    with session_scope(engine, readonly=True) as session:
        account = require_account(session, address)
        if account.totp_confirmed:
            raise BadTotp("the authenticator is already enrolled")
        secret = master_key.open(account.totp_secret_sealed).decode("ascii")
    return enrolment_of(settings, account.address, secret)


@overload
def verify_totp(
    engine: Engine,
    settings: Settings,
    master_key: MasterKey,
    address: str,
    code: str,
    origin: Origin = ...,
    *,
    at: float | None = ...,
    then: None = ...,
) -> None: ...
@overload
def verify_totp(
    engine: Engine,
    settings: Settings,
    master_key: MasterKey,
    address: str,
    code: str,
    origin: Origin = ...,
    *,
    at: float | None = ...,
    then: Then[T],
) -> T: ...
def verify_totp(
    engine: Engine,
    settings: Settings,
    master_key: MasterKey,
    address: str,
    code: str,
    origin: Origin = LOCAL,
    *,
    at: float | None = None,
    then: Then[T] | None = None,
) -> T | None:
    """Accept a TOTP code once (RFC 6238, one step of clock drift either way); then
    ``then`` in the same transaction, and return what it returns.

    A code already used, or any earlier one, is refused (replay guard). Failures count
    towards the lockout whatever the password step did. Raises BadTotp, AccountLocked, and
    what ``then`` raises (the code is then not used up).
    """
    address = normalise_address(address)
    now = time.time() if at is None else at
    code = code.strip().replace(" ", "")
    with session_scope(engine) as session:
        account = require_account(session, address)
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
            login_completed(session, account, origin.client)
            audit.record(session, actor=address, action="totp.verify", object=address, request_id=origin.request_id)
            return then(session) if then is not None else None
    record_failure(engine, settings, address, origin, action="totp.login", reason="bad-totp")
    raise BadTotp("the code is wrong, expired or already used")


def _digest(address: str, code: str) -> str:
    return hashlib.sha256(f"{address}\x00{code}".encode()).hexdigest()


def _compact_code(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def new_recovery_codes(engine: Engine, address: str, *, request_id: str = "") -> list[str]:
    """Replace the account's recovery codes with new ones; return them (shown once)."""
    with session_scope(engine) as session:
        return new_recovery_codes_in(session, address, request_id=request_id)


def new_recovery_codes_in(session: Session, address: str, *, request_id: str = "") -> list[str]:
    """``new_recovery_codes`` in the caller's transaction."""
    codes = ["".join(secrets.choice(_ALPHABET) for _ in range(12)) for _ in range(RECOVERY_CODES)]
    account = require_account(session, address)
    account.recovery_codes = json.dumps([_digest(account.address, code) for code in codes])
    record_change(
        session, account, "account.recovery-codes", actor=account.address, request_id=request_id, count=len(codes)
    )
    return [f"{c[:4]}-{c[4:8]}-{c[8:]}" for c in codes]


def remaining_recovery_codes(engine: Engine, address: str) -> int:
    """How many recovery codes the account has left."""
    with session_scope(engine, readonly=True) as session:
        account = get_account(session, address)
        return len(json.loads(account.recovery_codes or "[]")) if account else 0


def use_recovery_code(
    engine: Engine, settings: Settings, address: str, code: str, origin: Origin, *, then: Then[T]
) -> T:
    """Accept a recovery code once in place of a TOTP code; then ``then`` in the same
    transaction, and return what it returns.

    Raises NoSuchAccount, AccountLocked, BadTotp (wrong or used code; counts towards the
    lockout), and what ``then`` raises (the code then stays unused).
    """
    presented = _compact_code(code)
    with session_scope(engine) as session:
        account = require_account(session, address)
        if is_locked(account):
            raise AccountLocked(account.locked_until)
        stored: list[str] = json.loads(account.recovery_codes or "[]")
        digest = _digest(account.address, presented)
        match = next((d for d in stored if hmac.compare_digest(d, digest)), None)
        if match is not None:
            stored.remove(match)
            account.recovery_codes = json.dumps(stored)
            login_completed(session, account, origin.client)
            audit.record(
                session,
                actor=account.address,
                action="totp.recovery-code",
                object=account.address,
                request_id=origin.request_id,
                remaining=len(stored),
            )
            return then(session)
    record_failure(engine, settings, address, origin, action="totp.recovery-code", reason="bad-recovery-code")
    raise BadTotp("the code is wrong, expired or already used")


def check_second_factor(
    engine: Engine, settings: Settings, master_key: MasterKey, address: str, code: str, origin: Origin, then: Then[T]
) -> T:
    """Accept a TOTP code or a recovery code; then ``then`` in the same transaction, and
    return what it returns.

    Raises BadTotp, AccountLocked, and what ``then`` raises (the code then stays unused).
    """
    compact = "".join(code.split())
    if _TOTP_CODE.match(compact):
        return verify_totp(engine, settings, master_key, address, compact, origin, then=then)
    return use_recovery_code(engine, settings, address, compact, origin, then=then)


def reset_2fa(
    session: Session, settings: Settings, master_key: MasterKey, address: str, *, actor: str, end_sessions: bool = True
) -> Enrolment:
    """Replace the TOTP secret; the next login enrols again. Raises NoSuchAccount.

    Every web and API session of the account ends, unless ``end_sessions`` is false (the
    web's own reset keeps the session it is running in and ends the others itself).
    """
    account = require_account(session, address)
    secret, sealed = new_totp(master_key)
    account.totp_secret_sealed = sealed
    account.totp_confirmed = False
    account.totp_last_step = 0
    account.recovery_codes = ""
    if end_sessions:
        standing.end_sessions(session, account.address)
    record_change(session, account, "account.reset-2fa", actor=actor)
    return enrolment_of(settings, account.address, secret)
