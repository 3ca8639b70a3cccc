"""Delivery deadlines: a delivery still waiting for its final status after
``MSS_RECEIPT_DEADLINE`` gets its sender one delayed DSN, shown in the Sent view and in the
machine-readable status; duplicate receipts are dropped.

A delivery waits when another operator holds it: the outbound queue writes it ``relayed``
and the ``processed`` MDN (or a failure) comes back later. The test puts a delivery of a
message submitted through the pipeline in that state, as the queue's hand-off does.
"""

from __future__ import annotations

import time
from dataclasses import replace

from sqlalchemy import select

from mss import store
from mss.db import session_scope
from mss.models import Delivery, MailboxItem, Message, Receipt
from mss.receipts import issuer
from mss.receipts.wire import build_mdn
from mss.runtime import Runtime

from web_support import GP, NURSE, app, clients, create_person, doctor, gp, login, submit  # noqa: F401  (fixtures)

DEADLINE = 0.5


def with_deadline(rt: Runtime, seconds: float) -> Runtime:
    settings = rt.settings.with_changes(operator=replace(rt.settings.operator, receipt_deadline=seconds))
    return Runtime(settings=settings, engine=rt.engine, master_key=rt.master_key)


def _relayed(rt: Runtime, queue_id: str, recipient: str) -> None:
    with session_scope(rt.engine) as session:
        message = session.execute(select(Message).where(Message.queue_id == queue_id)).scalar_one()
        delivery = session.execute(
            select(Delivery).where(Delivery.message_id == message.id, Delivery.recipient == recipient)
        ).scalar_one()
        delivery.status = "relayed"
        session.add(delivery)


def _receipts(rt: Runtime, queue_id: str, status: str) -> list[Receipt]:
    with session_scope(rt.engine) as session:
        message = session.execute(select(Message).where(Message.queue_id == queue_id)).scalar_one()
        return list(
            session.execute(select(Receipt).where(Receipt.message_id == message.id, Receipt.status == status)).scalars()
        )


def _token(client, person) -> str:
    response = client.post(
        "/api/v1/sessions", json={"address": person.address, "password": person.password, "code": person.code()}
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def test_a_passed_deadline_gives_exactly_one_delayed_dsn(rt, clients, doctor, gp):
    create_person(rt, NURSE)
    accepted = submit(rt, doctor, [GP, NURSE], "Suivi", "Bonjour")
    _relayed(rt, accepted.queue_id, NURSE)
    inbox_before = _sender_inbox(rt, doctor.address)

    # Within the deadline, nothing is due.
    assert issuer.send_delayed(with_deadline(rt, 3600)) == 0
    time.sleep(DEADLINE + 0.2)
    fast = with_deadline(rt, DEADLINE)
    assert issuer.send_delayed(fast) == 1
    assert issuer.send_delayed(fast) == 0  # once
    delayed = _receipts(rt, accepted.queue_id, "delayed")
    assert [(r.recipient, r.kind) for r in delayed] == [(NURSE, "dsn")]
    assert _sender_inbox(rt, doctor.address) == inbox_before + 1

    # The machine-readable status: GP delivered (final), the nurse waiting and reported late.
    browser = clients()
    login(browser, doctor)  # enrols the authenticator, which the API requires
    login(clients(), gp)
    client = clients()
    token = _token(client, doctor)
    response = client.get(f"/api/v1/messages/{accepted.queue_id}/status", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body = response.json()
    by_recipient = {r["recipient"]: r for r in body["recipients"]}
    assert by_recipient[GP]["final"] is True and by_recipient[GP]["final_status"] == "delivered"
    assert by_recipient[NURSE]["final"] is False and by_recipient[NURSE]["final_status"] is None
    assert [s["status"] for s in by_recipient[NURSE]["steps"]] == ["relayed", "delayed"]
    # Somebody else's message has no status for this account.
    other = clients()
    other_token = _token(other, gp)
    refused = other.get(
        f"/api/v1/messages/{accepted.queue_id}/status", headers={"authorization": f"Bearer {other_token}"}
    )
    assert refused.status_code == 404

    # The Sent view says it too.
    page = browser.get(f"/messages/{accepted.queue_id}?folder=sent", headers={"accept-language": "en"})
    assert page.status_code == 200
    assert "delayed" in page.text


def _sender_inbox(rt: Runtime, owner: str) -> int:
    with session_scope(rt.engine) as session:
        return len(
            session.execute(select(MailboxItem).where(MailboxItem.owner == owner, MailboxItem.folder == "inbox")).all()
        )


def test_a_duplicate_receipt_is_dropped(rt, doctor, gp):
    accepted = submit(rt, doctor, [GP], "Suivi", "Bonjour")
    _relayed(rt, accepted.queue_id, GP)

    def processed_notice():
        mdn = build_mdn(
            reporting_ua="other.example",
            final_recipient=GP,
            original_message_id=accepted.message_id,
            disposition="processed",
            sender=doctor.address,
            mode=issuer.PROCESSED_MODE,
            subject_hint=None,
        )
        with session_scope(rt.engine) as session:
            certificate = issuer.certificates.current_certificate(session, doctor.address)
            return issuer.notice(
                issuer.certificates.operator_identity(session, rt.settings, rt.master_key),
                mdn,
                kind="mdn",
                status="processed",
                recipients=[GP],
                reason="",
                reader=doctor.address,
                reader_certificate=certificate,
            )

    for _ in range(2):  # the same MDN comes back twice
        with session_scope(rt.engine) as session:
            store.store_receipts(
                session, rt.master_key, queue_id=accepted.queue_id, notices=[processed_notice()], request_id=""
            )
    assert len(_receipts(rt, accepted.queue_id, "processed")) == 1
    # A final status came: the deadline no longer applies to it.
    time.sleep(DEADLINE + 0.2)
    assert issuer.send_delayed(with_deadline(rt, DEADLINE)) == 0
