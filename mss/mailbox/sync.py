"""A mailbox as mail clients keep it in sync: UIDs, flags, copies, moves, expunges, openings.

The same rows as the web (``mailbox_item``): a message read in one door is read in the
other at once, because ``\\Seen`` *is* ``mailbox_item.unread``. What only clients need lives
beside it: ``client_folder`` (UIDVALIDITY, next UID) and ``client_item`` (a row's UID and the
``\\Flagged``, ``\\Answered`` and ``\\Deleted`` flags).

UIDs are given out lazily, in the order rows arrived, when a client looks at a folder: a
row with no UID yet (new mail, stored by any process) or whose UID belongs to another
folder (archived in the web meanwhile) gets the folder's next UID while the folder's
``client_folder`` row is locked, so processes sharing one database never give out the same
UID twice (and ``client_item`` is unique on owner, folder and UID). A folder's UIDVALIDITY
is fixed at its first use and differs by IMAP mode, since the same UID holds other bytes
in the other mode.

Folders: ``INBOX``, ``Sent`` and ``Archive`` are the web's. A move into Sent takes only
messages the owner sent; an expunge removes the owner's row (the message, its receipts and
its audit trail stay). Every opening by a client (a body fetched) is a ``message.open``
event; a message that becomes ``\\Seen`` through a client counts as displayed, and sends the
``displayed`` notification its sender asked for, as an opening in the web does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col

from directory import certificates
from mss import audit
from mss.accounts import UnlockedAccount, read_receipt_choice
from mss.db import key_of, session_scope, utcnow
from mss.errors import MssError
from mss.mailbox import served
from mss.mailbox.content import decrypt_and_verify, open_envelope
from mss.mime import nests_deeper_than
from mss.models import ClientFolder, ClientItem, MailboxIndexed, MailboxItem, MailboxToken, Message
from mss.receipts import issuer
from mss.runtime import Runtime
from mss.store import ARCHIVE, INBOX, SENT, MessageMeta, checked_signature, entity_facts

FOLDERS = (INBOX, SENT, ARCHIVE)
FLAGGED, ANSWERED, DELETED = "flagged", "answered", "deleted"
CLIENT_FLAGS = (FLAGGED, ANSWERED, DELETED)
_BATCH = 500

log = logging.getLogger("mss.mailbox")


class SyncError(MssError):
    """A mail client asked for something the mailbox rules do not allow."""

    code = "mailbox-rule"


class UnknownFolder(SyncError):
    """No such folder."""

    code = "unknown-folder"


class NotAllowed(SyncError):
    """The folder does not take that message (only what the owner sent goes to Sent ...)."""

    code = "not-allowed"


@dataclass(frozen=True)
class ItemState:
    """One message of a folder as a client sees it."""

    uid: int
    item_id: int
    message_id: int  # the stored message's row id
    seen: bool
    flagged: bool
    answered: bool
    deleted: bool
    arrived: datetime  # IMAP INTERNALDATE
    kind: str
    cms_size: int


@dataclass(frozen=True)
class FolderState:
    """A folder at one moment: its UIDVALIDITY, next UID and messages by UID."""

    owner: str
    folder: str
    mode: str
    uid_validity: int
    uid_next: int
    items: tuple[ItemState, ...]
    fingerprint: tuple[int, ...]


@dataclass(frozen=True)
class Details:
    """What a listing shows of one message (from its sealed metadata, never decrypted)."""

    item_id: int
    meta: MessageMeta
    kind: str
    cms_size: int
    facts: dict[str, object] | None


def check_folder(folder: str) -> str:
    """``folder`` if it is one of ours. Raises UnknownFolder."""
    if folder not in FOLDERS:
        raise UnknownFolder(f"no folder {folder!r}")
    return folder


def _validity(base: int, mode: str) -> int:
    return base * 2 + (1 if mode == served.END_TO_END else 0)


def _folder_row(session: Session, owner: str, folder: str, *, lock: bool) -> ClientFolder:
    row = session.get(ClientFolder, (owner, folder), with_for_update=lock)
    if row is None:
        # 30 bits of the clock: a folder made again after a reset gets another validity.
        row = ClientFolder(owner=owner, folder=folder, uid_validity=(int(time.time()) & 0x3FFFFFFF) or 1, uid_next=1)
        session.add(row)
        session.flush()
    return row


def fingerprint(session: Session, owner: str, folder: str) -> tuple[int, ...]:
    """A cheap summary that changes whenever the folder's rows, read marks or client flags
    change, whichever door or process changed them (what IDLE and NOOP poll)."""
    count, unread, ids = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((col(MailboxItem.unread).is_(True), 1), else_=0)), 0),
            func.coalesce(func.sum(col(MailboxItem.id)), 0),
        ).where(col(MailboxItem.owner) == owner, col(MailboxItem.folder) == folder)
    ).one()
    changes = session.execute(
        select(col(ClientFolder.changes)).where(col(ClientFolder.owner) == owner, col(ClientFolder.folder) == folder)
    ).scalar()
    return int(count), int(unread), int(ids), int(changes or 0)


def poll(engine: Engine, owner: str, folder: str) -> tuple[int, ...]:
    """The folder's fingerprint (a read-only transaction)."""
    with session_scope(engine, readonly=True) as session:
        return fingerprint(session, owner, folder)


def _rows(session: Session, owner: str, folder: str, after: int = 0):
    return session.execute(
        select(
            col(MailboxItem.id),
            col(MailboxItem.message_id),
            col(MailboxItem.unread),
            col(MailboxItem.created_at),
            col(ClientItem.uid),
            col(ClientItem.folder),
            col(ClientItem.flagged),
            col(ClientItem.answered),
            col(ClientItem.deleted),
            col(Message.kind),
            col(Message.size),
        )
        .join(Message, col(Message.id) == col(MailboxItem.message_id))
        .outerjoin(ClientItem, col(ClientItem.item_id) == col(MailboxItem.id))
        .where(col(MailboxItem.owner) == owner, col(MailboxItem.folder) == folder, col(MailboxItem.id) > after)
    ).all()


def _assign(session: Session, owner: str, folder: str, item_ids: Sequence[int]) -> dict[int, int]:
    """Give the next UIDs of the (locked) folder to ``item_ids``, in that order."""
    row = _folder_row(session, owner, folder, lock=True)
    given: dict[int, int] = {}
    existing = {
        c.item_id: c
        for c in session.execute(select(ClientItem).where(col(ClientItem.item_id).in_(list(item_ids)))).scalars()
    }
    for item_id in item_ids:
        uid = row.uid_next
        row.uid_next += 1
        current = existing.get(item_id)
        if current is None:
            session.add(ClientItem(item_id=item_id, owner=owner, folder=folder, uid=uid))
        else:
            # Moved since its UID was given: same flags, a new UID in its new folder.
            current.folder, current.uid, current.deleted = folder, uid, False
            session.add(current)
        given[item_id] = uid
    session.add(row)
    session.flush()
    return given


def folder_state(engine: Engine, owner: str, folder: str, mode: str, *, after: int = 0) -> FolderState:
    """The folder with a UID for every row (new ones given theirs first). Raises UnknownFolder.

    ``after`` limits the answer to rows newer than that mailbox row id (what arrived since
    a state a client already has: IDLE then reads a few rows, not the whole folder).
    """
    check_folder(folder)
    for attempt in range(3):
        with session_scope(engine, readonly=True) as session:
            rows = _rows(session, owner, folder, after)
            base_row = session.get(ClientFolder, (owner, folder))
            pending = sorted(
                ((r.created_at, r.id) for r in rows if r.uid is None or r.folder != folder), key=lambda t: t
            )
            if base_row is not None and not pending:
                return _state(session, owner, folder, mode, base_row, rows)
        try:
            with session_scope(engine) as session:
                _folder_row(session, owner, folder, lock=True)
                # Read again under the lock: another process may have given them meanwhile.
                rows = _rows(session, owner, folder, after)
                still = [
                    i for _at, i in sorted((r.created_at, r.id) for r in rows if r.uid is None or r.folder != folder)
                ]
                if still:
                    _assign(session, owner, folder, still)
        except IntegrityError:
            if attempt == 2:
                raise
    with session_scope(engine, readonly=True) as session:
        rows = _rows(session, owner, folder, after)
        base_row = session.get(ClientFolder, (owner, folder))
        assert base_row is not None
        return _state(session, owner, folder, mode, base_row, rows)


def _state(session: Session, owner: str, folder: str, mode: str, base: ClientFolder, rows) -> FolderState:
    items = tuple(
        sorted(
            (
                ItemState(
                    uid=r.uid,
                    item_id=r.id,
                    message_id=r.message_id,
                    seen=not r.unread,
                    flagged=bool(r.flagged),
                    answered=bool(r.answered),
                    deleted=bool(r.deleted),
                    arrived=r.created_at,
                    kind=r.kind,
                    cms_size=r.size,
                )
                for r in rows
                if r.uid is not None and r.folder == folder
            ),
            key=lambda item: item.uid,
        )
    )
    return FolderState(
        owner=owner,
        folder=folder,
        mode=mode,
        uid_validity=_validity(base.uid_validity, mode),
        uid_next=base.uid_next,
        items=items,
        fingerprint=fingerprint(session, owner, folder),
    )


def mode_of(engine: Engine, owner: str) -> str:
    """The owner's IMAP mode."""
    with session_scope(engine, readonly=True) as session:
        return served.mode_of(session, owner)


def details(engine: Engine, master_key, item_ids: Sequence[int]) -> dict[int, Details]:
    """The sealed metadata (opened) and kept entity facts of these rows, by row id."""
    found: dict[int, Details] = {}
    with session_scope(engine, readonly=True) as session:
        for start in range(0, len(item_ids), _BATCH):
            chunk = list(item_ids[start : start + _BATCH])
            rows = session.execute(
                select(
                    col(MailboxItem.id), col(Message.id), col(Message.meta_sealed), col(Message.kind), col(Message.size)
                )
                .join(Message, col(Message.id) == col(MailboxItem.message_id))
                .where(col(MailboxItem.id).in_(chunk))
            ).all()
            cached = served.cached_facts(session, master_key, [r[1] for r in rows])
            for item_id, message_id, sealed, kind, size in rows:
                meta = MessageMeta.open(master_key, sealed)
                found[item_id] = Details(
                    item_id=item_id,
                    meta=meta,
                    kind=kind,
                    cms_size=size,
                    facts=served.facts_of(meta, cached.get(message_id)),
                )
    return found


# -- flags -------------------------------------------------------------------------------


def _owned(session: Session, owner: str, folder: str, uids: Iterable[int]) -> list[ClientItem]:
    wanted = sorted(set(uids))
    found: list[ClientItem] = []
    for start in range(0, len(wanted), _BATCH):
        found += list(
            session.execute(
                select(ClientItem)
                .join(MailboxItem, col(MailboxItem.id) == col(ClientItem.item_id))
                .where(
                    col(ClientItem.owner) == owner,
                    col(ClientItem.folder) == folder,
                    col(ClientItem.uid).in_(wanted[start : start + _BATCH]),
                    col(MailboxItem.folder) == folder,
                )
            ).scalars()
        )
    return found


def _bump(session: Session, owner: str, folder: str) -> None:
    session.execute(
        update(ClientFolder)
        .where(col(ClientFolder.owner) == owner, col(ClientFolder.folder) == folder)
        .values(changes=col(ClientFolder.changes) + 1)
    )


def set_flags(
    rt: Runtime, owner: str, folder: str, uids: Iterable[int], flags: dict[str, bool], *, request_id: str = ""
) -> list[int]:
    """Set (True) or clear (False) ``seen`` and the client flags on these UIDs; return the
    UIDs found. A message that becomes seen is displayed: its ``displayed`` notification
    goes out if its sender asked for one (not for what the owner sent)."""
    unknown = set(flags) - {"seen", *CLIENT_FLAGS}
    if unknown:
        raise SyncError(f"unknown flags {sorted(unknown)}")
    with session_scope(rt.engine) as session:
        rows = _owned(session, owner, folder, uids)
        if not rows:
            return []
        item_ids = [r.item_id for r in rows]
        client_values = {name: value for name, value in flags.items() if name in CLIENT_FLAGS}
        if client_values:
            session.execute(update(ClientItem).where(col(ClientItem.item_id).in_(item_ids)).values(**client_values))
            _bump(session, owner, folder)
        if "seen" in flags:
            newly = _mark_seen(session, item_ids, flags["seen"])
            if flags["seen"] and folder != SENT:
                _displayed(session, rt, owner, newly, request_id)
        return sorted(r.uid for r in rows)


def _mark_seen(session: Session, item_ids: list[int], seen: bool) -> list[int]:
    """Set the read mark; return the rows that changed (their messages' ids for receipts)."""
    changed = list(
        session.execute(
            select(col(MailboxItem.message_id)).where(
                col(MailboxItem.id).in_(item_ids), col(MailboxItem.unread).is_(seen)
            )
        ).scalars()
    )
    if changed:
        session.execute(update(MailboxItem).where(col(MailboxItem.id).in_(item_ids)).values(unread=not seen))
    return changed


def _displayed(session: Session, rt: Runtime, owner: str, message_ids: list[int], request_id: str) -> None:
    for message in session.execute(select(Message).where(col(Message.id).in_(message_ids))).scalars():
        meta = MessageMeta.open(rt.master_key, message.meta_sealed)
        # A client marking a message read is an opening: the account's standing choice for
        # read receipts applies (RFC 8098 2.1; "ask" waits for an answer in the web inbox).
        issuer.on_display(
            session,
            rt,
            message=message,
            meta=meta,
            reader=owner,
            choice=read_receipt_choice(session, owner),
            request_id=request_id,
        )


# -- copy, move, expunge -----------------------------------------------------------------


def _items_going_to(session: Session, owner: str, to: str, rows: Iterable[ClientItem]) -> dict[int, MailboxItem]:
    """The mailbox rows behind ``rows``, by id, once folder ``to`` may take them all.

    Raises UnknownFolder, NotAllowed (only messages ``owner`` sent go to Sent).
    """
    items = {
        i.id: i
        for i in session.execute(
            select(MailboxItem).where(col(MailboxItem.id).in_([r.item_id for r in rows]))
        ).scalars()
    }
    check_folder(to)
    if to == SENT:
        message_ids = [i.message_id for i in items.values()]
        senders = set(session.execute(select(col(Message.sender)).where(col(Message.id).in_(message_ids))).scalars())
        if senders - {owner}:
            raise NotAllowed("only messages you sent go to Sent")
    return items


def copy(
    engine: Engine, owner: str, folder: str, uids: Iterable[int], to: str, *, request_id: str = ""
) -> list[tuple[int, int]]:
    """Copy messages into folder ``to``; return (source UID, new UID) pairs.

    Raises UnknownFolder, NotAllowed.
    """
    with session_scope(engine) as session:
        rows = _owned(session, owner, folder, uids)
        if not rows:
            return []
        items = _items_going_to(session, owner, to, rows)
        copies: list[tuple[int, MailboxItem, ClientItem]] = []
        for row in sorted(rows, key=lambda r: r.uid):
            source = items[row.item_id]
            new = MailboxItem(message_id=source.message_id, owner=owner, folder=to, unread=source.unread)
            session.add(new)
            copies.append((row.uid, new, row))
        session.flush()
        given = _assign(session, owner, to, [key_of(new) for _uid, new, _row in copies])
        for _uid, new, row in copies:
            session.execute(
                update(ClientItem)
                .where(col(ClientItem.item_id) == new.id)
                .values(flagged=row.flagged, answered=row.answered)
            )
        audit.record_many(
            session,
            [
                audit.EventSpec(
                    owner,
                    "message.copy",
                    _queue_id(session, new.message_id),
                    request_id=request_id,
                    detail={"from": folder, "to": to},
                )
                for _uid, new, _row in copies
            ],
        )
        return [(uid, given[key_of(new)]) for uid, new, _row in copies]


def _queue_id(session: Session, message_id: int) -> str:
    return str(session.execute(select(col(Message.queue_id)).where(col(Message.id) == message_id)).scalar_one())


def move(
    engine: Engine, owner: str, folder: str, uids: Iterable[int], to: str, *, request_id: str = ""
) -> list[tuple[int, int]]:
    """Move messages into folder ``to`` (the web sees them there at once); return (old
    UID, new UID) pairs. Raises UnknownFolder, NotAllowed."""
    if to == folder:
        raise NotAllowed("the message is already in that folder")
    with session_scope(engine) as session:
        rows = _owned(session, owner, folder, uids)
        if not rows:
            return []
        rows.sort(key=lambda r: r.uid)
        items = _items_going_to(session, owner, to, rows)
        old = {r.item_id: r.uid for r in rows}
        for item in items.values():
            item.folder = to
            session.add(item)
        session.flush()
        given = _assign(session, owner, to, [r.item_id for r in rows])
        _bump(session, owner, folder)
        action = {ARCHIVE: "message.archive"}.get(
            to, "message.unarchive" if (folder, to) == (ARCHIVE, INBOX) else "message.move"
        )
        audit.record_many(
            session,
            [
                audit.EventSpec(
                    owner,
                    action,
                    _queue_id(session, items[r.item_id].message_id),
                    request_id=request_id,
                    detail={"from": folder, "to": to, "channel": "imap"},
                )
                for r in rows
            ],
        )
        return [(old[item_id], uid) for item_id, uid in given.items()]


def expunge(
    engine: Engine, owner: str, folder: str, uids: Iterable[int] | None = None, *, request_id: str = ""
) -> list[int]:
    """Remove the owner's rows marked deleted (among ``uids`` when given); return their UIDs.

    The stored message, its receipts and its audit events stay: only this mailbox row
    (and its search tokens) goes, and ``message.delete`` is recorded.
    """
    with session_scope(engine) as session:
        query = (
            select(col(ClientItem.item_id), col(ClientItem.uid), col(MailboxItem.message_id))
            .join(MailboxItem, col(MailboxItem.id) == col(ClientItem.item_id))
            .where(
                col(ClientItem.owner) == owner,
                col(ClientItem.folder) == folder,
                col(MailboxItem.folder) == folder,
                col(ClientItem.deleted).is_(True),
            )
        )
        rows = session.execute(query).all()
        if uids is not None:
            wanted = set(uids)
            rows = [r for r in rows if r.uid in wanted]
        if not rows:
            return []
        item_ids = [r.item_id for r in rows]
        for start in range(0, len(item_ids), _BATCH):
            chunk = item_ids[start : start + _BATCH]
            session.execute(delete(MailboxToken).where(col(MailboxToken.item_id).in_(chunk)))
            session.execute(delete(MailboxIndexed).where(col(MailboxIndexed.item_id).in_(chunk)))
            session.execute(delete(ClientItem).where(col(ClientItem.item_id).in_(chunk)))
            session.execute(delete(MailboxItem).where(col(MailboxItem.id).in_(chunk)))
        _bump(session, owner, folder)
        audit.record_many(
            session,
            [
                audit.EventSpec(
                    owner,
                    "message.delete",
                    _queue_id(session, r.message_id),
                    request_id=request_id,
                    detail={"folder": folder, "channel": "imap"},
                )
                for r in rows
            ],
        )
        return sorted(r.uid for r in rows)


def find_sent(engine: Engine, owner: str, message_id: str, mode: str) -> tuple[int, int] | None:
    """The (UIDVALIDITY, UID) of the owner's Sent copy of the message with this Message-ID,
    or None: what a client appends to Sent after sending through the relay is already there."""
    ident = message_id.strip()
    if not ident:
        return None
    candidates = {ident, ident if ident.startswith("<") else f"<{ident}>"}
    with session_scope(engine, readonly=True) as session:
        item_id = session.execute(
            select(col(MailboxItem.id))
            .join(Message, col(Message.id) == col(MailboxItem.message_id))
            .where(
                col(MailboxItem.owner) == owner,
                col(MailboxItem.folder) == SENT,
                col(Message.sender) == owner,
                col(Message.message_id).in_(sorted(candidates)),
            )
            .order_by(col(MailboxItem.id))
        ).scalar()
    if item_id is None:
        return None
    state = folder_state(engine, owner, SENT, mode)
    for item in state.items:
        if item.item_id == item_id:
            return state.uid_validity, item.uid
    return None


# -- opening -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A message as the client receives it, with what its first opening learnt."""

    data: bytes
    facts: dict[str, object] | None  # entity facts to keep (first opening only), else None


@dataclass(frozen=True)
class Stored:
    """What ``render`` reads of a row's message: its envelope and sealed metadata."""

    message_id: int
    cms: bytes
    meta_sealed: bytes
    kind: str
    submitted_at: datetime


def stored(engine: Engine, owner: str, item_ids: Sequence[int], *, budget: int = 0) -> dict[int, Stored]:
    """The stored messages of these rows of ``owner``'s, by row id: the first one, and the
    next ones in order as long as their envelopes fit in ``budget`` bytes together (a
    client fetching bodies one after the other is served from one read)."""
    join = (col(MailboxItem.message_id) == col(Message.id)) & (col(MailboxItem.owner) == owner)
    with session_scope(engine, readonly=True) as session:
        chosen = list(item_ids[:1])
        if len(item_ids) > 1:
            sizes = {
                found: size
                for found, size in session.execute(
                    select(col(MailboxItem.id), col(Message.size))
                    .join(Message, join)
                    .where(col(MailboxItem.id).in_(list(item_ids)))
                ).all()
            }
            total = sizes.get(chosen[0], 0)
            for item_id in item_ids[1:]:
                if item_id not in sizes or total + sizes[item_id] > budget:
                    break
                chosen.append(item_id)
                total += sizes[item_id]
        rows = session.execute(
            select(
                col(MailboxItem.id),
                col(Message.id),
                col(Message.cms),
                col(Message.meta_sealed),
                col(Message.kind),
                col(Message.submitted_at),
            )
            .join(Message, join)
            .where(col(MailboxItem.id).in_(chosen))
        ).all()
    return {item_id: Stored(*rest) for item_id, *rest in rows}


# Served to a mail client in place of a message its client encrypted whose parts nest
# deeper than a submission may (``mime.MAX_MIME_DEPTH``): nobody could read it before it was
# opened, and a mail client's reader of MIME (the IMAP door's among them) gives up long
# before such depths, where the web inbox reads it.
TOO_DEEP_NOTICE: Final = (
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    + (
        "Ce message imbrique ses parties trop profondément pour un logiciel de messagerie :"
        " ouvrez-le dans la messagerie web.\r\n"
        "This message nests its parts too deep for a mail client: open it in the web inbox.\r\n"
    ).encode()
)


def _as_kept(entity: bytes, facts: dict[str, object]) -> bytes:
    """The entity that a message's kept facts describe: ``TOO_DEEP_NOTICE`` when its first
    opening served that (``render``), else the entity itself. Decided once, at that
    opening, so that its size, structure and body always agree."""
    return TOO_DEEP_NOTICE if facts.get("notice") else entity


def render(
    rt: Runtime,
    reader: UnlockedAccount,
    item_id: int,
    mode: str,
    opener: Callable[[bytes, UnlockedAccount], bytes | None] | None = None,
    row: Stored | None = None,
) -> Served:
    """The served bytes of one of ``reader``'s rows (blocking: RSA, AES). ``opener`` may
    open the envelope elsewhere (None when it could not: it is then opened here); ``row``
    is its stored message when the caller read it already (``stored``). Raises SyncError
    (not the reader's), DecryptionError."""
    if row is None:
        row = stored(rt.engine, reader.address, [item_id]).get(item_id)
        if row is None:
            raise SyncError("no such message in this mailbox")
    meta = MessageMeta.open(rt.master_key, row.meta_sealed)
    if mode == served.END_TO_END:
        return Served(served.render_end_to_end(meta, row.cms), None)
    facts = served.facts_of(meta, None)  # what the pipeline wrote, else what a first opening kept
    if facts is not None and opener is not None:
        entity = opener(row.cms, reader)
        if entity is not None:
            return Served(served.render_decrypted(meta, _as_kept(entity, facts), str(facts["signature"])), None)
    with session_scope(rt.engine, readonly=True) as session:
        if facts is None:
            cached = served.cached_facts(session, rt.master_key, [row.message_id]).get(row.message_id)
            facts = served.facts_of(meta, cached)
        if facts is not None:
            entity = _as_kept(open_envelope(session, row.cms, reader), facts)
            return Served(served.render_decrypted(meta, entity, str(facts["signature"])), None)
        trust = certificates.trust_material(session, rt.settings)
        signature, _content = decrypt_and_verify(
            session,
            row.cms,
            row.kind,
            reader,
            trust.roots,
            trust.crls,
            submitted_at=row.submitted_at,
            sender=meta.sender,
        )
        entity = open_envelope(session, row.cms, reader)
    # A message its client encrypted was read by nobody at submission: nested deeper than a
    # submission may, the notice is served in its place, from now on (``_as_kept``).
    notice = row.kind == "client" and nests_deeper_than(entity)
    if notice:
        entity = TOO_DEEP_NOTICE
    facts = entity_facts(entity, checked_signature(signature.status, signature.signer_address, utcnow()))
    if notice:
        facts["notice"] = True
    facts["message_id"] = row.message_id
    return Served(served.render_decrypted(meta, entity, str(facts["signature"])), facts)


def remember(rt: Runtime, facts: dict[str, object], structure: str | None) -> dict[str, object]:
    """Keep what a first opening learnt (with the body structure a client layer computed
    for a multipart entity), so later listings need no decryption; return it.

    The opening is committed by then (on record, marked read): keeping its facts decides
    nothing of it. A database that will not keep them is logged, the caller serves the
    message from what is returned, and a later opening learns them again."""
    kept = {k: v for k, v in facts.items() if k != "message_id"}
    if structure:
        kept["structure"] = structure
    # the opening put the message's integer id in the facts
    message_id = int(facts["message_id"])  # type: ignore[call-overload]
    try:
        served.remember_facts(rt.engine, rt.master_key, message_id, kept)
    except SQLAlchemyError as exc:
        log.error(
            "what the opening of message %s showed could not be kept (%s); a later opening reads it again",
            message_id,
            type(exc).__name__,
        )
    return kept


def record_openings(
    rt: Runtime,
    owner: str,
    folder: str,
    item_ids: Sequence[int],
    *,
    mode: str,
    seen: Iterable[int] = (),
    request_id: str = "",
) -> None:
    """Audit ``message.open`` for each row a client fetches the body of (before it is sent),
    one event per opening (a row fetched by two commands is opened twice), in one commit;
    mark ``seen`` (the rows among them whose fetch sets \\Seen) read and send due
    ``displayed`` notifications."""
    if not item_ids:
        return
    with session_scope(rt.engine) as session:
        rows = session.execute(
            select(col(MailboxItem.id), col(Message.queue_id))
            .join(Message, col(Message.id) == col(MailboxItem.message_id))
            .where(col(MailboxItem.id).in_(sorted(set(item_ids))), col(MailboxItem.owner) == owner)
        ).all()
        queue_ids = {item_id: queue_id for item_id, queue_id in rows}
        audit.record_many(
            session,
            [
                audit.EventSpec(
                    owner,
                    "message.open",
                    queue_ids[item_id],
                    request_id=request_id,
                    detail={"channel": "imap", "mode": mode},
                )
                for item_id in item_ids
                if item_id in queue_ids
            ],
        )
        displayed = sorted(set(seen) & queue_ids.keys())
        if displayed:
            newly = _mark_seen(session, displayed, True)
            if folder != SENT:
                _displayed(session, rt, owner, newly, request_id)


__all__ = [
    "ANSWERED",
    "CLIENT_FLAGS",
    "DELETED",
    "FLAGGED",
    "FOLDERS",
    "Details",
    "FolderState",
    "ItemState",
    "NotAllowed",
    "Served",
    "Stored",
    "SyncError",
    "UnknownFolder",
    "copy",
    "details",
    "expunge",
    "find_sent",
    "fingerprint",
    "folder_state",
    "mode_of",
    "move",
    "poll",
    "record_openings",
    "remember",
    "render",
    "set_flags",
    "stored",
]
