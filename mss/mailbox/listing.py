"""Listing a folder: filters (sender, subject words, patient INS, document type, CDA code,
dates, unread), pages newest first, and for the Sent folder how far each message got.

Filters on what only the content tells (INS, CDA codes, documents inside packages) use the
token index (``mss.mailbox.index``); messages not indexed yet are indexed a batch at a time,
each decrypted with the reader's key, and the page says how many remain.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, func, intersect, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from mss.accounts import UnlockedAccount
from mss.db import session_scope
from mss.errors import CryptoError, DecryptionError, FilterError
from mss.mailbox import index
from mss.mailbox.content import split_entity, unverified_entity
from mss.mailbox.items import DISPLAY_TZ, DOC_TYPES, FOLDERS, MAX_PER_PAGE, SENT, entries_of
from mss.mailbox.opening import document_facts
from mss.models import Delivery, MailboxItem, Message, Receipt
from mss.runtime import Runtime
from mss.store import DocumentSummary, MessageMeta

CONTENT_BATCH = 50
"""Messages decrypted per filtered request to index what only their content tells."""

_CDA_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")


@dataclass(frozen=True)
class Filters:
    """What a folder listing is narrowed to; empty fields do not filter."""

    sender: str = ""
    subject: str = ""
    ins: str = ""
    doc_type: str = ""  # pdf | cda | xdm | receipt
    cda_code: str = ""  # a CDA type code, e.g. 11490-0
    date_from: date | None = None
    date_to: date | None = None
    unread_only: bool = False

    def check(self) -> Filters:
        """The filters, normalised. Raises FilterError for a value that means nothing."""
        ins = index.normalise_ins(self.ins)
        if ins and not index.is_ins(ins):
            raise FilterError("the patient INS must be 13 to 15 digits (15 with its key)")
        doc_type = self.doc_type.strip().lower()
        if doc_type and doc_type not in DOC_TYPES:
            raise FilterError(f"unknown document type {doc_type!r}: use pdf, cda, xdm or receipt")
        code = self.cda_code.strip()
        if code and not _CDA_CODE.match(code):
            raise FilterError("the CDA type code may hold only letters, digits, '.', '_' and '-'")
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise FilterError("the start date is after the end date")
        if len(self.sender) > 200 or len(self.subject) > 200:
            raise FilterError("a search text is limited to 200 characters")
        return replace(
            self, sender=self.sender.strip(), subject=self.subject.strip(), ins=ins, doc_type=doc_type, cda_code=code
        )

    @property
    def active(self) -> bool:
        """True when any filter is set."""
        return any(
            (
                self.sender,
                self.subject,
                self.ins,
                self.doc_type,
                self.cda_code,
                self.date_from,
                self.date_to,
                self.unread_only,
            )
        )

    def terms(self) -> list[str]:
        """The index terms every listed message must have."""
        terms = sorted(index.subject_query_terms(self.subject))
        if self.ins:
            terms.append(index.ins_term(self.ins))
        if self.doc_type:
            terms.append(index.kind_term(self.doc_type))
        if self.cda_code:
            terms.append(index.code_term(self.cda_code))
        return terms

    @property
    def needs_content(self) -> bool:
        """True when matches may hide in content not indexed yet (INS, document types)."""
        return bool(self.ins or self.cda_code or self.doc_type in {"cda", "xdm"})


@dataclass(frozen=True)
class Progress:
    """How far a sent message got, counted over its recipients."""

    recipients: int
    delivered: int
    failed: int
    processed: int
    displayed: int


@dataclass(frozen=True)
class Summary:
    """One line of a folder."""

    queue_id: str
    folder: str
    unread: bool
    kind: str  # signed | client | receipt
    at: datetime
    sender: str
    sender_name: str
    recipients: tuple[str, ...]
    subject: str
    documents: tuple[DocumentSummary, ...]
    read_receipt_asked: bool
    progress: Progress | None = None
    document_types: tuple[str, ...] = ()
    """The type of each CDA carried (its label, else its code), bare or in an IHE_XDM package."""


@dataclass(frozen=True)
class Page:
    """One page of a folder, newest first."""

    folder: str
    items: tuple[Summary, ...]
    page: int
    per_page: int
    total: int
    filters: Filters
    unsearched: int = 0
    """Messages whose content is not indexed yet, so a filter on INS or type may miss them."""

    @property
    def pages(self) -> int:
        """How many pages the folder has with these filters."""
        return max(1, -(-self.total // self.per_page))

    @property
    def has_next(self) -> bool:
        """True when an older page exists."""
        return self.page < self.pages

    @property
    def has_prev(self) -> bool:
        """True when a newer page exists."""
        return self.page > 1


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=DISPLAY_TZ)


def list_folder(
    rt: Runtime,
    reader: UnlockedAccount,
    folder: str,
    filters: Filters | None = None,
    *,
    page: int = 1,
    per_page: int = 25,
) -> Page:
    """One page of ``folder`` for ``reader``, newest first. Raises FilterError, ValueError."""
    if folder not in FOLDERS:
        raise ValueError(f"unknown folder {folder!r}")
    if not 1 <= per_page <= MAX_PER_PAGE or page < 1:
        raise ValueError("page must be at least 1 and per_page between 1 and 100")
    filters = (filters or Filters()).check()
    owner = reader.address
    terms = filters.terms()
    unsearched = 0
    tokens = None
    if terms:
        index.ensure_indexed(rt.engine, rt.master_key, owner)
        if filters.needs_content:
            unsearched = _index_content_batch(rt, reader)
        tokens = index.Tokens(index.index_key(rt.engine, rt.master_key), owner)

    with session_scope(rt.engine) as session:
        conditions = [col(MailboxItem.owner) == owner, col(MailboxItem.folder) == folder]
        if filters.unread_only:
            conditions.append(col(MailboxItem.unread).is_(True))
        if filters.date_from:
            conditions.append(col(MailboxItem.created_at) >= _start_of(filters.date_from))
        if filters.date_to:
            conditions.append(col(MailboxItem.created_at) < _start_of(filters.date_to + timedelta(days=1)))
        if tokens is not None:
            # One set operation over the token index, not one IN probe per term and row.
            matches = [index.matching(tokens, term) for term in terms]
            conditions.append(col(MailboxItem.id).in_(matches[0] if len(matches) == 1 else _intersection(matches)))
        query = select(MailboxItem, Message).join(Message, col(Message.id) == col(MailboxItem.message_id))
        count = select(func.count()).select_from(MailboxItem)  # the mailbox rows alone
        if filters.sender:
            senders = _matching_senders(session, owner, folder, filters.sender)
            count = count.join(Message, col(Message.id) == col(MailboxItem.message_id))
            conditions.append(col(Message.sender).in_(senders))
        query = query.where(and_(*conditions))
        count = count.where(and_(*conditions))
        total = int(session.execute(count).scalar_one())
        rows = session.execute(
            query.order_by(col(MailboxItem.created_at).desc(), col(MailboxItem.id).desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        metas = {message.id: MessageMeta.open(rt.master_key, message.meta_sealed) for _item, message in rows}
        names = entries_of(session, {message.sender for _item, message in rows})
        progress = _progress(session, [message.id for item, message in rows if item.folder == SENT])
    items = tuple(
        Summary(
            queue_id=message.queue_id,
            folder=item.folder,
            unread=item.unread,
            kind=message.kind,
            at=item.created_at,
            sender=message.sender,
            sender_name=names[message.sender].display_name if message.sender in names else "",
            recipients=tuple(metas[message.id].recipients_seen_by(reader.address)),
            subject=metas[message.id].subject,
            documents=tuple(metas[message.id].documents),
            read_receipt_asked=metas[message.id].mdn_to is not None,
            progress=progress.get(message.id),
            document_types=_document_types(metas[message.id]),
        )
        for item, message in rows
    )
    return Page(
        folder=folder, items=items, page=page, per_page=per_page, total=total, filters=filters, unsearched=unsearched
    )


def _document_types(meta: MessageMeta) -> tuple[str, ...]:
    return tuple(dict.fromkeys(kind for document in meta.documents for kind in document.cda_types))


def _matching_senders(session: Session, owner: str, folder: str, text: str) -> list[str]:
    """The senders of ``owner``'s folder whose address or directory names hold every word of
    ``text`` (each as typed, or as the beginning of a word; case and accents ignored)."""
    wanted = index.words(text)
    senders = list(
        session.execute(
            select(col(Message.sender))
            .join(MailboxItem, col(MailboxItem.message_id) == col(Message.id))
            .where(col(MailboxItem.owner) == owner, col(MailboxItem.folder) == folder)
            .distinct()
        ).scalars()
    )
    entries = entries_of(session, set(senders))
    found = []
    for sender in senders:
        entry = entries.get(sender)
        names = (entry.first_name, entry.last_name, entry.org_name, entry.service) if entry else ()
        words = index.words(" ".join([sender.replace("@", " ").replace(".", " "), *names]))
        if all(any(word.startswith(w) for word in words) for w in wanted):
            found.append(sender)
    return found


def _progress(session: Session, message_ids: list[int]) -> dict[int, Progress]:
    if not message_ids:
        return {}
    found: dict[int, dict[str, set[str]]] = {
        mid: {"all": set(), "delivered": set(), "failed": set(), "processed": set(), "displayed": set()}
        for mid in message_ids
    }
    for mid, recipient, status in session.execute(
        select(col(Delivery.message_id), col(Delivery.recipient), col(Delivery.status)).where(
            col(Delivery.message_id).in_(message_ids)
        )
    ):
        found[mid]["all"].add(recipient)
        status = "delivered" if status == "relayed" else status  # handed to the recipient's operator
        if status in found[mid]:
            found[mid][status].add(recipient)
    for mid, recipient, status in session.execute(
        select(col(Receipt.message_id), col(Receipt.recipient), col(Receipt.status)).where(
            col(Receipt.message_id).in_(message_ids)
        )
    ):
        if status in found[mid]:
            found[mid][status].add(recipient)
    return {
        mid: Progress(len(v["all"]), len(v["delivered"]), len(v["failed"]), len(v["processed"]), len(v["displayed"]))
        for mid, v in found.items()
    }


def _intersection(queries: list[Any]) -> Any:
    """The rows every one of ``queries`` selects (SQL INTERSECT)."""
    return intersect(*queries)


def _index_content_batch(rt: Runtime, reader: UnlockedAccount) -> int:
    """Index the content of up to CONTENT_BATCH unindexed messages; return how many remain."""
    pending = index.pending_content(rt.engine, reader.address)
    key = index.index_key(rt.engine, rt.master_key)
    for item_id in pending[:CONTENT_BATCH]:
        with session_scope(rt.engine) as session:
            row = session.execute(
                select(MailboxItem, Message)
                .join(Message, col(Message.id) == col(MailboxItem.message_id))
                .where(col(MailboxItem.id) == item_id)
            ).first()
        if row is None:
            continue
        item, message = row
        meta = MessageMeta.open(rt.master_key, message.meta_sealed)
        try:
            with session_scope(rt.engine) as session:
                entity = unverified_entity(session, message.cms, message.kind, reader)
        except (DecryptionError, CryptoError):
            entity = b""
        _headers, _body, _html, attachments = split_entity(entity) if entity else ({}, "", False, ())
        codes, ins, kinds = document_facts(rt, attachments, reader.address)
        try:
            with session_scope(rt.engine) as session:
                index.index_content(
                    session,
                    key,
                    reader.address,
                    [item.id],
                    index.meta_terms(meta, message.kind),
                    index.content_terms(codes, ins, kinds),
                )
        except IntegrityError:
            continue
    return max(0, len(pending) - CONTENT_BATCH)
