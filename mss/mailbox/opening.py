"""Opening a message of a mailbox for its reader, and its attachments.

Opening decrypts with the reader's own key (held by their session), checks the signature,
marks the message read, follows the reader's read-receipt choice when the sender asked for
a ``displayed`` notification (send it, decline it, or leave the question to
:func:`answer_read_receipt`: RFC 8098 2.1 wants the reader's consent) and records
``message.open`` in the audit trail. Database transactions are kept short: the crypto runs
between them, never while a write lock is held. Documents inside an IHE_XDM package and
files a CDA embeds are read through the checked readers of ``mss.documents``.
"""

from __future__ import annotations

import email.message
import email.policy
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.parser import BytesHeaderParser

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col

from mss import audit, peers
from mss.accounts import UnlockedAccount, read_receipt_choice
from mss.db import key_of, session_scope
from mss.documents import workers
from mss.documents.xdm import XdmInfo
from mss.errors import DocumentError
from mss.mailbox import index
from mss.mailbox.content import Attachment, Signature, decrypt_and_verify, split, split_entity, unverified_entity
from mss.mailbox.items import SENT, Correspondent, entries_of, items_of, limits_of, pick
from mss.models import MailboxItem, Message, Receipt
from mss.receipts import issuer
from mss.runtime import Runtime
from mss.store import MessageMeta, MessageNotFound

log = logging.getLogger("mss.mailbox")


@dataclass(frozen=True)
class AttachmentInfo:
    """An attachment of an opened message, without its bytes."""

    index: int
    filename: str
    content_type: str
    kind: str
    size: int

    @classmethod
    def of(cls, attachment: Attachment) -> AttachmentInfo:
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
        rows = items_of(session, reader.address, queue_id)
        if not rows:
            raise MessageNotFound(f"no message {queue_id.strip()[:40]} in this mailbox")
        item, message = pick(rows, folder)
        # Every CA a signature may chain to: ours and other operators' (mss.peers).
        trust = peers.trust_material(session, rt.settings)
        return _Loaded(
            item=item,
            message=message,
            item_ids=tuple(key_of(i) for i, _m in rows),
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
            session,
            loaded.message.cms,
            loaded.message.kind,
            reader,
            loaded.roots,
            loaded.crls,
            submitted_at=loaded.message.submitted_at,
            more_crls=more_crls,
            sender=loaded.message.sender,
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
            .where(col(MailboxItem.id).in_(loaded.item_ids), col(MailboxItem.unread).is_(True))
            .values(unread=False)
        )
        if loaded.item.folder != SENT:
            before = issuer.displayed_state(session, message=message, meta=meta, reader=reader.address)
            receipt = issuer.on_display(
                session,
                rt,
                message=message,
                meta=meta,
                reader=reader.address,
                choice=read_receipt_choice(session, reader.address),
                request_id=request_id,
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
        shown = meta.recipients_seen_by(reader.address)
        people = entries_of(session, {message.sender, *shown})
    _index_opened(rt, reader.address, loaded, meta, attachments)
    return Opened(
        queue_id=message.queue_id,
        folder=loaded.item.folder,
        kind=message.kind,
        at=loaded.item.created_at,
        meta=meta,
        sender=Correspondent.of(people[message.sender]) if message.sender in people else None,
        recipients=tuple((a, Correspondent.of(people[a]) if a in people else None) for a in shown),
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
    headers: email.message.Message | dict[str, str] = (
        BytesHeaderParser(policy=email.policy.compat32).parsebytes(entity) if entity else {}
    )
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
        rows = [(i, m) for i, m in items_of(session, reader.address, queue_id) if i.folder != SENT]
        if not rows:
            raise MessageNotFound(f"no received message {queue_id.strip()[:40]} in this mailbox")
        message = rows[0][1]
        meta = MessageMeta.open(rt.master_key, message.meta_sealed)
        return issuer.answer_displayed(
            session, rt, message=message, meta=meta, reader=reader.address, send=send, request_id=request_id
        )


def _receipt_about(session: Session, notification: Message) -> ReceiptAbout | None:
    row = session.execute(
        select(Receipt, col(Message.queue_id))
        .join(Message, col(Message.id) == col(Receipt.message_id))
        .where(col(Receipt.notification_id) == notification.id)
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
    """The search terms of a message its client encrypted, which only its opening can read.
    The opening is committed by then (read, receipt, audit): indexing decides nothing of it.
    A database that will not write the terms is logged, and the next opening or a search
    that needs them reads the message again."""
    if not index.needs_content(meta, loaded.message.kind):
        return
    try:
        # The documents are read in worker processes: a pool that broke meanwhile (a
        # RuntimeError) or could not start one (OSError) leaves the terms for later too.
        codes, ins, kinds = document_facts(rt, attachments, owner)
        key = index.index_key(rt.engine, rt.master_key)
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
    except (SQLAlchemyError, RuntimeError, OSError) as exc:
        log.error(
            "the search terms of opened message %s could not be kept (%s); its next opening writes them",
            loaded.message.queue_id,
            type(exc).__name__,
            exc_info=True,  # the stack (a log line holds no exception's text)
        )


# -- attachments ---------------------------------------------------------------------------


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


def xdm_entries(rt: Runtime, attachment: Attachment, owner: str | None = None) -> tuple[XdmInfo, tuple[XdmEntry, ...]]:
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
