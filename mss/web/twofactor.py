"""The web's second factor: TOTP enrolment by QR code, and one-time recovery codes.

TOTP codes themselves are checked by ``mss.accounts.verify_totp`` (replay guard, lockout,
audit). This module adds what only the browser needs: the enrolment QR code (SVG made on
the server, no script, no external service) and the recovery codes given at enrolment.

Recovery codes are 12 random base32 characters (60 bits); only their SHA-256 (salted with
the address) is kept, in ``Account.recovery_codes`` as JSON. A code works once, in place of
a TOTP code; a wrong one counts towards the same lockout as a wrong TOTP code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets

import pyotp
import segno
from markupsafe import Markup
from sqlalchemy.engine import Engine

from mss import accounts, audit
from mss.accounts import Enrolment
from mss.crypto.master import MasterKey
from mss.db import session_scope, utcnow
from mss.errors import AccountLocked, BadTotp, NoSuchAccount
from mss.settings import Settings

RECOVERY_CODES = 10
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read aloud or copied by hand
_TOTP_CODE = re.compile(r"^[0-9]{6}$")


def totp_confirmed(engine: Engine, address: str) -> bool:
    """True once the account's authenticator is enrolled. Raises NoSuchAccount."""
    with session_scope(engine) as session:
        account = accounts.get_account(session, address)
        if account is None:
            raise NoSuchAccount(f"no account for {address}")
        return account.totp_confirmed


def enrolment(engine: Engine, settings: Settings, master_key: MasterKey, address: str) -> Enrolment:
    """The pending TOTP enrolment of ``address`` (its otpauth URI), for the QR code.

    Raises NoSuchAccount, and BadTotp when the account is already enrolled (the secret is
    shown once; a new one needs ``reset_2fa``).
    """
    with session_scope(engine) as session:
        account = accounts.get_account(session, address)
        if account is None:
            raise NoSuchAccount(f"no account for {address}")
        if account.totp_confirmed:
            raise BadTotp("the authenticator is already enrolled")
        secret = master_key.open(account.totp_secret_sealed).decode("ascii")
    uri = pyotp.TOTP(secret).provisioning_uri(name=address, issuer_name=settings.security.totp_issuer)
    return Enrolment(address=address, otpauth_uri=uri)


def qr_svg(uri: str, title: str) -> Markup:
    """The QR code of ``uri`` as inline SVG (presentation attributes only, no style or script)."""
    code = segno.make(uri, error="m")
    return Markup(code.svg_inline(scale=5, border=4, dark="#000", light="#fff", title=title, omitsize=False))


def secret_of(uri: str) -> str:
    """The base32 secret of an otpauth URI, grouped by four for typing by hand."""
    found = re.search(r"[?&]secret=([A-Z2-7]+)", uri)
    secret = found.group(1) if found else ""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


def _digest(address: str, code: str) -> str:
    return hashlib.sha256(f"{address}\x00{code}".encode("utf-8")).hexdigest()


def _normalise(code: str) -> str:
    return "".join(ch for ch in code.lower() if ch.isalnum())


def new_recovery_codes(engine: Engine, address: str, *, request_id: str = "") -> list[str]:
    """Replace the account's recovery codes with new ones; return them (shown once)."""
    codes = ["".join(secrets.choice(_ALPHABET) for _ in range(12)) for _ in range(RECOVERY_CODES)]
    with session_scope(engine) as session:
        account = accounts.get_account(session, address)
        if account is None:
            raise NoSuchAccount(f"no account for {address}")
        account.recovery_codes = json.dumps([_digest(account.address, code) for code in codes])
        account.updated_at = utcnow()
        session.add(account)
        audit.record(
            session,
            actor=address,
            action="account.recovery-codes",
            object=address,
            request_id=request_id,
            count=len(codes),
        )
    return [f"{c[:4]}-{c[4:8]}-{c[8:]}" for c in codes]


def remaining_recovery_codes(engine: Engine, address: str) -> int:
    """How many recovery codes the account has left."""
    with session_scope(engine) as session:
        account = accounts.get_account(session, address)
        return len(json.loads(account.recovery_codes or "[]")) if account else 0


def use_recovery_code(
    engine: Engine, settings: Settings, address: str, code: str, *, request_id: str = "", client: str = ""
) -> None:
    """Accept a recovery code once in place of a TOTP code.

    Raises AccountLocked, BadTotp (wrong or used code; counts towards the lockout).
    """
    presented = _normalise(code)
    with session_scope(engine) as session:
        account = accounts.get_account(session, address)
        if account is None:
            raise NoSuchAccount(f"no account for {address}")
        if accounts.is_locked(account):
            raise AccountLocked(account.locked_until)
        stored: list[str] = json.loads(account.recovery_codes or "[]")
        digest = _digest(account.address, presented)
        match = next((d for d in stored if hmac.compare_digest(d, digest)), None)
        if match is not None:
            stored.remove(match)
            account.recovery_codes = json.dumps(stored)
            accounts.second_factor_passed(session, account, client)
            audit.record(
                session,
                actor=address,
                action="totp.recovery-code",
                object=address,
                request_id=request_id,
                remaining=len(stored),
            )
            return
    accounts.record_failure(
        engine, settings, address, action="totp.recovery-code", reason="bad-recovery-code", request_id=request_id,
        client=client,
    )
    raise BadTotp("the code is wrong, expired or already used")


def check_second_factor(
    engine: Engine, settings: Settings, master_key: MasterKey, address: str, code: str, *, request_id: str = "",
    client: str = "",
) -> str:
    """Accept a TOTP code or a recovery code; return ``totp`` or ``recovery``.

    Raises BadTotp, AccountLocked.
    """
    compact = "".join(code.split())
    if _TOTP_CODE.match(compact):
        accounts.verify_totp(engine, settings, master_key, address, compact, request_id=request_id, client=client)
        return "totp"
    use_recovery_code(engine, settings, address, compact, request_id=request_id, client=client)
    return "recovery"
