"""The append-only audit trail: who did what, when, with what outcome, chained by hashes.

Every event holds the SHA-256 of the previous one, so an edited, deleted or reordered event
breaks the chain at that point. Events never hold message content or secrets: callers pass
identifiers (addresses, queue ids, certificate serials), never bodies, passwords or keys.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

from sqlalchemy import select, text
from sqlmodel import Session

from mss.db import utcnow
from mss.models import AuditEvent

GENESIS = "0" * 64
SUCCESS = "success"
FAILURE = "failure"
DENIED = "denied"


def event_hash(
    *,
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    object: str,
    outcome: str,
    request_id: str,
    detail: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) over a canonical JSON of the event's fields and the previous hash."""
    canonical = json.dumps(
        [seq, at.isoformat(timespec="microseconds"), actor, action, object, outcome, request_id, detail, prev_hash],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _lock_chain(session: Session) -> None:
    # Appends must be serialised so that two writers never chain to the same head.
    # PostgreSQL: a transaction-scoped advisory lock. SQLite: every transaction already
    # starts with BEGIN IMMEDIATE (mss.db), which holds the single write lock.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(74581)"))


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object: str = "",
    outcome: str = SUCCESS,
    request_id: str = "",
    **detail: object,
) -> AuditEvent:
    """Append one event in the caller's transaction; it commits or rolls back with it.

    ``detail`` holds small identifiers (counts, serials, reasons), never content or secrets.
    """
    _lock_chain(session)
    head = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (_first_seq(session), _start_hash(session))
    at = utcnow()
    detail_json = json.dumps(detail, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    event = AuditEvent(
        seq=seq,
        at=at,
        actor=actor,
        action=action,
        object=object,
        outcome=outcome,
        request_id=request_id,
        detail=detail_json,
        prev_hash=prev_hash,
        hash=event_hash(
            seq=seq,
            at=at,
            actor=actor,
            action=action,
            object=object,
            outcome=outcome,
            request_id=request_id,
            detail=detail_json,
            prev_hash=prev_hash,
        ),
    )
    session.add(event)
    session.flush()
    return event


def _latest_checkpoint(session: Session):  # type: ignore[no-untyped-def]
    from mss.models import AuditCheckpoint

    return session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.through_seq.desc()).limit(1)).scalars().first()


def _first_seq(session: Session) -> int:
    checkpoint = _latest_checkpoint(session)
    return checkpoint.through_seq + 1 if checkpoint else 1


def _start_hash(session: Session) -> str:
    checkpoint = _latest_checkpoint(session)
    return checkpoint.head_hash if checkpoint else GENESIS
