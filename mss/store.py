"""Durable storage of messages: the CMS, one mailbox row per reader, deliveries, receipts.

What is stored is ciphertext (CMS EnvelopedData) and metadata sealed with the master key;
a database dump alone reads no subject, no document name and no content. The caller's
transaction commits the message, its mailbox rows, receipts and audit events together.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlmodel import Session, col

from mss import audit
from mss.addresses import listed_addresses, normalise_address
from mss.crypto import smime
from mss.crypto.master import MasterKey
from mss.db import table_of, utcnow
from mss.errors import CryptoError, MessageNotFound
from mss.models import Delivery, InboundDelivery, MailboxItem, Message, Receipt

INBOX, SENT, ARCHIVE = "inbox", "sent", "archive"


@dataclass(frozen=True)
class CdaSummary:
    """A CDA document as the inbox lists and filters on it (bare, or one of an IHE_XDM
    package's)."""

    title: str = ""
    type_code: str = ""
    type_label: str = ""
    ins: str = ""
    effective_time: str = ""

    @classmethod
    def from_json(cls, data: object) -> CdaSummary:
        """From its sealed form; unknown keys (a later version's) are ignored."""
        fields_ = data if isinstance(data, dict) else {}
        return cls(**{name: str(fields_.get(name) or "") for name in _CDA_FIELDS})


_CDA_FIELDS = ("title", "type_code", "type_label", "ins", "effective_time")


@dataclass(frozen=True)
class DocumentSummary:
    """A document of a message: what listings show and indicators count, with no content."""

    filename: str
    kind: str  # pdf | cda | xdm | other
    size: int
    sha256: str = ""
    cda: tuple[CdaSummary, ...] = ()
    """Each CDA carried: the document itself, or those of an IHE_XDM package."""

    @classmethod
    def from_json(cls, data: object) -> DocumentSummary:
        """From its sealed form (a JSON object); missing fields take their empty value."""
        fields_ = data if isinstance(data, dict) else {}
        cdas = fields_.get("cda")
        size = fields_.get("size")
        return cls(
            filename=str(fields_.get("filename") or ""),
            kind=str(fields_.get("kind") or ""),
            size=size if isinstance(size, int) else 0,
            sha256=str(fields_.get("sha256") or ""),
            cda=tuple(CdaSummary.from_json(c) for c in cdas) if isinstance(cdas, list) else (),
        )

    @property
    def cda_types(self) -> tuple[str, ...]:
        """The type of each CDA carried: its label, else its code."""
        return tuple(c.type_label or c.type_code for c in self.cda if c.type_label or c.type_code)


@dataclass
class MessageMeta:
    """What the inbox shows of a message, sealed with the master key at rest."""

    sender: str
    recipients: list[str]
    subject: str
    date: str
    message_id: str
    headers: dict[str, str] = field(default_factory=dict)  # X-MSS-CODECDA, X-MSS-INS ...
    documents: list[DocumentSummary] = field(default_factory=list)
    mdn_to: str | None = None
    # What a mail client's listing needs without decrypting (mss.mailbox.served): the To
    # and Cc fields as written, and the shape of the signed entity inside the envelope.
    # None for messages stored before, receipts, and messages a client encrypted itself.
    client: dict[str, object] | None = None
    # For a message from another operator: who delivered it and what its signature check
    # found on arrival (operator, domain, protection, signature, signer).
    origin: dict[str, str] | None = None

    def recipients_seen_by(self, reader: str) -> list[str]:
        """The recipients ``reader`` is shown: every one to the sender (its Bcc included);
        to a recipient, those the To and Cc fields name, as a mail client shows them (a
        Bcc recipient stays unknown to the others, RFC 5322 3.6.3). A message stored before
        its fields were kept (``client`` None) names its recipients as it always did."""
        if reader == self.sender or not self.client or ("to" not in self.client and "cc" not in self.client):
            return list(self.recipients)
        return listed_addresses([str(self.client.get("to") or ""), str(self.client.get("cc") or "")])

    def seal(self, master_key: MasterKey) -> bytes:
        return master_key.seal(self.to_json().encode("utf-8"))

    def to_json(self) -> str:
        """What is sealed: the fields as JSON, the documents and their CDA summaries as objects
        of their fields (``dataclasses.asdict``'s text, without its copy of every level)."""
        return json.dumps(self, default=vars, ensure_ascii=False)

    @classmethod
    def open(cls, master_key: MasterKey, sealed: bytes) -> MessageMeta:
        data = json.loads(master_key.open(sealed))
        data["documents"] = [DocumentSummary.from_json(d) for d in data.get("documents") or []]
        return cls(**data)


@dataclass(frozen=True)
class Notice:
    """A receipt ready to store: its CMS (signed by the operator, encrypted to the sender)."""

    kind: str  # dsn | mdn
    status: str  # delivered | failed | processed | displayed
    recipients: tuple[str, ...]
    reason: str
    cms: bytes
    meta: MessageMeta


@dataclass(frozen=True)
class NewMessage:
    """A message to store: its CMS, its metadata, and what became of its recipients here.

    ``delivered`` holds (recipient, RFC 3461 NOTIFY, MDN asked) triples; ``failed`` maps a
    refused recipient to the reason.
    """

    queue_id: str
    kind: str
    cms: bytes
    meta: MessageMeta
    delivered: list[tuple[str, str, bool]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def store_submission(
    session: Session,
    master_key: MasterKey,
    message: NewMessage,
    *,
    channel: str,
    request_id: str,
    checked: list[str],
    queued: Sequence[tuple[str, str, bool, str]] = (),
    notices: Sequence[Notice] = (),
) -> StoredMessage:
    """Add the message, its deliveries and mailbox rows, the receipts its submission
    already calls for (``notices``: DSNs and MDNs to the sender), and the audit events.

    ``queued`` holds (recipient, NOTIFY, MDN asked, how it travels) for recipients at other
    operators, whose copy waits in the outbound queue.
    """
    row = _add_message(session, master_key, message)
    events = [
        _arrival(message, "message.submit", request_id, elsewhere=len(queued), channel=channel),
        audit.EventSpec(
            "system", "message.check", message.queue_id, request_id=request_id, detail={"documents": checked}
        ),
        audit.EventSpec(
            "system",
            "message.sign" if message.kind == "signed" else "message.passthrough",
            message.queue_id,
            request_id=request_id,
            detail={"cms_sha256": row.cms_sha256},
        ),
    ]
    events += _add_deliveries(session, row, message, request_id=request_id, queued=queued, sent_by=message.meta.sender)
    # A message stored a moment ago has no receipt yet: nothing to compare the notices with.
    # Its events and theirs are appended to the chain at once.
    events += _add_receipts(session, master_key, row.id, row.sender, message.queue_id, notices, request_id)
    audit.record_many(session, events)
    return row


def store_inbound(
    session: Session,
    master_key: MasterKey,
    message: NewMessage,
    *,
    sender_key: str,
    message_digest: str,
    peer: str,
    request_id: str,
) -> StoredMessage:
    """Add a message that arrived from another operator: its mailbox rows, deliveries, the
    rows that make a repeated delivery a no-op, and the audit events.

    ``sender_key`` and ``message_digest`` (SHA-256 of its Message-ID) identify it across
    attempts. Raises IntegrityError (at the insert of its rows) when one of its recipients
    already has it.
    """
    row = _add_message(session, master_key, message)
    protection = (message.meta.origin or {}).get("protection", "")
    events = [_arrival(message, "message.receive", request_id, peer=peer, protection=protection)]
    # A repeated delivery fails here (IntegrityError), before the audit chain moves.
    events += _add_deliveries(session, row, message, request_id=request_id, inbound=(sender_key, message_digest))
    audit.record_many(session, events)
    return row


def _arrival(
    message: NewMessage, action: str, request_id: str, *, elsewhere: int = 0, **detail: object
) -> audit.EventSpec:
    """The event that opens a stored message's trail: ``action`` by its sender, with its
    Message-ID and how many recipients it has (``elsewhere``: at other operators)."""
    recipients = len(message.delivered) + len(message.failed) + elsewhere
    return audit.EventSpec(
        message.meta.sender,
        action,
        message.queue_id,
        request_id=request_id,
        detail={"message_id": message.meta.message_id, "recipients": recipients, **detail},
    )


@dataclass(frozen=True)
class StoredMessage:
    """A message row just inserted: its id and what the rows and events that go with it read."""

    id: int
    queue_id: str
    message_id: str
    sender: str
    kind: str
    cms_sha256: str


def _add_message(
    session: Session, master_key: MasterKey, message: NewMessage, *, digest: str | None = None
) -> StoredMessage:
    """Insert the message row (its CMS and sealed metadata); returns its id and columns (a
    Core INSERT, and no model object: building one costs more than the insert). ``digest``:
    the CMS's SHA-256 (hex), when the caller has already computed it."""
    digest = digest or hashlib.sha256(message.cms).hexdigest()
    values = {
        "queue_id": message.queue_id,
        "message_id": message.meta.message_id,
        "sender": message.meta.sender,
        "kind": message.kind,
        "size": len(message.cms),
        "cms": message.cms,
        "cms_sha256": digest,
        "meta_sealed": message.meta.seal(master_key),
        "submitted_at": utcnow(),
    }
    session.flush()  # what the caller added goes first, as with the unit of work (nothing, usually)
    key = session.connection().execute(_INSERT_MESSAGE, values).scalar_one()
    return StoredMessage(key, message.queue_id, message.meta.message_id, message.meta.sender, message.kind, digest)


_MESSAGES = table_of(Message)
_INSERT_MESSAGE = insert(_MESSAGES).returning(_MESSAGES.c.id)
_INSERT_MAILBOX_ITEMS = insert(table_of(MailboxItem))
_INSERT_DELIVERIES = insert(table_of(Delivery))
_INSERT_INBOUND_DELIVERIES = insert(table_of(InboundDelivery))
_INSERT_RECEIPTS = insert(table_of(Receipt))


def _add_deliveries(
    session: Session,
    message: StoredMessage,
    stored: NewMessage,
    *,
    request_id: str,
    queued: Sequence[tuple[str, str, bool, str]] = (),
    sent_by: str | None = None,
    inbound: tuple[str, str] | None = None,
) -> list[audit.EventSpec]:
    """The delivery rows of ``stored``'s recipients (``message`` is its row), their mailbox
    rows (``sent_by``'s Sent folder too, when given) and, for a message from another
    operator, the rows that make a repeated delivery a no-op (``inbound``: sender key and
    message digest). One multi-row INSERT per table. Returns the audit events that record
    each delivery, in order."""
    now = utcnow()
    queue_id = message.queue_id
    deliveries: list[dict[str, Any]] = []
    readers: list[dict[str, Any]] = []
    events: list[audit.EventSpec] = []
    if sent_by is not None:
        readers.append(_reader(message, sent_by, SENT, now, unread=False))
    for recipient, notify, mdn in stored.delivered:
        deliveries.append(_delivery(message, recipient, "delivered", now, notify=notify, mdn_requested=mdn))
        readers.append(_reader(message, recipient, INBOX, now))
        events.append(
            audit.EventSpec(
                "system", "message.deliver", queue_id, request_id=request_id, detail={"recipient": recipient}
            )
        )
    for recipient, notify, mdn, how in queued:
        deliveries.append(_delivery(message, recipient, "queued", now, notify=notify, mdn_requested=mdn, reason=how))
        events.append(
            audit.EventSpec("system", "message.queue", queue_id, request_id=request_id, detail={"recipient": recipient})
        )
    for recipient, reason in stored.failed.items():
        deliveries.append(_delivery(message, recipient, "failed", now, reason=reason))
        events.append(
            audit.EventSpec(
                "system",
                "message.deliver",
                queue_id,
                audit.FAILURE,
                request_id,
                {"recipient": recipient, "reason": reason},
            )
        )
    connection = session.connection()
    if deliveries:
        connection.execute(_INSERT_DELIVERIES, deliveries)
    if readers:
        connection.execute(_INSERT_MAILBOX_ITEMS, readers)
    if inbound is not None and stored.delivered:
        sender_key, digest = inbound
        connection.execute(
            _INSERT_INBOUND_DELIVERIES,
            [
                {
                    "sender": sender_key,
                    "message_ident": digest,
                    "recipient": recipient,
                    "message_id": message.id,
                    "at": now,
                }
                for recipient, _notify, _mdn in stored.delivered
            ],
        )
    return events


def _reader(message: StoredMessage, owner: str, folder: str, at: datetime, *, unread: bool = True) -> dict[str, Any]:
    return {"message_id": message.id, "owner": owner, "folder": folder, "unread": unread, "created_at": at}


def _delivery(
    message: StoredMessage,
    recipient: str,
    status: str,
    at: datetime,
    *,
    notify: str = "DELAY,FAILURE",
    mdn_requested: bool = False,
    reason: str = "",
) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "recipient": recipient,
        "status": status,
        "reason": reason[:500],
        "notify": notify,
        "mdn_requested": mdn_requested,
        "at": at,
    }


def store_receipts(
    session: Session, master_key: MasterKey, *, queue_id: str, notices: list[Notice], request_id: str
) -> None:
    """Store each notice as a message in the sender's inbox, linked to the original by Receipt rows.

    A notice that says again what a stored receipt of the same message, recipient, kind
    and status already said (a duplicate MDN or DSN) is dropped.
    """
    if not notices:
        return
    original = session.execute(
        select(col(Message.id), col(Message.sender)).where(col(Message.queue_id) == queue_id)
    ).one()
    fresh: list[Notice] = []
    for notice in notices:
        known = set(
            session.execute(
                select(col(Receipt.recipient)).where(
                    col(Receipt.message_id) == original.id,
                    col(Receipt.kind) == notice.kind,
                    col(Receipt.status) == notice.status,
                    col(Receipt.recipient).in_(notice.recipients),
                )
            ).scalars()
        )
        if known and known >= set(notice.recipients):
            continue
        fresh.append(replace(notice, recipients=tuple(r for r in notice.recipients if r not in known)))
    audit.record_many(
        session, _add_receipts(session, master_key, original.id, original.sender, queue_id, fresh, request_id)
    )


def _add_receipts(
    session: Session,
    master_key: MasterKey,
    original_id: int | None,
    sender: str,
    queue_id: str,
    notices: Sequence[Notice],
    request_id: str,
) -> list[audit.EventSpec]:
    """Each notice stored as a message in ``sender``'s inbox with the Receipt rows that link
    it to the original (``original_id``, ``queue_id``); returns their audit events."""
    events: list[audit.EventSpec] = []
    for notice in notices:
        notification = _add_message(
            session,
            master_key,
            NewMessage(queue_id=_receipt_queue_id(queue_id, notice), kind="receipt", cms=notice.cms, meta=notice.meta),
        )
        now = utcnow()
        connection = session.connection()
        connection.execute(_INSERT_MAILBOX_ITEMS, _reader(notification, sender, INBOX, now))
        connection.execute(
            _INSERT_RECEIPTS,
            [
                {
                    "message_id": original_id,
                    "recipient": recipient,
                    "kind": notice.kind,
                    "status": notice.status,
                    "reason": notice.reason,
                    "notification_id": notification.id,
                    "at": now,
                }
                for recipient in notice.recipients
            ],
        )
        events += [
            audit.EventSpec(
                "system",
                f"receipt.{notice.kind}",
                queue_id,
                request_id=request_id,
                detail={"recipient": recipient, "status": notice.status},
            )
            for recipient in notice.recipients
        ]
    return events


def store_notice(
    session: Session, master_key: MasterKey, *, owner: str, kind: str, cms: bytes, meta: MessageMeta
) -> StoredMessage:
    """Store a message from the operator itself (sealed by the caller) in ``owner``'s inbox."""
    digest = hashlib.sha256(cms).hexdigest()
    queue_id = f"{kind.upper()}-{digest[:20].upper()}"
    row = _add_message(session, master_key, NewMessage(queue_id, kind, cms, meta), digest=digest)
    session.connection().execute(_INSERT_MAILBOX_ITEMS, _reader(row, owner, INBOX, utcnow()))
    return row


def _receipt_queue_id(queue_id: str, notice: Notice) -> str:
    digest = hashlib.sha256(notice.cms).hexdigest()[:8].upper()
    return f"{queue_id}-{notice.kind.upper()}-{digest}"


def find_message(session: Session, ident: str) -> Message:
    """The message with this queue id or RFC 5322 Message-ID. Raises MessageNotFound."""
    ident = ident.strip()
    bracketed = ident if ident.startswith("<") else f"<{ident}>"
    row = (
        session.execute(
            select(Message)
            .where(or_(col(Message.queue_id) == ident.upper(), col(Message.message_id).in_([ident, bracketed])))
            .order_by(col(Message.id))
        )
        .scalars()
        .first()
    )
    if row is None:
        raise MessageNotFound(f"no message {ident}")
    return row


def signed_data_in(inner: bytes) -> bytes | None:
    """The DER SignedData inside a decrypted envelope, or None when it holds none.

    Our envelopes hold an RFC 8551 signed-data entity; a client's may hold a bare SignedData
    or a MIME entity of its own (then None: the caller shows it as unsigned).
    """
    try:
        if smime.is_signed(inner):
            return inner
    except CryptoError:
        pass  # not bare CMS: a MIME entity
    try:
        payload = smime.smime_payload(inner)
        return payload if smime.is_signed(payload) else None
    except CryptoError:
        return None


def readers_of(session: Session, message: Message) -> set[str]:
    """Addresses that may read a stored message: its mailbox owners."""
    owners = session.execute(select(col(MailboxItem.owner)).where(col(MailboxItem.message_id) == message.id)).scalars()
    return set(owners)


@dataclass(frozen=True)
class Trace:
    """The journey of one stored message: its row, audit events, deliveries and receipts."""

    message: Message
    events: list[Any]
    deliveries: list[Delivery]
    receipts: list[Receipt]


def trace(session: Session, ident: str) -> Trace:
    """The journey of the message with this queue id or Message-ID. Raises MessageNotFound."""
    row = find_message(session, ident)
    return Trace(
        message=row,
        events=list(audit.events_for(session, object_prefix=row.queue_id)),
        deliveries=list(session.execute(select(Delivery).where(col(Delivery.message_id) == row.id)).scalars()),
        receipts=list(session.execute(select(Receipt).where(col(Receipt.message_id) == row.id)).scalars()),
    )


def export_for(session: Session, master_key: MasterKey, ident: str, reader: str, *, actor: str) -> bytes:
    """The stored S/MIME message as an RFC 5322 ``.eml`` for one of its readers (a mail
    client or ``openssl cms`` opens it with that reader's key). Audited as
    ``message.export``. Raises MessageNotFound (also for an address that may not read it).
    """
    address = normalise_address(reader)
    row = find_message(session, ident)
    if address not in readers_of(session, row):
        raise MessageNotFound(f"no message {ident.strip()[:40]} for {address}")
    meta = MessageMeta.open(master_key, row.meta_sealed)
    headers = {
        "From": meta.sender,
        "To": ", ".join(meta.recipients),
        "Subject": meta.subject,
        "Date": meta.date,
        "Message-ID": meta.message_id,
        **meta.headers,
    }
    audit.record(session, actor=actor, action="message.export", object=row.queue_id, reader=address)
    return smime.to_smime_message(row.cms, {k: v for k, v in headers.items() if v})


# -- what a mail client's listing needs (mss.mailbox.served) ------------------------------

# Fields set at the top of every served message; an entity's own copies are dropped.
_TOP_FIELDS = frozenset({"from", "to", "cc", "subject", "date", "message-id", "mime-version", "sender", "bcc"})


def split_entity(entity: bytes) -> tuple[bytes, bytes]:
    """An entity's header lines (each ending with CRLF, no empty line) and its body."""
    head, sep, body = entity.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = entity.partition(b"\n\n")
    return (head + b"\r\n" if head else b""), body


def _body_lines(body: bytes) -> int:
    if not body:
        return 0
    return body.count(b"\n") + (0 if body.endswith(b"\n") else 1)


def entity_fields(head: bytes) -> bytes:
    """An entity's header lines less those the served message sets at its top."""
    kept: list[bytes] = []
    keep = False
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if keep:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        keep = name not in _TOP_FIELDS
        if keep:
            kept.append(line)
    return b"".join(line if line.endswith(b"\r\n") else line.rstrip(b"\r\n") + b"\r\n" for line in kept)


def entity_facts(entity: bytes, signature: str) -> dict[str, object]:
    """What the metadata keeps of a decrypted entity so a listing needs no decryption."""
    head, body = split_entity(entity)
    return {
        "header": entity_fields(head).decode("latin-1"),
        "size": len(body),
        "lines": _body_lines(body),
        "signature": signature,
    }


def submission_signature(signer: str, serial: str, at: datetime) -> str:
    """The ``X-MSS-Signature`` of a message the pipeline signed for ``signer``."""
    return f"valid; signer={signer}; certificate={serial}; checked={at:%Y-%m-%dT%H:%M:%SZ} (at submission)"


def checked_signature(status: str, signer: str | None, at: datetime) -> str:
    """The ``X-MSS-Signature`` of a message whose signature mss verified at its first opening."""
    who = f"; signer={signer}" if signer else ""
    return f"{status}{who}; checked={at:%Y-%m-%dT%H:%M:%SZ}"
