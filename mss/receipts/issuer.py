"""The one issuer of receipts, for every door: what a submission or an opening calls for,
signed with the operator's certificate, encrypted to its reader, ready to store.

The pipeline asks :func:`for_submission` (failure and success DSNs, ``processed`` MDNs); the
mailbox and the IMAP door ask :func:`on_display` when a recipient opens a message, and
:func:`answer_displayed` when the recipient answers the question (RFC 8098 2.1: a
``displayed`` notification needs the recipient's consent, given each time or once for all by
their setting). What travels between operators (notices of the outbound queue to a local
sender, receipts to another operator's sender) is ``mss.receipts.federation``'s, the same
issuer's other half. The wire form of each notification is ``mss.receipts.wire``'s, its
signature and encryption ``mss.receipts.sealing``'s; storage is ``mss.store``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import partial
from typing import Final

from cryptography import x509
from sqlalchemy import Select, select
from sqlmodel import Session, col

from directory import certificates
from mss import audit, metrics, store
from mss.db import key_of, session_scope, utcnow
from mss.errors import ReceiptNotPending
from mss.models import Delivery, Message, ReadReceiptDeclined, Receipt
from mss.receipts import federation
from mss.receipts.sealing import OperatorIdentity, notice, reporter, sealed
from mss.receipts.wire import Disposition, DispositionMode, Notify, RecipientStatus, Report, build_dsn, build_mdn
from mss.runtime import Runtime
from mss.store import MessageMeta, Notice

PROCESSED: Final = "processed"
DISPLAYED: Final = "displayed"
DELAYED: Final = "delayed"
# A delivery in one of these states has its final status; any other (``relayed`` or
# ``queued`` by the outbound queue) waits for a ``processed`` MDN or a ``failed`` DSN.
FINAL_DELIVERY = frozenset({"delivered", "failed"})
# What ends the wait of a pending delivery, and what says the sender was told it is late.
ENDS_WAIT = frozenset({PROCESSED, "failed"})
# RFC 8098 3.2.6.2: the recipient's action (opening it) caused the disposition; the
# notification goes out by their standing setting (``always``) ...
DISPLAYED_MODE: Final = "manual-action/MDN-sent-automatically"
# ... or because they said yes to this one.
DISPLAYED_MANUAL_MODE: Final = "manual-action/MDN-sent-manually"
PROCESSED_MODE: Final = "automatic-action/MDN-sent-automatically"

# Where a requested read receipt stands for one recipient of one message.
NOT_ASKED = "not-asked"  # none requested (or none can be sent: the sender has no certificate)
PENDING = "pending"  # requested, waiting for the recipient's consent
SENT = "sent"
DECLINED = "declined"
# The recipient's standing choice (mss.accounts.preferences).
ASK, ALWAYS, NEVER = "ask", "always", "never"


def seal(session: Session, rt: Runtime, notification: Report, reader_certificate: x509.Certificate) -> bytes:
    """A notification signed with the operator's certificate and encrypted to its reader
    (the RFC 8551 signed-data entity inside the envelope, as every stored message)."""
    return sealed(certificates.operator_identity(session, rt.settings, rt.master_key), notification, reader_certificate)


def _operator_identity(rt: Runtime) -> OperatorIdentity:
    """The operator's signing identity, read in a read-only transaction as it usually
    stands; made (in a write transaction) the first time, or when it must be renewed."""
    with session_scope(rt.engine, readonly=True) as session:
        current = certificates.current_operator_identity(session, rt.master_key)
    if current is not None:
        return current
    with session_scope(rt.engine) as session:
        return certificates.operator_identity(session, rt.settings, rt.master_key)


def for_submission(
    rt: Runtime,
    meta: MessageMeta,
    *,
    sender_certificate: x509.Certificate,
    envelope_id: str | None,
    delivered: Sequence[tuple[str, Notify]],
    failed: Mapping[str, tuple[str, Notify]],
    original_headers: bytes,
) -> list[Notice]:
    """The DSNs (RFC 3464) and MDNs (RFC 8098) a submission calls for, ready to store.

    ``delivered`` lists the recipients the message reached with their NOTIFY, ``failed``
    maps the others to (reason, NOTIFY). A failure DSN unless NOTIFY=NEVER; a success DSN
    when asked (NOTIFY=SUCCESS) or when the operator sends them always; an MDN ``processed``
    per recipient when the sender asked with Disposition-Notification-To.
    """
    settings = rt.settings
    reporting = reporter(settings)
    arrival = utcnow()
    always = settings.relay.dsn_on_success
    success = [address for address, notify in delivered if notify.wants("delivered") or (always and not notify.never)]
    failures = [address for address, (_reason, notify) in failed.items() if notify.wants("failed")]
    # (kind, status, recipients, reason, notification), all for the sender
    wanted: list[tuple[str, str, list[str], str, Report]] = []
    for status, addresses in (("delivered", success), ("failed", failures)):
        if not addresses:
            continue
        statuses = [
            RecipientStatus(address=a, action="delivered", status="2.0.0", diagnostic=None)
            if status == "delivered"
            else RecipientStatus(
                address=a, action="failed", status="5.7.1", diagnostic=f"smtp; 550 5.7.1 {failed[a][0]}"
            )
            for a in addresses
        ]
        dsn = build_dsn(
            reporting_mta=reporting,
            original_envelope_id=envelope_id,
            original_message_id=meta.message_id,
            sender=meta.sender,
            recipients=statuses,
            arrival_date=arrival,
            original_headers=original_headers,
            postmaster=certificates.operator_address(settings),
        )
        reason = "" if status == "delivered" else "; ".join(failed[a][0] for a in addresses)
        wanted.append(("dsn", status, addresses, reason, dsn))
    if meta.mdn_to:
        for address, _notify in delivered:
            mdn = _mdn(reporting, meta, address, PROCESSED, PROCESSED_MODE)
            wanted.append(("mdn", PROCESSED, [address], "", mdn))
    if not wanted:
        return []
    # Signed outside any transaction: the identity is read in a read-only one.
    to_sender = partial(notice, _operator_identity(rt), reader=meta.sender, reader_certificate=sender_certificate)
    return [
        to_sender(notification, kind=kind, status=status, recipients=addresses, reason=reason)
        for kind, status, addresses, reason, notification in wanted
    ]


def _mdn(reporting: str, meta: MessageMeta, reader: str, disposition: Disposition, mode: DispositionMode) -> Report:
    """The MDN (RFC 8098) of ``reader`` on the message of ``meta``, for its sender."""
    return build_mdn(
        reporting_ua=reporting,
        final_recipient=reader,
        original_message_id=meta.message_id,
        disposition=disposition,
        sender=meta.sender,
        mode=mode,
        subject_hint=None,
    )


def _due_delivery(session: Session, message: Message, meta: MessageMeta, reader: str) -> Delivery | None:
    """The reader's delivery row, locked, when a ``displayed`` notification was requested
    of them; None otherwise. Two openings at once wait on the lock and send one."""
    if not meta.mdn_to:
        return None
    delivery = (
        session.execute(
            select(Delivery)
            .where(col(Delivery.message_id) == message.id, col(Delivery.recipient) == reader)
            .with_for_update()
        )
        .scalars()
        .first()
    )
    if delivery is None or delivery.status != "delivered" or not delivery.mdn_requested:
        return None
    return delivery


def displayed_state(session: Session, *, message: Message, meta: MessageMeta, reader: str) -> str:
    """Where the read receipt ``message`` asked of ``reader`` stands: not-asked, pending,
    sent or declined. Locks the reader's delivery row (call it in the deciding transaction)."""
    if _due_delivery(session, message, meta, reader) is None:
        return NOT_ASKED
    sent = session.execute(
        select(col(Receipt.id)).where(
            col(Receipt.message_id) == message.id,
            col(Receipt.recipient) == reader,
            col(Receipt.kind) == "mdn",
            col(Receipt.status) == DISPLAYED,
        )
    ).first()
    if sent is not None:
        return SENT
    declined = session.execute(
        select(col(ReadReceiptDeclined.id)).where(
            col(ReadReceiptDeclined.message_id) == message.id, col(ReadReceiptDeclined.recipient) == reader
        )
    ).first()
    if declined is not None:
        return DECLINED
    if meta.origin is None and certificates.current_certificate(session, meta.sender) is None:
        # A local sender without a certificate: nothing can be encrypted to them any more.
        # (A sender at another operator gets the notification through the outbound queue.)
        return NOT_ASKED
    return PENDING


def _decided(session: Session, message: Message, reader: str, *, decision: str, by: str, request_id: str) -> None:
    audit.record(
        session,
        actor=reader,
        action="receipt.decision",
        object=message.queue_id,
        request_id=request_id,
        decision=decision,
        by=by,
    )


def _decline(session: Session, message: Message, reader: str, *, by: str, request_id: str) -> None:
    session.add(ReadReceiptDeclined(message_id=key_of(message), recipient=reader, by=by))
    _decided(session, message, reader, decision="decline", by=by, request_id=request_id)


def on_display(
    session: Session, rt: Runtime, *, message: Message, meta: MessageMeta, reader: str, choice: str, request_id: str
) -> str:
    """What opening ``message`` does with the read receipt it asked of ``reader``, by the
    reader's standing ``choice``: ``always`` sends it, ``never`` declines it (both audited
    as ``receipt.decision`` by the setting), ``ask`` leaves it pending for
    :func:`answer_displayed`. Returns the state after the opening (see :func:`displayed_state`).
    Everything is written in the caller's transaction."""
    state = displayed_state(session, message=message, meta=meta, reader=reader)
    if state != PENDING or choice not in {ALWAYS, NEVER}:
        return state
    if choice == NEVER:
        _decline(session, message, reader, by="setting", request_id=request_id)
        return DECLINED
    _send_displayed(session, rt, message=message, meta=meta, reader=reader, mode=DISPLAYED_MODE, request_id=request_id)
    _decided(session, message, reader, decision="send", by="setting", request_id=request_id)
    return SENT


def answer_displayed(
    session: Session, rt: Runtime, *, message: Message, meta: MessageMeta, reader: str, send: bool, request_id: str
) -> str:
    """The reader's answer to a pending read receipt: sent (``manual-action/
    MDN-sent-manually``) or declined, audited as ``receipt.decision`` by the reader. Returns
    the new state. Raises ReceiptNotPending when none waits for an answer (none asked, or
    already sent or declined)."""
    state = displayed_state(session, message=message, meta=meta, reader=reader)
    if state != PENDING:
        raise ReceiptNotPending(f"no read receipt waits for an answer on {message.queue_id} ({state})", state=state)
    if not send:
        _decline(session, message, reader, by="reader", request_id=request_id)
        return DECLINED
    _send_displayed(
        session, rt, message=message, meta=meta, reader=reader, mode=DISPLAYED_MANUAL_MODE, request_id=request_id
    )
    _decided(session, message, reader, decision="send", by="reader", request_id=request_id)
    return SENT


def send_displayed(
    session: Session,
    rt: Runtime,
    *,
    message: Message,
    meta: MessageMeta,
    reader: str,
    request_id: str,
    mode: DispositionMode = DISPLAYED_MODE,
) -> bool:
    """Store the ``displayed`` MDN of ``reader`` for ``message`` if it is due; True if sent.

    Due when the sender asked for notifications, ``reader`` is a recipient the message was
    delivered to, and no ``displayed`` notification was sent or declined yet. The caller
    must have the reader's consent (:func:`on_display`, :func:`answer_displayed` decide it).
    A sender who no longer has a valid certificate gets none (nothing can be encrypted to
    them); that is not an error. Everything is written in the caller's transaction.
    """
    if displayed_state(session, message=message, meta=meta, reader=reader) != PENDING:
        return False
    _send_displayed(session, rt, message=message, meta=meta, reader=reader, mode=mode, request_id=request_id)
    return True


def _send_displayed(
    session: Session,
    rt: Runtime,
    *,
    message: Message,
    meta: MessageMeta,
    reader: str,
    mode: DispositionMode,
    request_id: str,
) -> None:
    mdn = _mdn(reporter(rt.settings), meta, reader, DISPLAYED, mode)
    if not rt.settings.serves(meta.sender):
        # A sender at another operator: the notification goes back through the outbound
        # queue; the row here only records that it was sent.
        if not federation.to_remote_sender(session, rt, mdn, about=message.id, request_id=request_id):
            raise ReceiptNotPending(f"the sender of {message.queue_id} is not reachable", state=NOT_ASKED)
        session.add(Receipt(message_id=key_of(message), recipient=reader, kind="mdn", status=DISPLAYED))
        return
    if not federation.store_for_sender(
        session, rt, message, mdn, kind="mdn", status=DISPLAYED, recipients=[reader], request_id=request_id
    ):
        # displayed_state checked the sender's certificate in this transaction
        raise ReceiptNotPending(f"the sender of {message.queue_id} has no certificate", state=NOT_ASKED)


def _no_longer_waiting(message_id: object, recipient: object) -> Select[int | None]:
    """The receipts that end the wait of ``recipient``'s delivery of ``message_id`` or
    already told the sender it is late (values, or the columns of an outer query)."""
    return select(col(Receipt.id)).where(
        col(Receipt.message_id) == message_id,
        col(Receipt.recipient) == recipient,
        col(Receipt.status).in_(ENDS_WAIT | {DELAYED}),
    )


def send_delayed(rt: Runtime) -> int:
    """A delayed DSN (RFC 3464 ``Action: delayed``, status 4.4.7) to the sender of every
    delivery that waits for its final status longer than ``MSS_RECEIPT_DEADLINE``, once.

    Once: the delivery row is locked and the ``delayed`` receipt written in the same
    transaction, so two sweeps at once (two processes) send one. A recipient whose NOTIFY
    leaves out DELAY, or a sender without a valid certificate, gets none. Returns how many
    recipients were reported.
    """
    cutoff = utcnow() - timedelta(seconds=rt.settings.operator.receipt_deadline)
    with session_scope(rt.engine, readonly=True) as session:
        waiting = (
            session.execute(
                select(col(Delivery.id))
                .join(Message, col(Message.id) == col(Delivery.message_id))
                .where(col(Delivery.status).not_in(FINAL_DELIVERY), col(Message.submitted_at) <= cutoff)
                .where(~_no_longer_waiting(col(Delivery.message_id), col(Delivery.recipient)).exists())
                .order_by(col(Delivery.id))
            )
            .scalars()
            .all()
        )
    sent = 0
    for delivery_id in waiting:
        with session_scope(rt.engine) as session:
            sent += _send_one_delayed(session, rt, delivery_id)
    return sent


def _send_one_delayed(session: Session, rt: Runtime, delivery_id: int) -> int:
    delivery = (
        session.execute(select(Delivery).where(col(Delivery.id) == delivery_id).with_for_update()).scalars().one()
    )
    told = session.execute(_no_longer_waiting(delivery.message_id, delivery.recipient)).first()
    if told is not None or delivery.status in FINAL_DELIVERY:
        return 0
    if not Notify(w for w in delivery.notify.split(",") if w).wants(DELAYED):
        return 0
    message = session.get(Message, delivery.message_id)
    assert message is not None
    meta = store.MessageMeta.open(rt.master_key, message.meta_sealed)
    settings = rt.settings
    hours = settings.operator.receipt_deadline / 3600
    reason = f"no final status after {hours:g} h"
    dsn = build_dsn(
        reporting_mta=reporter(settings),
        original_envelope_id=None,
        original_message_id=meta.message_id,
        sender=meta.sender,
        recipients=[RecipientStatus(address=delivery.recipient, action=DELAYED, status="4.4.7", diagnostic=None)],
        arrival_date=message.submitted_at,
        # The original's header fields are sealed with its content; the DSN names it by
        # its Message-ID and date only.
        original_headers=f"Message-ID: {meta.message_id}\r\nDate: {meta.date}\r\n".encode(),
        postmaster=certificates.operator_address(settings),
    )
    if not federation.store_for_sender(
        session, rt, message, dsn, kind="dsn", status=DELAYED, recipients=[delivery.recipient], reason=reason
    ):
        return 0  # a sender without a valid certificate gets none
    metrics.DELAYED.inc()
    return 1
