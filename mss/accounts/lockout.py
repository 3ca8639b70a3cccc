"""The one lockout rule for passwords, TOTP codes and recovery codes, whatever the door.

A wrong password (or an unknown address) counts for the client address and for the account
from that address (``mss.throttle``), and for the account from everywhere
(``MSS_ACCOUNT_MAX_FAILURES``). A wrong second factor counts on the account and locks it
after ``MSS_MAX_LOGIN_FAILURES``, whatever the first factor did in between: only a complete
login (:func:`login_completed`) clears it. Every failure and every lock is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session

from mss import audit, metrics, throttle
from mss.accounts._common import get_account
from mss.db import session_scope, utcnow
from mss.models import Account
from mss.settings import Settings

# Failures that count towards the lockouts (a locked or disabled account does not re-lock):
# wrong passwords by client address and account (mss.throttle), wrong second factors on
# the account alone (only someone who knows the password gets that far).
PASSWORD_FAILURES = frozenset({"bad-password", "unknown-account"})
# A try at an account that is locked costs no argon2id work, so nothing slowed it down: it
# counts toward its client address's limit too (``MSS_CLIENT_MAX_FAILURES``), past which
# the client waits and its tries are no longer written to the audit trail one by one.
LOCKED = "locked"
FACTOR_FAILURES = frozenset({"bad-totp", "bad-recovery-code"})
COUNTED_FAILURES = PASSWORD_FAILURES | FACTOR_FAILURES


@dataclass(frozen=True)
class Origin:
    """Where an authentication step comes from, as the audit trail and the lockouts see it.

    ``channel`` names the door (``smtp``, ``imap``, ``web``, ``api``, ``cli``), ``client``
    the client's IP address (empty for a local command) and ``request_id`` the correlation
    id of the request or session. Each door builds one per request and hands it on.
    """

    channel: str
    client: str = ""
    request_id: str = ""


LOCAL = Origin("cli")
"""A command run on this machine: no client address, no request."""


def record_failure(
    engine: Engine, settings: Settings, address: str, origin: Origin, *, action: str, reason: str
) -> None:
    """Audit a failed authentication step (``reason``) and count it towards the lockouts.

    Runs its own transaction: a failure is on record even though the login is refused.
    """
    now = utcnow()
    window = timedelta(seconds=settings.security.lockout_seconds)
    locks: list[dict[str, object]] = []
    with session_scope(engine) as session:
        account = get_account(session, address)
        if reason in PASSWORD_FAILURES or reason == LOCKED:
            # A locked account's pair needs no count of its own: it is locked already.
            pair = account is not None and reason != LOCKED
            counted = throttle.record_failure(session, settings, address, origin.client, now, pair=pair)
            if counted.pair_locked_until is not None:
                locks.append({"scope": "client", "client": origin.client or "local"})
            if counted.client_blocked_until is not None:
                _system_event(
                    session,
                    settings,
                    origin,
                    "login.throttle",
                    origin.client,
                    failures=settings.security.client_max_failures,
                )
        if account is not None and reason in COUNTED_FAILURES:
            if account.last_failure_at is None or now - account.last_failure_at >= window:
                account.failed_logins = account.factor_failures = 0  # a quiet window starts over
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
            request_id=origin.request_id,
            reason=reason,
            client=origin.client or "local",
        )
        metrics.LOGIN_FAILURES.labels(action=action, reason=reason).inc()
        for lock in locks:
            metrics.LOCKOUTS.labels(scope=str(lock["scope"])).inc()
            _system_event(session, settings, origin, "account.lock", address, **lock)


def _system_event(
    session: Session, settings: Settings, origin: Origin, action: str, object_: str, **detail: object
) -> None:
    # A lock or a throttle the rule itself set: the system acts, for the lockout's length.
    audit.record(
        session,
        actor="system",
        action=action,
        object=object_,
        request_id=origin.request_id,
        seconds=settings.security.lockout_seconds,
        # the detail fields are the lock's, none named like record's own parameters
        **detail,  # type: ignore[arg-type]
    )


def is_locked(account: Account) -> bool:
    """True while the account is locked for every client (``Account.locked_until``)."""
    return account.locked_until is not None and account.locked_until > utcnow()


def login_completed(session: Session, account: Account, client: str = "") -> None:
    """A login completed by its second factor: its failure counts of this client start over."""
    account.factor_failures = 0
    account.updated_at = utcnow()
    session.add(account)
    throttle.clear_pair(session, account.address, client)
