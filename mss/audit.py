"""The append-only audit trail: who did what, when, with what outcome, chained by hashes.

This module owns the ``audit_event`` chain, its signed purge checkpoints
(``audit_checkpoint``), the audit signing key and the head anchor (both ``sealed_secret``
rows), and the four things done with them: append (``record``), check (``verify``), hand
over (``export``, ``events_for``) and forget past retention (``purge``).

Every event holds the SHA-256 of the previous one, so an edited, deleted, inserted or
reordered event breaks the chain at that point. Events never hold message content or
secrets: callers pass identifiers (addresses, queue ids, certificate serials), never bodies,
passwords or keys.

What the chain alone cannot show, and what covers it:

* Deleting the newest events leaves a shorter chain that is still valid. ``record`` therefore
  keeps a head anchor, the last event's seq and hash sealed with the master key in the
  ``sealed_secret`` row ``audit-head``, updated in the same transaction as the event. Someone
  with write access to the database but not the master key can neither move the anchor back
  after deleting events nor forward after appending forged ones (even ones with correct
  hashes): ``verify`` sees the chain end before or after the anchor.
* ``record`` finds the master key on the engine (``bind_master_key``, done once when a process
  opens its database), so its callers need not carry the key. An event recorded through an
  engine without the key leaves the anchor behind and ``verify`` reports it, exactly as it
  reports a forged append: the two cannot be told apart, on purpose.
* Purged events are replaced by an ``audit_checkpoint`` (the last purged seq and hash) signed
  with an Ed25519 key that is itself sealed with the master key (``audit-signing-key``).

Limits, stated plainly: the anchor is authenticated but not fresh. Whoever saved an earlier
sealed anchor (a backup, a copy of the row) can delete the events recorded since, put that
anchor back and go unnoticed; so can whoever restores a whole older backup, which is by
nature undetectable from inside the database. Deleting everything (events, checkpoints and
the anchor) looks like a trail that never started. Whoever holds the master key can rewrite
anything. Only a copy kept elsewhere (a regular ``export`` or the head hash written to another
system) bounds those cases.
"""

from __future__ import annotations

import builtins
import csv
import hashlib
import io
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import nacl.bindings
import nacl.exceptions
import nacl.signing
from sqlalchemy import bindparam, delete, func, insert, select, text, update
from sqlalchemy.engine import Engine, Row
from sqlmodel import Session, col

from mss.crypto.master import MasterKey
from mss.db import rowcount, table_of, utcnow
from mss.errors import AuditError, CryptoError
from mss.models import AuditCheckpoint, AuditEvent, SealedSecret

GENESIS = "0" * 64
SUCCESS = "success"
FAILURE = "failure"
DENIED = "denied"

HEAD_ANCHOR = "audit-head"
SIGNING_KEY = "audit-signing-key"
EXPORT_FIELDS = ("seq", "at", "actor", "action", "object", "outcome", "request_id", "detail", "prev_hash", "hash")

_LOCK_ID = 74581  # the PostgreSQL advisory lock that serialises appends to the chain
_ENGINE_KEY_OPTION = "mss_audit_master_key"
_CHECKPOINT_CONTEXT = b"mss audit checkpoint v1\n"
_BATCH = 1000

log = logging.getLogger(__name__)


# -- hashing -----------------------------------------------------------------------------


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
    """SHA-256 (hex) over a canonical JSON of the event's fields and the previous hash.

    The canonical form, for anyone re-verifying an export: the UTF-8 JSON array
    ``[seq, at, actor, action, object, outcome, request_id, detail, prev_hash]`` with ``at``
    in ISO 8601 with microseconds and offset, no spaces after separators, non-ASCII kept.
    """
    return _hash_fields((seq, _iso(at), actor, action, object, outcome, request_id, detail, prev_hash))


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def _hash_fields(canonical_fields: tuple[object, ...]) -> str:
    """SHA-256 (hex) of the canonical JSON array of an event's fields, in ``event_hash``'s order."""
    canonical = json.dumps(canonical_fields, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _row_hash(row: Row[Any], seq: int | None = None) -> str:
    """The hash a stored row should carry, optionally as if it sat at another seq."""
    return _hash_fields(
        (
            row.seq if seq is None else seq,
            _iso(row.at),
            row.actor,
            row.action,
            row.object,
            row.outcome,
            row.request_id,
            row.detail,
            row.prev_hash,
        )
    )


# -- appending ---------------------------------------------------------------------------


def bind_master_key(engine: Engine, master_key: MasterKey) -> None:
    """Let ``record`` keep the head anchor for every session of ``engine``.

    Call once where the process opens its database, next to ``MasterKey.load``. The key
    travels as an engine execution option; it is never written anywhere.
    """
    engine.update_execution_options(**{_ENGINE_KEY_OPTION: master_key})


def _lock_chain(session: Session, *, shared: bool = False) -> None:
    # Appends must be serialised so that two writers never chain to the same head.
    # PostgreSQL: a transaction-scoped advisory lock (readers that need a stable head take
    # it shared). SQLite: every transaction already starts with BEGIN IMMEDIATE (mss.db),
    # which holds the single write lock.
    if session.get_bind().dialect.name == "postgresql":
        function = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        session.execute(text(f"SELECT {function}({_LOCK_ID})"))


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
    The head anchor moves in the same transaction when the engine has the master key
    (``bind_master_key``); without it the event is still chained but ``verify`` will report
    it as not covered by the anchor.
    """
    master_key = session.connection().get_execution_options().get(_ENGINE_KEY_OPTION)
    return _append(
        session,
        master_key,
        actor=actor,
        action=action,
        object=object,
        outcome=outcome,
        request_id=request_id,
        detail=detail,
    )


@dataclass(frozen=True)
class EventSpec:
    """One event to append with ``record_many``."""

    actor: str
    action: str
    object: str = ""
    outcome: str = SUCCESS
    request_id: str = ""
    detail: dict[str, builtins.object] = field(default_factory=dict)  # the field above is named object


def record_many(session: Session, events: Sequence[EventSpec]) -> None:
    """Append several events in order, in the caller's transaction, with one head lookup
    and one anchor update: the same chain as calling ``record`` for each, cheaper."""
    master_key = session.connection().get_execution_options().get(_ENGINE_KEY_OPTION)
    _append_many(session, master_key, list(events))


def _append(
    session: Session,
    master_key: MasterKey | None,
    *,
    actor: str,
    action: str,
    object: str,
    outcome: str,
    request_id: str,
    detail: dict[str, object],
) -> AuditEvent:
    spec = EventSpec(actor=actor, action=action, object=object, outcome=outcome, request_id=request_id, detail=detail)
    return AuditEvent(**_append_many(session, master_key, [spec])[0])


# Built once: appends run for every message, and building a statement costs more than
# running it.
_EVENTS = table_of(AuditEvent)
_HEAD = select(_EVENTS.c.seq, _EVENTS.c.hash).order_by(_EVENTS.c.seq.desc()).limit(1)
_INSERT_EVENTS = insert(_EVENTS)


def _append_many(session: Session, master_key: MasterKey | None, specs: list[EventSpec]) -> list[dict[str, Any]]:
    """The rows of ``specs`` chained after the head and inserted, the anchor moved to the last."""
    if not specs:
        return []
    _lock_chain(session)
    head = session.connection().execute(_HEAD).first()
    if head is not None:
        seq, prev_hash = head.seq + 1, head.hash
    else:
        checkpoint = _latest_checkpoint(session)
        seq, prev_hash = (checkpoint.through_seq + 1, checkpoint.head_hash) if checkpoint else (1, GENESIS)
    rows: list[dict[str, Any]] = []
    for spec in specs:
        fields = {
            "seq": seq,
            "at": utcnow(),
            "actor": spec.actor,
            "action": spec.action,
            "object": spec.object,
            "outcome": spec.outcome,
            "request_id": spec.request_id,
            "detail": json.dumps(spec.detail, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str),
            "prev_hash": prev_hash,
        }
        digest = event_hash(**fields)
        rows.append({**fields, "hash": digest})
        seq, prev_hash = seq + 1, digest
    # One multi-row INSERT (Core: the ORM's unit of work would cost more than the hashing).
    session.connection().execute(_INSERT_EVENTS, rows)
    # Rows, not AuditEvent objects: building a model object costs more than hashing the event.
    last = rows[-1]
    if master_key is None:
        log.warning(
            "audit event %d (%s) recorded without the master key: the head anchor is behind",
            last["seq"],
            last["action"],
        )
    else:
        _write_anchor(session, master_key, last["seq"], last["hash"])
    return rows


# -- the head anchor and the signing key (sealed_secret rows) ------------------------------


def _read_secret(session: Session, name: str) -> bytes | None:
    # A column select, not session.get(): the identity map may hold a row another process
    # has since replaced (sessions here do not expire objects on commit).
    return session.execute(select(col(SealedSecret.value)).where(col(SealedSecret.name) == name)).scalar_one_or_none()


def _write_secret(session: Session, name: str, value: bytes) -> None:
    # Only ever called under the chain lock, so update-then-insert cannot race. Core
    # statements on the table: the ORM's bulk-update bookkeeping would double the cost of
    # every append for nothing (no SealedSecret object is loaded here).
    table = table_of(SealedSecret)
    connection = session.connection()
    result = connection.execute(_UPDATE_SECRET, {"secret_name": name, "value": value})
    if rowcount(result) == 0:
        connection.execute(insert(table).values(name=name, value=value, created_at=utcnow()))


_UPDATE_SECRET = (
    update(table_of(SealedSecret))
    .where(table_of(SealedSecret).c.name == bindparam("secret_name"))
    .values(value=bindparam("value"))
)


def _write_anchor(session: Session, master_key: MasterKey, seq: int, head_hash: str) -> None:
    # The row name is inside the sealed text so that another sealed secret cannot stand in.
    payload = json.dumps({"name": HEAD_ANCHOR, "seq": seq, "hash": head_hash}, separators=(",", ":"))
    _write_secret(session, HEAD_ANCHOR, master_key.seal(payload.encode("ascii")))


@dataclass(frozen=True)
class _Anchor:
    seq: int
    hash: str


def _read_anchor(session: Session, master_key: MasterKey) -> _Anchor | None:
    """The head anchor; None when there is none; AuditError when it does not open."""
    sealed = _read_secret(session, HEAD_ANCHOR)
    if sealed is None:
        return None
    try:
        payload = json.loads(master_key.open(sealed))
        if payload.get("name") != HEAD_ANCHOR:
            raise ValueError("sealed secret of another purpose")
        return _Anchor(seq=int(payload["seq"]), hash=str(payload["hash"]))
    except (CryptoError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditError("the head anchor was altered (it does not open with the master key)") from exc


def _signing_key(session: Session, master_key: MasterKey, *, create: bool) -> nacl.signing.SigningKey | None:
    """The Ed25519 checkpoint key, created on first use when ``create``; AuditError if altered."""
    sealed = _read_secret(session, SIGNING_KEY)
    if sealed is None:
        if not create:
            return None
        key = nacl.signing.SigningKey.generate()
        _write_secret(session, SIGNING_KEY, master_key.seal(bytes(key)))
        return key
    try:
        seed = master_key.open(sealed)
    except CryptoError as exc:
        raise AuditError("the audit signing key was altered (it does not open with the master key)") from exc
    if len(seed) != nacl.bindings.crypto_sign_SEEDBYTES:
        raise AuditError("the audit signing key is malformed")
    return nacl.signing.SigningKey(seed)


def _checkpoint_message(through_seq: int, head_hash: str, at: datetime) -> bytes:
    # A context prefix keeps these signatures from being valid for anything else.
    return _CHECKPOINT_CONTEXT + json.dumps([through_seq, head_hash, _iso(at)], separators=(",", ":")).encode("ascii")


def _latest_checkpoint(session: Session) -> Row[Any] | None:
    return session.execute(
        select(col(AuditCheckpoint.through_seq), col(AuditCheckpoint.head_hash))
        .order_by(col(AuditCheckpoint.through_seq).desc())
        .limit(1)
    ).first()


# -- verifying ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainReport:
    """The outcome of ``verify``: ``ok``, how many events were checked, where and why it broke."""

    ok: bool
    checked: int
    first_broken_seq: int | None
    reason: str
    start_seq: int
    """The first seq the chain must hold: 1, or the last checkpoint's seq + 1."""
    head_seq: int | None
    """The last event verified (None when the chain is empty or broke at its first event)."""
    checkpoint_seq: int | None
    """The seq the chain starts after, when it starts at a checkpoint."""

    def __str__(self) -> str:
        return self.reason


def verify(session: Session, master_key: MasterKey) -> ChainReport:
    """Check the checkpoints' signatures, every event's hash and link, and the head anchor.

    Starts at the latest checkpoint (after checking its Ed25519 signature) or at genesis and
    stops at the first problem, which the report names with its seq and a reason. Returns a
    ``ChainReport``; a broken chain is a report, not an exception. Raises nothing for bad data.
    """
    _stable_view(session)
    return _verify(session, master_key)


def _stable_view(session: Session) -> None:
    # The anchor and the events must be read as of one moment, or a concurrent append
    # would look like a forged or a deleted event. SQLite transactions here hold the write
    # lock (BEGIN IMMEDIATE). PostgreSQL: one snapshot (REPEATABLE READ) when the
    # transaction starts here; inside a caller's transaction, hold off appends instead.
    if session.get_bind().dialect.name != "postgresql":
        return
    if session.in_transaction():
        _lock_chain(session, shared=True)
    else:
        session.connection(execution_options={"isolation_level": "REPEATABLE READ"})


class _Broken(Exception):
    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq = seq
        self.reason = reason


def _verify(session: Session, master_key: MasterKey) -> ChainReport:
    start_seq, start_hash, checkpoint_seq = 1, GENESIS, None
    checked = 0
    head_seq: int | None = None
    try:
        checkpoint = _check_checkpoints(session, master_key)
        if checkpoint is not None:
            checkpoint_seq = checkpoint.through_seq
            start_seq, start_hash = checkpoint.through_seq + 1, checkpoint.head_hash
        anchor = _read_anchor(session, master_key)
        expected_seq, expected_prev = start_seq, start_hash
        anchored_hash: str | None = None
        rows = session.execute(
            select(*table_of(AuditEvent).columns).order_by(col(AuditEvent.seq)).execution_options(yield_per=_BATCH)
        )
        try:
            for row in rows:
                if row.seq == expected_seq and row.prev_hash == expected_prev and _row_hash(row) == row.hash:
                    checked += 1
                    head_seq, expected_seq, expected_prev = row.seq, row.seq + 1, row.hash
                    if anchor is not None and row.seq == anchor.seq:
                        anchored_hash = row.hash
                    continue
                broken = row
                break
            else:
                broken = None
        finally:
            rows.close()
        if broken is not None:
            raise _diagnose(
                session, broken, expected_seq, expected_prev, first=checked == 0, checkpoint_seq=checkpoint_seq
            )
        _check_anchor(anchor, head_seq, anchored_hash, start_seq, checkpoint_seq)
    except _Broken as exc:
        if exc.seq is not None and head_seq is not None and exc.seq <= head_seq:
            # The break lies among events that linked well (an insertion, a rewritten
            # head): only the events before it count as checked.
            checked -= head_seq - exc.seq + 1
            head_seq = exc.seq - 1 if exc.seq > start_seq else None
        return ChainReport(False, checked, exc.seq, exc.reason, start_seq, head_seq, checkpoint_seq)
    except AuditError as exc:
        return ChainReport(False, checked, None, exc.message, start_seq, head_seq, checkpoint_seq)
    if head_seq is None:
        reason = "the audit trail is empty"
    else:
        reason = f"chain intact: {checked} events, seq {start_seq} to {head_seq}"
        if checkpoint_seq is not None:
            reason += f", after the signed checkpoint at seq {checkpoint_seq}"
    return ChainReport(True, checked, None, reason, start_seq, head_seq, checkpoint_seq)


def _check_checkpoints(session: Session, master_key: MasterKey) -> Row[Any] | None:
    """Every checkpoint's signature; returns the latest one (the chain's start) or None."""
    checkpoints = session.execute(
        select(
            col(AuditCheckpoint.through_seq),
            col(AuditCheckpoint.head_hash),
            col(AuditCheckpoint.at),
            col(AuditCheckpoint.signature),
        ).order_by(col(AuditCheckpoint.through_seq))
    ).all()
    if not checkpoints:
        return None
    key = _signing_key(session, master_key, create=False)
    if key is None:
        raise _Broken(
            checkpoints[-1].through_seq, "the audit signing key is missing, so the checkpoints cannot be checked"
        )
    for checkpoint in checkpoints:
        try:
            key.verify_key.verify(
                _checkpoint_message(checkpoint.through_seq, checkpoint.head_hash, checkpoint.at), checkpoint.signature
            )
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError) as exc:
            raise _Broken(
                checkpoint.through_seq,
                f"the checkpoint at seq {checkpoint.through_seq} has a bad signature (forged or altered)",
            ) from exc
    return checkpoints[-1]


def _successor_of(session: Session, prev_hash: str, seq: int, exclude_seq: int) -> int | None:
    """The seq of the event that truly follows ``prev_hash`` at ``seq``, when it sits elsewhere."""
    # Only runs once a break is found: prev_hash has no index and need not have one.
    candidates = session.execute(
        select(*table_of(AuditEvent).columns).where(
            col(AuditEvent.prev_hash) == prev_hash, col(AuditEvent.seq) != exclude_seq
        )
    ).all()
    for candidate in candidates:
        if _row_hash(candidate, seq) == candidate.hash:
            return int(candidate.seq)
    return None


def _seq_of_hash(session: Session, hash_: str) -> int | None:
    return session.execute(select(col(AuditEvent.seq)).where(col(AuditEvent.hash) == hash_)).scalar_one_or_none()


def _missing(first: int, last: int) -> str:
    return f"event {first} is missing" if first == last else f"events {first} to {last} are missing"


def _diagnose(
    session: Session, row: Row[Any], expected_seq: int, expected_prev: str, *, first: bool, checkpoint_seq: int | None
) -> _Broken:
    """Name what happened at the first event that does not follow the verified chain."""
    seq = row.seq
    if seq < expected_seq:
        return _Broken(seq, f"event {seq} precedes the last checkpoint (at seq {checkpoint_seq}): it should not exist")
    self_consistent = _row_hash(row) == row.hash
    if seq > expected_seq:
        moved_to = _successor_of(session, expected_prev, expected_seq, exclude_seq=-1)
        if moved_to is not None:
            return _Broken(
                expected_seq, f"event {expected_seq} was edited (hash mismatch: its seq was changed to {moved_to})"
            )
        if first and checkpoint_seq is not None:
            return _Broken(
                expected_seq,
                f"the chain does not start at the last checkpoint (it ends at seq {checkpoint_seq}, "
                f"the first event is seq {seq})",
            )
        if first:
            return _Broken(
                expected_seq,
                f"the chain does not start at genesis: {_missing(expected_seq, seq - 1)} (was a checkpoint deleted?)",
            )
        return _Broken(expected_seq, f"{_missing(expected_seq, seq - 1)} (gap between {expected_seq - 1} and {seq})")
    # The event sits at the expected seq but does not verify there.
    if _successor_of(session, expected_prev, expected_seq, exclude_seq=seq) is not None:
        return _Broken(seq, f"events out of order at seq {seq}")
    predecessor = _seq_of_hash(session, row.prev_hash)
    if predecessor is not None and predecessor < seq - 1 and _row_hash(row, predecessor + 1) == row.hash:
        # This event was hashed at predecessor + 1 and pushed up to make room for others.
        first_forged = predecessor + 1
        forged = f"event {first_forged} was" if first_forged == seq - 1 else f"events {first_forged} to {seq - 1} were"
        return _Broken(
            first_forged,
            f"{forged} inserted (forged: event {seq} was hashed as seq {first_forged}, after event {predecessor})",
        )
    if not self_consistent:
        return _Broken(seq, f"event {seq} was edited (hash mismatch)")
    if first:
        start = f"the last checkpoint (at seq {checkpoint_seq})" if checkpoint_seq is not None else "genesis"
        return _Broken(seq, f"the chain does not start at {start}: event {seq} links to another head")
    if predecessor is None:
        return _Broken(seq - 1, f"event {seq - 1} was replaced (event {seq} links to a different event {seq - 1})")
    return _Broken(seq, f"event {seq} was re-linked (it follows event {predecessor}, not {seq - 1})")


def _check_anchor(
    anchor: _Anchor | None, head_seq: int | None, anchored_hash: str | None, start_seq: int, checkpoint_seq: int | None
) -> None:
    last = head_seq if head_seq is not None else start_seq - 1
    if anchor is None:
        # A purge always records an event after its checkpoint, so a checkpoint alone
        # means the events after it were deleted too.
        if head_seq is not None or checkpoint_seq is not None:
            raise _Broken(
                None,
                "the head anchor is missing: the newest events cannot be vouched for "
                "(deleted anchor, or events recorded without the master key)",
            )
        return
    if anchor.seq > last:
        raise _Broken(
            last + 1,
            f"{_missing(last + 1, anchor.seq)} (the chain ends at seq {last} but its head anchor is at "
            f"seq {anchor.seq}: the newest events were deleted)",
        )
    if anchor.seq >= start_seq and anchored_hash != anchor.hash:
        raise _Broken(
            anchor.seq, f"event {anchor.seq} does not match the head anchor (edited, or the chain was rewritten)"
        )
    if anchor.seq < last:
        raise _Broken(
            anchor.seq + 1,
            f"event {anchor.seq + 1} is past the head anchor (seq {anchor.seq}): "
            "forged, or recorded without the master key",
        )


# -- exporting and tracing ---------------------------------------------------------------


def export(session: Session, *, since: datetime | None = None, fmt: Literal["jsonl", "csv"] = "jsonl") -> Iterator[str]:
    """Stream events ordered by seq as lines (each ending in a newline), every field included.

    ``jsonl``: one JSON object per line. ``csv``: a header line, then one row per event.
    ``at`` is the ISO 8601 text that was hashed and ``detail`` the exact JSON text, so the
    hashes can be recomputed elsewhere (see ``event_hash``). Raises AuditError on a bad
    format or a naive ``since``.
    """
    if fmt not in ("jsonl", "csv"):
        raise AuditError(f"unknown export format {fmt!r}: use jsonl or csv")
    if since is not None and since.tzinfo is None:
        raise AuditError("since must be timezone-aware")
    return _export(session, since, fmt)


def _export(session: Session, since: datetime | None, fmt: str) -> Iterator[str]:
    query = select(*table_of(AuditEvent).columns).order_by(col(AuditEvent.seq))
    if since is not None:
        query = query.where(col(AuditEvent.at) >= since)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def csv_line(values: tuple[object, ...]) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    if fmt == "csv":
        yield csv_line(EXPORT_FIELDS)
    rows = session.execute(query.execution_options(yield_per=_BATCH))
    try:
        for row in rows:
            values = (row.seq, _iso(row.at), row.actor, row.action, row.object, row.outcome, row.request_id,
                      row.detail, row.prev_hash, row.hash)  # fmt: skip
            if fmt == "csv":
                yield csv_line(values)
            else:
                yield (
                    json.dumps(dict(zip(EXPORT_FIELDS, values, strict=True)), ensure_ascii=False, separators=(",", ":"))
                    + "\n"
                )
    finally:
        rows.close()


def events_for(
    session: Session,
    *,
    object_prefix: str | None = None,
    action_prefix: str | None = None,
    since: datetime | None = None,
) -> list[AuditEvent]:
    """Events whose object and action start with the prefixes, from ``since``, ordered by seq.

    ``mss trace`` uses it to tell a message's journey (its queue id or Message-ID as the
    object prefix). Prefixes match literally (``%`` and ``_`` are not wildcards). Raises
    AuditError on an empty prefix or a naive ``since``.
    """
    query = select(AuditEvent).order_by(col(AuditEvent.seq))
    filters = (
        ("object_prefix", object_prefix, col(AuditEvent.object)),
        ("action_prefix", action_prefix, col(AuditEvent.action)),
    )
    for name, prefix, column in filters:
        if prefix is None:
            continue
        if not prefix:
            raise AuditError(f"{name} must not be empty (pass None for no filter)")
        query = query.where(column.startswith(prefix, autoescape=True))
    if since is not None:
        if since.tzinfo is None:
            raise AuditError("since must be timezone-aware")
        query = query.where(col(AuditEvent.at) >= since)
    return list(session.execute(query).scalars())


# -- purging -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeResult:
    """What ``purge`` did: events deleted, the checkpoint written (if any), its own event."""

    deleted: int
    through_seq: int | None
    """The last purged seq, recorded in the new checkpoint (None when nothing was old enough)."""
    event_seq: int
    """The seq of the ``audit.purge`` event that records this purge."""


def purge(
    session: Session,
    master_key: MasterKey,
    *,
    before: datetime,
    actor: str = "mss",
    request_id: str = "",
    retention_days: int | None = None,
) -> PurgeResult:
    """Delete the events older than ``before`` and leave a signed checkpoint in their place.

    Deletes a prefix of the chain (through the newest event older than ``before``), writes an
    ``AuditCheckpoint`` with that event's seq and hash signed by the audit signing key
    (created on first use), records an ``audit.purge`` event and moves the head anchor, all
    in the caller's transaction. Raises AuditError when ``before`` is naive or in the future,
    or within ``retention_days`` of now (``MSS_AUDIT_RETENTION_DAYS``: what the operator
    keeps), or when the chain does not verify (a purge never signs over a broken chain).
    """
    if before.tzinfo is None:
        raise AuditError("before must be timezone-aware")
    now = utcnow()
    if before > now:
        raise AuditError("before is in the future: a purge only removes events already past retention")
    if retention_days is not None and before > now - timedelta(days=retention_days):
        kept_from = now - timedelta(days=retention_days)
        raise AuditError(
            f"events after {kept_from:%Y-%m-%d %H:%M} UTC are kept (MSS_AUDIT_RETENTION_DAYS={retention_days}):"
            " give an earlier date"
        )
    _lock_chain(session)
    report = _verify(session, master_key)
    if not report.ok:
        raise AuditError(
            f"the audit chain does not verify, so it is not purged: {report.reason}", seq=report.first_broken_seq
        )
    last_old = session.execute(
        select(func.max(col(AuditEvent.seq))).where(col(AuditEvent.at) < before)
    ).scalar_one_or_none()
    deleted, through_seq = 0, None
    if last_old is not None:
        head_hash = session.execute(select(col(AuditEvent.hash)).where(col(AuditEvent.seq) == last_old)).scalar_one()
        key = _signing_key(session, master_key, create=True)
        assert key is not None  # create=True always returns a key
        deleted = rowcount(session.execute(delete(AuditEvent).where(col(AuditEvent.seq) <= last_old)))
        signature = key.sign(_checkpoint_message(last_old, head_hash, now)).signature
        session.execute(
            insert(AuditCheckpoint).values(
                through_seq=last_old, head_hash=head_hash, at=now, signature=bytes(signature)
            )
        )
        through_seq = last_old
    event = _append(
        session,
        master_key,
        actor=actor,
        action="audit.purge",
        object="audit",
        outcome=SUCCESS,
        request_id=request_id,
        detail={"before": _iso(before), "deleted": deleted, "through_seq": through_seq},
    )
    return PurgeResult(deleted=deleted, through_seq=through_seq, event_seq=event.seq)
