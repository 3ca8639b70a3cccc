"""Marks and folders of a mailbox: archive and back, unread again, the unread count."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlmodel import col

from mss import audit
from mss.db import session_scope
from mss.mailbox.items import ARCHIVE, INBOX, SENT, items_of
from mss.models import MailboxItem
from mss.runtime import Runtime
from mss.store import MessageNotFound


def move(rt: Runtime, owner: str, queue_id: str, *, to: str, request_id: str = "") -> None:
    """Archive a received message (``to=archive``) or put it back (``to=inbox``).

    Audits ``message.archive`` or ``message.unarchive``. Raises MessageNotFound when
    ``owner`` has no received copy of it.
    """
    if to not in {INBOX, ARCHIVE}:
        raise ValueError("a message moves between inbox and archive only")
    source = ARCHIVE if to == INBOX else INBOX
    with session_scope(rt.engine) as session:
        rows = [(i, m) for i, m in items_of(session, owner, queue_id) if i.folder == source]
        if not rows:
            raise MessageNotFound(f"no message {queue_id.strip()[:40]} in this folder")
        for item, _message in rows:
            item.folder = to
            session.add(item)
        audit.record(
            session,
            actor=owner,
            action="message.archive" if to == ARCHIVE else "message.unarchive",
            object=rows[0][1].queue_id,
            request_id=request_id,
        )


def mark_unread(rt: Runtime, owner: str, queue_id: str) -> None:
    """Mark a message unread again. Raises MessageNotFound."""
    with session_scope(rt.engine) as session:
        rows = items_of(session, owner, queue_id)
        if not rows:
            raise MessageNotFound(f"no message {queue_id.strip()[:40]} in this mailbox")
        for item, _message in rows:
            if item.folder != SENT:
                item.unread = True
                session.add(item)


def unread_count(rt: Runtime, owner: str) -> int:
    """Unread messages in the inbox."""
    with session_scope(rt.engine) as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(MailboxItem)
                .where(
                    col(MailboxItem.owner) == owner, col(MailboxItem.folder) == INBOX, col(MailboxItem.unread).is_(True)
                )
            ).scalar_one()
        )
