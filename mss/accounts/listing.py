"""The accounts as an administrator reviews them: who may log in now and why not, whether
the authenticator is enrolled, when the certificate ends and when the account last logged in.

The state comes from ``mss.standing`` (the rule every door applies) and the lockout; the
last login from the audit trail (a password accepted at a door: web, API, SMTP, IMAP).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlmodel import Session, col

from directory.models import Certificate
from mss import audit, standing
from mss.db import utcnow
from mss.errors import AccountError, StandingError
from mss.models import Account, AuditEvent
from mss.settings import Settings

ACTIVE = "active"
LOCKED = "locked"
STATES = (
    ACTIVE,
    LOCKED,
    "disabled",
    "entry-revoked",
    "certificate-revoked",
    "certificate-expired",
    "domain-not-served",
)
LOGIN_ACTIONS = ("web.login", "api.login", "smtp.login", "imap.login")


@dataclass(frozen=True)
class AccountRow:
    """One account as the listing shows it."""

    address: str
    state: str
    """active, locked (for a while, after failures) or the standing's code (disabled,
    entry-revoked, certificate-revoked, certificate-expired, domain-not-served)."""
    reason: str
    two_factor: bool
    """True once an authenticator is enrolled (the first code accepted)."""
    certificate_serial: str
    certificate_not_after: datetime | None
    last_login: datetime | None


def list_accounts(session: Session, settings: Settings, *, state: str = "") -> list[AccountRow]:
    """Every account in address order, or only those in ``state``. Raises AccountError for
    an unknown state."""
    if state and state not in STATES:
        raise AccountError(f"unknown state {state!r}: use {', '.join(STATES)}")
    now = utcnow()
    last = dict(
        session.execute(
            select(col(AuditEvent.actor), func.max(col(AuditEvent.at)))
            .where(col(AuditEvent.action).in_(LOGIN_ACTIONS), col(AuditEvent.outcome) == audit.SUCCESS)
            .group_by(col(AuditEvent.actor))
        ).all()
    )
    rows = session.execute(
        select(Account, col(Certificate.serial), col(Certificate.not_after))
        .join(Certificate, col(Certificate.id) == col(Account.certificate_id), isouter=True)
        .order_by(col(Account.address))
    ).all()
    found = []
    for account, serial, not_after in rows:
        try:
            standing.check(session, settings, account.address)
        except StandingError as exc:
            current, reason = exc.code, exc.message
        else:
            if account.locked_until is not None and account.locked_until > now:
                current, reason = LOCKED, f"after repeated failures, until {account.locked_until:%Y-%m-%d %H:%M} UTC"
            else:
                current, reason = ACTIVE, ""
        if state and current != state:
            continue
        found.append(
            AccountRow(
                address=account.address,
                state=current,
                reason=reason,
                two_factor=account.totp_confirmed,
                certificate_serial=serial or "",
                certificate_not_after=not_after,
                last_login=last.get(account.address),
            )
        )
    return found
