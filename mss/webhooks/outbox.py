"""The webhook outbox: one event per final status of a recipient of a sent message, written
in the transaction that records the status, then taken and finished by the sender.

A final status is what the status API calls one (``delivered`` in a mailbox here,
``processed`` reported by an MDN, ``failed``); each one a recipient reaches is one event, with
one ``webhook-id`` for all its attempts. The row's unique (queue id, recipient, status) makes
a status recorded twice (a DSN repeating the delivery row, a duplicate report) one event.

Senders take due events with :func:`claim` under a lease, as the outbound queue takes
entries (``mss.leases``): the lease is written and committed before the POST, and
:func:`finish` writes the outcome only while the lease still holds. An event is
delivered at least once (a sender that dies after the POST, before :func:`finish`, leaves
it to be sent again when its lease has passed): receivers drop repeats by ``webhook-id``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from mss import audit, leases
from mss.db import key_of, rowcount, session_scope, utcnow
from mss.models import Delivery, Message, Receipt, WebhookEvent
from mss.settings import Settings
from mss.store import StoredMessage

EVENT_TYPE = "message.final_status"
# The final statuses, as mss.mailbox.reading's journey and the status API name them.
FINAL = ("delivered", "processed", "failed")
PENDING, DELIVERED, ABANDONED = "pending", "delivered", "abandoned"
# A sender holds an event this long past its request timeout before another may take it.
LEASE_MARGIN = 60.0

_ENHANCED = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


def _timestamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _payload(
    message: Message | StoredMessage, recipient: str, status: str, code: str | None, at: datetime, now: datetime
) -> str:
    # Metadata only: never a subject, a document name or anything of the content.
    return json.dumps(
        {
            "type": EVENT_TYPE,
            "timestamp": _timestamp(now),
            "data": {
                "queue_id": message.queue_id,
                "message_id": message.message_id,
                "sender": message.sender,
                "recipient": recipient,
                "status": status,
                "enhanced_status_code": code,
                "at": _timestamp(at),
            },
        },
        separators=(",", ":"),
    )


def _code(status: str, reason: str, given: str | None) -> str | None:
    if status == "delivered":
        return "2.0.0"
    if status != "failed":
        return None
    if given:
        return given
    found = _ENHANCED.search(reason)
    return found.group(1) if found else None


def record_final(
    session: Session, settings: Settings, message: Message | StoredMessage, *, codes: Mapping[str, str] | None = None
) -> int:
    """Add an event for each final status of ``message``'s recipients that has none yet, in
    the caller's transaction (call it after writing the statuses). ``codes`` gives the
    enhanced status code of a failure when its reason does not hold it. Nothing when no
    webhook is set or the sender is not one of ours. Returns how many events were added."""
    if not settings.webhook.enabled or not settings.serves(message.sender):
        return 0
    reached: dict[tuple[str, str], tuple[datetime, str]] = {}
    for delivery in session.execute(select(Delivery).where(col(Delivery.message_id) == message.id)).scalars():
        if delivery.status in FINAL:
            reached.setdefault((delivery.recipient, delivery.status), (delivery.at, delivery.reason))
    for receipt in session.execute(
        select(Receipt)
        .where(col(Receipt.message_id) == message.id, col(Receipt.status).in_(FINAL))
        .order_by(col(Receipt.id))
    ).scalars():
        reached.setdefault((receipt.recipient, receipt.status), (receipt.at, receipt.reason))
    if not reached:
        return 0
    known = {
        (recipient, status)
        for recipient, status in session.execute(
            select(col(WebhookEvent.recipient), col(WebhookEvent.status)).where(
                col(WebhookEvent.queue_id) == message.queue_id
            )
        )
    }
    now = utcnow()
    given = codes or {}
    rows = [
        {
            "event_id": f"evt_{secrets.token_hex(16)}",
            "queue_id": message.queue_id,
            "recipient": recipient,
            "status": status,
            "payload": _payload(message, recipient, status, _code(status, reason, given.get(recipient)), at, now),
            "state": PENDING,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
            "lease_owner": "",
            "lease_until": None,
            "last_error": "",
            "updated_at": now,
        }
        for (recipient, status), (at, reason) in reached.items()
        if (recipient, status) not in known
    ]
    if not rows:
        return 0
    # A concurrent transaction may record the same status (PostgreSQL): the unique key
    # keeps one event, without failing the transaction that records the status.
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    session.execute(insert(WebhookEvent).values(rows).on_conflict_do_nothing())
    return len(rows)


@dataclass(frozen=True)
class Claimed:
    """An event a sender holds the lease of."""

    id: int
    event_id: str
    queue_id: str
    recipient: str
    status: str
    payload: bytes
    attempts: int
    lease_owner: str


@dataclass(frozen=True)
class Outcome:
    """What one POST came to."""

    accepted: bool
    retryable: bool = True
    error: str = ""
    retry_after: float | None = None


def claim(engine: Engine, settings: Settings, worker: str, *, limit: int) -> list[Claimed]:
    """Take up to ``limit`` due events for ``worker``: a lease of the request timeout plus
    a minute, committed before any request is made."""
    now = utcnow()
    lease = timedelta(seconds=settings.webhook.timeout + LEASE_MARGIN)
    with session_scope(engine) as session:
        rows = leases.take_due(session, WebhookEvent, waiting=PENDING, worker=worker, lease=lease, now=now, limit=limit)
        return [
            Claimed(
                id=key_of(row),
                event_id=row.event_id,
                queue_id=row.queue_id,
                recipient=row.recipient,
                status=row.status,
                payload=row.payload.encode("utf-8"),
                attempts=row.attempts,
                lease_owner=worker,
            )
            for row in rows
        ]


def backoff(settings: Settings, attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: doubling from
    MSS_WEBHOOK_RETRY_MIN up to MSS_WEBHOOK_RETRY_MAX, with up to 10 % jitter."""
    return leases.backoff(attempts, first=settings.webhook.retry_min, longest=settings.webhook.retry_max)


def finish(engine: Engine, settings: Settings, claimed: Claimed, outcome: Outcome) -> str:
    """Write an attempt's outcome if ``claimed``'s lease still holds; return the event's
    state: ``delivered``, ``pending`` (another attempt is planned), ``abandoned`` (a
    refusal that retrying cannot change, or no attempt left within MSS_WEBHOOK_LIFETIME:
    audited as ``webhook.abandon``), or ``lost`` (another sender holds it now)."""
    with session_scope(engine) as session:
        row = leases.held(session, WebhookEvent, claimed.id, owner=claimed.lease_owner, waiting=PENDING)
        if row is None:
            return "lost"
        now = utcnow()
        row.lease_owner, row.lease_until, row.updated_at = "", None, now
        if outcome.accepted:
            row.state = DELIVERED
        else:
            row.last_error = outcome.error[:200]
            wait = backoff(settings, row.attempts)
            if outcome.retry_after is not None:
                wait = timedelta(seconds=min(settings.webhook.retry_max, max(0.0, outcome.retry_after)))
            ends = row.created_at + timedelta(seconds=settings.webhook.lifetime)
            if outcome.retryable and now + wait < ends:
                row.next_attempt_at = now + wait
            else:
                row.state = ABANDONED
                audit.record(
                    session,
                    actor="system",
                    action="webhook.abandon",
                    object=row.queue_id,
                    outcome=audit.FAILURE,
                    event=row.event_id,
                    recipient=row.recipient,
                    status=row.status,
                    attempts=row.attempts,
                    reason=row.last_error,
                )
        session.add(row)
        return row.state


def purge(engine: Engine, *, before: datetime) -> int:
    """Delete events delivered or abandoned before ``before``; return how many."""
    with session_scope(engine) as session:
        return rowcount(
            session.execute(
                delete(WebhookEvent).where(
                    col(WebhookEvent.state).in_((DELIVERED, ABANDONED)), col(WebhookEvent.updated_at) < before
                )
            )
        )
