"""Work queues in a table, taken by workers under a lease: the outbound queue
(``mss.outbound.queue``) and the webhook outbox (``mss.webhooks.outbox``).

A row waits in one state until its ``next_attempt_at``. A worker takes due rows by writing
a lease (``lease_owner``, ``lease_until``) and counting the attempt, and commits that
before any network I/O; on PostgreSQL the candidates are read ``FOR UPDATE SKIP LOCKED``
(concurrent workers never wait for each other nor take the same row), on SQLite the claim
runs under the database's single write lock. A row whose worker died is taken again once
its lease has passed. A worker writes an attempt's outcome only while it still holds the
lease (``held``). Failed attempts wait longer each time (``backoff``).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy import or_, select
from sqlmodel import Session, col


class Leased(Protocol):
    """The columns a table needs to be a work queue."""

    id: int | None
    state: str
    attempts: int
    next_attempt_at: datetime
    lease_owner: str
    lease_until: datetime | None
    updated_at: datetime


RowT = TypeVar("RowT", bound=Leased)


def take_due(
    session: Session, model: type[RowT], *, waiting: str, worker: str, lease: timedelta, now: datetime, limit: int
) -> list[RowT]:
    """Up to ``limit`` rows of ``model`` in state ``waiting`` that are due at ``now`` and not
    leased (or whose lease has passed), the earliest due first; each is leased to ``worker``
    for ``lease`` and its attempt counted, in the caller's transaction."""
    query = (
        select(model)
        .where(col(model.state) == waiting, col(model.next_attempt_at) <= now)
        .where(or_(col(model.lease_until).is_(None), col(model.lease_until) < now))
        .order_by(col(model.next_attempt_at), col(model.id))
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.execute(query).scalars())
    for row in rows:
        row.lease_owner, row.lease_until = worker, now + lease
        row.attempts += 1
        row.updated_at = now
        session.add(row)
    return rows


def held(session: Session, model: type[RowT], row_id: int, *, owner: str, waiting: str) -> RowT | None:
    """The row ``row_id`` of ``model``, locked, if ``owner`` still holds its lease and it is
    still in state ``waiting``; else None (another worker took it over after the lease
    passed: its outcome wins)."""
    query = select(model).where(col(model.id) == row_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    row = session.execute(query).scalars().first()
    if row is None or row.lease_owner != owner or row.state != waiting:
        return None
    return row


def backoff(attempts: int, *, first: float, longest: float) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: ``first`` seconds, doubling at each
    failure up to ``longest``, with up to 10 % jitter so that rows deferred together spread out."""
    base = min(longest, first * (2 ** max(0, attempts - 1)))
    jitter = base * 0.1 * secrets.randbelow(1000) / 1000
    return timedelta(seconds=min(longest, base + jitter))
