"""What the administrators' activity pages show: counts and metadata over a window of days,
never a subject, a body or a document.

Messages per day by door and by document kind, delivery time percentiles, refusals by
reason, active mailboxes, lockouts, and the directory's data quality. Document kinds are
read from each message's sealed metadata (the master key opens it, as the service does).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from html import escape

from sqlalchemy import func, select
from sqlmodel import Session, col

from directory.models import Certificate, DirectoryEntry
from mss.crypto.master import MasterKey
from mss.db import utcnow
from mss.models import Account, AuditEvent, Delivery, Message
from mss.settings import Settings
from mss.store import MessageMeta

DOORS = ("smtp", "web", "api", "imap")
KINDS = ("pdf", "cda", "xdm", "none")
COLOURS = {
    "smtp": "#1f6f8b",
    "web": "#e07a1f",
    "api": "#6a4c93",
    "imap": "#2a9d8f",
    "pdf": "#c0392b",
    "cda": "#1f6f8b",
    "xdm": "#2a9d8f",
    "none": "#9aa5b1",
}


@dataclass
class DayRow:
    day: date
    by_door: dict[str, int]
    by_kind: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_door.values())


@dataclass
class Activity:
    """The activity of the last ``days`` days."""

    days: list[DayRow]
    delivery_seconds: dict[str, float]  # p50, p90, p99
    refusals: list[tuple[str, int]]
    active_mailboxes: int
    accounts: int
    lockouts: int
    quality: dict[str, int] = field(default_factory=dict)


def _percentile(values: list[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def activity(session: Session, settings: Settings, master_key: MasterKey, *, days: int = 30) -> Activity:
    """The figures of the activity pages over the last ``days`` days (UTC)."""
    today = utcnow().date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, datetime.min.time()).replace(tzinfo=utcnow().tzinfo)
    rows = {first + timedelta(days=i): DayRow(first + timedelta(days=i), Counter(), Counter()) for i in range(days)}
    channels = {
        event.object: json.loads(event.detail).get("channel", "smtp")
        for event in session.execute(
            select(AuditEvent).where(col(AuditEvent.action) == "message.submit", col(AuditEvent.at) >= start)
        ).scalars()
    }
    for queue_id, submitted, sealed in session.execute(
        select(col(Message.queue_id), col(Message.submitted_at), col(Message.meta_sealed)).where(
            col(Message.kind).in_(("signed", "client")), col(Message.submitted_at) >= start
        )
    ):
        row = rows.get(submitted.date())
        if row is None:
            continue
        row.by_door[channels.get(queue_id, "smtp")] += 1
        kinds = {d.kind for d in MessageMeta.open(master_key, sealed).documents} or {"none"}
        for kind in kinds:
            row.by_kind[kind] += 1
    waits = [
        max(0.0, (delivered - submitted).total_seconds())
        for delivered, submitted in session.execute(
            select(col(Delivery.at), col(Message.submitted_at))
            .join(Message, col(Message.id) == col(Delivery.message_id))
            .where(col(Delivery.status) == "delivered", col(Message.submitted_at) >= start)
        )
    ]
    refusals: Counter[str] = Counter()
    for detail in session.execute(
        select(col(AuditEvent.detail)).where(col(AuditEvent.action) == "smtp.refused", col(AuditEvent.at) >= start)
    ).scalars():
        refusals[str(json.loads(detail).get("reason", "-"))] += 1
    lockouts = session.execute(
        select(func.count())
        .select_from(AuditEvent)
        .where(col(AuditEvent.action) == "account.lock", col(AuditEvent.at) >= start)
    ).scalar_one()
    open_accounts = select(Account).where(col(Account.closed_at).is_(None))
    accounts = session.execute(select(func.count()).select_from(open_accounts.subquery())).scalar_one()
    active = session.execute(
        select(func.count()).select_from(open_accounts.where(col(Account.last_login_at) >= start).subquery())
    ).scalar_one()
    return Activity(
        days=list(rows.values()),
        delivery_seconds={f"p{q}": round(_percentile(sorted(waits), q), 3) for q in (50, 90, 99)},
        refusals=refusals.most_common(),
        active_mailboxes=active,
        accounts=accounts,
        lockouts=lockouts,
        quality=directory_quality(session, settings),
    )


def directory_quality(session: Session, settings: Settings) -> dict[str, int]:
    """Counts of what is wrong or missing in the directory's active entries."""
    active = col(DirectoryEntry.status) == "active"
    no_rpps = session.execute(
        select(func.count())
        .select_from(DirectoryEntry)
        .where(active, col(DirectoryEntry.kind) == "PER", col(DirectoryEntry.rpps) == "")
    ).scalar_one()
    shared = session.execute(
        select(func.count()).select_from(
            select(col(DirectoryEntry.rpps))
            .where(active, col(DirectoryEntry.rpps) != "")
            .group_by(col(DirectoryEntry.rpps))
            .having(func.count() > 1)
            .subquery()
        )
    ).scalar_one()
    served = [
        address
        for address in session.execute(select(col(DirectoryEntry.address)).where(active)).scalars()
        if settings.serves(address)
    ]
    now = utcnow()
    certified = set(
        session.execute(
            select(col(Certificate.address)).where(
                col(Certificate.revoked_at).is_(None), col(Certificate.not_after) > now
            )
        ).scalars()
    )
    last_import = session.execute(
        select(col(AuditEvent.detail))
        .where(col(AuditEvent.action) == "directory.import", col(AuditEvent.outcome) == "success")
        .order_by(col(AuditEvent.seq).desc())
        .limit(1)
    ).scalar_one_or_none()
    rejected = int(json.loads(last_import).get("rejected", 0)) if last_import else 0
    return {
        "entries": session.execute(select(func.count()).select_from(DirectoryEntry).where(active)).scalar_one(),
        "without_rpps": no_rpps,
        "rpps_on_several_entries": shared,
        "served_without_certificate": sum(1 for address in served if address not in certified),
        "rejected_at_last_import": rejected,
    }


def csv_rows(figures: Activity) -> list[list[str]]:
    """The per-day table as CSV rows (header first)."""
    header = ["day", *(f"door_{d}" for d in DOORS), *(f"kind_{k}" for k in KINDS), "total"]
    return [header] + [
        [
            row.day.isoformat(),
            *(str(row.by_door.get(d, 0)) for d in DOORS),
            *(str(row.by_kind.get(k, 0)) for k in KINDS),
            str(row.total),
        ]
        for row in figures.days
    ]


def bar_chart(title: str, days: list[DayRow], series: tuple[str, ...], attribute: str) -> str:
    """A stacked bar chart of ``days`` (one bar a day, one colour a series) as inline SVG."""
    width, height, left, bottom, top = 720, 220, 36, 24, 28
    values = [getattr(row, attribute) for row in days]
    peak = max([sum(v.values()) for v in values] + [1])
    step = (width - left - 8) / max(1, len(days))
    bar = max(2.0, step * 0.7)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" class="chart">',
        f'<text x="{left}" y="16" class="chart-title">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 8}" y2="{height - bottom}" stroke="#9aa5b1"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" class="chart-axis">{peak}</text>',
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end" class="chart-axis">0</text>',
    ]
    scale = (height - bottom - top) / peak
    for i, (row, counts) in enumerate(zip(days, values, strict=True)):
        x = left + i * step + (step - bar) / 2
        y = height - bottom
        for name in series:
            n = counts.get(name, 0)
            if not n:
                continue
            h = n * scale
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{COLOURS[name]}">'
                f"<title>{row.day:%Y-%m-%d} {escape(name)}: {n}</title></rect>"
            )
        if i % 5 == 0 or i == len(days) - 1:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - 8}" text-anchor="middle" class="chart-axis">'
                f"{row.day:%d/%m}</text>"
            )
    legend_x = width - 8 - 70 * len(series)
    for j, name in enumerate(series):
        parts.append(
            f'<rect x="{legend_x + j * 70}" y="6" width="10" height="10" fill="{COLOURS[name]}"/>'
            f'<text x="{legend_x + j * 70 + 14}" y="15" class="chart-axis">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
