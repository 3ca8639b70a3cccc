"""Failed logins counted so that guessing is slow and nobody can lock a professional out.

Three counters, all over a window of ``MSS_LOCKOUT_SECONDS`` that restarts after a quiet
window:

- **one account from one client address** (``pair:ACCOUNT|ADDR``): after
  ``MSS_MAX_LOGIN_FAILURES`` wrong passwords, that account is locked *for that address
  only*. A stranger who types five wrong passwords locks themselves out, not the doctor;
- **one client address, whatever the account** (``client:ADDR``): after
  ``MSS_CLIENT_FREE_FAILURES`` failures each further try must wait (1 s, doubling up to
  60 s after the last failure), and after ``MSS_CLIENT_MAX_FAILURES`` the address is refused
  for the window. Such refusals cost no argon2id work;
- **one account from everywhere** (``Account.failed_logins``, kept by ``mss.accounts``):
  after ``MSS_ACCOUNT_MAX_FAILURES`` wrong passwords from any addresses together the
  account is locked for everyone, so a distributed guess gets no more than that many tries
  a window.

The second factor is counted on the account alone (``mss.accounts``): only someone who
knows the password can reach it. Local callers (the CLI) pass no client address and skip
the per-address counter. The rows live in the database so every process and every door
share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import Session, col

from mss.models import LoginThrottle
from mss.settings import Settings

MAX_DELAY_SECONDS = 60


@dataclass(frozen=True)
class Verdict:
    """What the counters say of a login attempt before any password is checked."""

    retry_after: int = 0  # seconds the client address must wait (0: it may try)
    locked_until: datetime | None = None  # this account is locked for this client address


def client_scope(client: str) -> str:
    return f"client:{client}"


def pair_scope(address: str, client: str) -> str:
    return f"pair:{address}|{client}"


def _window(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.security.lockout_seconds)


def _live(row: LoginThrottle | None, settings: Settings, now: datetime) -> LoginThrottle | None:
    """The row if its window still runs or it still blocks, else None (it no longer counts)."""
    if row is None:
        return None
    if row.blocked_until is not None and row.blocked_until > now:
        return row
    if now - row.last_failure_at >= _window(settings):
        return None
    return row


def client_delay(failures: int, settings: Settings) -> int:
    """Seconds a client address waits after its last failure once it has ``failures``."""
    extra = failures - settings.security.client_free_failures
    if extra <= 0:
        return 0
    return min(MAX_DELAY_SECONDS, 2 ** (extra - 1))


def verdict(session: Session, settings: Settings, address: str, client: str, now: datetime) -> Verdict:
    """May ``client`` try a password for ``address`` now?"""
    pair = _live(session.get(LoginThrottle, pair_scope(address, client)), settings, now)
    locked_until = pair.blocked_until if pair is not None and pair.blocked_until and pair.blocked_until > now else None
    if not client:
        return Verdict(locked_until=locked_until)
    row = _live(session.get(LoginThrottle, client_scope(client)), settings, now)
    retry_after = 0
    if row is not None:
        if row.blocked_until is not None and row.blocked_until > now:
            retry_after = math.ceil((row.blocked_until - now).total_seconds())
        else:
            ready_at = row.last_failure_at + timedelta(seconds=client_delay(row.failures, settings))
            if ready_at > now:
                retry_after = math.ceil((ready_at - now).total_seconds())
    return Verdict(retry_after=retry_after, locked_until=locked_until)


def _count(session: Session, settings: Settings, scope: str, limit: int, now: datetime) -> LoginThrottle:
    row = session.get(LoginThrottle, scope, with_for_update=True)
    if row is None:
        row = LoginThrottle(scope=scope, failures=0, last_failure_at=now)
    elif _live(row, settings, now) is None:
        row.failures, row.blocked_until = 0, None
    row.failures += 1
    row.last_failure_at = now
    if row.failures >= limit and (row.blocked_until is None or row.blocked_until <= now):
        row.blocked_until = now + _window(settings)
    session.add(row)
    return row


@dataclass(frozen=True)
class Counted:
    """What one more failure did: the new blocks it set, if any."""

    pair_locked_until: datetime | None
    client_blocked_until: datetime | None


def record_failure(
    session: Session, settings: Settings, address: str, client: str, now: datetime, *, pair: bool = True
) -> Counted:
    """Count a wrong password of ``client`` for ``address``; report the blocks it started.

    ``pair`` is false for an address without an account: only the client address counts
    (no row is kept for every address a guesser makes up). Rows that no longer count are
    deleted on the way.
    """
    session.execute(
        delete(LoginThrottle).where(
            col(LoginThrottle.last_failure_at) < now - 2 * _window(settings),
            (col(LoginThrottle.blocked_until).is_(None)) | (col(LoginThrottle.blocked_until) < now),
        )
    )
    pair_new = None
    if pair:
        row = _count(session, settings, pair_scope(address, client), settings.security.max_login_failures, now)
        pair_new = row.blocked_until if row.failures == settings.security.max_login_failures else None
    client_new = None
    if client:
        row = _count(session, settings, client_scope(client), settings.security.client_max_failures, now)
        client_new = row.blocked_until if row.failures == settings.security.client_max_failures else None
    return Counted(pair_locked_until=pair_new, client_blocked_until=client_new)


def clear_pair(session: Session, address: str, client: str) -> None:
    """Forget the failures of ``client`` for ``address`` (after a complete login from it)."""
    session.execute(delete(LoginThrottle).where(col(LoginThrottle.scope) == pair_scope(address, client)))


def clear_account(session: Session, address: str) -> None:
    """Forget every per-address count of ``address`` (an administrator's unlock, a recovery)."""
    session.execute(delete(LoginThrottle).where(col(LoginThrottle.scope).startswith(f"pair:{address}|")))
