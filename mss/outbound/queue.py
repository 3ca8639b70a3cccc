"""The durable outbound queue: messages for other operators, committed before ``250``.

``enqueue`` adds an entry in the caller's transaction (the pipeline's, with the message it
belongs to), so a message acknowledged to its sender is in the queue. Workers take due
entries with ``claim`` under a lease (``mss.leases``), committed before any network I/O,
so no transaction stays open during a delivery; an entry whose worker died is taken again
once its lease has passed. A worker writes an attempt's outcome only while it still holds
the lease.

An entry is delivered at least once: a worker killed between the peer's ``250`` and its
own update delivers again, and the receiving side stores one copy (``mss.inbound``).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, func, or_, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from mss import audit, leases
from mss.crypto.master import MasterKey
from mss.db import key_of, session_scope, utcnow
from mss.errors import QueueError
from mss.models import Message, Outbound, OutboundRecipient
from mss.settings import Settings

log = logging.getLogger("mss.outbound")

QUEUED, DONE, FAILED, BOUNCED = "queued", "done", "failed", "bounced"
PENDING, RELAYED = "pending", "relayed"
MESSAGE, RECEIPT = "message", "receipt"
ENCRYPTED, SIGNED = "encrypted", "signed"

PROTECTION_WORDS = {
    ENCRYPTED: "encrypted to the recipient's certificate",
    SIGNED: "signed, not encrypted (no certificate known for the recipient): protected by mutual TLS in transit",
}

_wakers: set[Callable[[], None]] = set()
_wakers_lock = threading.Lock()
_HOOKED = "mss.outbound_wake"


@dataclass(frozen=True)
class Recipient:
    """A recipient to deliver to, with what its sender asked for (RFC 3461)."""

    address: str
    notify: str = "FAILURE,DELAY"  # NEVER, or SUCCESS / FAILURE / DELAY joined by commas
    orcpt: str | None = None


@dataclass(frozen=True)
class Entry:
    """What ``enqueue`` stores: one payload for the recipients of one domain."""

    kind: str  # message | receipt
    domain: str
    protection: str  # encrypted | signed
    mail_from: str  # "" for the null sender
    payload: bytes  # the message as it goes on the wire (CRLF)
    recipients: tuple[Recipient, ...]
    message_id: int | None = None  # the stored message it belongs to (or reports on)
    envelope_id: str | None = None
    ret: str | None = None


@dataclass(frozen=True)
class Claimed:
    """An entry a worker holds the lease of, with its pending recipients."""

    id: int
    queue_id: str
    kind: str
    domain: str
    protection: str
    mail_from: str
    envelope_id: str | None
    ret: str | None
    payload: bytes
    recipients: tuple[Recipient, ...]
    attempts: int
    created_at: datetime
    message_id: int | None
    lease_owner: str


@dataclass(frozen=True)
class Waiting:
    """One line of ``mss queue list``."""

    queue_id: str
    message_queue_id: str | None
    kind: str
    domain: str
    protection: str
    mail_from: str
    state: str
    recipients: tuple[tuple[str, str, str], ...]  # address, state, last reply
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    last_error: str
    in_flight: bool


@dataclass(frozen=True)
class Stats:
    """The queue at a glance, for the logs."""

    waiting: int
    recipients: int
    oldest: timedelta | None
    deferred: int
    in_flight: int


# What a delivery needs of an entry besides its payload and recipients: it goes from the
# Entry to its row, and from the row to the worker's Claimed.
_ENVELOPE = ("kind", "domain", "protection", "mail_from", "envelope_id", "ret")


def _envelope(source: Entry | Outbound) -> dict[str, Any]:
    return {name: getattr(source, name) for name in _ENVELOPE}


def protection_text(protection: str) -> str:
    """How a message to another operator is protected, in words for its sender."""
    return PROTECTION_WORDS.get(protection, protection)


def new_queue_id() -> str:
    return "Q" + secrets.token_hex(8).upper()


# -- waking workers of this process ----------------------------------------------------------


def add_waker(callback: Callable[[], None]) -> None:
    """Call ``callback`` (thread-safe) whenever an entry is committed in this process."""
    with _wakers_lock:
        _wakers.add(callback)


def remove_waker(callback: Callable[[], None]) -> None:
    with _wakers_lock:
        _wakers.discard(callback)


def _wake(session: Session) -> None:
    session.info.pop(_HOOKED, None)
    with _wakers_lock:
        callbacks = list(_wakers)
    for callback in callbacks:
        callback()


def _wake_after_commit(session: Session) -> None:
    if not session.info.get(_HOOKED):
        session.info[_HOOKED] = True
        event.listen(session, "after_commit", _wake, once=True)


# -- adding ------------------------------------------------------------------------------------


def enqueue(
    session: Session,
    settings: Settings,
    master_key: MasterKey,
    entry: Entry,
    *,
    request_id: str = "",
    subject: str = "",
) -> Outbound:
    """Add ``entry`` to the queue in the caller's transaction; return its row.

    ``subject`` is the audit object (the message's queue id). Workers of this process
    are woken when the transaction commits. Raises QueueError for an entry without
    recipients.
    """
    if not entry.recipients:
        raise QueueError("a queue entry needs at least one recipient")
    now = utcnow()
    row = Outbound(
        queue_id=new_queue_id(),
        message_id=entry.message_id,
        **_envelope(entry),
        payload_sealed=master_key.seal(entry.payload),
        size=len(entry.payload),
        created_at=now,
        next_attempt_at=now,
        expires_at=now + timedelta(seconds=settings.federation.queue_lifetime),
        updated_at=now,
    )
    session.add(row)
    session.flush()
    for recipient in entry.recipients:
        session.add(
            OutboundRecipient(
                outbound_id=key_of(row), address=recipient.address, notify=recipient.notify, orcpt=recipient.orcpt
            )
        )
    audit.record(
        session,
        actor="system",
        action="queue.add",
        object=subject or row.queue_id,
        request_id=request_id,
        queue=row.queue_id,
        domain=entry.domain,
        protection=entry.protection,
        kind=entry.kind,
        recipients=len(entry.recipients),
    )
    session.flush()
    _wake_after_commit(session)
    return row


# -- taking ------------------------------------------------------------------------------------


def claim(engine: Engine, settings: Settings, master_key: MasterKey, worker: str, *, limit: int) -> list[Claimed]:
    """Take up to ``limit`` due entries for ``worker`` (a lease of ``MSS_QUEUE_LEASE``)."""
    if limit < 1:
        return []
    now = utcnow()
    lease = timedelta(seconds=settings.federation.queue_lease)
    with session_scope(engine) as session:
        rows = leases.take_due(session, Outbound, waiting=QUEUED, worker=worker, lease=lease, now=now, limit=limit)
        if not rows:
            return []
        pending: dict[int, list[Recipient]] = {key_of(row): [] for row in rows}
        for item in session.execute(
            select(OutboundRecipient)
            .where(col(OutboundRecipient.outbound_id).in_(list(pending)), col(OutboundRecipient.state) == PENDING)
            .order_by(col(OutboundRecipient.id))
        ).scalars():
            pending[item.outbound_id].append(Recipient(item.address, item.notify, item.orcpt))
        claimed = []
        for row in rows:
            row.last_attempt_at = now
            claimed.append(
                Claimed(
                    id=key_of(row),
                    queue_id=row.queue_id,
                    **_envelope(row),
                    payload=master_key.open(row.payload_sealed),
                    recipients=tuple(pending[key_of(row)]),
                    attempts=row.attempts,
                    created_at=row.created_at,
                    message_id=row.message_id,
                    lease_owner=worker,
                )
            )
    return claimed


def held(session: Session, claimed: Claimed) -> Outbound | None:
    """The entry's row, locked, if ``claimed``'s worker still holds its lease; else None
    (another worker took it over after the lease passed: its outcome wins)."""
    return leases.held(session, Outbound, claimed.id, owner=claimed.lease_owner, waiting=QUEUED)


def recipients_of(session: Session, outbound_id: int) -> list[OutboundRecipient]:
    return list(
        session.execute(
            select(OutboundRecipient)
            .where(col(OutboundRecipient.outbound_id) == outbound_id)
            .order_by(col(OutboundRecipient.id))
        ).scalars()
    )


def release(row: Outbound, *, next_attempt_at: datetime | None, state: str, error: str = "") -> None:
    """End the lease; schedule the next attempt or close the entry."""
    now = utcnow()
    row.lease_owner, row.lease_until = "", None
    row.state = state
    if next_attempt_at is not None:
        row.next_attempt_at = next_attempt_at
    if error:
        row.last_error = error[:500]
    row.updated_at = now


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: doubling from MSS_RETRY_MIN up
    to MSS_RETRY_MAX, with up to 10 % jitter so that entries deferred together spread out."""
    return leases.backoff(attempts, first=settings.federation.retry_min, longest=settings.federation.retry_max)


# -- administration ------------------------------------------------------------------------------


def _locked(session: Session, queue_id: str) -> Outbound:
    """The entry ``queue_id``, its row locked until the transaction ends (on PostgreSQL;
    SQLite has one writer at a time), as a worker locks it before writing an attempt's
    outcome: the two then change it one after the other, in the same order of locks (the
    row, then the audit chain), and never wait for each other in a circle."""
    ident = queue_id.strip().upper()
    query = select(Outbound).where(col(Outbound.queue_id) == ident)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    row = session.execute(query).scalars().first()
    if row is None:
        raise QueueError(f"no queue entry {queue_id.strip()[:40]}")
    return row


def listing(session: Session, *, everything: bool = False) -> list[Waiting]:
    """Entries still queued (with ``everything``, also those done, failed or bounced),
    oldest first."""
    query = select(Outbound, col(Message.queue_id)).join(
        Message, col(Message.id) == col(Outbound.message_id), isouter=True
    )
    if not everything:
        query = query.where(col(Outbound.state) == QUEUED)
    rows = session.execute(query.order_by(col(Outbound.created_at), col(Outbound.id))).all()
    ids = [row.id for row, _q in rows]
    by_entry: dict[int, list[tuple[str, str, str]]] = {i: [] for i in ids}
    if ids:
        for item in session.execute(
            select(OutboundRecipient)
            .where(col(OutboundRecipient.outbound_id).in_(ids))
            .order_by(col(OutboundRecipient.id))
        ).scalars():
            by_entry[item.outbound_id].append((item.address, item.state, item.reply))
    now = utcnow()
    return [
        Waiting(
            queue_id=row.queue_id,
            message_queue_id=message_queue_id,
            kind=row.kind,
            domain=row.domain,
            protection=row.protection,
            mail_from=row.mail_from,
            state=row.state,
            recipients=tuple(by_entry[row.id]),
            attempts=row.attempts,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
            in_flight=row.lease_until is not None and row.lease_until > now,
        )
        for row, message_queue_id in rows
    ]


def retry_now(session: Session, queue_id: str, *, actor: str) -> Outbound:
    """Make a queued entry due now. Raises QueueError when it is unknown or finished."""
    row = _locked(session, queue_id)
    if row.state != QUEUED:
        raise QueueError(f"{row.queue_id} is {row.state}: there is nothing left to retry")
    row.next_attempt_at = row.updated_at = utcnow()
    session.add(row)
    audit.record(session, actor=actor, action="queue.retry", object=row.queue_id, domain=row.domain)
    _wake_after_commit(session)
    return row


def take_for_bounce(session: Session, queue_id: str, *, actor: str) -> tuple[Outbound, list[OutboundRecipient]]:
    """The entry and its pending recipients, for an administrator's bounce. Raises
    QueueError when it is unknown, finished, or being delivered right now."""
    row = _locked(session, queue_id)
    if row.state != QUEUED:
        raise QueueError(f"{row.queue_id} is {row.state}: there is nothing left to bounce")
    if row.lease_until is not None and row.lease_until > utcnow():
        raise QueueError(f"{row.queue_id} is being delivered right now; try again in a moment")
    audit.record(session, actor=actor, action="queue.bounce", object=row.queue_id, domain=row.domain)
    return row, [r for r in recipients_of(session, key_of(row)) if r.state == PENDING]


def stats(session: Session) -> Stats:
    """How many entries wait, for how many recipients, since when; how many are deferred
    (attempted at least once) and how many are being delivered."""
    now = utcnow()
    waiting, oldest, deferred, in_flight = session.execute(
        select(
            func.count(),
            func.min(col(Outbound.created_at)),
            func.count().filter(col(Outbound.attempts) > 0),
            func.count().filter(col(Outbound.lease_until) > now),
        ).where(col(Outbound.state) == QUEUED)
    ).one()
    recipients = session.execute(
        select(func.count())
        .select_from(OutboundRecipient)
        .join(Outbound, col(Outbound.id) == col(OutboundRecipient.outbound_id))
        .where(col(Outbound.state) == QUEUED, col(OutboundRecipient.state) == PENDING)
    ).scalar_one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)  # an aggregate may lose the column type
    return Stats(
        waiting=int(waiting),
        recipients=int(recipients),
        oldest=(now - oldest) if oldest else None,
        deferred=int(deferred),
        in_flight=int(in_flight),
    )


def due_warnings(session: Session, settings: Settings) -> list[Outbound]:
    """Queued entries, not being delivered, old enough for a ``delayed`` notice that has
    not been sent yet, or past their lifetime."""
    now = utcnow()
    warn_before = now - timedelta(seconds=settings.federation.delay_warning)
    return list(
        session.execute(
            select(Outbound)
            .where(col(Outbound.state) == QUEUED)
            .where(or_(col(Outbound.lease_until).is_(None), col(Outbound.lease_until) < now))
            .where(
                or_(
                    col(Outbound.expires_at) <= now,
                    (col(Outbound.delay_warned).is_(False)) & (col(Outbound.created_at) <= warn_before),
                )
            )
            .order_by(col(Outbound.id))
            .limit(100)
        ).scalars()
    )


def addresses(recipients: Iterable[OutboundRecipient]) -> list[str]:
    return [r.address for r in recipients]
