"""The ``displayed`` disposition notification (RFC 8098), sent when a recipient first opens a
message whose sender asked for one (``Disposition-Notification-To``).

The notification is built by ``mss.receipts``, signed with the operator's certificate,
encrypted to the original sender and stored in their inbox with its ``Receipt`` row, in the
caller's transaction, like the ``processed`` ones the pipeline stores at submission. For a
sender at another operator it goes into the outbound queue instead (``mss.outbound``). The
recipient's delivery row is locked first, so two openings at once send one notification.
"""

from __future__ import annotations

import email.policy
import socket

from sqlalchemy import select
from sqlmodel import Session

from directory import certificates
from mss import receipts, store
from mss.crypto import smime
from mss.models import Delivery, Message, Receipt
from mss.outbound import notices
from mss.runtime import Runtime
from mss.store import MessageMeta, Notice

DISPLAYED = "displayed"
# RFC 8098 3.2.6.2: the recipient's action (opening it) caused the disposition; the
# notification itself goes out without asking them each time.
MODE = "manual-action/MDN-sent-automatically"


def send_displayed(
    session: Session, rt: Runtime, *, message: Message, meta: MessageMeta, reader: str, request_id: str
) -> bool:
    """Store the ``displayed`` MDN of ``reader`` for ``message`` if it is due; True if sent.

    Due when the sender asked for notifications, ``reader`` is a recipient the message was
    delivered to, and no ``displayed`` notification exists yet. A sender who no longer has a
    valid certificate gets none (nothing can be encrypted to them); that is not an error.
    """
    if not meta.mdn_to:
        return False
    delivery = (
        session.execute(
            select(Delivery).where(Delivery.message_id == message.id, Delivery.recipient == reader).with_for_update()
        )
        .scalars()
        .first()
    )
    if delivery is None or delivery.status != "delivered" or not delivery.mdn_requested:
        return False
    already = session.execute(
        select(Receipt.id).where(
            Receipt.message_id == message.id,
            Receipt.recipient == reader,
            Receipt.kind == "mdn",
            Receipt.status == DISPLAYED,
        )
    ).first()
    if already is not None:
        return False
    settings = rt.settings
    reporter = settings.pki.hostnames[0] if settings.pki.hostnames else socket.getfqdn()
    notification = receipts.build_mdn(
        reporting_ua=reporter,
        final_recipient=reader,
        original_message_id=meta.message_id,
        disposition=DISPLAYED,
        sender=meta.sender,
        mode=MODE,
        subject_hint=None,
    )
    if not settings.serves(meta.sender):
        # A sender at another operator: the notification goes back through the outbound
        # queue; the row here only records that it was sent.
        if not notices.to_remote_sender(session, rt, notification, about=message.id, request_id=request_id):
            return False
        session.add(Receipt(message_id=message.id, recipient=reader, kind="mdn", status=DISPLAYED))
        return True
    sender_certificate = certificates.current_certificate(session, meta.sender)
    if sender_certificate is None:
        return False
    key, operator_certificate = certificates.operator_identity(session, settings, rt.master_key)
    entity = notification.as_bytes(policy=email.policy.SMTP)
    # Stored like the pipeline's receipts: an RFC 8551 signed-data entity in the envelope.
    cms = smime.encrypt(smime.signed_entity(smime.sign(entity, operator_certificate, key)), [sender_certificate])
    notice_meta = MessageMeta(
        sender=str(notification["From"].addresses[0].addr_spec).lower(),
        recipients=[meta.sender],
        subject=str(notification["Subject"]),
        date=str(notification["Date"]),
        message_id=str(notification["Message-ID"]),
    )
    store.store_receipts(
        session,
        rt.master_key,
        queue_id=message.queue_id,
        notices=[Notice(kind="mdn", status=DISPLAYED, recipients=(reader,), reason="", cms=cms, meta=notice_meta)],
        request_id=request_id,
    )
    return True
