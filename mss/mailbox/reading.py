"""Reading a mailbox: folders with filters and pages, a message opened for its reader, its
attachments, the read and archive marks, and the Sent view's journey per recipient.

A message is reachable only through a ``mailbox_item`` row of the reader: any other queue id
is "not found", whether it exists or not. Opening decrypts with the reader's own key (held
by their session), checks the signature, marks the message read, follows the reader's
read-receipt choice when the sender asked for a ``displayed`` notification (send it, decline
it, or leave the question to :func:`answer_read_receipt`: RFC 8098 2.1 wants the reader's
consent) and records ``message.open`` in the audit trail. Database transactions are kept short: the crypto runs
between them, never while a write lock is held.
"""

from __future__ import annotations

import email.policy
import re
from email.parser import BytesHeaderParser
from dataclasses import dataclass, field, replace
from typing import Any
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, intersect, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from directory.models import DirectoryEntry
from mss import audit, peers, store
from mss.accounts import UnlockedAccount, read_receipt_choice
from mss.db import session_scope
from mss.documents import DocumentLimits, workers
from mss.documents.xdm import XdmInfo
from mss.errors import CryptoError, DecryptionError, DocumentError, FilterError
from mss.mailbox import index
from mss.mailbox.content import (
    Attachment,
    Signature,
    decrypt_and_verify,
    split,
    split_entity,
    unverified_entity,
)
from mss.models import Delivery, MailboxItem, Message, Receipt
from mss.receipts import issuer
from mss.runtime import Runtime
from mss.store import MessageMeta, MessageNotFound

INBOX, SENT, ARCHIVE = store.INBOX, store.SENT, store.ARCHIVE
FOLDERS = (INBOX, SENT, ARCHIVE)
DISPLAY_TZ = ZoneInfo("Europe/Paris")
MAX_PER_PAGE = 100
CONTENT_BATCH = 50
"""Messages decrypted per filtered request to index what only their content tells."""
DOC_TYPES = ("pdf", "cda", "xdm", "receipt")
_QUEUE_ID = re.compile(r"^[0-9A-Z][0-9A-Z-]{0,39}$")  # pipeline ids, and receipts' ID-MDN-HASH
_CDA_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")


# -- what the pages and the API show -----------------------------------------------------


@dataclass(frozen=True)
class Correspondent:
    """A directory entry as the reader sees it next to a message."""

    address: str
    name: str
    profession: str
    organisation: str
    rpps: str
    city: str
    status: str

    @classmethod
    def of(cls, entry: DirectoryEntry) -> "Correspondent":
        """The card of a directory entry."""
        return cls(
            address=entry.address,
            name=entry.display_name,
            profession=entry.profession_label or entry.skill_label,
            organisation=entry.org_name,
            rpps=entry.rpps,
            city=entry.city,
            status=entry.status,
        )


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

    def check(self) -> "Filters":
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
class DocumentInfo:
    """A document listed in a message's sealed metadata."""

    filename: str
    kind: str
    size: int


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
    documents: tuple[DocumentInfo, ...]
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


@dataclass(frozen=True)
class AttachmentInfo:
    """An attachment of an opened message, without its bytes."""

    index: int
    filename: str
    content_type: str
    kind: str
    size: int

    @classmethod
    def of(cls, attachment: Attachment) -> "AttachmentInfo":
        """The description of an attachment."""
        return cls(attachment.index, attachment.filename, attachment.content_type, attachment.kind, attachment.size)


@dataclass(frozen=True)
class ReceiptAbout:
    """For a delivery or disposition notification: which message and recipient it reports."""

    queue_id: str
    recipient: str
    kind: str
    status: str
    reason: str


@dataclass(frozen=True)
class Opened:
    """A message opened for its reader."""

    queue_id: str
    folder: str
    kind: str
    at: datetime
    meta: MessageMeta
    sender: Correspondent | None
    recipients: tuple[tuple[str, Correspondent | None], ...]
    signature: Signature
    body: str
    body_was_html: bool
    attachments: tuple[AttachmentInfo, ...]
    headers: dict[str, str]
    receipt_about: ReceiptAbout | None = None
    displayed_sent: bool = False
    is_sender: bool = False
    charset_guess: str = ""
    """The charset the text was read in when the sender's software declared none it could
    be read with (utf-8, else windows-1252): the reader is told it is a guess."""
    read_receipt: str = issuer.NOT_ASKED
    """Where the read receipt the sender asked for stands: not-asked, pending (the reader
    has not answered yet), sent or declined."""


@dataclass(frozen=True)
class Step:
    """One step of a sent message's journey."""

    status: str  # delivered | failed | processed | displayed
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class RecipientJourney:
    """Where a sent message stands for one recipient."""

    address: str
    correspondent: Correspondent | None
    steps: tuple[Step, ...]
    read_receipt_asked: bool

    @property
    def status(self) -> str:
        """The furthest step reached (``pending`` before any)."""
        return self.steps[-1].status if self.steps else "pending"

    @property
    def final_status(self) -> str | None:
        """The one final status of this delivery (failed, processed or delivered), or None
        while it waits (relayed, delayed)."""
        reached = {step.status for step in self.steps}
        return next((status for status in _FINAL if status in reached), None)


@dataclass(frozen=True)
class XdmEntry:
    """A document listed in an IHE_XDM package."""

    index: int
    path: str
    title: str
    kind: str
    size: int
    type_code: str
    type_name: str
    patient_id: str


@dataclass(frozen=True)
class OpenedAttachment:
    """An attachment with its bytes and the signature of the message that carried it."""

    queue_id: str
    attachment: Attachment
    signature: Signature
    meta: MessageMeta = field(repr=False)


# -- helpers -----------------------------------------------------------------------------


def limits_of(rt: Runtime) -> DocumentLimits:
    """The document limits of this service (attachments up to the message size limit)."""
    return DocumentLimits(max_document_size=rt.settings.relay.max_message_size)


def _entries(session: Session, addresses: set[str]) -> dict[str, DirectoryEntry]:
    if not addresses:
        return {}
    rows = session.execute(select(DirectoryEntry).where(DirectoryEntry.address.in_(sorted(addresses)))).scalars()
    return {row.address: row for row in rows}


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=DISPLAY_TZ)


def queue_id_of(value: str) -> str | None:
    """A queue id as stored (upper case), or None when ``value`` cannot be one: an identifier
    from a URL never reaches the database unless it has the shape of ours."""
    candidate = (value or "").strip().upper()
    return candidate if _QUEUE_ID.match(candidate) else None


def _items_of(session: Session, owner: str, queue_id: str) -> list[tuple[MailboxItem, Message]]:
    normalised = queue_id_of(queue_id)
    if normalised is None:
        return []
    rows = session.execute(
        select(MailboxItem, Message)
        .join(Message, Message.id == MailboxItem.message_id)
        .where(MailboxItem.owner == owner, Message.queue_id == normalised)
        .order_by(MailboxItem.id)
    ).all()
    return [(item, message) for item, message in rows]


def _pick(rows: list[tuple[MailboxItem, Message]], folder: str | None) -> tuple[MailboxItem, Message]:
    """The row to show: the folder asked for, else a received copy, else the sent one."""
    for wanted in (folder, INBOX, ARCHIVE, SENT):
        for item, message in rows:
            if item.folder == wanted:
                return item, message
    return rows[0]


# -- listing -----------------------------------------------------------------------------


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
        conditions = [MailboxItem.owner == owner, MailboxItem.folder == folder]
        if filters.unread_only:
            conditions.append(MailboxItem.unread.is_(True))
        if filters.date_from:
            conditions.append(MailboxItem.created_at >= _start_of(filters.date_from))
        if filters.date_to:
            conditions.append(MailboxItem.created_at < _start_of(filters.date_to + timedelta(days=1)))
        if tokens is not None:
            # One set operation over the token index, not one IN probe per term and row.
            matches = [index.matching(tokens, term) for term in terms]
            conditions.append(MailboxItem.id.in_(matches[0] if len(matches) == 1 else _intersection(matches)))
        query = select(MailboxItem, Message).join(Message, Message.id == MailboxItem.message_id)
        count = select(func.count()).select_from(MailboxItem)  # the mailbox rows alone
        if filters.sender:
            senders = _matching_senders(session, owner, folder, filters.sender)
            count = count.join(Message, Message.id == MailboxItem.message_id)
            conditions.append(Message.sender.in_(senders))
        query = query.where(and_(*conditions))
        count = count.where(and_(*conditions))
        total = int(session.execute(count).scalar_one())
        rows = session.execute(
            query.order_by(MailboxItem.created_at.desc(), MailboxItem.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).all()
        metas = {message.id: MessageMeta.open(rt.master_key, message.meta_sealed) for _item, message in rows}
        names = _entries(session, {message.sender for _item, message in rows})
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
            recipients=tuple(metas[message.id].recipients),
            subject=metas[message.id].subject,
            documents=tuple(
                DocumentInfo(str(d.get("filename", "")), str(d.get("kind", "")), int(d.get("size", 0) or 0))  # type: ignore[call-overload]
                for d in metas[message.id].documents
            ),
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
    found: dict[str, None] = {}
    for document in meta.documents:
        cdas = document.get("cda")
        for cda in cdas if isinstance(cdas, list) else []:
            if isinstance(cda, dict) and (cda.get("type_label") or cda.get("type_code")):
                found[str(cda.get("type_label") or cda.get("type_code"))] = None
    return tuple(found)


def _matching_senders(session: Session, owner: str, folder: str, text: str) -> list[str]:
    """The senders of ``owner``'s folder whose address or directory names hold every word of
    ``text`` (each as typed, or as the beginning of a word; case and accents ignored)."""
    wanted = index.words(text)
    senders = list(
        session.execute(
            select(Message.sender)
            .join(MailboxItem, MailboxItem.message_id == Message.id)
            .where(MailboxItem.owner == owner, MailboxItem.folder == folder)
            .distinct()
        ).scalars()
    )
    entries = _entries(session, set(senders))
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
        select(Delivery.message_id, Delivery.recipient, Delivery.status).where(Delivery.message_id.in_(message_ids))
    ):
        found[mid]["all"].add(recipient)
        status = "delivered" if status == "relayed" else status  # handed to the recipient's operator
        if status in found[mid]:
            found[mid][status].add(recipient)
    for mid, recipient, status in session.execute(
        select(Receipt.message_id, Receipt.recipient, Receipt.status).where(Receipt.message_id.in_(message_ids))
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


# -- opening -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    item: MailboxItem
    message: Message
    item_ids: tuple[int, ...]
    meta: MessageMeta
    roots: list
    crls: list[bytes]


def _load(rt: Runtime, reader: UnlockedAccount, queue_id: str, folder: str | None) -> _Loaded:
    with session_scope(rt.engine) as session:
        rows = _items_of(session, reader.address, queue_id)
        if not rows:
            raise MessageNotFound(f"no message {queue_id.strip()[:40]} in this mailbox")
        item, message = _pick(rows, folder)
        # Every CA a signature may chain to: ours and other operators' (mss.peers).
        trust = peers.trust_material(session, rt.settings)
        return _Loaded(
            item=item,
            message=message,
            item_ids=tuple(i.id for i, _m in rows),  # type: ignore[misc]
            meta=MessageMeta.open(rt.master_key, message.meta_sealed),
            roots=trust.roots,
            crls=trust.crls,
        )


def _decrypt(rt: Runtime, reader: UnlockedAccount, loaded: _Loaded) -> tuple[Signature, bytes]:
    # A message from another operator may be signed under a CA whose CRL is not here yet:
    # fetched (outside any write transaction) once the signer's certificate is known.
    seen: list[bytes] = []
    more_crls = None
    if loaded.meta.origin:
        def more_crls(signed: bytes) -> list[bytes]:
            seen.append(signed)
            return peers.crls_for_signed(rt.engine, rt.settings, signed)

    with session_scope(rt.engine, readonly=True) as session:
        # Certificates only (no write): the reader's other certificates for an older envelope.
        signature, entity = decrypt_and_verify(
            session, loaded.message.cms, loaded.message.kind, reader, loaded.roots, loaded.crls,
            submitted_at=loaded.message.submitted_at, more_crls=more_crls,
        )
    signer = signature.signer_address
    if seen and signature.trusted and signer and not rt.settings.serves(signer):
        # Like a mail client: a verified correspondent's certificate is kept to encrypt to them.
        peers.remember_signer(rt.engine, signer, seen[0])
    return signature, entity


def open_message(
    rt: Runtime, reader: UnlockedAccount, queue_id: str, *, folder: str | None = None, request_id: str = ""
) -> Opened:
    """Decrypt, verify and split a message of ``reader``'s mailbox; mark it read.

    When the sender asked for a read receipt, follows the reader's choice (``always``: the
    ``displayed`` MDN is sent; ``never``: declined; ``ask``: it stays pending, see
    ``Opened.read_receipt`` and :func:`answer_read_receipt`). Audits ``message.open``.
    Raises MessageNotFound (also for a message of another mailbox), DecryptionError.
    """
    loaded = _load(rt, reader, queue_id, folder)
    message, meta = loaded.message, loaded.meta
    signature, entity = _decrypt(rt, reader, loaded)
    parts = split(entity, receipt=message.kind == "receipt")
    headers, body, was_html, attachments = parts.headers, parts.body, parts.body_was_html, parts.attachments
    receipt, displayed = issuer.NOT_ASKED, False
    with session_scope(rt.engine) as session:
        session.execute(
            update(MailboxItem)
            .where(MailboxItem.id.in_(loaded.item_ids), MailboxItem.unread.is_(True))
            .values(unread=False)
        )
        if loaded.item.folder != SENT:
            before = issuer.displayed_state(session, message=message, meta=meta, reader=reader.address)
            receipt = issuer.on_display(
                session, rt, message=message, meta=meta, reader=reader.address,
                choice=read_receipt_choice(session, reader.address), request_id=request_id,
            )
            displayed = before == issuer.PENDING and receipt == issuer.SENT
        audit.record(
            session,
            actor=reader.address,
            action="message.open",
            object=message.queue_id,
            request_id=request_id,
            signature=signature.status,
        )
        about = _receipt_about(session, message) if message.kind == "receipt" else None
        people = _entries(session, {message.sender, *meta.recipients})
    _index_opened(rt, reader.address, loaded, meta, attachments)
    return Opened(
        queue_id=message.queue_id,
        folder=loaded.item.folder,
        kind=message.kind,
        at=loaded.item.created_at,
        meta=meta,
        sender=Correspondent.of(people[message.sender]) if message.sender in people else None,
        recipients=tuple((a, Correspondent.of(people[a]) if a in people else None) for a in meta.recipients),
        signature=signature,
        body=body,
        body_was_html=was_html,
        attachments=tuple(AttachmentInfo.of(a) for a in attachments),
        headers=headers,
        receipt_about=about,
        displayed_sent=displayed,
        is_sender=message.sender == reader.address,
        charset_guess=parts.charset_guess,
        read_receipt=receipt,
    )


_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")
MAX_REFERENCES = 20
"""Message-IDs a References field keeps: the thread's first, then the latest ones."""


def thread_of(rt: Runtime, reader: UnlockedAccount, queue_id: str) -> tuple[str, tuple[str, ...]]:
    """The Message-ID of a message of ``reader``'s mailbox and the References a reply or a
    forward of it carries (RFC 5322 3.6.4: its own References, or else its In-Reply-To,
    then its Message-ID; long threads keep their first and latest ids). Raises
    MessageNotFound, DecryptionError."""
    loaded = _load(rt, reader, queue_id, None)
    with session_scope(rt.engine, readonly=True) as session:
        entity = unverified_entity(session, loaded.message.cms, loaded.message.kind, reader)
    headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(entity) if entity else {}
    earlier = _MESSAGE_ID.findall(str(headers.get("References") or ""))
    if not earlier:
        earlier = _MESSAGE_ID.findall(str(headers.get("In-Reply-To") or ""))[:1]
    own = loaded.meta.message_id.strip()
    chain = [ref for ref in dict.fromkeys(earlier) if ref != own]
    if own:
        chain.append(own)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[-(MAX_REFERENCES - 1) :]]
    return own, tuple(chain)


def answer_read_receipt(
    rt: Runtime, reader: UnlockedAccount, queue_id: str, *, send: bool, request_id: str = ""
) -> str:
    """The reader's answer to the read receipt a received message asks for: send the
    ``displayed`` MDN, or decline it (audited either way). Returns the new state (sent or
    declined). Raises MessageNotFound, ReceiptNotPending when no answer is awaited."""
    with session_scope(rt.engine) as session:
        rows = [(i, m) for i, m in _items_of(session, reader.address, queue_id) if i.folder != SENT]
        if not rows:
            raise MessageNotFound(f"no received message {queue_id.strip()[:40]} in this mailbox")
        message = rows[0][1]
        meta = MessageMeta.open(rt.master_key, message.meta_sealed)
        return issuer.answer_displayed(
            session, rt, message=message, meta=meta, reader=reader.address, send=send, request_id=request_id
        )


def _receipt_about(session: Session, notification: Message) -> ReceiptAbout | None:
    row = session.execute(
        select(Receipt, Message.queue_id)
        .join(Message, Message.id == Receipt.message_id)
        .where(Receipt.notification_id == notification.id)
    ).first()
    if row is None:
        return None
    receipt, original = row
    return ReceiptAbout(
        queue_id=original, recipient=receipt.recipient, kind=receipt.kind, status=receipt.status, reason=receipt.reason
    )


def document_facts(
    rt: Runtime, attachments: tuple[Attachment, ...], owner: str | None = None
) -> tuple[set[str], set[str], set[str]]:
    """CDA type codes, patient INS and document kinds found in attachments (XDM opened),
    read in worker processes within ``owner``'s share (see ``mss.documents.workers``)."""
    codes: set[str] = set()
    ins: set[str] = set()
    kinds: set[str] = set()
    limits = limits_of(rt)
    for attachment in attachments:
        kinds.add(attachment.kind)
        try:
            if attachment.kind == "cda":
                infos = [workers.parse_cda(attachment.data, filename=attachment.filename, limits=limits, owner=owner)]
            elif attachment.kind == "xdm":
                infos = list(
                    workers.parse_xdm(attachment.data, limits=limits, filename=attachment.filename, owner=owner).cdas
                )
                if infos:
                    kinds.add("cda")
            else:
                continue
        except DocumentError:
            continue  # checked at submission; a document that no longer parses adds no term
        for info in infos:
            codes.add(info.type_code.code)
            if info.ins is not None:
                ins.add(info.ins.value)
    return codes, ins, kinds


def _index_opened(
    rt: Runtime, owner: str, loaded: _Loaded, meta: MessageMeta, attachments: tuple[Attachment, ...]
) -> None:
    if not index.needs_content(meta, loaded.message.kind):
        return
    codes, ins, kinds = document_facts(rt, attachments, owner)
    key = index.index_key(rt.engine, rt.master_key)
    try:
        with session_scope(rt.engine) as session:
            index.index_content(
                session,
                key,
                owner,
                loaded.item_ids,
                index.meta_terms(meta, loaded.message.kind),
                index.content_terms(codes, ins, kinds),
            )
    except IntegrityError:
        pass  # indexed meanwhile by a listing; its content terms come with the next opening


def _index_content_batch(rt: Runtime, reader: UnlockedAccount) -> int:
    """Index the content of up to CONTENT_BATCH unindexed messages; return how many remain."""
    pending = index.pending_content(rt.engine, reader.address)
    key = index.index_key(rt.engine, rt.master_key)
    for item_id in pending[:CONTENT_BATCH]:
        with session_scope(rt.engine) as session:
            row = session.execute(
                select(MailboxItem, Message)
                .join(Message, Message.id == MailboxItem.message_id)
                .where(MailboxItem.id == item_id)
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


# -- attachments -------------------------------------------------------------------------


def open_attachment(
    rt: Runtime,
    reader: UnlockedAccount,
    queue_id: str,
    attachment_index: int,
    *,
    action: str = "attachment.download",
    request_id: str = "",
) -> OpenedAttachment:
    """One attachment of a message of ``reader``'s mailbox, with its exact bytes.

    ``action`` is what the audit trail records (``attachment.download`` or
    ``attachment.view``). Raises MessageNotFound (also for an index out of range).
    """
    loaded = _load(rt, reader, queue_id, None)
    signature, entity = _decrypt(rt, reader, loaded)
    _headers, _body, _html, attachments = split_entity(entity, receipt=loaded.message.kind == "receipt")
    if not 0 <= attachment_index < len(attachments):
        raise MessageNotFound(f"no attachment {attachment_index} in message {loaded.message.queue_id}")
    attachment = attachments[attachment_index]
    with session_scope(rt.engine) as session:
        audit.record(
            session,
            actor=reader.address,
            action=action,
            object=loaded.message.queue_id,
            request_id=request_id,
            index=attachment_index,
            kind=attachment.kind,
        )
    return OpenedAttachment(
        queue_id=loaded.message.queue_id, attachment=attachment, signature=signature, meta=loaded.meta
    )


def xdm_entries(
    rt: Runtime, attachment: Attachment, owner: str | None = None
) -> tuple[XdmInfo, tuple[XdmEntry, ...]]:
    """The documents listed in an IHE_XDM.ZIP attachment. Raises DocumentError."""
    info = workers.parse_xdm(attachment.data, limits=limits_of(rt), filename=attachment.filename, owner=owner)
    entries = tuple(
        XdmEntry(
            index=i,
            path=doc.path,
            title=doc.title or doc.path.rsplit("/", 1)[-1],
            kind=doc.document.kind,
            size=doc.document.size,
            type_code=doc.type_code.code if doc.type_code else "",
            type_name=(doc.type_code.display_name or "") if doc.type_code else "",
            patient_id=doc.patient_id or "",
        )
        for i, doc in enumerate(info.documents)
    )
    return info, entries


def xdm_document(rt: Runtime, attachment: Attachment, document_index: int) -> tuple[XdmEntry, bytes]:
    """One document of an IHE_XDM.ZIP attachment and its bytes. Raises MessageNotFound, DocumentError."""
    _info, entries = xdm_entries(rt, attachment)
    if not 0 <= document_index < len(entries):
        raise MessageNotFound(f"no document {document_index} in {attachment.filename}")
    # Read through the package reader's checks (names, sizes, ratios), like every entry.
    _document, data = workers.read_xdm_document(
        attachment.data, document_index, filename=attachment.filename, limits=limits_of(rt)
    )
    return entries[document_index], data


def embedded_pdf(rt: Runtime, data: bytes, filename: str) -> bytes | None:
    """The PDF a level-1 CDA carries as its body (``nonXMLBody``), checked like an attached
    PDF; None when the document has no such body. Raises DocumentError."""
    return workers.level_one_pdf(data, filename=filename, limits=limits_of(rt))


def embedded_file(rt: Runtime, data: bytes, filename: str, index: int) -> tuple[str, bytes] | None:
    """A PDF or image a CDA carries (its ``index``-th embedded file), checked, with its
    content type; None when there is none the web may show. Raises DocumentError."""
    return workers.embedded_file(data, filename=filename, limits=limits_of(rt), index=index)


# -- marks and folders -------------------------------------------------------------------


def move(rt: Runtime, owner: str, queue_id: str, *, to: str, request_id: str = "") -> None:
    """Archive a received message (``to=archive``) or put it back (``to=inbox``).

    Audits ``message.archive`` or ``message.unarchive``. Raises MessageNotFound when
    ``owner`` has no received copy of it.
    """
    if to not in {INBOX, ARCHIVE}:
        raise ValueError("a message moves between inbox and archive only")
    source = ARCHIVE if to == INBOX else INBOX
    with session_scope(rt.engine) as session:
        rows = [(i, m) for i, m in _items_of(session, owner, queue_id) if i.folder == source]
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
        rows = _items_of(session, owner, queue_id)
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
                .where(MailboxItem.owner == owner, MailboxItem.folder == INBOX, MailboxItem.unread.is_(True))
            ).scalar_one()
        )


# -- the Sent view -----------------------------------------------------------------------

_ORDER = {"queued": 0, "delayed": 0.5, "relayed": 1, "delivered": 1, "processed": 2, "displayed": 3, "failed": 4}
# The step that ends a recipient's delivery, most decisive first (see mss.receipts.issuer).
_FINAL = ("failed", "processed", "delivered")


def journey(rt: Runtime, owner: str, queue_id: str) -> tuple[RecipientJourney, ...]:
    """Per recipient of a message ``owner`` sent: delivered, processed, displayed or failed,
    with times and reasons. Raises MessageNotFound when ``owner`` did not send it."""
    with session_scope(rt.engine) as session:
        rows = [(i, m) for i, m in _items_of(session, owner, queue_id) if i.folder == SENT]
        if not rows:
            raise MessageNotFound(f"no sent message {queue_id.strip()[:40]} in this mailbox")
        message = rows[0][1]
        deliveries = (
            session.execute(select(Delivery).where(Delivery.message_id == message.id).order_by(Delivery.id))
            .scalars()
            .all()
        )
        receipts = (
            session.execute(select(Receipt).where(Receipt.message_id == message.id).order_by(Receipt.at, Receipt.id))
            .scalars()
            .all()
        )
        people = _entries(session, {d.recipient for d in deliveries})
    journeys = []
    for delivery in deliveries:
        steps: dict[str, Step] = {delivery.status: Step(delivery.status, delivery.at, delivery.reason)}
        for receipt in receipts:
            if receipt.recipient == delivery.recipient and receipt.status not in steps:
                steps[receipt.status] = Step(receipt.status, receipt.at, receipt.reason)
        # In the order things happened; steps of one moment in their logical order.
        ordered = tuple(sorted(steps.values(), key=lambda s: (s.at, _ORDER.get(s.status, 9))))
        journeys.append(
            RecipientJourney(
                address=delivery.recipient,
                correspondent=Correspondent.of(people[delivery.recipient]) if delivery.recipient in people else None,
                steps=ordered,
                read_receipt_asked=delivery.mdn_requested,
            )
        )
    return tuple(journeys)
