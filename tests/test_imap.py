"""The IMAP door with real clients (imaplib, imapclient) over TLS on loopback: no login in
clear, the same lockout and standing rules as every door, folders, UIDs, flags, moves and
read state shared with the web API, openings audited with their read receipt, IDLE across
processes, APPEND to Sent, end-to-end mode opened by openssl, and bad input."""

from __future__ import annotations

import base64
import imaplib
import logging
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from db_faults import refused
from imap_support import ca_file, client_context, clinical_mail, connect, documents_of, login, with_imap
from imapclient import IMAPClient
from sqlalchemy import func, select

from directory import certificates, service
from mss import accounts, audit
from mss.crypto import keys, smime
from mss.db import session_scope
from mss.imap.server import ImapServer
from mss.mailbox import served
from mss.models import AuditEvent, MailboxItem, Receipt
from mss.runtime import Runtime

from document_samples import nested_multiparts
from server_process import thread_names
from smime_tools import cms_verified
from web_support import CDA_SAMPLE, GP, NURSE, build_message, create_person, submit, unlocked
from web_support import login as web_login


@pytest.fixture
def imap(rt):
    with ImapServer(rt) as server:
        yield server


def _token(client, person) -> str:
    response = client.post(
        "/api/v1/sessions", json={"address": person.address, "password": person.password, "code": person.code()}
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def _events(rt: Runtime, action: str) -> list[AuditEvent]:
    with session_scope(rt.engine) as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).scalars()
        )


def _fetch(client: imaplib.IMAP4, which: str, what: str, *, uid: bool = False) -> list:
    typ, data = client.uid("FETCH", which, what) if uid else client.fetch(which, what)
    assert typ == "OK", data
    return data


# -- the door ----------------------------------------------------------------------------


def test_no_login_before_tls_then_login_and_authenticate_plain(rt, imap, gp):
    plain = imaplib.IMAP4("127.0.0.1", imap.port, timeout=10)
    assert "STARTTLS" in plain.capabilities and "LOGINDISABLED" in plain.capabilities
    assert not any(c.startswith("AUTH=") for c in plain.capabilities)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        plain.login(gp.address, gp.password)
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        plain.authenticate("PLAIN", lambda _: f"\0{gp.address}\0{gp.password}".encode())
    plain.logout()

    client = connect(rt, imap.port)
    assert "AUTH=PLAIN" in client.capabilities and "LOGINDISABLED" not in client.capabilities
    client.authenticate("PLAIN", lambda _: f"\0{gp.address}\0{gp.password}".encode())
    typ, caps = client.capability()
    for capability in (b"IDLE", b"UIDPLUS", b"MOVE", b"NAMESPACE", b"ID", b"SPECIAL-USE"):
        assert capability in caps[0].split()
    client.logout()

    # Implicit TLS on the other port, with the relay's TLS policy (no TLS 1.1).
    implicit = imaplib.IMAP4_SSL("localhost", imap.tls_port, ssl_context=client_context(rt), timeout=10)
    assert implicit.sock.version() in {"TLSv1.2", "TLSv1.3"}
    implicit.login(gp.address, gp.password)
    assert implicit.select("INBOX")[0] == "OK"
    implicit.logout()
    old = client_context(rt)
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        imaplib.IMAP4_SSL("localhost", imap.tls_port, ssl_context=old, timeout=10)
    logins = [e for e in _events(rt, "imap.login") if e.object == gp.address]
    assert len(logins) == 2 and all(e.outcome == "success" for e in logins)


def test_logins_that_arrive_together_take_turns_at_argon2id(rt, imap, gp, argon2_overlap):
    # The rule of the SMTP door's test of the same name, in the service every door calls.
    sessions = 3 * keys.ARGON2_AT_ONCE
    ready = threading.Barrier(sessions)

    def log_in(_number: int) -> str:
        client = connect(rt, imap.port)
        ready.wait(timeout=30)
        try:
            return client.login(gp.address, gp.password)[0]
        finally:
            client.logout()

    with ThreadPoolExecutor(sessions) as pool:
        answers = list(pool.map(log_in, range(sessions)))
    assert answers == ["OK"] * sessions
    assert argon2_overlap.most == keys.ARGON2_AT_ONCE


def test_the_envelope_workers_module_imports_neither_the_door_nor_the_services():
    # What the IMAP door's workers import, once, in their fork server (mss.processes): an
    # opening needs the key, the certificate and CMS, not pymap, the database or the mailbox.
    heavy = ("mss.imap.server", "pymap", "sqlalchemy", "mss.mailbox", "mss.accounts")
    script = f"import sys, mss.imap.workers; print([m for m in {heavy!r} if m in sys.modules])"
    imported = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"


def test_the_envelope_threads_show_their_name_to_the_system(rt, imap):
    """``top -H`` tells the threads around the IMAP door's envelope workers (Linux)."""
    names = thread_names()
    assert "mss-envelopes" in names, names


def test_wrong_passwords_count_toward_the_lockout_and_are_audited(rt, imap, gp):
    limit = rt.settings.security.max_login_failures
    client = connect(rt, imap.port)  # a password no account can have: refused, not counted
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login(gp.address, "x" * (accounts.MAX_PASSWORD + 1))
    client.logout()
    for _ in range(limit):
        client = connect(rt, imap.port)
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login(gp.address, "not the password at all")
        client.logout()
    client = connect(rt, imap.port)
    with pytest.raises(imaplib.IMAP4.error, match="locked"):
        client.login(gp.address, gp.password)
    failures = [e for e in _events(rt, "imap.login") if e.outcome != "success"]
    assert len(failures) == limit + 1 and '"reason":"bad-password"' in failures[0].detail.replace(" ", "")
    assert any(e.object == gp.address for e in _events(rt, "account.lock"))


def test_a_password_that_is_not_utf8_is_a_wrong_password(rt, imap, gp):
    """Bytes that are not UTF-8 are no password an account has: refused and counted as
    any wrong password is, whether the address has an account or not."""
    for address in (gp.address, "nobody@medecin.mss.test"):
        client = connect(rt, imap.port)
        client.send(b'X1 LOGIN "' + address.encode() + b'" "\xff\xfe"\r\n')
        answer = client.readline()
        assert answer.startswith(b"X1 NO") and b"AUTHENTICATIONFAILED" in answer, answer
        client.logout()
    failures = [e for e in _events(rt, "imap.login") if e.outcome != "success" and e.object == gp.address]
    assert len(failures) == 1 and '"reason":"bad-password"' in failures[0].detail.replace(" ", "")
    login(rt, imap.port, gp).logout()


def test_revocation_ends_an_open_session_and_refuses_the_next_login(rt, imap, doctor, gp):
    submit(rt, doctor, [gp.address], "Avant", "x\n")
    client = login(rt, imap.port, gp)
    assert client.select("INBOX") == ("OK", [b"1"])
    with session_scope(rt.engine) as session:
        service.revoke_entry(session, gp.address, reason="left the practice", actor="test")
    # The next command ends the session with a BYE that says why.
    with pytest.raises(imaplib.IMAP4.abort, match="revoked"):
        client.noop()
    again = connect(rt, imap.port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHORIZATIONFAILED.*revoked"):
        again.login(gp.address, gp.password)

    # A disabled account too, and an IDLE session learns it within a poll.
    nurse = create_person(rt, NURSE)
    idle = _tls(rt, imap.tls_port)
    _login_raw(idle, nurse)
    assert b"i1 OK" in _exchange(idle, b"i1 SELECT INBOX\r\n")
    idle.sendall(b"i2 IDLE\r\n")
    assert idle.recv(1000).startswith(b"+")
    with session_scope(rt.engine) as session:
        accounts.set_disabled(session, nurse.address, True, actor="test")
    idle.settimeout(rt.settings.imap.poll_seconds * 5)
    said = b""
    while chunk := idle.recv(1000):
        said += chunk
    assert b"* BYE [AUTHORIZATIONFAILED]" in said and b"disabled" in said


def test_a_new_password_ends_a_session_the_old_one_opened(rt, imap, gp):
    """Whoever logged in with a password its owner has since replaced reads no further."""
    client = login(rt, imap.port, gp)
    assert client.select("INBOX")[0] == "OK"
    new = "a brand new passphrase 2026"
    with session_scope(rt.engine) as session:
        accounts.change_password(session, rt.settings, gp.address, gp.password, new, actor=gp.address)
    with pytest.raises(imaplib.IMAP4.abort, match="password was changed"):
        client.noop()
    gp.password = new
    again = login(rt, imap.port, gp)
    assert again.select("INBOX")[0] == "OK"
    again.logout()


def test_a_rekey_ends_an_open_session_that_holds_the_old_key(rt, imap, doctor, gp):
    """As an SMTP session's, an IMAP session checks the certificate it logged in with: a
    rekey revokes it (whoever made the rekey, after a key was lost or stolen)."""
    client = login(rt, imap.port, gp)
    assert client.select("INBOX")[0] == "OK"
    with session_scope(rt.engine) as session:
        accounts.rekey(session, rt.settings, gp.address, actor="test", reason="keyCompromise", password=gp.password)
    with pytest.raises(imaplib.IMAP4.abort, match="revoked"):
        client.noop()
    again = login(rt, imap.port, gp)  # the new key opens a new session
    assert again.select("INBOX")[0] == "OK"
    again.logout()


# -- folders, messages, flags ------------------------------------------------------------


def test_folders_uids_listing_without_decryption_and_partial_fetch(rt, imap, doctor, gp):
    clinical_mail(rt, doctor, gp)
    client = login(rt, imap.port, gp)
    typ, folders = client.list()
    assert typ == "OK"
    listed = {line.decode().rsplit(" ", 1)[1]: line.decode() for line in folders}
    assert (
        set(listed) == {"INBOX", "Sent", "Archive"} and "\\Sent" in listed["Sent"] and "\\Archive" in listed["Archive"]
    )
    typ, data = client.select("INBOX")
    assert data == [b"3"]
    validity = client.untagged_responses["UIDVALIDITY"][0]
    listing = _fetch(
        client, "1:*", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"
    )
    # A listing opens no message: nothing in the audit trail, nothing marked read.
    assert _events(rt, "message.open") == []
    sizes = {}
    for item in listing:
        if not isinstance(item, tuple):
            continue
        head = item[0].decode()
        uid = int(re.search(r"UID (\d+)", head).group(1))
        sizes[uid] = int(re.search(r"RFC822.SIZE (\d+)", head).group(1))
        assert '"application" "pkcs7-mime" ("smime-type" "signed-data"' in head and "\\Seen" not in head
        assert b"Subject:" in item[1] and b"From: " + doctor.address.encode() in item[1]
    assert sorted(sizes) == [1, 2, 3]
    for uid, size in sizes.items():
        body = _fetch(client, str(uid), "(BODY.PEEK[])", uid=True)[0][1]
        assert len(body) == size and b"\r\nX-MSS-Signature: valid;" in body.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        part = _fetch(client, str(uid), "(BODY.PEEK[]<10.20>)", uid=True)[0][1]
        assert part == body[10:30]
    # Unknown UIDs and huge sequence sets: an empty answer, not an error.
    assert _fetch(client, "999999", "(FLAGS)", uid=True) == [None]
    assert client.uid("SEARCH", None, "UID", "1:4294967295")[1] == [b"1 2 3"]
    client.logout()
    # The same UIDVALIDITY and UIDs in the next session.
    again = login(rt, imap.port, gp)
    again.select("INBOX")
    assert again.untagged_responses["UIDVALIDITY"][0] == validity
    assert again.uid("SEARCH", None, "ALL")[1] == [b"1 2 3"]
    assert again.uid("SEARCH", None, "SUBJECT", "liaison")[1] == [b"2"]
    assert again.uid("SEARCH", None, "FROM", doctor.address)[1] == [b"1 2 3"]
    assert again.uid("SEARCH", None, "TEXT", "IHE_XDM.ZIP")[1] == [b"3"]
    assert again.uid("SEARCH", None, "SINCE", "1-Jan-2020", "UNSEEN")[1] == [b"1 2 3"]
    again.logout()


def test_read_state_flags_and_moves_are_the_web_s_and_the_reverse(rt, imap, clients, doctor, gp):
    first, second, third = clinical_mail(rt, doctor, gp)
    web = clients()
    web_login(web, gp)  # enrols the authenticator, which the API requires
    token = _token(web, gp)
    auth = {"authorization": f"Bearer {token}"}

    client = login(rt, imap.port, gp)
    client.select("INBOX")
    client.store("1", "+FLAGS", "(\\Seen \\Flagged)")
    client.uid("MOVE", "2", "Archive")
    inbox = web.get("/api/v1/messages", params={"folder": "inbox"}, headers=auth).json()
    archive = web.get("/api/v1/messages", params={"folder": "archive"}, headers=auth).json()
    unread = {item["queue_id"]: item["unread"] for item in inbox["items"]}
    assert unread == {first: False, third: True}
    assert [item["queue_id"] for item in archive["items"]] == [second]

    # The reverse: read and archived in the web, seen at the next command in the client.
    assert web.get(f"/api/v1/messages/{third}", headers=auth).status_code == 200
    assert web.post(f"/api/v1/messages/{first}/archive", headers=auth).status_code == 204
    assert client.noop()[0] == "OK"
    flags = [line for line in _fetch(client, "1:*", "(UID FLAGS)") if b"UID" in line]
    assert len(flags) == 1 and b"\\Seen" in flags[0] and b"UID 3" in flags[0]
    client.select("Archive")
    archived = [line for line in _fetch(client, "1:*", "(UID FLAGS)") if b"UID" in line]
    assert len(archived) == 2 and any(b"\\Flagged" in line and b"\\Seen" in line for line in archived)

    # COPY keeps the original; EXPUNGE of a \Deleted copy leaves the other one.
    typ, data = client.uid("COPY", "1", "INBOX")
    assert typ == "OK" and client.response("COPYUID")[1][0] is not None
    client.store("1", "+FLAGS", "(\\Deleted)")
    client.expunge()
    assert web.get("/api/v1/messages", params={"folder": "archive"}, headers=auth).json()["total"] == 1
    assert web.get("/api/v1/messages", params={"folder": "inbox"}, headers=auth).json()["total"] == 2
    assert [e.action for e in _events(rt, "message.delete")] == ["message.delete"]
    # A received message is not the owner's to put in Sent; folders are fixed.
    typ, data = client.uid("MOVE", "1:*", "Sent")
    assert typ == "NO" and b"CANNOT" in data[0]
    assert client.create("Drafts")[0] == "NO"
    client.logout()


def test_reading_in_the_client_is_an_opening_with_its_read_receipt(rt, imap, doctor, gp):
    queue_id = submit(rt, doctor, [gp.address], "Merci de confirmer", "x\n", read_receipt=True).queue_id
    # The reader's consent to read receipts (RFC 8098 2.1), given once for all in the account.
    with session_scope(rt.engine) as session:
        accounts.set_read_receipt_choice(session, gp.address, "always", actor=gp.address)
    client = login(rt, imap.port, gp)
    client.select("INBOX")
    _fetch(client, "1", "(BODY.PEEK[])")
    opened = _events(rt, "message.open")
    assert [e.object for e in opened] == [queue_id] and '"channel":"imap"' in opened[0].detail.replace(" ", "")
    with session_scope(rt.engine) as session:
        assert (
            session.execute(select(func.count()).select_from(Receipt).where(Receipt.status == "displayed")).scalar()
            == 0
        )
    # BODY[] (not PEEK) displays it: \Seen, and the displayed notification goes to the sender.
    data = _fetch(client, "1", "(BODY[])")
    assert b"\\Seen" in data[0][0] or b"\\Seen" in b"".join(x for x in data if isinstance(x, bytes))
    with session_scope(rt.engine) as session:
        displayed = session.execute(select(Receipt).where(Receipt.status == "displayed")).scalars().all()
        assert [(r.recipient, r.kind) for r in displayed] == [(gp.address, "mdn")]
    client.logout()


def _until(sock: socket.socket, data: bytes, pattern: bytes) -> bytes:
    """Read on until ``pattern`` shows in what the server said."""
    while not re.search(pattern, data):
        chunk = sock.recv(65536)
        assert chunk, data[-300:]
        data += chunk
    return data


def test_pipelined_fetches_are_each_an_opening_committed_before_any_reply(rt, imap, doctor, gp):
    queue_ids = [submit(rt, doctor, [gp.address], f"Avis {n}", "x\n").queue_id for n in range(3)]
    sock = _tls(rt, imap.tls_port)
    _login_raw(sock, gp)
    assert b"s1 OK" in _exchange(sock, b"s1 SELECT INBOX\r\n")
    # What mbsync does: many UID FETCH at once, one message each (here the first one twice,
    # and one that sets \Seen), then a command with a synchronising literal, which the
    # server must ask for in its turn.
    sock.sendall(
        b"p1 UID FETCH 1 (BODY.PEEK[])\r\np2 UID FETCH 2 (BODY.PEEK[])\r\np3 UID FETCH 1 (BODY.PEEK[])\r\n"
        b"p4 UID FETCH 3 (UID BODY[])\r\np5 UID SEARCH SUBJECT {4}\r\n"
    )
    said = _until(sock, b"", rb"\* \d+ FETCH \(")
    # The first body is on its way: every opening of the pipeline is already in the trail.
    assert [e.object for e in _events(rt, "message.open")] == [queue_ids[0], queue_ids[1], queue_ids[0], queue_ids[2]]
    said = _until(sock, said, rb"p4 OK[^\r]*\r\n\+[^\r]*\r\n$")
    assert said.count(b"Subject: Avis 0") == 2 and said.count(b"Subject: Avis 1") == 1 and b"Subject: Avis 2" in said
    assert [int(t[1:]) for t in re.findall(rb"(p\d) OK", said)] == [1, 2, 3, 4]
    said = _exchange(sock, b"Avis\r\n")
    assert b"* SEARCH 1 2 3" in said and b"p5 OK" in said
    assert len(_events(rt, "message.open")) == 4
    # Commands read ahead run in their turn: a FETCH, then NOOP and IDLE behind it.
    sock.sendall(b"q1 UID FETCH 2 (BODY.PEEK[])\r\nq2 NOOP\r\nq3 IDLE\r\n")
    said = _until(sock, b"", rb"q2 OK[^\r]*\r\n\+[^\r]*\r\n$")
    assert said.index(b"q1 OK") < said.index(b"q2 OK")
    assert b"q3 OK" in _exchange(sock, b"DONE\r\n")
    assert len(_events(rt, "message.open")) == 5
    with session_scope(rt.engine) as session:
        unread = session.execute(
            select(func.count())
            .select_from(MailboxItem)
            .where(MailboxItem.owner == gp.address, MailboxItem.unread.is_(True))
        ).scalar()
        assert unread == 2  # the BODY[] fetch displayed its message, the PEEKs did not
        assert audit.verify(session, rt.master_key).ok

    # Revoked between two pipelines: the next one is refused, and nothing more is opened.
    with session_scope(rt.engine) as session:
        service.revoke_entry(session, gp.address, reason="left the practice", actor="test")
    sock.sendall(b"r1 UID FETCH 1 (BODY.PEEK[])\r\nr2 UID FETCH 2 (BODY.PEEK[])\r\n")
    said = b""
    while chunk := sock.recv(65536):
        said += chunk
    assert b"* BYE [AUTHORIZATIONFAILED]" in said and b"revoked" in said and b"FETCH (" not in said
    assert len(_events(rt, "message.open")) == 5


def test_mail_encrypted_to_a_past_certificate_is_served_after_a_rekey(rt, imap, doctor, gp):
    submit(rt, doctor, [gp.address], "Avant la nouvelle clé", "x\n")
    with session_scope(rt.engine) as session:
        accounts.rekey(session, rt.settings, gp.address, password=gp.password, actor="test")
    submit(rt, doctor, [gp.address], "Après la nouvelle clé", "x\n")
    sock = _tls(rt, imap.tls_port)
    _login_raw(sock, gp)
    assert b"s1 OK" in _exchange(sock, b"s1 SELECT INBOX\r\n")
    # Both in one pipeline: the older one opens with the past key, the newer with the new one.
    said = _exchange(sock, b"p1 UID FETCH 1 (BODY.PEEK[])\r\np2 UID FETCH 2 (BODY.PEEK[])\r\n")
    if b"p2 OK" not in said:
        said = _until(sock, said, rb"p2 OK[^\r]*\r\n$")
    assert b"p1 OK" in said and said.count(b"X-MSS-Signature: valid") == 2
    assert len(_events(rt, "message.open")) == 2
    sock.close()


def test_idle_reports_mail_stored_by_another_process(rt, imap, doctor, gp):
    with IMAPClient("localhost", port=imap.tls_port, ssl=True, ssl_context=client_context(rt), timeout=30) as client:
        client.login(gp.address, gp.password)
        client.select_folder("INBOX")
        client.idle()
        # Another process: its own engine on the same database, submitting through the pipeline.
        from mss.db import make_engine

        other_engine = make_engine(rt.settings)
        other = Runtime(settings=rt.settings, engine=other_engine, master_key=rt.master_key)
        submit(other, doctor, [gp.address], "Nouveau", "x\n")
        other_engine.dispose()
        responses = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            r[1] == b"EXISTS" for r in responses if isinstance(r, tuple) and len(r) > 1
        ):
            responses += client.idle_check(timeout=2)
        client.idle_done()
        assert (1, b"EXISTS") in responses
        assert client.search(["UNSEEN"]) == [1]


def test_append_to_sent_of_a_message_sent_through_the_relay_does_not_duplicate_it(rt, imap, doctor, gp):
    raw = build_message(doctor.address, [gp.address], "Envoyé", "x\n")
    from email import message_from_bytes

    sent = submit(rt, doctor, [gp.address], "Envoyé", "x\n")
    with session_scope(rt.engine) as session:
        before = session.execute(select(func.count()).select_from(MailboxItem)).scalar()
    client = login(rt, imap.port, doctor)
    typ, data = client.select("Sent")
    assert data == [b"1"]
    copy = message_from_bytes(raw)
    del copy["Message-ID"]
    copy["Message-ID"] = sent.message_id
    typ, data = client.append("Sent", "\\Seen", None, copy.as_bytes())
    assert typ == "OK" and re.match(rb"\[APPENDUID \d+ 1\]", data[0]), data
    with session_scope(rt.engine) as session:
        assert session.execute(select(func.count()).select_from(MailboxItem)).scalar() == before
    typ, data = client.append("Sent", None, None, raw)
    assert typ == "NO" and b"CANNOT" in data[0]
    typ, data = client.append("INBOX", None, None, raw)
    assert typ == "NO" and b"relay" in data[0]
    # A Message-ID the email package cannot read (it raises on these) is not one of ours.
    for broken in (b"<", b"<a@", b"<a@["):
        typ, data = client.append("Sent", None, None, b"Message-ID: " + broken + b"\r\nSubject: x\r\n\r\nx\r\n")
        assert typ == "NO" and b"CANNOT" in data[0], (broken, data)
    client.noop()  # still served
    client.logout()


def test_end_to_end_mode_serves_the_envelope_that_openssl_opens(rt, imap, doctor, gp, tmp_path):
    clinical_mail(rt, doctor, gp)
    client = login(rt, imap.port, gp)
    client.select("INBOX")
    decrypted_validity = client.untagged_responses["UIDVALIDITY"][0]
    client.logout()
    served.set_mode(rt.engine, gp.address, served.END_TO_END, actor="test")

    account = accounts.authenticate(rt.engine, rt.settings, gp.address, gp.password, accounts.Origin("cli"))
    from cryptography.hazmat.primitives import serialization

    from mss.crypto import keys

    key = keys.private_key_from_der(account.private_key_der, authenticated=True)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "cert.pem").write_bytes(account.certificate.public_bytes(serialization.Encoding.PEM))
    client = login(rt, imap.port, gp)
    client.select("INBOX")
    assert client.untagged_responses["UIDVALIDITY"][0] != decrypted_validity
    listing = _fetch(client, "1:*", "(RFC822.SIZE BODYSTRUCTURE)")
    documents: dict[str, bytes] = {}
    for number, line in enumerate(listing, 1):
        assert b'"smime-type" "enveloped-data"' in line
        body = _fetch(client, str(number), "(BODY.PEEK[])")[0][1]
        assert int(re.search(rb"RFC822.SIZE (\d+)", line).group(1)) == len(body)
        (tmp_path / "m.eml").write_bytes(body)
        inner = subprocess.run(
            [
                "openssl",
                "cms",
                "-decrypt",
                "-in",
                str(tmp_path / "m.eml"),
                "-recip",
                str(tmp_path / "cert.pem"),
                "-inkey",
                str(tmp_path / "key.pem"),
            ],
            capture_output=True,
            check=True,
        ).stdout
        documents.update(documents_of(cms_verified(inner, ca_file(rt))))
    assert set(documents) == {"compte-rendu.pdf", CDA_SAMPLE.name, "IHE_XDM.ZIP"}
    assert documents[CDA_SAMPLE.name] == CDA_SAMPLE.read_bytes()
    client.logout()


# -- bad input and load ------------------------------------------------------------------


def _raw(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert sock.recv(1000).startswith(b"* OK")
    return sock


def _exchange(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    data = b""
    while not re.search(rb"(^|\r\n)([^*\s]\S* (OK|NO|BAD)|\* BYE)[^\r\n]*\r\n$", data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _tls(rt: Runtime, port: int, *, rcvbuf: int = 0) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    tls = client_context(rt).wrap_socket(sock, server_hostname="localhost")
    assert tls.recv(1000).startswith(b"* OK")
    return tls


def _login_raw(sock, person) -> None:
    auth = base64.b64encode(f"\0{person.address}\0{person.password}".encode())
    sock.sendall(b"a1 AUTHENTICATE PLAIN\r\n")
    assert sock.recv(100).startswith(b"+")
    assert b"a1 OK" in _exchange(sock, auth + b"\r\n")


def test_malformed_commands_huge_literals_and_long_lines_get_clear_answers(rt, imap, gp):
    sock = _raw(imap.port)
    assert b"a1 BAD" in _exchange(sock, b"a1 FROBNICATE\r\n")
    assert b"a2 BAD" in _exchange(sock, b"a2 FETCH (((\r\n")
    assert b"a3 BAD" in _exchange(sock, b"a3 SELECT INBOX\r\n")  # before any login
    assert b"a4 OK" in _exchange(sock, b"a4 NOOP\r\n")
    # A literal larger than the limit is refused before a byte of it is read: a synchronising
    # one (the client waits for "+") with a tagged NO, the connection going on ...
    answer = _exchange(sock, b"a7 LOGIN {999999999}\r\n")
    assert answer.startswith(b"a7 NO [TOOBIG]"), answer
    assert b"a8 OK" in _exchange(sock, b"a8 NOOP\r\n")
    # ... a non-synchronising one, already on its way, with the end of the connection.
    answer = _exchange(sock, b"a5 LOGIN {999999999999+}\r\n")
    assert b"* BYE" in answer and b"TOOBIG" in answer
    sock.close()
    sock = _raw(imap.port)
    answer = _exchange(sock, b"a6 NOOP " + b"x" * 100_000 + b"\r\n")
    assert b"* BYE" in answer and b"TOOBIG" in answer
    sock.close()
    # A line at the limit announcing a huge literal: refused before a byte of it is read.
    sock = _raw(imap.port)
    end = b"{999999999999+}\r\n"
    answer = _exchange(sock, b"a9 NOOP " + b"x" * (64 * 1024 - 8 - len(end)) + end)
    assert b"* BYE" in answer and b"TOOBIG" in answer, answer
    sock.close()
    # The server keeps serving others.
    client = login(rt, imap.port, gp)
    assert client.noop()[0] == "OK"
    # Text its charset cannot decode (8-bit without CHARSET, or not UTF-8 with it): BAD.
    client.select("INBOX")
    for number, search in enumerate((b'SUBJECT "\xff"', b'CHARSET UTF-8 BODY "\xff"', b'HEADER "X-\xe9" "a"')):
        client.send(b"S%d SEARCH " % number + search + b"\r\n")
        answer = client.readline()
        assert answer.startswith(b"S%d BAD SEARCH: Invalid arguments." % number), (search, answer)
    client.send(b'U1 UID SEARCH SUBJECT "\xff"\r\n')
    answer = client.readline()
    assert answer.startswith(b"U1 BAD UID SEARCH: Invalid arguments."), answer
    # A CHARSET no reader here knows: NO [BADCHARSET] (RFC 3501 6.4.4), not a BAD.
    typ, data = client.search("X-NOPE", "SUBJECT", "x")
    assert typ == "NO" and data[0].startswith(b"[BADCHARSET]"), data
    assert client.noop()[0] == "OK"
    client.logout()


def test_a_connection_that_does_not_log_in_in_time_gives_its_place_back(rt, gp):
    """A NOOP does not extend the time to log in: a client logs in at once, and a
    connection that only holds a place holds it for ``MSS_IMAP_LOGIN_TIMEOUT``."""
    short = with_imap(rt, login_timeout=1.0)
    with ImapServer(short) as server:
        sock = _raw(server.port)
        assert b"n1 OK" in _exchange(sock, b"n1 NOOP\r\n")
        sock.settimeout(10)
        said = b""
        while chunk := sock.recv(1000):
            said += chunk
        assert b"* BYE [UNAVAILABLE] Not logged in in time" in said
        sock.close()
        client = login(short, server.port, gp)  # one that logs in stays
        time.sleep(1.5)
        assert client.noop()[0] == "OK"
        client.logout()


def test_one_address_cannot_take_every_connection(rt, gp):
    """MSS_IMAP_MAX_SESSIONS_PER_CLIENT connections from one address (both ports together),
    the next told BYE at once; a client at another address, and one once a place is given
    back, are served."""
    narrow = with_imap(rt, max_sessions_per_client=2)
    too_many = b"* BYE [UNAVAILABLE] Too many connections from your address: close some, or try again later\r\n"
    with ImapServer(narrow) as server:
        held = [_raw(server.port), _tls(narrow, server.tls_port)]
        plain = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        tls = client_context(narrow).wrap_socket(
            socket.create_connection(("127.0.0.1", server.tls_port), timeout=10), server_hostname="localhost"
        )
        for turned in (plain, tls):
            said = b""
            while chunk := turned.recv(1000):
                said += chunk
            assert said == too_many
            turned.close()
        elsewhere = socket.create_connection(("127.0.0.1", server.port), timeout=10, source_address=("127.0.0.2", 0))
        assert elsewhere.recv(1000).startswith(b"* OK")
        elsewhere.close()
        held.pop().close()
        deadline = time.monotonic() + 10
        while server.open_connections > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        client = login(narrow, server.port, gp)
        assert client.noop()[0] == "OK"
        client.logout()
        held[0].close()


def test_silent_and_non_reading_clients_are_cut_and_others_served(rt, doctor, gp):
    short = with_imap(rt, idle_timeout=2.0)
    for number in range(3):
        submit(rt, doctor, [gp.address], f"Gros {number}", "x\n", [("gros.pdf", "application/pdf", _big_pdf())])
    with ImapServer(short) as imap:
        silent = _raw(imap.port)
        said = b""
        while chunk := silent.recv(1000):
            said += chunk
        assert said.startswith(b"* BYE [UNAVAILABLE] Autologout")
        silent.close()

        # A client that asks for everything and never reads: cut after the timeout.
        tls = _tls(rt, imap.tls_port, rcvbuf=4096)
        _login_raw(tls, gp)
        assert b"a2 OK" in _exchange(tls, b"a2 SELECT INBOX\r\n")
        for n in range(30):
            tls.sendall(b"f%d FETCH 1:* (BODY.PEEK[])\r\n" % n)
        # Meanwhile and after, another client works.
        client = login(rt, imap.port, gp)
        client.select("INBOX")
        assert len(_fetch(client, "1:*", "(BODY.PEEK[])")) >= 3
        client.logout()
        time.sleep(short.settings.imap.idle_timeout + 2)
        # Cut by the server although it never closed its side (nor read anything).
        assert imap.open_connections == 0
        tls.close()


def _big_pdf() -> bytes:
    import io

    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.add_metadata({"/Subject": "0123456789" * 30_000})  # a 300 kB PDF
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_cli_and_account_page_choose_the_mode(rt, clients, gp):
    from typer.testing import CliRunner

    from cli.main import app as cli

    result = CliRunner().invoke(cli, ["account", "imap-mode", gp.address, "sideways"], env=_cli_env(rt))
    assert result.exit_code != 0 and "decrypted or end-to-end" in result.output
    result = CliRunner().invoke(cli, ["account", "imap-mode", gp.address, "end-to-end"], env=_cli_env(rt))
    assert result.exit_code == 0, result.output
    with session_scope(rt.engine) as session:
        assert served.mode_of(session, gp.address) == served.END_TO_END
    from web_support import csrf
    from web_support import login as web_login

    browser = clients()
    web_login(browser, gp)
    page = browser.get("/account")
    assert 'value="end-to-end" checked' in page.text
    response = browser.post(
        "/account/imap-mode", data={"mode": "decrypted", "csrf_token": csrf(page.text)}, follow_redirects=False
    )
    assert response.status_code in {302, 303}
    with session_scope(rt.engine) as session:
        assert served.mode_of(session, gp.address) == served.DECRYPTED
    assert [e.detail for e in _events(rt, "account.imap-mode")][-1].replace(" ", "").endswith('"mode":"decrypted"}')


def _cli_env(rt: Runtime) -> dict[str, str]:
    return {
        "MSS_DATA_DIR": str(rt.settings.storage.data_dir),
        "MSS_CERTS_DIR": str(rt.settings.pki.certs_dir),
        "MSS_DATABASE_URL": rt.settings.storage.database_url,
        "MSS_RECOVERY_KEY_OUT": str(rt.settings.pki.recovery_private_key_out),
        "MSS_ARGON2_OPSLIMIT": "1",
        "MSS_ARGON2_MEMLIMIT": str(8 * 1024 * 1024),
        "MSS_PKI_HTTP_PORT": "0",
    }


def test_autoconfig_describes_imap_and_submission_for_an_address(rt, clients):
    browser = clients()
    for path in ("/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"):
        response = browser.get(path, params={"emailaddress": GP})
        assert response.status_code == 200 and response.headers["content-type"].startswith("application/xml")
        from lxml import etree

        root = etree.fromstring(response.content)
        incoming = {(s.findtext("port"), s.findtext("socketType")) for s in root.iter("incomingServer")}
        assert incoming == {(str(rt.settings.imap.tls_port), "SSL"), (str(rt.settings.imap.port), "STARTTLS")}
        assert root.find(".//outgoingServer/port").text == str(rt.settings.relay.port)
        assert root.find(".//domain").text == GP.split("@")[1]
    assert browser.get("/mail/config-v1.1.xml", params={"emailaddress": "someone@example.org"}).status_code == 404


# -- what a listing needs, and UIDs across processes -------------------------------------


def test_a_message_stored_before_gets_its_shape_at_the_first_opening_then_kept(rt, imap, doctor, gp):
    from mss.models import EntityShape, Message
    from mss.store import MessageMeta

    queue_id = submit(rt, doctor, [gp.address], "Ancien", "x\n").queue_id
    # As stored before this version: sealed metadata without what mail clients need.
    with session_scope(rt.engine) as session:
        row = session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()
        meta = MessageMeta.open(rt.master_key, row.meta_sealed)
        meta.client = None
        row.meta_sealed = meta.seal(rt.master_key)
        session.add(row)
    client = login(rt, imap.port, gp)
    client.select("INBOX")
    size = int(re.search(rb"RFC822.SIZE (\d+)", _fetch(client, "1", "(RFC822.SIZE)")[0]).group(1))
    with session_scope(rt.engine) as session:
        assert session.execute(select(func.count()).select_from(EntityShape)).scalar() == 1
    body = _fetch(client, "1", "(BODY.PEEK[])")[0][1]
    head = body.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b" ")
    assert len(body) == size and b"X-MSS-Signature: valid; signer=" + doctor.address.encode() in head, head
    client.logout()
    # The next listing reads the kept shape: the same answer, no opening recorded for it.
    again = login(rt, imap.port, gp)
    again.select("INBOX")
    assert re.search(rb"RFC822.SIZE (\d+)", _fetch(again, "1", "(RFC822.SIZE)")[0]).group(1) == str(size).encode()
    again.logout()
    assert len(_events(rt, "message.open")) == 1


def test_a_shape_the_database_will_not_keep_still_serves_the_message(rt, imap, doctor, gp, caplog):
    """What a first opening showed of a message is kept so that later listings need no
    decryption. The opening is committed by then: a database that will not keep its shape
    fails nothing; the message is served from the opening, and a later one keeps it."""
    from mss.models import EntityShape, Message
    from mss.store import MessageMeta

    queue_id = submit(rt, doctor, [gp.address], "Ancien", "x\n").queue_id
    with session_scope(rt.engine) as session:
        row = session.execute(select(Message).where(Message.queue_id == queue_id)).scalars().one()
        meta = MessageMeta.open(rt.master_key, row.meta_sealed)
        meta.client = None  # as stored before mail clients' shapes were kept
        row.meta_sealed = meta.seal(rt.master_key)
        session.add(row)

    def shapes() -> int:
        with session_scope(rt.engine) as session:
            return session.execute(select(func.count()).select_from(EntityShape)).scalar_one()

    client = login(rt, imap.port, gp)
    client.select("INBOX")
    with caplog.at_level(logging.ERROR, logger="mss.mailbox"), refused(rt.engine, "entity_shape", "INSERT"):
        size = int(re.search(rb"RFC822.SIZE (\d+)", _fetch(client, "1", "(RFC822.SIZE)")[0]).group(1))
        body = _fetch(client, "1", "(BODY.PEEK[])")[0][1]
    assert len(body) == size and b"Ancien" in body
    assert any("could not be kept" in record.getMessage() for record in caplog.records)
    assert shapes() == 0
    client.logout()
    again = login(rt, imap.port, gp)
    again.select("INBOX")
    assert re.search(rb"RFC822.SIZE (\d+)", _fetch(again, "1", "(RFC822.SIZE)")[0]).group(1) == str(size).encode()
    again.logout()
    assert shapes() == 1


def test_a_client_encrypted_message_nested_too_deep_is_served_as_a_notice(rt, imap, clients, doctor, gp):
    """Nobody sees inside what a client encrypted until it is opened, so nothing bounded its
    depth at submission. Nested deeper than a submission may, a mail client is served a
    notice in its place (size, structure and body alike), the connection and the other
    messages go on; the web inbox reads it whole."""
    from mss import mailbox, pipeline
    from mss.models import Message
    from mss.pipeline import RecipientRequest, Submission

    sender = accounts.authenticate(rt.engine, rt.settings, doctor.address, doctor.password, accounts.Origin("cli"))
    with session_scope(rt.engine) as session:
        readers = [certificates.current_certificate(session, a) for a in (gp.address, doctor.address)]
    envelope = smime.encrypt(nested_multiparts(200), readers)
    raw = smime.to_smime_message(envelope, {"From": doctor.address, "To": gp.address, "Subject": "Profond"})
    pipeline.submit(rt, Submission(sender=sender, recipients=(RecipientRequest(gp.address),), raw=raw, channel="smtp"))
    submit(rt, doctor, [gp.address], "Ordinaire", "x\n")
    client = login(rt, imap.port, gp)
    client.select("INBOX")
    structure = _fetch(client, "1", "(BODYSTRUCTURE)")[0]
    assert b'("text" "plain"' in structure.lower(), structure
    body = _fetch(client, "1", "(BODY.PEEK[])")[0][1]
    size = int(re.search(rb"RFC822.SIZE (\d+)", _fetch(client, "1", "(RFC822.SIZE)")[0]).group(1))
    assert b"Profond" in body and b"open it in the web inbox" in body and len(body) == size
    assert b"Ordinaire" in _fetch(client, "2", "(BODY.PEEK[])")[0][1]
    client.logout()
    # The web reads it whole.
    with session_scope(rt.engine) as session:
        deep = session.execute(select(Message.queue_id).where(Message.kind == "client")).scalar_one()
    reader = accounts.authenticate(rt.engine, rt.settings, gp.address, gp.password, accounts.Origin("cli"))
    assert mailbox.open_message(rt, reader, deep).body.strip() == "Au fond."


def test_a_forwarded_signature_by_another_is_named_to_a_mail_client(rt, imap, doctor, gp):
    """A document the nurse signed, forwarded by the doctor as it is: mss signs over it for
    the doctor, and what a mail client is told of the signatures names the nurse, not the
    doctor, as the signer who is not the sender."""
    from mss import pipeline
    from mss.pipeline import RecipientRequest, Submission

    nurse = unlocked(rt, create_person(rt, NURSE))
    entity = b"Content-Type: text/plain; charset=utf-8\r\n\r\nCompte rendu signe par l'infirmiere.\r\n"
    raw = smime.to_signed_smime_message(
        smime.sign(entity, nurse.certificate, nurse.private_key),
        {"From": doctor.address, "To": gp.address, "Subject": "Transmis", "Message-ID": "<fwd.1@chu-demo.mss.test>"},
    )
    sender = unlocked(rt, doctor)
    pipeline.submit(rt, Submission(sender=sender, recipients=(RecipientRequest(gp.address),), raw=raw, channel="smtp"))
    submit(rt, doctor, [gp.address], "Le sien", "x\n")
    client = login(rt, imap.port, gp)
    client.select("INBOX")
    heads = [_fetch(client, n, "(BODY.PEEK[HEADER])")[0][1].replace(b"\r\n ", b" ") for n in ("1", "2")]
    assert b"X-MSS-Signature: other-signer; signer=" + NURSE.encode() in heads[0], heads[0]
    assert b"X-MSS-Signature: valid; signer=" + doctor.address.encode() in heads[1], heads[1]
    client.logout()


def test_a_bcc_recipient_is_not_named_to_a_mail_client(rt, imap, doctor, gp):
    """Its header, its ENVELOPE and a search name who To and Cc name: a message to Cc and
    Bcc only has no To that would list the envelope's recipients."""
    from mss import pipeline
    from mss.pipeline import RecipientRequest, Submission

    nurse = create_person(rt, NURSE)
    raw = (
        f"From: {doctor.address}\r\nCc: {gp.address}\r\nSubject: Cc seulement\r\n"
        "Date: Mon, 30 Nov 2026 10:00:00 +0100\r\nMessage-ID: <cc.only@chu-demo.mss.test>\r\n\r\nTexte.\r\n"
    ).encode()
    sender = accounts.authenticate(rt.engine, rt.settings, doctor.address, doctor.password, accounts.Origin("cli"))
    recipients = (RecipientRequest(gp.address), RecipientRequest(nurse.address))
    pipeline.submit(rt, Submission(sender=sender, recipients=recipients, raw=raw, channel="smtp"))
    client = login(rt, imap.port, gp)
    client.select("INBOX")
    header = _fetch(client, "1", "(BODY.PEEK[HEADER] ENVELOPE)")
    assert nurse.address.encode() not in b"".join(p if isinstance(p, bytes) else b"".join(p) for p in header)
    assert client.search(None, "TEXT", nurse.address.split("@")[0]) == ("OK", [b""])
    client.logout()


def test_uids_given_out_by_several_processes_never_collide(rt, doctor, gp):
    import threading

    from mss.db import make_engine
    from mss.mailbox import sync

    for number in range(12):
        submit(rt, doctor, [gp.address], f"Message {number}", "x\n")
    engines = [make_engine(rt.settings) for _ in range(4)]
    states: list = []
    errors: list = []
    start = threading.Barrier(len(engines))

    def look(engine) -> None:
        try:
            start.wait()
            states.append(sync.folder_state(engine, gp.address, sync.INBOX, served.DECRYPTED))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=look, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for engine in engines:
        engine.dispose()
    assert errors == []
    seen = {tuple((item.item_id, item.uid) for item in state.items) for state in states}
    assert len(seen) == 1  # every process sees the same UIDs
    uids = [uid for _item, uid in next(iter(seen))]
    assert sorted(uids) == list(range(1, 13))
