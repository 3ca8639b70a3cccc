"""A real MTA as the other operator: Debian's Postfix serves medecin.mss.test, requires a
client certificate from whoever delivers to it (``smtpd_tls_req_ccert``) and presents its
own when it delivers to mss, both ways over mutual TLS on loopback.

mss (operator A, chu-demo.mss.test) delivers a signed message to Postfix, which files it in
a maildir after verifying A's client certificate; ``openssl cms`` verifies the signature as
any mail client would; Postfix's ``delivered`` DSN comes back and shows in the sender's
Sent view. Then Postfix delivers a plain message to mss, which checks Postfix's certificate
against its peer CAs, encrypts the message to its recipient on arrival and shows it as not
signed, received from that operator.
"""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Iterator
from email.utils import make_msgid

import pytest
from federation_support import (
    A_DOMAIN,
    A_USERS,
    B_DOMAIN,
    B_USERS,
    Operator,
    build_operator,
    free_port,
    start,
    trust_peer,
    wait_for,
    write_peer_cas,
)
from sqlalchemy import select

from mss.crypto import pki
from mss.db import session_scope
from mss.models import Delivery, Message, Receipt
from mss.store import MessageMeta

from postfix_support import PostfixPeer, require_postfix
from web_support import build_message

MARC = A_USERS[0]
JOEL = B_USERS[0]


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, PostfixPeer]]:
    require_postfix()
    a = build_operator(tmp_path_factory.mktemp("postfix") / "a", "a", A_DOMAIN, A_USERS)
    postfix = PostfixPeer(
        domain=B_DOMAIN,
        mailboxes=[JOEL],
        mx_port=free_port(),
        submission_port=free_port(),
        trusted_cas=[a.ca_file],
        routes={A_DOMAIN: ("127.0.0.1", a.mx_port)},
    )
    write_peer_cas(a, postfix.ca_file)
    trust_peer(a, B_DOMAIN, f"127.0.0.1:{postfix.mx_port}")
    try:
        postfix.start()
        start(a)
        yield a, postfix
    finally:
        postfix.stop()
        a.close()


def test_mss_delivers_to_postfix_over_mutual_tls_and_its_dsn_comes_back(peers, tmp_path) -> None:
    a, postfix = peers
    raw = build_message(MARC, [JOEL], "Lettre de liaison", "Bonjour,\nla lettre suit.\n")
    queue_id = a.submit(MARC, [JOEL], raw, rcpt_options=("NOTIFY=SUCCESS,FAILURE",))
    delivered = wait_for(lambda: postfix.mailbox(JOEL), timeout=30, what="the message in Postfix's maildir")
    message = delivered[0]
    # Postfix verified A's client certificate against A's CA before accepting anything.
    ca_name = pki.load_ca_certificate(a.settings).subject.rfc4514_string().split("CN=")[1].split(",")[0]
    received = " ".join(str(message["Received"]).split())
    assert 'Client CN "localhost"' in received and f'Issuer "{ca_name}"' in received and "(verified OK)" in received
    # No certificate of Joël is known to A: signed S/MIME, which openssl verifies.
    assert message.get_content_type() == "application/pkcs7-mime"
    assert message.get_param("smime-type") == "signed-data"
    (tmp_path / "in.eml").write_bytes(bytes(message))
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-in", str(tmp_path / "in.eml"), "-CAfile", str(a.ca_file), "-purpose", "any"],
        capture_output=True,
        timeout=30,
    )
    assert verified.returncode == 0, verified.stderr
    assert b"la lettre suit" in verified.stdout and b"Verification successful" in verified.stderr
    with session_scope(a.rt.engine) as session:
        stored = session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()

    def delivery() -> Delivery:
        with session_scope(a.rt.engine) as session:
            return session.execute(select(Delivery).where(Delivery.message_id == stored.id)).scalars().one()

    # Postfix may put the message in the maildir before A's outbound worker has committed
    # the 250 it got.
    relayed = wait_for(lambda: (row := delivery()).status != "queued" and row, what="A to record the relay")
    assert relayed.status == "relayed" and f"127.0.0.1:{postfix.mx_port}" in relayed.reason

    # Postfix's own delivered DSN (we passed NOTIFY=SUCCESS on) comes back over mutual TLS.
    def linked() -> list[tuple[str, str]]:
        with session_scope(a.rt.engine) as session:
            rows = session.execute(select(Receipt).where(Receipt.message_id == stored.id)).scalars().all()
        return [(r.kind, r.status) for r in rows if r.recipient == JOEL]

    assert ("dsn", "delivered") in wait_for(linked, timeout=30, what="Postfix's DSN at A")
    assert (
        f"Verified TLS connection established to 127.0.0.1[127.0.0.1]:{a.mx_port}" in postfix.log()
        or f"Trusted TLS connection established to 127.0.0.1[127.0.0.1]:{a.mx_port}" in postfix.log()
    )


def test_postfix_delivers_to_mss_over_mutual_tls(peers) -> None:
    a, postfix = peers
    message_id = make_msgid(domain=B_DOMAIN)
    raw = (
        f"From: {JOEL}\r\nTo: {MARC}\r\nSubject: Avis du cabinet\r\nMessage-ID: {message_id}\r\n"
        "Date: Mon, 30 Nov 2026 10:00:00 +0100\r\n\r\nBonjour,\r\navis favorable.\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", postfix.submission_port, timeout=30) as client:
        client.sendmail(JOEL, [MARC], raw)

    def arrived() -> Message | None:
        return next((m for m in a.inbox(MARC) if m.message_id == message_id), None)

    stored = wait_for(arrived, timeout=30, what="the message at A")
    meta = MessageMeta.open(a.rt.master_key, stored.meta_sealed)
    assert meta.origin is not None and meta.origin["protection"] == "plain" and meta.origin["domain"] == B_DOMAIN
    assert "Postfix operator CA" in meta.origin["peer_certificate"]  # A saw Postfix's client certificate
    assert b"avis favorable" not in stored.cms  # encrypted to Marc on arrival
    assert f"127.0.0.1[127.0.0.1]:{a.mx_port}" in postfix.log() and "status=sent" in postfix.log()
