"""Two operators on loopback exchange mail over mutual TLS, with receipts coming back.

Operator A serves chu-demo.mss.test, operator B medecin.mss.test; each has its own data
folder, database, CA and certificate publication. Mail goes through the sender's submission
relay, its outbound queue and delivery worker, the other operator's MX door, store and web
inbox; receipts come back the same way. Then the doors that must stay shut: no client
certificate, a certificate from an unknown CA, a sender domain off the trust list, a
relay attempt, a peer whose domain was taken off the list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import smtplib
import socket
import ssl
from collections.abc import Iterator
from email.utils import make_msgid

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from db_faults import refused
from federation_support import (
    A_DOMAIN,
    A_USERS,
    B_DOMAIN,
    B_NO_ACCOUNT,
    B_USERS,
    Operator,
    Services,
    free_port,
    linked_operators,
    start,
    trust_peer,
    wait_for,
)
from litestar.testing import TestClient
from sqlalchemy import select

from mss import accounts, audit, metrics, trust
from mss.crypto import keys, pki
from mss.db import session_scope
from mss.models import AuditEvent, Delivery, Message, Outbound, PeerCertificate, Receipt
from mss.relay import protocol
from mss.runtime import MessageThreads
from mss.store import MessageMeta
from mss.web import create_app

from metrics_support import counted
from relay_support import answered_within
from web_support import BASE_URL, build_message, login, pdf_bytes

MARC, CEDRIC = A_USERS
JOEL, ELOISE = B_USERS


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, Operator]]:
    # A publishes no certificates: B learns them from signatures of A's users only.
    with linked_operators(tmp_path_factory.mktemp("federation"), a_publishes=False) as (a, b):
        start(a, b)
        yield a, b


def message_row(operator: Operator, queue_id: str) -> Message:
    with session_scope(operator.rt.engine) as session:
        return session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()


def deliveries(operator: Operator, queue_id: str) -> dict[str, Delivery]:
    with session_scope(operator.rt.engine) as session:
        message = session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()
        rows = session.execute(select(Delivery).where(Delivery.message_id == message.id)).scalars()
        return {row.recipient: row for row in rows}


def receipts_of(operator: Operator, queue_id: str) -> list[tuple[str, str, str, str]]:
    with session_scope(operator.rt.engine) as session:
        message = session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()
        rows = session.execute(select(Receipt).where(Receipt.message_id == message.id).order_by(Receipt.id)).scalars()
        return [(r.kind, r.status, r.recipient, r.reason) for r in rows]


def has_receipt(operator: Operator, queue_id: str, kind: str, status: str, recipient: str) -> bool:
    return any(r[:3] == (kind, status, recipient) for r in receipts_of(operator, queue_id))


def newest_from(operator: Operator, owner: str, sender: str) -> Message:
    found = [m for m in operator.inbox(owner) if m.sender == sender and m.kind != "receipt"]
    return found[-1] if found else None


def relayed(operator: Operator, queue_id: str, recipient: str) -> Delivery | None:
    row = deliveries(operator, queue_id)[recipient]
    return row if row.status == "relayed" else None


def letter(sender: str, recipient: str, subject: str, body: str, filename: str) -> bytes:
    """A message from ``sender`` to ``recipient`` with one PDF named ``filename``, asking for a
    read receipt."""
    return build_message(
        sender, [recipient], subject, body, [(filename, "application/pdf", pdf_bytes())], read_receipt=True
    )


def page_of(operator: Operator, person_address: str, queue_id: str, folder: str = "inbox") -> str:
    with TestClient(create_app(operator.rt), base_url=BASE_URL) as client:
        login(client, operator.people[person_address])
        page = client.get(f"/messages/{queue_id}?folder={folder}", headers={"accept-language": "en"})
        assert page.status_code == 200, page.text
        return page.text


def mx_data_counts() -> dict[str, float]:
    """How many DATA phases the MX doors of this process have timed, by phase."""
    return {phase: counted("mss_smtp_data_seconds_count", door="mx", phase=phase) for phase in metrics.DATA_PHASES}


def test_encrypted_both_ways_with_receipts_back(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    timed = mx_data_counts()
    # A to B: B publishes Joël's certificate, so A encrypts to it.
    raw = letter(MARC, JOEL, "Lettre de liaison", "Bonjour,\nci-joint la lettre.\n", "courrier.pdf")
    queue_id = a.submit(MARC, [JOEL], raw, rcpt_options=("NOTIFY=SUCCESS,FAILURE",))
    arrived = wait_for(lambda: newest_from(b, JOEL, MARC), what="the message at B")
    origin = MessageMeta.open(b.rt.master_key, arrived.meta_sealed).origin
    assert origin is not None and origin["protection"] == "encrypted" and origin["domain"] == A_DOMAIN
    delivery = wait_for(lambda: relayed(a, queue_id, JOEL), what="the relayed delivery at A")
    assert "encrypted to the recipient's certificate" in delivery.reason
    wait_for(
        lambda: (
            has_receipt(a, queue_id, "mdn", "processed", JOEL) and has_receipt(a, queue_id, "dsn", "delivered", JOEL)
        ),
        what="B's processed MDN and delivered DSN at A",
    )

    # Joël reads it in B's web inbox, having chosen to send read receipts when asked
    # (RFC 8098 2.1: his consent): A's signature checks out against A's CA and its CRL.
    with session_scope(b.rt.engine) as session:
        accounts.set_read_receipt_choice(session, JOEL, "always", actor=JOEL)
    page = page_of(b, JOEL, arrived.queue_id)
    assert "valid signature" in page and "Marc ROBERT" in page and f"at operator {A_DOMAIN}" in page
    assert "courrier.pdf" in page
    wait_for(lambda: has_receipt(a, queue_id, "mdn", "displayed", JOEL), what="the displayed MDN at A")

    # And A's sender sees the journey in the Sent view.
    sent = page_of(a, MARC, queue_id, folder="sent")
    assert "relayed" in sent and "read" in sent and "encrypted to the recipient&#39;s certificate" in sent

    # B to A: B learnt Marc's certificate from his signature, so the reply is encrypted too.
    with session_scope(b.rt.engine) as session:
        learnt = session.execute(select(PeerCertificate).where(PeerCertificate.address == MARC)).scalars().all()
    assert [row.source for row in learnt] == ["signature"]
    reply = build_message(JOEL, [MARC], "Re: Lettre de liaison", "Bien reçu, merci.\n")
    reply_id = b.submit(JOEL, [MARC], reply)
    back = wait_for(lambda: newest_from(a, MARC, JOEL), what="the reply at A")
    assert MessageMeta.open(a.rt.master_key, back.meta_sealed).origin["protection"] == "encrypted"
    assert "encrypted" in wait_for(lambda: relayed(b, reply_id, MARC), what="the reply relayed").reason
    assert "valid signature" in page_of(a, MARC, back.queue_id)
    # The MX doors timed each DATA they took in (the letter and the receipts at least).
    assert all(count >= timed[phase] + 2 for phase, count in mx_data_counts().items())


def test_signed_inside_mutual_tls_when_no_certificate_is_known(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    # Cédric never wrote to B and A publishes nothing: B cannot encrypt to him.
    raw = letter(JOEL, CEDRIC, "Compte rendu", "Voici le compte rendu.\n", "cr.pdf")
    queue_id = b.submit(JOEL, [CEDRIC], raw)
    delivery = wait_for(lambda: relayed(b, queue_id, CEDRIC), what="the relayed delivery at B")
    assert "signed, not encrypted" in delivery.reason
    arrived = wait_for(lambda: newest_from(a, CEDRIC, JOEL), what="the message at A")
    meta = MessageMeta.open(a.rt.master_key, arrived.meta_sealed)
    assert meta.origin is not None and meta.origin["protection"] == "signed" and meta.origin["signature"] == "valid"
    assert [d.filename for d in meta.documents] == ["cr.pdf"]  # A read it: its documents were checked
    # Stored encrypted to Cédric on arrival: the database holds ciphertext only.
    assert b"Voici le compte rendu" not in arrived.cms
    page = page_of(a, CEDRIC, arrived.queue_id)
    assert "valid signature" in page and "Joël MICHEL" in page and f"at operator {B_DOMAIN}" in page
    wait_for(lambda: has_receipt(b, queue_id, "mdn", "processed", CEDRIC), what="A's processed MDN at B")
    sent = page_of(b, JOEL, queue_id, folder="sent")
    assert "signed, not encrypted" in sent


def test_a_peer_refusal_fails_at_once_with_its_reply(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    raw = build_message(MARC, [B_NO_ACCOUNT], "Demande d'avis", "Bonjour.\n")
    queue_id = a.submit(MARC, [B_NO_ACCOUNT], raw)
    wait_for(lambda: has_receipt(a, queue_id, "dsn", "failed", B_NO_ACCOUNT), what="the failed DSN at A")
    reason = next(r[3] for r in receipts_of(a, queue_id) if r[:2] == ("dsn", "failed"))
    assert "550 5.1.1" in reason and "no mailbox" in reason
    assert deliveries(a, queue_id)[B_NO_ACCOUNT].status == "failed"
    with session_scope(a.rt.engine) as session:
        entry = (
            session.execute(select(Outbound).where(Outbound.message_id == message_row(a, queue_id).id)).scalars().one()
        )
    assert entry.state == "failed" and entry.attempts == 1  # 5xx: no retry
    assert not b.inbox(B_NO_ACCOUNT)


# -- the MX door, spoken to directly ------------------------------------------------------------


def mx(operator: Operator, context: ssl.SSLContext, *, source: str | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", operator.mx_port, timeout=20, source_address=(source, 0) if source else None)
    client.ehlo("peer.test")
    client.starttls(context=context)
    client.ehlo("peer.test")
    return client


def plain(
    sender: str,
    to: str,
    subject: str = "Avis",
    message_id: str | None = None,
    from_header: str | None = None,
    with_id: bool = True,
) -> bytes:
    lines = [
        f"From: {from_header or sender}",
        f"To: {to}",
        f"Subject: {subject}",
        "Date: Mon, 30 Nov 2026 10:00:00 +0100",
    ]
    if with_id:
        lines.append(f"Message-ID: {message_id or make_msgid(domain='peer.test')}")
    return ("\r\n".join(lines) + "\r\n\r\nBonjour,\r\navis favorable.\r\n").encode()


def refusals(operator: Operator) -> list[tuple[str, str]]:
    with session_scope(operator.rt.engine) as session:
        rows = session.execute(select(AuditEvent).where(AuditEvent.action == "mx.refused")).scalars().all()
    return [(json.loads(r.detail)["stage"], json.loads(r.detail)["reason"]) for r in rows]


def test_no_client_certificate_no_mail(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    client = mx(b, a.peer_context(certificate=False))
    code, text = client.mail(MARC)
    assert (code, text[:5]) == (530, b"5.7.0") and b"client certificate" in text
    client.quit()
    assert ("mail", "no-client-certificate") in refusals(b)


def test_one_address_cannot_take_every_session_of_the_mx_door(pair: tuple[Operator, Operator]) -> None:
    """Before any certificate is shown, a client is an address: from one, the MX door lets
    in MSS_MX_MAX_SESSIONS_PER_CLIENT sessions and tells the next ones 421 4.7.0, and a
    peer at another address still delivers. (The flood comes from an address of its own:
    the operators' deliveries to each other come from 127.0.0.1.)"""
    a, b = pair
    per_client = b.rt.settings.federation.mx_max_sessions_per_client
    assert per_client < b.rt.settings.relay.max_sessions
    idle: list[socket.socket] = []
    try:
        greetings = []
        for _ in range(per_client + 5):
            sock = socket.create_connection(("127.0.0.1", b.mx_port), timeout=10, source_address=("127.0.0.5", 0))
            idle.append(sock)
            greetings.append(sock.makefile("rb").readline())
        assert sum(g.startswith(b"220 ") for g in greetings) == per_client
        assert greetings[per_client:] == [b"421 4.7.0 Too many sessions from your address, try again later\r\n"] * 5
        before = b.count(Message)
        client = mx(b, a.peer_context(), source="127.0.0.2")
        assert client.sendmail(MARC, [JOEL], plain(MARC, JOEL, "Autre adresse")) == {}
        client.quit()
        assert b.count(Message) == before + 1
    finally:
        for sock in idle:
            sock.close()


def test_a_certificate_from_an_unknown_ca_fails_the_handshake(pair: tuple[Operator, Operator], tmp_path) -> None:
    a, b = pair
    stranger = pki.new_certificate_authority(common_name="Unknown operator CA", organisation="nowhere")
    key, certificate = pki.issue_tls_certificate(stranger, ["localhost", "127.0.0.1"])
    (tmp_path / "c.pem").write_bytes(certificate.public_bytes(Encoding.PEM))
    (tmp_path / "c.key").write_bytes(keys.private_key_to_pem(key))
    context = a.peer_context(certificate=False)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "c.key")
    before = b.count(Message)
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        client = mx(b, context)
        client.mail(MARC)  # TLS 1.3: the server's alert arrives at the first read after the handshake
    wait_for(lambda: ("tls", "CERTIFICATE_VERIFY_FAILED") in refusals(b), what="the refused handshake on record")
    assert b.count(Message) == before


def test_sender_domains_off_the_trust_list_and_relaying_are_refused(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    client = mx(b, a.peer_context())
    ehlo = client.ehlo("peer.test")[1].decode()
    assert "AUTH" not in ehlo and "DSN" in ehlo
    assert client.docmd("AUTH", "PLAIN AGFAYg==")[0] == 502
    code, text = client.mail("someone@pharmacie.mss.test")  # a domain of nobody's trust list
    assert (code, text[:5]) == (550, b"5.7.1") and b"trust list" in text
    code, text = client.mail(JOEL)  # B's own domain cannot arrive from outside
    assert (code, text[:5]) == (550, b"5.7.1") and b"served here" in text
    code, text = client.mail("nobody.here@chu-demo.mss.test")
    assert (code, text[:5]) == (550, b"5.7.1") and b"directory" in text
    assert client.mail(MARC)[0] == 250
    assert client.rcpt("someone@example.org")[:2] == (550, b"5.7.1 Relay access denied: domain not served here")
    assert client.rcpt(CEDRIC)[0] == 550  # A's own user: no relaying back through B
    assert client.rcpt(B_NO_ACCOUNT) == (550, b"5.1.1 Recipient has no mailbox here")
    assert client.rcpt("nobody.here@medecin.mss.test")[:2] == (550, b"5.1.1 Recipient address is not in the directory")
    assert client.rcpt(JOEL)[0] == 250
    code, text = client.data(plain(MARC, JOEL, from_header=CEDRIC))
    assert (code, text[:5]) == (550, b"5.7.1") and b"envelope sender" in text
    client.rset()
    client.mail(MARC)
    client.rcpt(JOEL)
    code, text = client.data(plain(MARC, JOEL, with_id=False))
    assert (code, text[:5]) == (554, b"5.6.0") and b"Message-ID" in text
    client.rset()
    # A receipt (null sender) must come from a listed domain too.
    client.mail("<>")
    client.rcpt(JOEL)
    code, text = client.data(plain("", JOEL, from_header="postmaster@pharmacie.mss.test"))
    assert (code, text[:5]) == (550, b"5.7.1")
    client.quit()


def test_a_repeated_delivery_is_stored_once(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    message_id = make_msgid(domain="chu-demo.mss.test")
    replies = []
    for _attempt in range(2):
        client = mx(b, a.peer_context())
        client.mail(MARC)
        client.rcpt(ELOISE)
        replies.append(client.data(plain(MARC, ELOISE, "Avis unique", message_id=message_id)))
        client.quit()
    first, second = (text.decode().rsplit(" ", 1)[1] for _code, text in replies)
    assert [code for code, _t in replies] == [250, 250] and first == second
    assert b"already received" in replies[1][1]
    stored = [m for m in b.inbox(ELOISE) if m.message_id == message_id]
    assert len(stored) == 1
    # A plain message is encrypted to Éloïse on arrival, and shown as not signed.
    assert b"avis favorable" not in stored[0].cms
    page = page_of(b, ELOISE, stored[0].queue_id)
    assert "not signed" in page and f"received from operator {A_DOMAIN}" in page
    with session_scope(b.rt.engine) as session:
        duplicates = session.execute(select(AuditEvent).where(AuditEvent.action == "message.duplicate")).scalars().all()
    assert [d.object for d in duplicates] == [first]
    with session_scope(b.rt.engine) as session:
        assert audit.verify(session, b.rt.master_key).ok


def test_a_peer_taken_off_the_trust_list(pair: tuple[Operator, Operator]) -> None:
    a, b = pair
    with session_scope(b.rt.engine) as session:
        trust.remove(session, A_DOMAIN, actor="test")
    try:
        # B's users can no longer write to A ...
        with smtplib.SMTP("127.0.0.1", b.smtp_port, timeout=30) as client:
            client.starttls(context=b.client_context())
            client.login(JOEL, b.people[JOEL].password)
            client.mail(JOEL)
            assert client.rcpt(MARC)[:2] == (550, b"5.7.1 Relay access denied: domain not served here")
        # ... and what A sends is refused at B's door: A's sender gets the failure at once.
        raw = build_message(MARC, [JOEL], "Encore un courrier", "Bonjour.\n")
        queue_id = a.submit(MARC, [JOEL], raw)
        wait_for(lambda: has_receipt(a, queue_id, "dsn", "failed", JOEL), what="the failed DSN at A")
        reason = next(r[3] for r in receipts_of(a, queue_id) if r[:2] == ("dsn", "failed"))
        assert "550 5.7.1" in reason and "trust list" in reason
        assert ("mail", "sender-not-trusted") in refusals(b)
    finally:
        with session_scope(b.rt.engine) as session:
            trust.add(session, b.settings, A_DOMAIN, actor="test")


def test_a_peer_without_dsn_gets_the_sender_a_relayed_notice(pair: tuple[Operator, Operator]) -> None:
    """RFC 3461 5.2: when the next hop does not offer DSN, the relaying MTA reports
    ``relayed`` to a sender who asked for SUCCESS. The peer here is aiosmtpd, requiring a
    client certificate like an MX of the trust space, and offering no DSN."""
    from aiosmtpd.controller import Controller

    from mss.relay.tls import mx_server_context

    a, b = pair
    received = []

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            received.append((envelope.mail_from, envelope.rcpt_tos, session.ssl["ssl_object"].getpeercert()))
            return "250 2.0.0 Ok"

    port = free_port()
    # B's certificate, and B's peer CAs to check A's client certificate.
    controller = Controller(
        Sink(), hostname="127.0.0.1", port=port, tls_context=mx_server_context(b.settings), require_starttls=True
    )
    controller.start()
    try:
        trust_peer(a, "pharmacie.mss.test", f"127.0.0.1:{port}")
        pharmacist = "chloe.ndiaye@pharmacie.mss.test"
        raw = build_message(MARC, [pharmacist], "Ordonnance", "Bonjour.\n")
        queue_id = a.submit(MARC, [pharmacist], raw, rcpt_options=("NOTIFY=SUCCESS,FAILURE",))
        wait_for(lambda: has_receipt(a, queue_id, "dsn", "relayed", pharmacist), what="the relayed DSN")
        reason = next(r[3] for r in receipts_of(a, queue_id) if r[:2] == ("dsn", "relayed"))
        assert "signed, not encrypted" in reason
        assert received and received[0][0] == MARC and received[0][1] == [pharmacist]
        assert ("commonName", "localhost") in [item for rdn in received[0][2]["subject"] for item in rdn]
    finally:
        controller.stop()


def test_the_mx_door_takes_in_a_bounded_number_of_messages_at_once(
    pair: tuple[Operator, Operator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one message thread, B's MX door takes in two messages at once from a peer's
    address: a third DATA is answered 354 once one of them ends, and all three are stored."""
    a, b = pair
    monkeypatch.setattr(protocol, "SLOT_WAIT", 120.0)  # longer than the test
    monkeypatch.setattr(protocol, "SLOT_WAIT_LONGEST", 120.0)
    stored = b.count(Message)
    b.services.stop()
    b.services = Services(b, rt=dataclasses.replace(b.rt, messages=MessageThreads(1)), worker=False).start()
    try:
        bodies = [plain(MARC, JOEL, f"Avis {n}") + b".\r\n" for n in range(3)]
        sessions = []
        for _body in bodies:
            client = mx(b, a.peer_context())
            assert client.mail(MARC)[0] == 250 and client.rcpt(JOEL)[0] == 250
            client.putcmd("data")
            sessions.append(client)
        first, second, third = sessions
        for client, body in ((first, bodies[0]), (second, bodies[1])):
            assert client.getreply()[0] == 354
            client.send(body[: len(body) // 2])
        assert not answered_within(third, 1.0)  # the peer's address has its two
        first.send(bodies[0][len(bodies[0]) // 2 :])
        assert first.getreply()[0] == 250
        assert third.getreply()[0] == 354
        third.send(bodies[2])
        assert third.getreply()[0] == 250
        second.send(bodies[1][len(bodies[1]) // 2 :])
        assert second.getreply()[0] == 250
        for client in sessions:
            client.quit()
        assert b.count(Message) == stored + 3
    finally:
        b.services.stop()
        b.services = Services(b).start()


def test_a_signer_certificate_not_kept_does_not_refuse_the_message(
    pair: tuple[Operator, Operator], caplog: pytest.LogCaptureFixture
) -> None:
    """Once A has stored a message, keeping its signer's certificate decides nothing: A's
    database refusing it (a trigger here) leaves the message taken at the first attempt,
    with a 250, not a 451 that would have B send it again. B knows no certificate of
    Cédric's (A publishes none), so it sends signed, and A verifies on arrival."""
    a, b = pair
    with session_scope(a.rt.engine) as session:
        assert not session.execute(select(PeerCertificate).where(PeerCertificate.address == ELOISE)).first()
    raw = build_message(ELOISE, [CEDRIC], "Avis de passage", "Bonjour.\n")
    with caplog.at_level(logging.ERROR, logger="mss.peers"), refused(a.rt.engine, "peer_certificate", "INSERT"):
        queue_id = b.submit(ELOISE, [CEDRIC], raw)
        arrived = wait_for(lambda: newest_from(a, CEDRIC, ELOISE), what="the message at A")
        assert "signed, not encrypted" in wait_for(lambda: relayed(b, queue_id, CEDRIC), what="the delivery").reason
    with session_scope(b.rt.engine) as session:
        outbound = session.execute(
            select(Outbound).join(Message, Message.id == Outbound.message_id).where(Message.queue_id == queue_id)
        ).scalar_one()
    assert outbound.attempts == 1 and "451" not in outbound.last_error, (outbound.attempts, outbound.last_error)
    assert [m.queue_id for m in a.inbox(CEDRIC)].count(arrived.queue_id) == 1
    with session_scope(a.rt.engine) as session:
        assert not session.execute(select(PeerCertificate).where(PeerCertificate.address == ELOISE)).first()
    assert any("could not be kept" in record.getMessage() for record in caplog.records)


def _report_from_peer(about: str, recipients: list[str]) -> bytes:
    """A DSN as another operator's MTA writes one: each recipient delivered."""
    blocks = "".join(f"\r\nFinal-Recipient: rfc822;{r}\r\nAction: delivered\r\nStatus: 2.0.0\r\n" for r in recipients)
    return (
        f"From: mailer-daemon@{B_DOMAIN}\r\nTo: {MARC}\r\nSubject: Delivered\r\n"
        f"Date: Mon, 30 Nov 2026 10:00:00 +0100\r\nMessage-ID: {make_msgid(domain=B_DOMAIN)}\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary="r"\r\n\r\n'
        "--r\r\nContent-Type: text/plain\r\n\r\nDelivered.\r\n"
        f"--r\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.{B_DOMAIN}\r\n{blocks}"
        f"--r\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: {about}\r\n\r\n--r--\r\n"
    ).encode()


def test_a_peer_report_speaks_only_for_the_recipients_it_was_sent_to(pair: tuple[Operator, Operator]) -> None:
    """Another operator's receipt is linked for the original's recipients at other
    operators only: one that names a recipient served here (whose receipts are this
    operator's to write) or an address the original did not name leaves them out."""
    a, b = pair
    queue_id = a.submit(MARC, [JOEL, CEDRIC], build_message(MARC, [JOEL, CEDRIC], "Deux", "Texte.\n"))
    wait_for(lambda: relayed(a, queue_id, JOEL), what="the relayed delivery at A")
    about = message_row(a, queue_id).message_id
    before = receipts_of(a, queue_id)
    client = mx(a, b.peer_context())
    client.sendmail("", [MARC], _report_from_peer(about, [CEDRIC, B_NO_ACCOUNT, JOEL]))
    client.quit()
    wait_for(lambda: has_receipt(a, queue_id, "dsn", "delivered", JOEL), what="the DSN for Joël at A")
    added = [r[:3] for r in receipts_of(a, queue_id) if r not in before]
    assert added == [("dsn", "delivered", JOEL)], added


def test_a_peer_report_about_no_message_sent_is_logged_without_its_text(
    pair: tuple[Operator, Operator], caplog: pytest.LogCaptureFixture
) -> None:
    """The peer's Message-ID is its text, which may name a patient: the log has its digest."""
    a, b = pair
    about = "<dupont.jean.1962-lettre@hopital.example>"
    caplog.set_level(logging.INFO, logger="mss")
    client = mx(a, b.peer_context())
    client.sendmail("", [MARC], _report_from_peer(about, [JOEL]))
    client.quit()
    wait_for(lambda: "none of its addressees sent" in caplog.text, what="the report's log line")
    assert "dupont" not in caplog.text and hashlib.sha256(about.encode()).hexdigest()[:16] in caplog.text
