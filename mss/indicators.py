"""Monthly usage indicators, as MSSanté operators report them to the national agency.

One calendar month (UTC), computed from the stored messages, deliveries, receipts and the
audit trail. Document kinds and CDA type codes are read from each message's metadata,
which is sealed at rest: the report needs the master key, like the service. Nothing of a
message's content, and no address, is in the result: counts only. Each indicator is
defined in the README ("Indicators").
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlmodel import Session, col

from directory.models import DirectoryEntry
from mss import audit
from mss.crypto.master import MasterKey
from mss.errors import ReportError
from mss.models import Account, AuditEvent, Delivery, Message, Receipt
from mss.store import MessageMeta

MAILBOX_TYPES = ("PER", "ORG", "APP")
DOORS = ("smtp", "web", "api", "imap")
# Messages people submitted (signed here, or passed through encrypted by their client); not
# receipts, not the operator's own notices.
SUBMITTED_KINDS = ("signed", "client")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


def month_bounds(month: str) -> tuple[datetime, datetime]:
    """The first instant of ``month`` (``YYYY-MM``) and of the next one, UTC. Raises ReportError."""
    found = _MONTH.match(month.strip())
    if not found:
        raise ReportError(f"not a month: {month!r} (use YYYY-MM, e.g. 2026-11)")
    year, number = int(found.group(1)), int(found.group(2))
    try:
        start = datetime(year, number, 1, tzinfo=UTC)
        end = datetime(year + (number == 12), number % 12 + 1, 1, tzinfo=UTC)
    except (ValueError, OverflowError):
        raise ReportError(f"{month!r} is outside the calendar (years 0001 to 9999)") from None
    return start, end


@dataclass
class Indicators:
    """The indicators of one month (see the README for each definition)."""

    month: str
    active_mailboxes: dict[str, int] = field(default_factory=dict)
    messages_sent: int = 0
    messages_received: int = 0
    messages_with_attachments: int = 0
    attachments: dict[str, int] = field(default_factory=dict)
    cda_by_type_code: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)
    distinct_senders: int = 0
    connections: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, int]]:
        """(indicator, dimension, value) rows, in a stable order."""
        rows: list[tuple[str, str, int]] = []
        rows += [("active_mailboxes", kind, n) for kind, n in self.active_mailboxes.items()]
        rows += [
            ("messages_sent", "", self.messages_sent),
            ("messages_received", "", self.messages_received),
            ("messages_with_attachments", "", self.messages_with_attachments),
        ]
        rows += [("attachments", kind, n) for kind, n in self.attachments.items()]
        rows += [("cda_by_type_code", code, n) for code, n in sorted(self.cda_by_type_code.items())]
        rows += [("receipts", name, n) for name, n in self.receipts.items()]
        rows += [("distinct_senders", "", self.distinct_senders)]
        rows += [("connections", door, n) for door, n in self.connections.items()]
        return rows

    def as_json(self) -> str:
        return json.dumps(
            {
                "month": self.month,
                "active_mailboxes": self.active_mailboxes,
                "messages_sent": self.messages_sent,
                "messages_received": self.messages_received,
                "messages_with_attachments": self.messages_with_attachments,
                "attachments": self.attachments,
                "cda_by_type_code": self.cda_by_type_code,
                "receipts": self.receipts,
                "distinct_senders": self.distinct_senders,
                "connections": self.connections,
            },
            indent=2,
            sort_keys=False,
        )

    def as_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["month", "indicator", "dimension", "value"])
        for indicator, dimension, value in self.rows():
            writer.writerow([self.month, indicator, dimension, value])
        return out.getvalue()

    def render(self, fmt: str) -> str:
        """The report as ``csv`` or ``json``. Raises ReportError for another format."""
        if fmt == "csv":
            return self.as_csv()
        if fmt == "json":
            return self.as_json() + "\n"
        raise ReportError(f"unknown format {fmt!r}: use csv or json")


def _kind_of(session: Session, addresses: set[str]) -> dict[str, str]:
    if not addresses:
        return {}
    rows = session.execute(
        select(col(DirectoryEntry.address), col(DirectoryEntry.kind)).where(col(DirectoryEntry.address).in_(addresses))
    )
    return {address: kind for address, kind in rows}


def monthly(session: Session, master_key: MasterKey, month: str) -> Indicators:
    """The indicators of ``month`` (``YYYY-MM``, UTC). Raises ReportError."""
    start, end = month_bounds(month)
    result = Indicators(month=month.strip())
    in_month = (col(Message.submitted_at) >= start, col(Message.submitted_at) < end)
    sent = session.execute(
        select(col(Message.sender), col(Message.meta_sealed)).where(col(Message.kind).in_(SUBMITTED_KINDS), *in_month)
    ).all()
    result.messages_sent = len(sent)
    senders = {sender for sender, _sealed in sent}
    result.distinct_senders = len(senders)
    attachments: Counter[str] = Counter({"pdf": 0, "cda": 0, "xdm": 0})
    type_codes: Counter[str] = Counter()
    for _sender, sealed in sent:
        documents = MessageMeta.open(master_key, sealed).documents
        if documents:
            result.messages_with_attachments += 1
        for document in documents:
            attachments[document.kind or "other"] += 1
            for cda in document.cda:  # bare CDA, or each CDA of a package
                type_codes[cda.type_code or "unknown"] += 1
    result.attachments = dict(attachments)
    result.cda_by_type_code = dict(type_codes)
    result.messages_received = session.execute(
        select(func.count())
        .select_from(Delivery)
        .join(Message, col(Message.id) == col(Delivery.message_id))
        .where(col(Delivery.status) == "delivered", col(Message.kind).in_(SUBMITTED_KINDS), *in_month)
    ).scalar_one()
    receipts: Counter[str] = Counter()
    for kind, status, count in session.execute(
        select(col(Receipt.kind), col(Receipt.status), func.count())
        .where(col(Receipt.at) >= start, col(Receipt.at) < end)
        .group_by(col(Receipt.kind), col(Receipt.status))
    ):
        receipts[f"{kind}_{status}"] += count
    result.receipts = dict(sorted(receipts.items()))
    logins = session.execute(
        select(col(AuditEvent.action), col(AuditEvent.actor))
        .where(col(AuditEvent.at) >= start, col(AuditEvent.at) < end, col(AuditEvent.outcome) == audit.SUCCESS)
        .where(col(AuditEvent.action).in_([f"{door}.login" for door in DOORS]))
    ).all()
    connections: Counter[str] = Counter({door: 0 for door in DOORS})
    for action, _actor in logins:
        connections[action.removesuffix(".login")] += 1
    result.connections = dict(connections)
    active = senders | {actor for _action, actor in logins}
    existing = (
        set(session.execute(select(col(Account.address)).where(col(Account.address).in_(active))).scalars())
        if active
        else set()
    )
    kinds = Counter(_kind_of(session, existing).values())
    result.active_mailboxes = {kind: kinds.get(kind, 0) for kind in MAILBOX_TYPES}
    return result
