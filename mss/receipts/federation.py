"""Receipts the outbound queue and the inbound door send: delivery status notifications to
a local sender (``relayed``, ``delayed``, ``failed``) and receipts for another operator's
sender (DSN, ``processed`` and ``displayed`` MDN).

A local sender's notice is built by ``mss.receipts``, signed with the operator's certificate,
encrypted to the sender and stored in their inbox with its ``Receipt`` row, like the
pipeline's own. A remote sender's receipt is signed with the operator's certificate and
queued for their operator without encryption: it carries header fields only, never
content, travels inside mutual TLS, and the receiving operator must read it to link it to
the message it reports on (``mss.inbound``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from email.message import EmailMessage

from sqlmodel import Session

from directory import certificates
from mss import receipts, store, trust
from mss.crypto import smime
from mss.mime import SMTP_POLICY
from mss.models import Message
from mss.outbound import queue
from mss.receipts.sealing import notice, reporter, signed
from mss.runtime import Runtime
from mss.store import MessageMeta

log = logging.getLogger("mss.outbound")

# Outer header fields of a receipt sent to another operator (the report itself is signed).
_RECEIPT_HEADERS = ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "Auto-Submitted")


def original_headers(meta: MessageMeta) -> bytes:
    """The header section a DSN quotes, rebuilt from a stored message's sealed metadata
    (the original header section is not kept)."""
    head = EmailMessage(policy=SMTP_POLICY)
    for name, value in (
        ("From", meta.sender),
        ("To", ", ".join(meta.recipients)),
        ("Subject", meta.subject),
        ("Date", meta.date),
        ("Message-ID", meta.message_id),
    ):
        if value:
            try:
                head[name] = value
            except (ValueError, TypeError):
                continue
    return head.as_bytes(policy=SMTP_POLICY)


def store_for_sender(
    session: Session,
    rt: Runtime,
    message: Message,
    notification: receipts.Report,
    *,
    kind: str,
    status: str,
    recipients: Sequence[str],
    reason: str = "",
    request_id: str = "",
) -> bool:
    """Store ``notification`` (a ``kind`` saying ``status`` of ``recipients``) in the inbox
    of the local sender of ``message``, sealed by the operator and linked to the message,
    in the caller's transaction. False (and nothing stored) when the sender has no
    certificate left to encrypt to."""
    sender_certificate = certificates.current_certificate(session, message.sender)
    if sender_certificate is None:
        return False
    sealed = notice(
        certificates.operator_identity(session, rt.settings, rt.master_key),
        notification,
        kind=kind,
        status=status,
        recipients=recipients,
        reason=reason,
        reader=message.sender,
        reader_certificate=sender_certificate,
    )
    store.store_receipts(session, rt.master_key, queue_id=message.queue_id, notices=[sealed], request_id=request_id)
    return True


def to_local_sender(
    session: Session,
    rt: Runtime,
    message: Message,
    statuses: list[receipts.RecipientStatus],
    *,
    envelope_id: str | None = None,
    reason: str = "",
    request_id: str = "",
) -> bool:
    """Store a DSN for the local sender of ``message`` about ``statuses`` (all of one
    action) in their inbox, linked to the message. False (and nothing stored) when the
    sender has no certificate left to encrypt to."""
    if not statuses:
        return False
    meta = MessageMeta.open(rt.master_key, message.meta_sealed)
    dsn = receipts.build_dsn(
        reporting_mta=reporter(rt.settings),
        original_envelope_id=envelope_id,
        original_message_id=meta.message_id,
        sender=message.sender,
        recipients=statuses,
        arrival_date=message.submitted_at,
        original_headers=original_headers(meta),
        postmaster=certificates.operator_address(rt.settings),
    )
    action = statuses[0].action
    addresses = [s.address for s in statuses]
    if store_for_sender(
        session, rt, message, dsn, kind="dsn", status=action, recipients=addresses, reason=reason, request_id=request_id
    ):
        return True
    log.info("no %s DSN for %s: the sender has no valid certificate", action, message.queue_id)
    return False


def to_remote_sender(
    session: Session, rt: Runtime, notification: receipts.Report, *, about: int | None, request_id: str = ""
) -> bool:
    """Queue ``notification`` (a DSN or MDN built by ``mss.receipts``) for its addressee at
    another operator, signed by this operator, from the null sender with NOTIFY=NEVER (no
    notice about a notice). False when the addressee's domain is not on the trust list."""
    to = notification.to
    domain = trust.domain_of(to)
    if not trust.is_trusted(session, domain):
        log.info("no receipt for %s: %s is not on the trust list", to, domain)
        return False
    headers = {}
    written = notification.headers()
    for name in _RECEIPT_HEADERS:
        value = written.get(name)
        if value is not None:
            headers[name] = " ".join(str(value).split())
    identity = certificates.operator_identity(session, rt.settings, rt.master_key)
    payload = smime.to_signed_smime_message(signed(identity, notification), headers)
    subject = ""
    if about is not None:
        original = session.get(Message, about)
        subject = original.queue_id if original is not None else ""
    queue.enqueue(
        session,
        rt.settings,
        rt.master_key,
        queue.Entry(
            kind=queue.RECEIPT,
            domain=domain,
            protection=queue.SIGNED,
            mail_from="",
            payload=payload,
            recipients=(queue.Recipient(address=to, notify="NEVER"),),
            message_id=about,
        ),
        request_id=request_id,
        subject=subject,
    )
    return True
