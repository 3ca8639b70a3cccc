"""Never lose, never duplicate: SIGKILL on either side of a delivery between two operators.

The operator that gets killed runs as ``mss serve relay`` (submission, MX and delivery
worker in one process). A TCP proxy between A's delivery worker and B's MX fires at an
exact point of the delivery of one large message (see ``CuttingProxy``):

- the sending side is killed when B's reply to the end of DATA arrives, before A reads it:
  B has committed, A's queue still holds the message; A restarted delivers it again after
  its lease, and B keeps one copy (same envelope sender, Message-ID, recipient);
- the receiving side is killed in the middle of DATA: nothing is half-stored, A retries,
  and B restarted receives the message.

Each test counts what was sent, acknowledged by A's relay, delivered at B (distinct
messages), duplicated (extra copies: must be 0) and lost (acknowledged, never delivered:
must be 0), and checks both audit chains.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from federation_support import (
    A_DOMAIN,
    A_USERS,
    B_DOMAIN,
    B_USERS,
    CuttingProxy,
    Operator,
    OperatorProcess,
    Services,
    build_operator,
    free_port,
    trust_peer,
    wait_for,
    write_peer_cas,
)
from sqlalchemy import select

from mss import audit
from mss.db import session_scope
from mss.models import AuditEvent, Delivery, InboundDelivery, MailboxItem, Message, Outbound

from document_samples import pdf_of_size
from web_support import build_message

MARC = A_USERS[0]
JOEL = B_USERS[0]
MESSAGES = 12
BIG = 4  # the message whose delivery the proxy cuts (about 1 MB)
THRESHOLD = 300_000


def setup_pair(root: Path) -> tuple[Operator, Operator, int]:
    """A and B linked; A's route to B goes through a proxy port (returned)."""
    a = build_operator(root / "a", "a", A_DOMAIN, A_USERS)
    b = build_operator(root / "b", "b", B_DOMAIN, B_USERS)
    write_peer_cas(a, b.ca_file)
    write_peer_cas(b, a.ca_file)
    proxy_port = free_port()
    trust_peer(a, B_DOMAIN, f"127.0.0.1:{proxy_port}")
    trust_peer(b, A_DOMAIN, f"127.0.0.1:{a.mx_port}")
    return a, b, proxy_port


def message(number: int) -> tuple[str, bytes]:
    message_id = f"<crash-{number}@chu-demo.mss.test>"
    attachments = [("scanner.pdf", "application/pdf", pdf_of_size(780_000))] if number == BIG else []
    raw = build_message(MARC, [JOEL], f"Compte rendu {number}", f"Message {number}.\n", attachments)
    return message_id, raw.replace(b"\r\nSubject:", f"\r\nMessage-ID: {message_id}\r\nSubject:".encode(), 1)


def submit_all(a: Operator) -> tuple[int, dict[str, str]]:
    """Send every message through A's relay; (sent, {Message-ID: A's queue id} acknowledged)."""
    acknowledged = {}
    for number in range(1, MESSAGES + 1):
        message_id, raw = message(number)
        acknowledged[message_id] = a.submit(MARC, [JOEL], raw)
    return MESSAGES, acknowledged


def counts(a: Operator, b: Operator, sent: int, acknowledged: dict[str, str]) -> dict[str, int]:
    with session_scope(b.rt.engine) as session:
        copies = Counter(
            session.execute(
                select(Message.message_id)
                .join(MailboxItem, MailboxItem.message_id == Message.id)
                .where(MailboxItem.owner == JOEL, Message.kind != "receipt")
            ).scalars()
        )
        duplicates_refused = len(
            session.execute(select(AuditEvent.id).where(AuditEvent.action == "message.duplicate")).all()
        )
    delivered = {m for m in copies if m in acknowledged}
    return {
        "sent": sent,
        "acknowledged": len(acknowledged),
        "delivered": len(delivered),
        "duplicated": sum(n - 1 for n in copies.values()),
        "lost": len(set(acknowledged) - delivered),
        "repeats answered without storing": duplicates_refused,
    }


def queue_done(a: Operator) -> bool:
    with session_scope(a.rt.engine) as session:
        states = session.execute(select(Outbound.state).where(Outbound.kind == "message")).scalars().all()
    return len(states) == MESSAGES and all(state == "done" for state in states)


def restarted_delivers_everything(
    process: OperatorProcess, a: Operator, b: Operator, sent: int, acknowledged: dict[str, str], case: str
) -> dict[str, int]:
    """Start the killed side again: A's queue empties, every acknowledged message is at B
    once, none lost; the counts."""
    process.start()
    wait_for(lambda: queue_done(a), timeout=90, what="A's queue to empty")
    result = counts(a, b, sent, acknowledged)
    print(f"\n{case}: {result}")
    assert result["sent"] == result["acknowledged"] == result["delivered"] == MESSAGES
    assert result["duplicated"] == 0 and result["lost"] == 0
    return result


def check_consistent(operator: Operator) -> None:
    """Every stored message has all its rows; the audit chain holds."""
    with session_scope(operator.rt.engine) as session:
        ids = session.execute(select(Message.id).where(Message.kind != "receipt")).scalars().all()
        items = Counter(session.execute(select(MailboxItem.message_id)).scalars())
        deliveries = Counter(session.execute(select(Delivery.message_id)).scalars())
        report = audit.verify(session, operator.rt.master_key)
    for message_id in ids:
        assert items[message_id] >= 1 and deliveries[message_id] >= 1, message_id
    assert report.ok, report.reason


def test_sender_killed_after_the_peers_250_delivers_again_and_the_peer_keeps_one_copy(tmp_path: Path) -> None:
    a, b, proxy_port = setup_pair(tmp_path)
    sender = OperatorProcess(a, tmp_path / "a.log")
    proxy = CuttingProxy(b.mx_port, threshold=THRESHOLD, at="reply", cut=lambda: sender.kill(), port=proxy_port)
    try:
        b.services = Services(b).start()
        sender.start()
        sent, acknowledged = submit_all(a)  # the proxy is not listening yet: A's worker waits
        proxy.start()
        wait_for(proxy.fired.is_set, timeout=60, what="the cut after B's reply")
        assert sender.process is not None and sender.process.poll() is not None  # A is dead
        with session_scope(b.rt.engine) as session:
            stored = session.execute(select(InboundDelivery.id)).all()
        with session_scope(a.rt.engine) as session:
            big = session.execute(
                select(Delivery.status)
                .join(Message, Message.id == Delivery.message_id)
                .where(Message.queue_id == acknowledged[message(BIG)[0]])
            ).scalar_one()
        assert big == "queued"  # A never learnt that B has it ...
        assert len(stored) >= 1  # ... while B committed it
        result = restarted_delivers_everything(sender, a, b, sent, acknowledged, "sender killed after the peer's 250")
        assert result["repeats answered without storing"] >= 1  # the window was really hit
        assert sender.stop() == 0
        check_consistent(a)
        check_consistent(b)
    finally:
        proxy.stop()
        sender.stop()
        a.close()
        b.close()


def test_receiver_killed_during_data_stores_nothing_half_and_gets_the_retry(tmp_path: Path) -> None:
    a, b, proxy_port = setup_pair(tmp_path)
    receiver = OperatorProcess(b, tmp_path / "b.log")
    proxy = CuttingProxy(
        b.mx_port, threshold=THRESHOLD, at="upload", cut=lambda: receiver.kill(), port=proxy_port
    ).start()
    try:
        receiver.start()
        a.services = Services(a).start()
        sent, acknowledged = submit_all(a)
        wait_for(proxy.fired.is_set, timeout=60, what="the cut during DATA")
        # B died in the middle of the large message: nothing of it is stored, and what B
        # had stored before is whole.
        big_id = message(BIG)[0]
        with session_scope(b.rt.engine) as session:
            assert session.execute(select(Message.id).where(Message.message_id == big_id)).first() is None
        check_consistent(b)
        restarted_delivers_everything(receiver, a, b, sent, acknowledged, "receiver killed during DATA")
        with session_scope(a.rt.engine) as session:
            attempts = session.execute(
                select(Outbound.attempts)
                .join(Message, Message.id == Outbound.message_id)
                .where(Message.message_id == big_id)
            ).scalar_one()
        assert attempts >= 2  # the first attempt was cut, a later one succeeded
        assert receiver.stop() == 0
        check_consistent(a)
        check_consistent(b)
    finally:
        proxy.stop()
        receiver.stop()
        a.close()
        b.close()
