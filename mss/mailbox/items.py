"""The ground every reading of a mailbox stands on: the folders, how a message of a mailbox
is found from its queue id (only through the reader's own ``mailbox_item`` rows: any other
id is "not found", whether it exists or not), and a correspondent's card from the directory.
"""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlmodel import Session, col

from directory.models import DirectoryEntry, EntryCard
from mss import store
from mss.documents import DocumentLimits
from mss.models import MailboxItem, Message
from mss.runtime import Runtime

INBOX, SENT, ARCHIVE = store.INBOX, store.SENT, store.ARCHIVE

FOLDERS = (INBOX, SENT, ARCHIVE)

DISPLAY_TZ = ZoneInfo("Europe/Paris")

MAX_PER_PAGE = 100

DOC_TYPES = ("pdf", "cda", "xdm", "receipt")

_QUEUE_ID = re.compile(r"^[0-9A-Z][0-9A-Z-]{0,39}$")  # pipeline ids, and receipts' ID-MDN-HASH


# A correspondent is shown by the card of their directory entry.
Correspondent = EntryCard


def limits_of(rt: Runtime) -> DocumentLimits:
    """The document limits of this service (attachments up to the message size limit)."""
    return DocumentLimits(max_document_size=rt.settings.relay.max_message_size)


def entries_of(session: Session, addresses: set[str]) -> dict[str, DirectoryEntry]:
    if not addresses:
        return {}
    rows = session.execute(select(DirectoryEntry).where(col(DirectoryEntry.address).in_(sorted(addresses)))).scalars()
    return {row.address: row for row in rows}


def queue_id_of(value: str) -> str | None:
    """A queue id as stored (upper case), or None when ``value`` cannot be one: an identifier
    from a URL never reaches the database unless it has the shape of ours."""
    candidate = (value or "").strip().upper()
    return candidate if _QUEUE_ID.match(candidate) else None


def items_of(session: Session, owner: str, queue_id: str) -> list[tuple[MailboxItem, Message]]:
    normalised = queue_id_of(queue_id)
    if normalised is None:
        return []
    rows = session.execute(
        select(MailboxItem, Message)
        .join(Message, col(Message.id) == col(MailboxItem.message_id))
        .where(col(MailboxItem.owner) == owner, col(Message.queue_id) == normalised)
        .order_by(col(MailboxItem.id))
    ).all()
    return [(item, message) for item, message in rows]


def pick(rows: list[tuple[MailboxItem, Message]], folder: str | None) -> tuple[MailboxItem, Message]:
    """The row to show: the folder asked for, else a received copy, else the sent one."""
    for wanted in (folder, INBOX, ARCHIVE, SENT):
        for item, message in rows:
            if item.folder == wanted:
                return item, message
    return rows[0]
