"""The login service every door calls: SMTP AUTH, the web's two steps, the API, IMAP.

:func:`authenticate` checks the client address's throttle, the password (argon2id, with the
same cost for an unknown address), the account's standing (``mss.standing``) and opens the
private keys in memory. Opening the keys is the password's check: one argon2id computation
a login. Credentials no account can have (an implausible address, an empty
password or one longer than ``MAX_PASSWORD``) are refused first, at every door alike, with
nothing looked up, hashed or counted. Where a second factor follows (web, API), the login
completes with ``mss.accounts.twofactor.check_second_factor``; :func:`login_with_code` does
both steps at once for a door that receives them together (the API).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import lru_cache
from typing import Final, TypeVar

from cryptography import x509
from sqlalchemy.engine import Engine
from sqlmodel import Session

from directory.models import Certificate
from mss import audit, standing, throttle
from mss.accounts._common import UnlockedAccount, get_account, open_keys, wrapped_keys_of
from mss.accounts.lockout import LOCKED, Origin, record_failure
from mss.accounts.twofactor import check_second_factor, totp_confirmed
from mss.addresses import normalise_address, plausible_address
from mss.crypto import keys
from mss.crypto.master import MasterKey
from mss.db import session_scope, utcnow
from mss.errors import AccountLocked, BadCredentials, EnrolmentRequired, StandingError, TooManyAttempts
from mss.settings import Settings

# Longer than any sensible password: refused before any argon2id work.
MAX_PASSWORD: Final = 1024

T = TypeVar("T")


@lru_cache(maxsize=4)
def _dummy_hash(opslimit: int, memlimit: int) -> str:
    # Checked against when the address has no account, so that "no such account" costs
    # the same argon2id work as "wrong password" and timing tells nothing.
    return keys.hash_password(secrets.token_urlsafe(24), opslimit=opslimit, memlimit=memlimit)


def authenticate(
    engine: Engine, settings: Settings, address: str, password: str, origin: Origin, *, completes_login: bool = True
) -> UnlockedAccount:
    """Check the password, the account's standing, and open its private keys in memory.

    ``origin`` names the door, the client's address and the request for the audit trail
    and the lockouts. ``completes_login`` is false where a second factor follows (web,
    API): the failure counts of this client are then cleared only once that succeeds.
    Raises TooManyAttempts (this client address must wait; no password is checked),
    AccountLocked, BadCredentials (implausible credentials, an unknown address or a wrong
    password alike), and, after a right password only, a StandingError subclass:
    AccountDisabled, EntryRevoked, AddressNotServed, CertificateRevoked, CertificateExpired.
    """
    address = normalise_address(address)
    if not plausible_address(address) or not password or len(password) > MAX_PASSWORD:
        raise BadCredentials()  # no account can have these: nothing to look up or count
    now = utcnow()
    channel, client = origin.channel, origin.client

    def failed(why: str) -> None:
        record_failure(engine, settings, address, origin, action=f"{channel}.login", reason=why)

    ops, mem = settings.security.argon2_opslimit, settings.security.argon2_memlimit
    with session_scope(engine, readonly=True) as session:
        verdict = throttle.verdict(session, settings, address, client, now)
        account = get_account(session, address)
        snapshot = None
        if account is not None:
            snapshot = (account.password_hash, account.locked_until, account.certificate_id, wrapped_keys_of(account))
    if verdict.retry_after:
        raise TooManyAttempts(verdict.retry_after)
    if verdict.locked_until is not None and snapshot is not None:
        failed(LOCKED)
        raise AccountLocked(verdict.locked_until)
    if snapshot is None:
        keys.verify_password(_dummy_hash(ops, mem), password)
        failed("unknown-account")
        raise BadCredentials()
    password_hash, locked_until, certificate_id, wrapped = snapshot
    if locked_until is not None and locked_until > now:
        failed(LOCKED)
        raise AccountLocked(locked_until)
    # One argon2id computation: opening the keys is the password's check. A closed mailbox,
    # its keys erased, is checked against its password's hash, so that its owner is told
    # it is closed (below), not that the password is wrong.
    opened = open_keys(password_hash, wrapped, password)
    if opened is None:
        failed("bad-password")
        raise BadCredentials()
    key_der, past = opened
    try:
        with session_scope(engine, readonly=True) as session:
            standing.check(session, settings, address)
    except StandingError as exc:
        failed(exc.code)
        raise
    if not key_der:
        # Keys erased, and yet in good standing: there is nothing to log in with.
        failed("no-keys")
        raise BadCredentials()
    with session_scope(engine) as session:
        if completes_login:
            throttle.clear_pair(session, address, client)
        cert_row = session.get(Certificate, certificate_id) if certificate_id else None
        cert = x509.load_der_x509_certificate(cert_row.der) if cert_row else None
        audit.record(
            session,
            actor=address,
            action=f"{channel}.login",
            object=address,
            request_id=origin.request_id,
            client=client or "local",
        )
        if channel != "cli":
            # A door's login keeps the mailbox alive (mss.lifecycle); a command does not.
            row = get_account(session, address)
            if row is not None:
                row.last_login_at = now
                row.inactivity_notice_at = None
                session.add(row)
    if cert is None:
        raise BadCredentials()
    return UnlockedAccount(
        address=address,
        private_key_der=key_der,
        certificate=cert,
        past_keys_der=past,
        credential=standing.credential_stamp(password_hash),
    )


def login_with_code(
    engine: Engine,
    settings: Settings,
    master_key: MasterKey,
    address: str,
    password: str,
    code: str,
    origin: Origin,
    then: Callable[[Session, UnlockedAccount], T],
) -> T:
    """Both factors at once: the password, then a TOTP or recovery code; then ``then``
    (the session it opens) in the transaction that accepts the code, and what it returns.

    Raises what :func:`authenticate` raises, EnrolmentRequired when the account has not
    enrolled an authenticator yet (done in the web inbox), BadTotp, AccountLocked, and what
    ``then`` raises (the code then stays unused).
    """
    unlocked = authenticate(engine, settings, address, password, origin, completes_login=False)
    if not totp_confirmed(engine, unlocked.address):
        raise EnrolmentRequired("enrol an authenticator in the web inbox first")
    return check_second_factor(
        engine, settings, master_key, unlocked.address, code, origin, then=lambda session: then(session, unlocked)
    )
