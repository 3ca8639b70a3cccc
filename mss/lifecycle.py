"""The mailbox life cycle and the audit retention, run daily by ``mss serve`` and by
``mss lifecycle run``.

A mailbox whose account has not logged in at any door for ``MSS_INACTIVE_NOTICE_DAYS`` gets
an inactivity notice, a message from the operator in its inbox (signed by the operator,
encrypted to the account like every message). After ``MSS_INACTIVE_CLOSE_DAYS`` without
login, and once the notice has had the days between the two settings to be read, the
account is closed: its keys are destroyed first (crypto-erase: the wrapped private keys,
their recovery escrow and the TOTP seed), its certificate revoked, then its mailbox rows
and every message nobody else holds are deleted. Each step is audited; the audit trail
itself is purged past ``MSS_AUDIT_RETENTION_DAYS`` with a signed checkpoint, so it still
verifies.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage

from sqlalchemy import delete, func, or_, select
from sqlmodel import Session, col

from directory import certificates
from mss import audit, store
from mss.db import rowcount, session_scope, utcnow
from mss.mime import SMTP_POLICY
from mss.models import Account, Delivery, MailboxIndexed, MailboxItem, MailboxToken, Message, Receipt, WebSession
from mss.receipts import issuer
from mss.receipts.sealing import listed
from mss.receipts.wire import Report
from mss.runtime import Runtime

NOTICE_KIND = "notice"


@dataclass
class LifecycleSummary:
    """What one run did."""

    noticed: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    messages_deleted: int = 0
    audit_events_purged: int = 0
    crl_not_written: str | None = None
    """Why the CRL that lists a closed mailbox's certificate could not be written (the
    closure holds; ``mss pki crl`` publishes it once that is mended), or None."""


def _inactive_since(account: Account) -> datetime:
    return account.last_login_at or account.created_at


def _notice(session: Session, rt: Runtime, account: Account, now: datetime) -> bool:
    """Put the inactivity notice in the account's inbox; False when nothing can be
    encrypted to it (no valid certificate: it is closed without one)."""
    certificate = certificates.current_certificate(session, account.address)
    if certificate is None:
        return False
    settings = rt.settings
    close_on = _inactive_since(account) + timedelta(days=settings.operator.inactive_close_days)
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = certificates.operator_address(settings)
    message["To"] = account.address
    message["Subject"] = "Boîte aux lettres inactive / Inactive mailbox"
    message["Date"] = email.utils.format_datetime(now)
    message["Message-ID"] = email.utils.make_msgid(domain=issuer.reporter(settings))
    message.set_content(
        f"Votre boîte aux lettres n'a pas été utilisée depuis le {_inactive_since(account):%d/%m/%Y}.\n"
        f"Sans connexion d'ici le {close_on:%d/%m/%Y}, elle sera fermée et ses messages supprimés.\n\n"
        f"Your mailbox has not been used since {_inactive_since(account):%Y-%m-%d}.\n"
        f"Unless you log in by {close_on:%Y-%m-%d}, it will be closed and its messages deleted.\n"
    )
    written = Report.of(message)
    cms = issuer.seal(session, rt, written, certificate)
    meta = listed(written, account.address)
    store.store_notice(session, rt.master_key, owner=account.address, kind=NOTICE_KIND, cms=cms, meta=meta)
    account.inactivity_notice_at = now
    session.add(account)
    audit.record(
        session,
        actor="system",
        action="account.inactivity-notice",
        object=account.address,
        inactive_since=f"{_inactive_since(account):%Y-%m-%d}",
        close_on=f"{close_on:%Y-%m-%d}",
    )
    return True


def _delete_messages_of(session: Session, address: str) -> int:
    """Delete ``address``'s mailbox rows, then every message no mailbox holds any more.
    Returns the number of messages deleted."""
    items = list(
        session.execute(
            select(col(MailboxItem.id), col(MailboxItem.message_id)).where(col(MailboxItem.owner) == address)
        )
    )
    item_ids = [i for i, _m in items]
    touched = {m for _i, m in items}
    if item_ids:
        session.execute(delete(MailboxToken).where(col(MailboxToken.item_id).in_(item_ids)))
        session.execute(delete(MailboxIndexed).where(col(MailboxIndexed.item_id).in_(item_ids)))
        session.execute(delete(MailboxItem).where(col(MailboxItem.id).in_(item_ids)))
    if not touched:
        return 0
    held = set(
        session.execute(select(col(MailboxItem.message_id)).where(col(MailboxItem.message_id).in_(touched))).scalars()
    )
    orphans = sorted(touched - held)
    if not orphans:
        return 0
    # A receipt row links an original and its notification: both ends go with either.
    session.execute(
        delete(Receipt).where(or_(col(Receipt.message_id).in_(orphans), col(Receipt.notification_id).in_(orphans)))
    )
    session.execute(delete(Delivery).where(col(Delivery.message_id).in_(orphans)))
    return rowcount(session.execute(delete(Message).where(col(Message.id).in_(orphans))))


def _close(session: Session, rt: Runtime, account: Account, now: datetime) -> int:
    """Crypto-erase the account's keys, revoke its certificate, end its sessions, delete its
    messages; returns how many messages were deleted."""
    # First the keys: once they are gone, no stored copy of its mail can be read any more.
    account.wrapped_key = b""
    account.recovery_sealed_key = b""
    account.past_keys_wrapped = b""
    account.past_keys_recovery_sealed = b""
    account.totp_secret_sealed = b""
    account.recovery_codes = ""
    account.disabled = True
    account.closed_at = now
    account.updated_at = now
    session.add(account)
    session.flush()
    certificates.revoke_for_address(
        session, rt.settings, account.address, reason="cessationOfOperation", actor="system"
    )
    session.execute(delete(WebSession).where(col(WebSession.address) == account.address))
    deleted = _delete_messages_of(session, account.address)
    audit.record(
        session,
        actor="system",
        action="account.close",
        object=account.address,
        reason="inactive",
        inactive_since=f"{_inactive_since(account):%Y-%m-%d}",
        messages_deleted=deleted,
    )
    return deleted


def run(rt: Runtime, *, now: datetime | None = None) -> LifecycleSummary:
    """One pass: notices, closures, audit purge. Each account is handled in a transaction
    of its own. Returns what was done."""
    now = now or utcnow()
    settings = rt.settings.operator
    summary = LifecycleSummary()
    notice_cut = now - timedelta(days=settings.inactive_notice_days)
    close_cut = now - timedelta(days=settings.inactive_close_days)
    # The notice must have had the days between the two settings to be read.
    notice_read_by = now - timedelta(days=settings.inactive_close_days - settings.inactive_notice_days)
    with session_scope(rt.engine, readonly=True) as session:
        candidates = (
            session.execute(
                select(col(Account.id))
                .where(
                    col(Account.closed_at).is_(None),
                    func.coalesce(col(Account.last_login_at), col(Account.created_at)) <= notice_cut,
                )
                .order_by(col(Account.id))
            )
            .scalars()
            .all()
        )
    for account_id in candidates:
        with session_scope(rt.engine) as session:
            account = session.execute(
                select(Account).where(col(Account.id) == account_id).with_for_update()
            ).scalar_one()
            if account.closed_at is not None or _inactive_since(account) > notice_cut:
                continue  # logged in or closed since
            noticed = account.inactivity_notice_at
            if _inactive_since(account) <= close_cut and (
                (noticed is not None and noticed <= notice_read_by)
                or certificates.current_certificate(session, account.address) is None
            ):
                summary.messages_deleted += _close(session, rt, account, now)
                summary.closed.append(account.address)
            elif noticed is None and _notice(session, rt, account, now):
                summary.noticed.append(account.address)
        summary.crl_not_written = certificates.crl_not_written(session) or summary.crl_not_written
    # The audit purge never reaches past the real present (a purge refuses the future).
    before = min(now, utcnow()) - timedelta(days=rt.settings.audit_retention_days)
    with session_scope(rt.engine) as session:
        summary.audit_events_purged = audit.purge(
            session, rt.master_key, before=before, actor="system", retention_days=rt.settings.audit_retention_days
        ).deleted
    return summary
