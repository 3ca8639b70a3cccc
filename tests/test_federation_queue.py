"""The outbound queue when the other operator is away: retries, a ``delayed`` notice, the
message delivered once the peer is back, the end of retries, and the administrator's
``mss queue list`` / ``retry`` / ``bounce``. Timings are seconds instead of hours
(``MSS_DELAY_WARNING``, ``MSS_QUEUE_LIFETIME``, ``MSS_RETRY_MIN`` are settings).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import replace

import pytest
from federation_support import A_USERS, B_USERS, Operator, Services, WorkerThread, linked_operators, wait_for
from sqlalchemy import select

from mss.db import session_scope
from mss.models import AuditEvent, Delivery, Message, Outbound, Receipt
from mss.runtime import Runtime

from cli_support import invoke
from web_support import build_message

MARC, _CEDRIC = A_USERS
JOEL, _ELOISE = B_USERS


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, Operator]]:
    with linked_operators(tmp_path_factory.mktemp("queue"), a_env={"MSS_DELAY_WARNING": "1s"}) as (a, b):
        a.services = Services(a).start()  # B is down
        yield a, b


def mss(operator: Operator, *args: str, ok: bool = True):
    return invoke(operator.env, *args, ok=ok)


def queued(operator: Operator, *flags: str) -> list[dict]:
    return [
        json.loads(line)
        for line in mss(operator, "queue", "list", "--json", *flags).stdout.splitlines()
        if line.startswith("{")
    ]


def receipts_of(operator: Operator, queue_id: str) -> list[tuple[str, str, str, str]]:
    with session_scope(operator.rt.engine) as session:
        message = session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()
        rows = session.execute(select(Receipt).where(Receipt.message_id == message.id).order_by(Receipt.id)).scalars()
        return [(r.kind, r.status, r.recipient, r.reason) for r in rows]


def status_of(operator: Operator, queue_id: str, recipient: str) -> str:
    with session_scope(operator.rt.engine) as session:
        message = session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()
        return session.execute(
            select(Delivery.status).where(Delivery.message_id == message.id, Delivery.recipient == recipient)
        ).scalar_one()


def entry_for(operator: Operator, queue_id: str, *flags: str) -> dict | None:
    return next((e for e in queued(operator, *flags) if e["message"] == queue_id), None)


def test_a_peer_that_is_down_gets_the_message_when_it_is_back(pair, caplog) -> None:
    a, b = pair
    caplog.set_level(logging.INFO, logger="mss.outbound")
    queue_id = a.submit(MARC, [JOEL], build_message(MARC, [JOEL], "Résultats", "Bonjour.\n"))
    # While B is down: retries, and after MSS_DELAY_WARNING one "delayed" DSN (NOTIFY
    # defaults to FAILURE,DELAY).
    wait_for(lambda: any(r[:2] == ("dsn", "delayed") for r in receipts_of(a, queue_id)), what="the delayed DSN")
    entry = entry_for(a, queue_id)
    assert entry is not None and entry["state"] == "queued" and entry["attempts"] >= 2
    assert "connection failed" in entry["last_error"] and entry["recipients"][0]["state"] == "pending"
    assert status_of(a, queue_id, JOEL) == "queued"
    wait_for(
        lambda: any("queue: 1 waiting for 1 recipients, oldest" in r.getMessage() for r in caplog.records),
        what="the queue's periodic report",
    )

    b.services = Services(b).start()
    try:
        # No administrator needed: the next retry finds B.
        wait_for(lambda: status_of(a, queue_id, JOEL) == "relayed", what="delivery once B is back")
        assert len([m for m in b.inbox(JOEL) if m.kind != "receipt"]) == 1
        assert entry_for(a, queue_id) is None
        done = entry_for(a, queue_id, "--all")
        assert done is not None and done["state"] == "done"
        # The delayed notice came once, whatever the number of attempts.
        assert [r[1] for r in receipts_of(a, queue_id) if r[0] == "dsn"].count("delayed") == 1
    finally:
        b.services.stop()
        b.services = None


def test_bounce_returns_a_waiting_message_to_its_sender(pair) -> None:
    a, _b = pair
    queue_id = a.submit(MARC, [JOEL], build_message(MARC, [JOEL], "Avis", "Bonjour.\n"))
    entry = wait_for(
        lambda: (e := entry_for(a, queue_id)) and e["attempts"] >= 1 and not e["in_flight"] and e,
        what="a first failed attempt",
    )
    assert "tried again now" in mss(a, "queue", "retry", entry["id"]).stdout
    wait_for(
        lambda: (e := entry_for(a, queue_id)) and e["attempts"] > entry["attempts"] and not e["in_flight"],
        what="the retry",
    )

    def bounce():
        result = mss(a, "queue", "bounce", entry["id"], ok=False)
        if result.exit_code == 0:
            return result
        # The worker retries every second: an attempt may be under way right then.
        assert "being delivered right now" in result.stderr, result.stderr
        return None

    result = wait_for(bounce, what="the bounce")
    assert JOEL in result.stdout
    failed = [r for r in receipts_of(a, queue_id) if r[:2] == ("dsn", "failed")]
    assert failed and "administrator" in failed[0][3]
    assert status_of(a, queue_id, JOEL) == "failed"
    assert entry_for(a, queue_id, "--all")["state"] == "bounced"
    again = mss(a, "queue", "bounce", entry["id"], ok=False)
    assert again.exit_code == 1 and "nothing left to bounce" in again.stderr
    unknown = mss(a, "queue", "retry", "QNOSUCHENTRY", ok=False)
    assert unknown.exit_code == 1 and "no queue entry" in unknown.stderr


def test_retries_end_at_the_queue_lifetime(pair) -> None:
    a, _b = pair
    assert a.services is not None
    a.services.stop()
    federation = replace(a.settings.federation, queue_lifetime=2.0)
    short = Runtime(
        settings=a.settings.with_changes(federation=federation), engine=a.rt.engine, master_key=a.rt.master_key
    )
    a.services = Services(a, rt=short).start()
    try:
        queue_id = a.submit(MARC, [JOEL], build_message(MARC, [JOEL], "Convocation", "Bonjour.\n"))
        wait_for(lambda: any(r[:2] == ("dsn", "failed") for r in receipts_of(a, queue_id)), what="the end of retries")
        reason = next(r[3] for r in receipts_of(a, queue_id) if r[:2] == ("dsn", "failed"))
        assert "still undelivered after" in reason and "connection failed" in reason
        assert status_of(a, queue_id, JOEL) == "failed"
        assert entry_for(a, queue_id, "--all")["state"] == "failed"
    finally:
        a.services.stop()
        a.services = Services(a).start()


def test_several_workers_deliver_each_message_once(tmp_path) -> None:
    with linked_operators(tmp_path) as (a, b):
        workers: list[WorkerThread] = []
        try:
            b.services = Services(b).start()
            a.services = Services(a, worker=False).start()  # submission and MX only, for now
            sent = [
                a.submit(MARC, [JOEL], build_message(MARC, [JOEL], f"Résultat {n}", "Bonjour.\n")) for n in range(24)
            ]
            # Three workers, as if in three processes, start on a full queue together.
            workers = [WorkerThread(a.rt, f"worker-{n}").start() for n in range(3)]
            wait_for(lambda: all(status_of(a, q, JOEL) == "relayed" for q in sent), timeout=60, what="every delivery")
            with session_scope(a.rt.engine) as session:
                attempts = session.execute(select(Outbound.attempts).where(Outbound.kind == "message")).scalars().all()
            assert sorted(attempts) == [1] * len(sent)  # each entry was taken by one worker, once
            with session_scope(a.rt.engine) as session:
                relays = (
                    session.execute(select(AuditEvent.detail).where(AuditEvent.action == "queue.relay")).scalars().all()
                )
            by_worker = {json.loads(detail)["worker"] for detail in relays}
            assert len(relays) == len(sent) and len(by_worker) >= 2  # shared out, not serialised on one
            assert len([m for m in b.inbox(JOEL) if m.kind != "receipt"]) == len(sent)
            with session_scope(b.rt.engine) as session:
                assert not session.execute(select(AuditEvent.id).where(AuditEvent.action == "message.duplicate")).all()
        finally:
            for worker in workers:
                worker.stop()
