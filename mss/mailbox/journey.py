"""The Sent view: where a sent message stands for each recipient, from its delivery rows
and the receipts that came back (delivered or relayed, processed, displayed, failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlmodel import col

from mss.db import session_scope
from mss.mailbox.items import SENT, Correspondent, entries_of, items_of
from mss.models import Delivery, Receipt
from mss.runtime import Runtime
from mss.store import MessageNotFound

_ORDER = {"queued": 0, "delayed": 0.5, "relayed": 1, "delivered": 1, "processed": 2, "displayed": 3, "failed": 4}


# The step that ends a recipient's delivery, most decisive first (see mss.receipts.issuer).
_FINAL = ("failed", "processed", "delivered")


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


def journey(rt: Runtime, owner: str, queue_id: str) -> tuple[RecipientJourney, ...]:
    """Per recipient of a message ``owner`` sent: delivered, processed, displayed or failed,
    with times and reasons. Raises MessageNotFound when ``owner`` did not send it."""
    with session_scope(rt.engine) as session:
        rows = [(i, m) for i, m in items_of(session, owner, queue_id) if i.folder == SENT]
        if not rows:
            raise MessageNotFound(f"no sent message {queue_id.strip()[:40]} in this mailbox")
        message = rows[0][1]
        deliveries = (
            session.execute(select(Delivery).where(col(Delivery.message_id) == message.id).order_by(col(Delivery.id)))
            .scalars()
            .all()
        )
        receipts = (
            session.execute(
                select(Receipt).where(col(Receipt.message_id) == message.id).order_by(col(Receipt.at), col(Receipt.id))
            )
            .scalars()
            .all()
        )
        people = entries_of(session, {d.recipient for d in deliveries})
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
