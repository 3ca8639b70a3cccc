"""The audit trail on a real database: append, verify, tamper, purge, export, trace."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, select, text
from sqlalchemy.engine import Engine

from mss import audit
from mss.crypto.master import MasterKey
from mss.db import UTCDateTime, make_engine, session_scope, utcnow
from mss.errors import AuditError
from mss.models import AuditCheckpoint, AuditEvent, SealedSecret
from mss.settings import Settings


@pytest.fixture
def master_key(settings: Settings) -> MasterKey:
    return MasterKey.load(settings)


@pytest.fixture
def db(engine: Engine, master_key: MasterKey) -> Engine:
    """The test engine, with the master key bound as a running process binds it."""
    audit.bind_master_key(engine, master_key)
    return engine


def fill(engine: Engine, count: int, *, tag: str = "m") -> None:
    with session_scope(engine) as session:
        for i in range(count):
            audit.record(
                session,
                actor=f"dr.{tag}{i}@mss.test",
                action="message.submit",
                object=f"{tag}-queue-{i}",
                request_id=f"req-{tag}-{i}",
                size=i,
            )


def check(engine: Engine, master_key: MasterKey) -> audit.ChainReport:
    with session_scope(engine) as session:
        return audit.verify(session, master_key)


def sql(engine: Engine, statement: str, **params: object) -> None:
    """Tamper as someone with database access would: raw SQL, outside the audit module."""
    query = text(statement)
    if "at" in params:
        query = query.bindparams(bindparam("at", type_=UTCDateTime()))
    with engine.begin() as conn:
        conn.execute(query, params)


def head(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).one()
    return row.seq, row.hash


def hash_of(engine: Engine, seq: int) -> str:
    with engine.connect() as conn:
        return conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == seq)).scalar_one()


def forge(engine: Engine, *, seq: int, prev_hash: str) -> None:
    """Insert an event with a correct hash, as someone who knows the algorithm would."""
    at = utcnow()
    fields = dict(seq=seq, at=at, actor="intruder@mss.test", action="message.read", object="x", outcome="success",
                  request_id="", detail="{}", prev_hash=prev_hash)  # fmt: skip
    sql(
        engine,
        "INSERT INTO audit_event (seq, at, actor, action, object, outcome, request_id, detail, prev_hash, hash) "
        "VALUES (:seq, :at, :actor, :action, :object, :outcome, :request_id, :detail, :prev_hash, :hash)",
        **fields,
        hash=audit.event_hash(**fields),
    )


def assert_broken(report: audit.ChainReport, seq: int | None, reason: str) -> None:
    assert not report.ok, report
    assert report.first_broken_seq == seq, report
    assert report.reason.startswith(reason), report


# -- a clean chain -----------------------------------------------------------------------


def test_clean_chain_verifies(db: Engine, master_key: MasterKey) -> None:
    fill(db, 20)
    report = check(db, master_key)
    assert report.ok, report
    assert (report.checked, report.start_seq, report.head_seq, report.first_broken_seq) == (20, 1, 20, None)
    assert report.reason == "chain intact: 20 events, seq 1 to 20"


def test_empty_trail_verifies(db: Engine, master_key: MasterKey) -> None:
    report = check(db, master_key)
    assert report.ok and report.checked == 0 and report.head_seq is None


def test_record_links_and_anchors_in_the_callers_transaction(db: Engine, master_key: MasterKey) -> None:
    fill(db, 3)
    with pytest.raises(RuntimeError):
        with session_scope(db) as session:
            audit.record(session, actor="a@mss.test", action="login")
            raise RuntimeError("the caller's transaction fails")
    assert head(db)[0] == 3  # neither the event nor the anchor survived the rollback
    assert check(db, master_key).ok
    with session_scope(db) as session:
        event = audit.record(session, actor="a@mss.test", action="login", outcome=audit.FAILURE, reason="bad password")
    assert (event.seq, event.prev_hash, json.loads(event.detail)) == (4, hash_of(db, 3), {"reason": "bad password"})


# -- tampering, each reported at its seq with its reason ----------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "someone.else@mss.test"),
        ("action", "message.delete"),
        ("object", "another-queue"),
        ("outcome", "failure"),
        ("request_id", "req-other"),
        ("detail", '{"size":99}'),
        ("at", datetime(2020, 1, 1, tzinfo=UTC)),
        ("prev_hash", "1" * 64),
        ("hash", "f" * 64),
    ],
)
def test_an_edited_field_is_reported(db: Engine, master_key: MasterKey, column: str, value: object) -> None:
    fill(db, 12)
    sql(db, f"UPDATE audit_event SET {column} = :{column} WHERE seq = 7", **{column: value})
    report = check(db, master_key)
    assert_broken(report, 7, "event 7 was edited (hash mismatch)")
    assert report.checked == 6 and report.head_seq == 6


@pytest.mark.parametrize("seq", [5, 12])
def test_an_edited_seq_is_reported(db: Engine, master_key: MasterKey, seq: int) -> None:
    fill(db, 12)
    sql(db, "UPDATE audit_event SET seq = 500 WHERE seq = :seq", seq=seq)
    assert_broken(check(db, master_key), seq, f"event {seq} was edited (hash mismatch: its seq was changed to 500)")


@pytest.mark.parametrize(
    ("seq", "actor", "reason"),
    [
        pytest.param(
            7, "someone.else@mss.test", "event 7 was replaced (event 8 links to a different event 7)", id="middle"
        ),
        pytest.param(12, "x@mss.test", "event 12 does not match the head anchor", id="last"),
    ],
)
def test_an_edited_and_rehashed_event_is_reported(
    db: Engine, master_key: MasterKey, seq: int, actor: str, reason: str
) -> None:
    fill(db, 12)
    with session_scope(db) as session:
        row = session.execute(select(*AuditEvent.__table__.columns).where(AuditEvent.seq == seq)).one()
    fields = {
        name: getattr(row, name)
        for name in ("seq", "at", "action", "object", "outcome", "request_id", "detail", "prev_hash")
    }
    new_hash = audit.event_hash(actor=actor, **fields)
    sql(db, "UPDATE audit_event SET actor = :actor, hash = :h WHERE seq = :seq", actor=actor, h=new_hash, seq=seq)
    assert_broken(check(db, master_key), seq, reason)


# Each deletion in turn, then the first broken seq and the reason it is reported with (and,
# where given, how many events were checked before it).
DELETIONS = [
    pytest.param(
        20,
        [
            ("DELETE FROM audit_event WHERE seq = 10", 10, "event 10 is missing (gap between 9 and 11)", None),
            (
                "DELETE FROM audit_event WHERE seq IN (11, 12)",
                10,
                "events 10 to 12 are missing (gap between 9 and 13)",
                None,
            ),
        ],
        id="middle",
    ),
    pytest.param(
        5,
        [("DELETE FROM audit_event WHERE seq = 1", 1, "the chain does not start at genesis: event 1 is missing", None)],
        id="first",
    ),
    pytest.param(
        20,
        [
            (
                "DELETE FROM audit_event WHERE seq = 20",
                20,
                "event 20 is missing (the chain ends at seq 19 but its head anchor is at seq 20",
                19,
            ),
            (
                "DELETE FROM audit_event WHERE seq >= 15",
                15,
                "events 15 to 20 are missing (the chain ends at seq 14",
                None,
            ),
            ("DELETE FROM audit_event", 1, "events 1 to 20 are missing (the chain ends at seq 0", None),
        ],
        id="newest",
    ),
]


@pytest.mark.parametrize(("count", "deletions"), DELETIONS)
def test_deleted_events_are_reported(
    db: Engine, master_key: MasterKey, count: int, deletions: list[tuple[str, int, str, int | None]]
) -> None:
    fill(db, count)
    for statement, seq, reason, checked in deletions:
        sql(db, statement)
        report = check(db, master_key)
        assert_broken(report, seq, reason)
        if checked is not None:
            assert report.checked == checked


def test_swapped_events_are_reported(db: Engine, master_key: MasterKey) -> None:
    fill(db, 40)
    sql(db, "UPDATE audit_event SET seq = -1 WHERE seq = 30")
    sql(db, "UPDATE audit_event SET seq = 30 WHERE seq = 31")
    sql(db, "UPDATE audit_event SET seq = 31 WHERE seq = -1")
    report = check(db, master_key)
    assert_broken(report, 30, "events out of order at seq 30")
    assert report.checked == 29


def test_a_forged_appended_event_is_reported(db: Engine, master_key: MasterKey) -> None:
    fill(db, 10)
    seq, last_hash = head(db)
    forge(db, seq=seq + 1, prev_hash=last_hash)
    assert_broken(check(db, master_key), 11, "event 11 is past the head anchor (seq 10): forged")


def test_a_forged_inserted_event_is_reported(db: Engine, master_key: MasterKey) -> None:
    fill(db, 20)
    # Make room at seq 10 in two steps (seq is unique, checked row by row).
    sql(db, "UPDATE audit_event SET seq = seq + 100000 WHERE seq >= 10")
    sql(db, "UPDATE audit_event SET seq = seq - 99999 WHERE seq >= 100000")
    forge(db, seq=10, prev_hash=hash_of(db, 9))
    report = check(db, master_key)
    assert_broken(report, 10, "event 10 was inserted (forged: event 11 was hashed as seq 10, after event 9)")
    assert report.checked == 9 and report.head_seq == 9


def test_a_forged_event_with_a_wrong_hash_is_reported(db: Engine, master_key: MasterKey) -> None:
    fill(db, 5)
    sql(
        db,
        "INSERT INTO audit_event (seq, at, actor, action, object, outcome, request_id, detail, prev_hash, hash) "
        "VALUES (6, :at, 'x@mss.test', 'login', '', 'success', '', '{}', :prev, :hash)",
        at=utcnow(), prev=head(db)[1], hash="a" * 64,
    )  # fmt: skip
    assert_broken(check(db, master_key), 6, "event 6 was edited (hash mismatch)")


def test_events_recorded_without_the_master_key_are_not_vouched_for(
    engine: Engine, master_key: MasterKey, caplog
) -> None:
    fill(engine, 3)  # an engine nobody bound: the events chain, the anchor never starts
    assert "without the master key" in caplog.text
    assert_broken(check(engine, master_key), None, "the head anchor is missing")
    audit.bind_master_key(engine, master_key)
    fill(engine, 2)
    assert check(engine, master_key).ok


def test_a_tampered_or_deleted_head_anchor_is_reported(db: Engine, master_key: MasterKey) -> None:
    fill(db, 5)
    with db.connect() as conn:
        sealed = conn.execute(select(SealedSecret.value).where(SealedSecret.name == audit.HEAD_ANCHOR)).scalar_one()
    sql(
        db,
        "UPDATE sealed_secret SET value = :v WHERE name = :n",
        v=sealed[:-1] + bytes([sealed[-1] ^ 1]),
        n=audit.HEAD_ANCHOR,
    )
    assert_broken(check(db, master_key), None, "the head anchor was altered")
    # Another secret sealed by the same key cannot stand in for the anchor.
    sql(
        db, "UPDATE sealed_secret SET value = :v WHERE name = :n", v=master_key.seal(b'{"seq": 5}'), n=audit.HEAD_ANCHOR
    )
    assert_broken(check(db, master_key), None, "the head anchor was altered")
    sql(db, "DELETE FROM sealed_secret WHERE name = :n", n=audit.HEAD_ANCHOR)
    assert_broken(check(db, master_key), None, "the head anchor is missing")


def test_verify_with_another_master_key_fails(db: Engine, master_key: MasterKey) -> None:
    fill(db, 3)
    assert_broken(check(db, MasterKey(b"k" * 32)), None, "the head anchor was altered")


# -- purge and checkpoints ---------------------------------------------------------------


def test_purge_keeps_the_chain_verifiable(db: Engine, master_key: MasterKey) -> None:
    fill(db, 10, tag="old")
    cut = utcnow()
    fill(db, 5, tag="new")
    with session_scope(db) as session:
        result = audit.purge(session, master_key, before=cut, actor="admin@mss.test")
    assert (result.deleted, result.through_seq, result.event_seq) == (10, 10, 16)
    report = check(db, master_key)
    assert report.ok, report
    assert (report.checked, report.start_seq, report.head_seq, report.checkpoint_seq) == (6, 11, 16, 10)
    with session_scope(db) as session:
        (purge_event,) = audit.events_for(session, action_prefix="audit.purge")
        assert purge_event.actor == "admin@mss.test"
        assert json.loads(purge_event.detail) == {
            "before": cut.isoformat(timespec="microseconds"),
            "deleted": 10,
            "through_seq": 10,
        }
        assert session.execute(select(SealedSecret.name).where(SealedSecret.name == audit.SIGNING_KEY)).scalar_one()
    fill(db, 3, tag="later")
    cut = utcnow()
    with session_scope(db) as session:
        second = audit.purge(session, master_key, before=cut)
    assert (second.deleted, second.through_seq, second.event_seq) == (9, 19, 20)
    report = check(db, master_key)
    assert report.ok and (report.checked, report.start_seq, report.checkpoint_seq) == (1, 20, 19)


def test_purge_with_nothing_old_enough_only_records_itself(db: Engine, master_key: MasterKey) -> None:
    fill(db, 4)
    with session_scope(db) as session:
        result = audit.purge(session, master_key, before=utcnow() - timedelta(days=183))
    assert (result.deleted, result.through_seq, result.event_seq) == (0, None, 5)
    with db.connect() as conn:
        assert conn.execute(select(AuditCheckpoint.id)).first() is None
    assert check(db, master_key).ok


def test_purge_of_everything_then_appends_continue(db: Engine, master_key: MasterKey) -> None:
    fill(db, 4)
    with session_scope(db) as session:
        assert audit.purge(session, master_key, before=utcnow()).through_seq == 4
    fill(db, 2)
    report = check(db, master_key)
    assert report.ok and (report.start_seq, report.head_seq) == (5, 7)


def test_purge_refuses_a_broken_chain(db: Engine, master_key: MasterKey) -> None:
    fill(db, 6)
    sql(db, "UPDATE audit_event SET actor = 'x' WHERE seq = 3")
    with pytest.raises(AuditError, match="event 3 was edited"):
        with session_scope(db) as session:
            audit.purge(session, master_key, before=utcnow())
    with db.connect() as conn:
        assert conn.execute(select(AuditEvent.seq).order_by(AuditEvent.seq)).scalars().all() == [1, 2, 3, 4, 5, 6]


def test_purge_checks_its_cut_off(db: Engine, master_key: MasterKey) -> None:
    with session_scope(db) as session:
        with pytest.raises(AuditError, match="timezone-aware"):
            audit.purge(session, master_key, before=datetime(2020, 1, 1))
        with pytest.raises(AuditError, match="in the future"):
            audit.purge(session, master_key, before=utcnow() + timedelta(hours=1))


def purged(engine: Engine, master_key: MasterKey) -> None:
    fill(engine, 8)
    with session_scope(engine) as session:
        audit.purge(session, master_key, before=utcnow())
    fill(engine, 3)


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE audit_checkpoint SET signature = :sig",
        "UPDATE audit_checkpoint SET head_hash = :h",
        "UPDATE audit_checkpoint SET through_seq = 7",
    ],
)
def test_an_altered_checkpoint_is_reported(db: Engine, master_key: MasterKey, tamper: str) -> None:
    purged(db, master_key)
    sql(db, tamper, sig=b"\0" * 64, h="e" * 64)
    report = check(db, master_key)
    assert not report.ok and "has a bad signature (forged or altered)" in report.reason, report


def test_a_forged_checkpoint_is_reported(db: Engine, master_key: MasterKey) -> None:
    purged(db, master_key)
    forged_head = hash_of(db, 10)
    with db.begin() as conn:
        conn.execute(
            AuditCheckpoint.__table__.insert().values(
                through_seq=10, head_hash=forged_head, at=utcnow(), signature=b"\1" * 64
            )
        )
    assert_broken(check(db, master_key), 10, "the checkpoint at seq 10 has a bad signature (forged or altered)")


def test_a_checkpoint_without_its_signing_key_is_reported(db: Engine, master_key: MasterKey) -> None:
    purged(db, master_key)
    sql(db, "DELETE FROM sealed_secret WHERE name = :n", n=audit.SIGNING_KEY)
    assert_broken(check(db, master_key), 8, "the audit signing key is missing")


def test_a_deleted_checkpoint_is_reported(db: Engine, master_key: MasterKey) -> None:
    purged(db, master_key)
    fill(db, 2)
    with session_scope(db) as session:
        audit.purge(session, master_key, before=utcnow())  # the second checkpoint, at seq 14
    sql(db, "DELETE FROM audit_checkpoint WHERE through_seq = 14")
    assert_broken(
        check(db, master_key),
        9,
        "the chain does not start at the last checkpoint (it ends at seq 8, the first event is seq 15)",
    )
    sql(db, "DELETE FROM audit_checkpoint")
    assert_broken(check(db, master_key), 1, "the chain does not start at genesis: events 1 to 14 are missing")


def test_a_checkpoint_left_alone_is_reported(db: Engine, master_key: MasterKey) -> None:
    purged(db, master_key)
    sql(db, "DELETE FROM audit_event")
    sql(db, "DELETE FROM sealed_secret WHERE name = :n", n=audit.HEAD_ANCHOR)
    assert_broken(check(db, master_key), None, "the head anchor is missing")


# -- export and trace --------------------------------------------------------------------


def outside_verify(events: list[dict[str, str]]) -> str:
    """Re-verify exported events without mss: the canonical form is documented, recompute it."""
    for before, event in zip([None, *events], events, strict=False):
        canonical = json.dumps(
            [int(event["seq"])] + [event[name] for name in audit.EXPORT_FIELDS[1:-1]],
            ensure_ascii=False,
            separators=(",", ":"),
        )
        assert hashlib.sha256(canonical.encode("utf-8")).hexdigest() == event["hash"], event["seq"]
        if before is not None:
            assert int(event["seq"]) == int(before["seq"]) + 1
            assert event["prev_hash"] == before["hash"]
    return events[-1]["hash"]


def tricky_events(engine: Engine) -> None:
    with session_scope(engine) as session:
        audit.record(
            session, actor="dr.hélène@mss.test", action="message.submit", object='a,"b"\nc', reason="refusé, « déjà »"
        )
        audit.record(session, actor="dr.b@mss.test", action="message.open", object="q-1", request_id="r;1")
    fill(engine, 5)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_round_trip_re_verifies(db: Engine, fmt: str) -> None:
    tricky_events(db)
    with session_scope(db) as session:
        stream = audit.export(session, since=None, fmt=fmt)
        assert isinstance(stream, Iterator)
        lines = list(stream)
    assert all(line.endswith("\n") for line in lines)
    if fmt == "jsonl":
        events = [json.loads(line) for line in lines]
        assert list(events[0]) == list(audit.EXPORT_FIELDS)
    else:
        events = list(csv.DictReader(io.StringIO("".join(lines))))
        assert lines[0] == ",".join(audit.EXPORT_FIELDS) + "\n"
    assert [int(e["seq"]) for e in events] == list(range(1, 8))
    assert events[0]["object"] == 'a,"b"\nc' and events[0]["actor"] == "dr.hélène@mss.test"
    assert events[0]["prev_hash"] == audit.GENESIS
    assert outside_verify(events) == head(db)[1]


def test_export_since_and_format_checks(db: Engine) -> None:
    fill(db, 3)
    cut = utcnow()
    fill(db, 2, tag="n")
    with session_scope(db) as session:
        events = [json.loads(line) for line in audit.export(session, since=cut, fmt="jsonl")]
        assert [e["seq"] for e in events] == [4, 5]
        outside_verify(events)
        with pytest.raises(AuditError, match="unknown export format"):
            audit.export(session, since=None, fmt="xml")
        with pytest.raises(AuditError, match="timezone-aware"):
            audit.export(session, since=datetime(2020, 1, 1), fmt="csv")


def test_export_after_purge_links_to_the_checkpoint(db: Engine, master_key: MasterKey) -> None:
    purged(db, master_key)
    with session_scope(db) as session:
        events = [json.loads(line) for line in audit.export(session, since=None, fmt="jsonl")]
        checkpoint = session.execute(select(AuditCheckpoint.head_hash)).scalar_one()
    assert events[0]["seq"] == 9 and events[0]["prev_hash"] == checkpoint
    outside_verify(events)


def test_events_for_traces_a_message(db: Engine) -> None:
    with session_scope(db) as session:
        audit.record(session, actor="a@mss.test", action="message.submit", object="Q1_2%/<id@x>")
        audit.record(session, actor="a@mss.test", action="message.deliver", object="Q1_2%/<id@x>/b@mss.test")
        audit.record(session, actor="b@mss.test", action="message.open", object="Q1_2%/<id@x>/b@mss.test")
        audit.record(session, actor="a@mss.test", action="message.submit", object="Q1_23/<other@x>")
        audit.record(session, actor="a@mss.test", action="web.login", object="a@mss.test")
    cut = utcnow()
    with session_scope(db) as session:
        audit.record(session, actor="c@mss.test", action="message.open", object="Q1_2%/<id@x>/c@mss.test")
    with session_scope(db) as session:
        journey = audit.events_for(session, object_prefix="Q1_2%/")
        assert [e.action for e in journey] == ["message.submit", "message.deliver", "message.open", "message.open"]
        assert [e.seq for e in audit.events_for(session, object_prefix="Q1_2", action_prefix="message.open")] == [3, 6]
        assert [e.seq for e in audit.events_for(session, action_prefix="message.", since=cut)] == [6]
        assert len(audit.events_for(session)) == 6
        with pytest.raises(AuditError, match="must not be empty"):
            audit.events_for(session, object_prefix="")
        with pytest.raises(AuditError, match="timezone-aware"):
            audit.events_for(session, since=datetime(2020, 1, 1))


# -- concurrency -------------------------------------------------------------------------


def append_concurrently(engines: list[Engine], threads_per_engine: int, events_per_thread: int) -> None:
    errors: list[BaseException] = []

    def work(engine: Engine, name: str) -> None:
        try:
            for i in range(events_per_thread):
                with session_scope(engine) as session:
                    audit.record(session, actor=f"{name}@mss.test", action="message.submit", object=f"{name}-{i}")
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    workers = [
        threading.Thread(target=work, args=(engine, f"e{e}t{t}"))
        for e, engine in enumerate(engines)
        for t in range(threads_per_engine)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors, errors


def test_concurrent_appends_from_threads_make_a_gapless_chain(db: Engine, master_key: MasterKey) -> None:
    append_concurrently([db], threads_per_engine=6, events_per_thread=15)
    with db.connect() as conn:
        assert conn.execute(select(AuditEvent.seq).order_by(AuditEvent.seq)).scalars().all() == list(range(1, 91))
    report = check(db, master_key)
    assert report.ok and report.checked == 90, report


def test_concurrent_appends_from_several_engines_make_a_gapless_chain(
    db: Engine, settings: Settings, master_key: MasterKey
) -> None:
    # Several engines stand for several relay and web processes on one database.
    others = [make_engine(settings) for _ in range(2)]
    for other in others:
        audit.bind_master_key(other, master_key)
    try:
        append_concurrently([db, *others], threads_per_engine=3, events_per_thread=10)
    finally:
        for other in others:
            other.dispose()
    with db.connect() as conn:
        assert conn.execute(select(AuditEvent.seq).order_by(AuditEvent.seq)).scalars().all() == list(range(1, 91))
    report = check(db, master_key)
    assert report.ok and report.checked == 90, report


def test_verify_while_appending_sees_a_consistent_head(db: Engine, master_key: MasterKey) -> None:
    stop = threading.Event()
    reports: list[audit.ChainReport] = []

    def verifier() -> None:
        while not stop.is_set():
            reports.append(check(db, master_key))
            with session_scope(db) as session:  # inside a transaction the caller began
                session.execute(select(AuditEvent.id).limit(1))
                reports.append(audit.verify(session, master_key))

    thread = threading.Thread(target=verifier)
    thread.start()
    try:
        append_concurrently([db], threads_per_engine=3, events_per_thread=15)
    finally:
        stop.set()
        thread.join()
    assert reports and all(r.ok for r in reports), [r for r in reports if not r.ok][:1]
