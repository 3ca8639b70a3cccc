"""The relay's session rules over real TLS on loopback: STARTTLS, AUTH, MAIL, RCPT, limits.

Every refusal is followed by a check that nothing was stored and that the same server still
serves the next client.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import smtplib
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import aiosmtplib
import pytest
from sqlalchemy import select, text

from mss import accounts
from mss.crypto import keys
from mss.db import session_scope
from mss.mime import PARSE_FAILURES
from mss.models import AuditEvent, Delivery, Message
from mss.relay import RelayServer, protocol, replies
from mss.relay.server import PARENT_VARIABLE
from mss.runtime import MessageThreads, Runtime

from relay_support import (
    FOREIGN,
    LOCKOUT_ACCOUNT,
    MAX_LOGIN_FAILURES,
    MAX_MESSAGE_SIZE,
    MAX_RECIPIENTS,
    NO_ACCOUNT,
    RECIPIENTS,
    REVOKED,
    SENDER,
    UNKNOWN,
    Stack,
    answered_within,
    code_of,
    connect,
    login,
    message,
    queue_id,
    still_serving,
)
from server_process import free_port


def auth(client: smtplib.SMTP, mechanism: str, response: str) -> tuple[int, bytes]:
    """The final AUTH reply for ``mechanism`` with this client response (smtplib raises on 535)."""
    try:
        return client.auth(mechanism, lambda challenge=None: response, initial_response_ok=True)
    except smtplib.SMTPAuthenticationError as exc:
        return exc.smtp_code, exc.smtp_error


def refusals(stack: Stack, *, stage: str) -> list[AuditEvent]:
    """The ``smtp.refused`` audit events of one stage (``mail`` or ``rcpt``), oldest first."""
    with session_scope(stack.rt.engine) as session:
        events = session.execute(
            select(AuditEvent).where(AuditEvent.action == "smtp.refused").order_by(AuditEvent.seq)
        ).scalars()
        return [e for e in events if json.loads(e.detail).get("stage") == stage]


def raw_exchange(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return read_reply(sock)


def read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


# -- STARTTLS and AUTH --------------------------------------------------------------------


def test_nothing_but_starttls_before_tls(relay_stack: Stack) -> None:
    before = relay_stack.counts()
    with socket.create_connection(("127.0.0.1", relay_stack.port), timeout=10) as sock:
        greeting = read_reply(sock)
        assert greeting.startswith(b"220 ")
        assert b"Python" not in greeting and b"aiosmtpd" not in greeting
        ehlo = raw_exchange(sock, b"EHLO client.test")
        assert b"250-STARTTLS" in ehlo and b"AUTH" not in ehlo
        plain = b"AUTH PLAIN " + base64.b64encode(b"\0" + SENDER.encode() + b"\0x")
        for command in (plain, b"MAIL FROM:<" + SENDER.encode() + b">"):
            assert raw_exchange(sock, command).decode() == replies.STARTTLS_REQUIRED + "\r\n"
        assert raw_exchange(sock, b"QUIT").decode() == replies.BYE + "\r\n"
    still_serving(relay_stack, before)


def test_ehlo_after_starttls_offers_auth_dsn_size(relay_stack: Stack) -> None:
    client = connect(relay_stack)
    assert client.sock.version() in {"TLSv1.2", "TLSv1.3"}
    features = client.esmtp_features
    assert set(features["auth"].split()) == {"PLAIN", "LOGIN"}
    assert "dsn" in features and "enhancedstatuscodes" in features and "starttls" not in features
    assert features["size"] == str(MAX_MESSAGE_SIZE)
    # A second STARTTLS inside TLS is refused.
    assert client.docmd("STARTTLS") == code_of(replies.TLS_ALREADY_ACTIVE)
    client.quit()


def test_mail_before_auth_is_refused(relay_stack: Stack) -> None:
    before = relay_stack.counts()
    client = connect(relay_stack)
    assert client.mail(SENDER) == code_of(replies.AUTH_REQUIRED)
    assert client.rcpt(RECIPIENTS[0]) == code_of(replies.AUTH_REQUIRED)
    assert client.docmd("DATA") == code_of(replies.AUTH_REQUIRED)
    client.quit()
    still_serving(relay_stack, before)


def test_auth_plain_and_login(relay_stack: Stack) -> None:
    password = relay_stack.passwords[SENDER]
    client = connect(relay_stack)
    assert auth(client, "PLAIN", f"\0{SENDER}\0{password}") == code_of(replies.AUTH_SUCCESSFUL)
    assert client.docmd("AUTH", "PLAIN") == code_of(replies.AUTH_ALREADY)
    client.quit()
    client = connect(relay_stack)
    client.user, client.password = SENDER.upper(), password  # the address is case-insensitive
    assert client.auth("LOGIN", client.auth_login, initial_response_ok=False) == code_of(replies.AUTH_SUCCESSFUL)
    client.quit()
    # PLAIN with an authorisation identity other than the account: nobody acts for another.
    client = connect(relay_stack)
    assert auth(client, "PLAIN", f"{RECIPIENTS[0]}\0{SENDER}\0{password}") == code_of(replies.AUTH_FAILED)
    assert client.docmd("AUTH", "CRAM-MD5") == code_of(replies.AUTH_MECHANISM_UNKNOWN)
    assert client.docmd("AUTH", "PLAIN not-base64!") == code_of(replies.AUTH_BAD_BASE64)
    client.quit()


async def test_aiosmtplib_login(relay_stack: Stack) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay_stack.port, start_tls=True, tls_context=relay_stack.client_context()
    )
    await client.connect()
    response = await client.login(SENDER, relay_stack.passwords[SENDER])
    assert (response.code, response.message) == (235, replies.AUTH_SUCCESSFUL[4:])
    await client.quit()


def test_logins_that_arrive_together_take_turns_at_argon2id(relay_stack: Stack, argon2_overlap) -> None:
    # Each argon2id computation holds its memory cost while it runs (64 MiB by default), two
    # per login: however many clients log in at once, no more run together than the cores.
    sessions = 3 * keys.ARGON2_AT_ONCE
    ready = threading.Barrier(sessions)

    def log_in(_number: int) -> tuple[int, bytes]:
        client = connect(relay_stack)
        ready.wait(timeout=30)
        try:
            return auth(client, "PLAIN", f"\0{SENDER}\0{relay_stack.passwords[SENDER]}")
        finally:
            client.quit()

    with ThreadPoolExecutor(sessions) as pool:
        answers = list(pool.map(log_in, range(sessions)))
    assert answers == [code_of(replies.AUTH_SUCCESSFUL)] * sessions
    assert argon2_overlap.most == keys.ARGON2_AT_ONCE


def test_wrong_password_then_lockout(relay_stack: Stack) -> None:
    before = relay_stack.counts()
    password = relay_stack.passwords[LOCKOUT_ACCOUNT]
    client = connect(relay_stack)
    for _ in range(MAX_LOGIN_FAILURES):
        assert auth(client, "PLAIN", f"\0{LOCKOUT_ACCOUNT}\0wrong-{password}") == code_of(replies.AUTH_FAILED)
    client.quit()
    # Locked: even the right password gets a temporary failure that tells nothing more.
    client = connect(relay_stack)
    assert auth(client, "PLAIN", f"\0{LOCKOUT_ACCOUNT}\0{password}") == code_of(replies.AUTH_TEMPORARY_FAILURE)
    client.quit()
    # An unknown address gets the same answer as a wrong password.
    client = connect(relay_stack)
    assert auth(client, "PLAIN", f"\0{UNKNOWN}\0{password}") == code_of(replies.AUTH_FAILED)
    # The per-session budget of AUTH commands (argon2id work each).
    auth(client, "PLAIN", f"\0{UNKNOWN}\0{password}")
    auth(client, "PLAIN", f"\0{UNKNOWN}\0{password}")
    assert client.docmd("AUTH", "PLAIN")[0] == 421
    client.close()
    with session_scope(relay_stack.rt.engine) as session:
        outcomes = [
            json.loads(e.detail).get("reason")
            for e in session.execute(
                select(AuditEvent).where(AuditEvent.action == "smtp.login", AuditEvent.object == LOCKOUT_ACCOUNT)
            ).scalars()
        ]
        locks = session.execute(
            select(AuditEvent).where(AuditEvent.action == "account.lock", AuditEvent.object == LOCKOUT_ACCOUNT)
        ).all()
    assert outcomes == ["bad-password"] * MAX_LOGIN_FAILURES + ["locked"]
    assert len(locks) == 1
    still_serving(relay_stack, before)


def test_disabled_account_is_told_why_only_after_the_right_password(relay_stack: Stack) -> None:
    address = RECIPIENTS[1]
    with session_scope(relay_stack.rt.engine) as session:
        accounts.set_disabled(session, address, True, actor="test")
    try:
        client = connect(relay_stack)
        assert auth(client, "PLAIN", f"\0{address}\0wrong-{relay_stack.passwords[address]}") == code_of(
            replies.AUTH_FAILED
        )
        assert auth(client, "PLAIN", f"\0{address}\0{relay_stack.passwords[address]}") == code_of(
            replies.AUTH_ACCOUNT_DISABLED
        )
        client.quit()
    finally:
        with session_scope(relay_stack.rt.engine) as session:
            accounts.set_disabled(session, address, False, actor="test")
    login(relay_stack, address).quit()


# -- MAIL and RCPT ------------------------------------------------------------------------


def test_spoofed_envelope_sender_is_refused(relay_stack: Stack) -> None:
    before = relay_stack.counts()
    client = login(relay_stack)
    assert client.mail(RECIPIENTS[0]) == code_of(replies.SENDER_NOT_AUTHENTICATED_ACCOUNT)
    assert client.mail("<>") == code_of(replies.SENDER_NOT_AUTHENTICATED_ACCOUNT)
    assert client.docmd("MAIL", "FROM:<not an address>") == code_of(replies.SENDER_SYNTAX)
    assert client.docmd("MAIL", "FROM:<no-domain>") == code_of(replies.SENDER_SYNTAX)
    # Paths on which the email package's address parser fails (IndexError, AttributeError,
    # UnboundLocalError) instead of rejecting them.
    for path in ("<", "!@", "\\.@[)(", "#@[ "):
        assert client.docmd("MAIL", f"FROM:{path}") == code_of(replies.SENDER_SYNTAX), path
    assert client.mail(SENDER.upper()) == code_of(replies.SENDER_OK)
    assert client.mail(SENDER) == code_of(replies.NESTED_MAIL)
    client.quit()
    events = [e for e in refusals(relay_stack, stage="mail") if e.object == RECIPIENTS[0]]
    assert events and events[-1].actor == SENDER and events[-1].outcome == "denied"
    assert json.loads(events[-1].detail) == {"reason": "sender-mismatch", "stage": "mail"}
    still_serving(relay_stack, before)


def test_paths_read_without_the_general_parser_read_as_with_it() -> None:
    """MAIL and RCPT paths of the usual shape skip aiosmtpd's RFC 5322 parser: on every
    path, usual or not, the relay reads the address and parameters that parser reads."""
    import random

    from aiosmtpd.smtp import SMTP

    reader = protocol.RelaySMTP.__new__(protocol.RelaySMTP)
    reader.local_part_limit = 0
    paths = [
        f"<{SENDER}> SIZE=10240 BODY=8BITMIME",
        "<a.b+c@d-e.f>\tNOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a.b+c@d-e.f ",
        "<a@b.c> (comment) SIZE=1", "<a@b.c>SIZE=1", "<a@b.c> \x0bX", "<a..b@c.d>", "<.a@b.c>", "<a@b..c>",
        '<"a b"@c.d>', "<@route:a@b.c>", "<a@[192.0.2.1]>", "<é@b.c>", "<>", "<", "a@b.c",
    ]  # fmt: skip
    rng = random.Random(5321)
    for _ in range(20_000):
        paths.append("".join(rng.choice('ab.@<>() \t"\\-!#:;[]é\x0b=X') for _ in range(rng.randint(1, 14))))
        local, domain = ("".join(rng.choice("ab.-+!{~ ") for _ in range(rng.randint(1, 6))) for _ in "ld")
        tail = "".join(rng.choice(" \tX=()\x0b.") for _ in range(rng.randint(0, 5)))
        lead = rng.choice(["", " ", "\t"])
        paths.append(f"{lead}<{local}@{domain}>{tail}")

    def general(path: str) -> tuple[str | None, str | None]:
        try:
            return SMTP._getaddr(reader, path)
        except PARSE_FAILURES:
            return None, None

    assert [reader._getaddr(p) for p in paths] == [general(p) for p in paths]
    assert sum(protocol._PLAIN_PATH.match(p) is not None for p in paths) > 1000


def test_size_parameter_over_the_limit(relay_stack: Stack) -> None:
    client = login(relay_stack)
    assert client.mail(SENDER, [f"SIZE={MAX_MESSAGE_SIZE + 1}"]) == code_of(replies.MESSAGE_TOO_LARGE)
    assert client.mail(SENDER, ["SIZE=12x"]) == code_of(replies.PARAMETER_SYNTAX)
    assert client.docmd("MAIL", f"FROM:<{SENDER}> SMTPUTF8") == code_of(replies.PARAMETER_NOT_RECOGNIZED)
    assert client.mail(SENDER, [f"SIZE={MAX_MESSAGE_SIZE}"]) == code_of(replies.SENDER_OK)
    client.quit()


def test_recipient_refusals(relay_stack: Stack) -> None:
    before = relay_stack.counts()
    client = login(relay_stack)
    assert client.rcpt(RECIPIENTS[0]) == code_of(replies.NEED_MAIL)
    assert client.mail(SENDER) == code_of(replies.SENDER_OK)
    assert client.docmd("DATA") == code_of(replies.NEED_RCPT)
    expected = {
        UNKNOWN: replies.UNKNOWN_RECIPIENT,
        REVOKED: replies.REVOKED_RECIPIENT,
        FOREIGN: replies.RELAY_DENIED,
        "postmaster@mss.test.example.org": replies.RELAY_DENIED,
        NO_ACCOUNT: replies.RECIPIENT_NO_CERTIFICATE,
    }
    for address, reply in expected.items():
        assert client.rcpt(address) == code_of(reply), address
    assert client.rcpt("<>") == code_of(replies.RECIPIENT_SYNTAX)
    assert client.docmd("RCPT", "TO:<") == code_of(replies.RECIPIENT_SYNTAX)
    assert client.rcpt(RECIPIENTS[0], ["NOTIFY=SOMETIMES"]) == code_of(replies.PARAMETER_SYNTAX)
    assert client.rcpt(RECIPIENTS[0], ["FOO=BAR"]) == code_of(replies.PARAMETER_NOT_RECOGNIZED)
    assert client.docmd("DATA") == code_of(replies.NEED_RCPT)
    client.quit()
    reasons = {e.object: json.loads(e.detail)["reason"] for e in refusals(relay_stack, stage="rcpt")}
    assert reasons[UNKNOWN] == "unknown-address"
    assert reasons[REVOKED] == "revoked-address"
    assert reasons[FOREIGN] == "domain-not-served"
    assert reasons[NO_ACCOUNT] == "no-certificate"
    still_serving(relay_stack, before)


def test_too_many_recipients(relay_stack: Stack) -> None:
    before = relay_stack.counts()
    client = login(relay_stack)
    assert client.mail(SENDER) == code_of(replies.SENDER_OK)
    # Every account and the sender itself: MAX_RECIPIENTS distinct addresses are accepted.
    allowed = [*RECIPIENTS, LOCKOUT_ACCOUNT, SENDER]
    assert len(allowed) == MAX_RECIPIENTS
    for address in allowed:
        assert client.rcpt(address) == code_of(replies.RECIPIENT_OK)
    assert client.rcpt(RECIPIENTS[0]) == code_of(replies.TOO_MANY_RECIPIENTS)
    assert client.rset()[0] == 250
    client.quit()
    still_serving(relay_stack, before)


def test_dsn_parameters_reach_the_pipeline(relay_stack: Stack) -> None:
    client = login(relay_stack)
    assert client.mail(SENDER, ["RET=HDRS", "ENVID=lettre+2B42"]) == code_of(replies.SENDER_OK)
    assert client.rcpt(RECIPIENTS[0], ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{RECIPIENTS[0]}"])[0] == 250
    assert client.rcpt(RECIPIENTS[1], ["NOTIFY=NEVER"])[0] == 250
    reply = client.data(message(SENDER, RECIPIENTS))
    client.quit()
    with session_scope(relay_stack.rt.engine) as session:
        stored = session.execute(select(Message).where(Message.queue_id == queue_id(reply))).scalar_one()
        notify = dict(
            session.execute(select(Delivery.recipient, Delivery.notify).where(Delivery.message_id == stored.id)).all()
        )
    assert notify == {RECIPIENTS[0]: "FAILURE,SUCCESS", RECIPIENTS[1]: "NEVER"}


def test_overlong_command_line(relay_stack: Stack) -> None:
    client = login(relay_stack)
    assert client.docmd("NOOP", "x" * 2000) == code_of(replies.COMMAND_TOO_LONG)
    assert client.docmd("XYZZY") == code_of(replies.COMMAND_NOT_RECOGNIZED)
    assert client.noop()[0] == 250
    client.quit()


# -- TLS versions and suites ---------------------------------------------------------------


def openssl_starttls(stack: Stack, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{stack.port}",
            "-starttls",
            "smtp",
            "-CAfile",
            str(stack.ca_file),
            "-verify_return_error",
            *options,
        ],
        input="QUIT\r\n",
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("options", "accepted"),
    [
        (("-tls1_3",), True),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"), True),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"), True),
        (("-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"), False),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"), False),  # forward secret, not AEAD
        (("-tls1_2", "-cipher", "AES128-GCM-SHA256"), False),  # AEAD, no forward secrecy
        (("-tls1_2", "-cipher", "AES256-SHA"), False),
    ],
)
def test_tls_versions_and_suites_with_openssl(relay_stack: Stack, options: tuple[str, ...], accepted: bool) -> None:
    result = openssl_starttls(relay_stack, *options)
    handshake_done = "Verify return code: 0 (ok)" in result.stdout and "Cipher is (NONE)" not in result.stdout
    assert handshake_done is accepted, result.stdout[-2000:] + result.stderr[-2000:]
    still_serving(relay_stack, relay_stack.counts())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_python_client_insisting_on_tls_1_1_is_refused(relay_stack: Stack) -> None:
    context = relay_stack.client_context()
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        connect(relay_stack, context=context)
    still_serving(relay_stack, relay_stack.counts())


# -- sessions: cap, idle timeout, unexpected errors ------------------------------------------


def test_sessions_over_the_cap_get_421(relay_stack: Stack) -> None:
    with RelayServer(relay_stack.runtime(max_sessions=1)) as relay:
        first = login(relay_stack, port=relay.port)
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            assert read_reply(sock).decode() == replies.SERVICE_BUSY + "\r\n"
            assert sock.recv(10) == b""  # closed by the server
        first.quit()
        deadline = time.monotonic() + 5
        while relay.registry is not None and relay.registry.active and time.monotonic() < deadline:
            time.sleep(0.02)
        second = login(relay_stack, port=relay.port)
        second.quit()


def test_idle_client_is_told_and_closed(relay_stack: Stack) -> None:
    with RelayServer(relay_stack.runtime(command_timeout=0.5)) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
            assert read_reply(sock).startswith(b"220 ")
            started = time.monotonic()
            assert read_reply(sock).decode() == replies.IDLE_TIMEOUT + "\r\n"
            assert 0.4 < time.monotonic() - started < 5
            assert sock.recv(10) == b""


def test_unexpected_error_answers_451_without_details(relay_stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """A broken database mid-transaction: 451 4.3.0, the cause only in the log, nothing stored."""
    before = relay_stack.counts()
    client = login(relay_stack)
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(RECIPIENTS[0])[0] == 250
    with relay_stack.rt.engine.begin() as conn:
        conn.execute(text("ALTER TABLE mailbox_item RENAME TO mailbox_item_away"))
    try:
        with caplog.at_level("ERROR", logger="mss.relay"):
            reply = client.data(message(SENDER, RECIPIENTS[:1]))
    finally:
        with relay_stack.rt.engine.begin() as conn:
            conn.execute(text("ALTER TABLE mailbox_item_away RENAME TO mailbox_item"))
    assert reply == code_of(replies.LOCAL_ERROR)
    assert b"mailbox" not in reply[1] and b"Error" not in reply[1]
    assert any("unexpected" in r.getMessage() for r in caplog.records)
    # The session goes on: the next transaction on the same connection is stored.
    assert relay_stack.counts() == before
    replies_ = client.mail(SENDER), client.rcpt(RECIPIENTS[0]), client.data(message(SENDER, RECIPIENTS[:1]))
    assert replies_[-1][0] == 250
    client.quit()


def test_unexpected_error_during_auth_answers_451(relay_stack: Stack) -> None:
    client = connect(relay_stack)
    with relay_stack.rt.engine.begin() as conn:
        conn.execute(text("ALTER TABLE account RENAME TO account_away"))
    try:
        reply = auth(client, "PLAIN", f"\0{SENDER}\0{relay_stack.passwords[SENDER]}")
    finally:
        with relay_stack.rt.engine.begin() as conn:
            conn.execute(text("ALTER TABLE account_away RENAME TO account"))
    assert reply == code_of(replies.LOCAL_ERROR)
    assert auth(client, "PLAIN", f"\0{SENDER}\0{relay_stack.passwords[SENDER]}") == code_of(replies.AUTH_SUCCESSFUL)
    client.quit()


# -- hostile clients: sessions per address, login deadline, line ends, cut-offs --------------

OTHER_CLIENT = "127.0.0.2"  # another loopback address: another client to the relay


def greeted(port: int, *, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """A plain connection and the server's first reply."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return sock, read_reply(sock)


def wait_for_close(sock: socket.socket, keepalive: bytes | None = None, *, patience: float = 20.0) -> list[bytes]:
    """Every reply until the server closes, sending ``keepalive`` every 0.1 s meanwhile.

    Fails if the server has not closed after ``patience`` seconds.
    """
    received: list[bytes] = []
    sock.settimeout(0.1)
    give_up = time.monotonic() + patience
    while time.monotonic() < give_up:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = None
        except (ConnectionError, ssl.SSLError):
            return received
        if data == b"":
            return received
        if data:
            received.extend(line for line in data.split(b"\r\n") if line)
        if keepalive is not None:
            try:
                sock.sendall(keepalive)
            except (ConnectionError, ssl.SSLError):
                keepalive = None  # closed under us: read what was said before
            time.sleep(0.1)
    raise AssertionError(f"the server never closed the connection; it said {received[-3:]!r}")


def test_processes_of_one_port_each_take_their_share_of_the_session_limits(relay_stack: Stack, monkeypatch) -> None:
    """MSS_SMTP_PROCESSES=2: two listeners share one port (SO_REUSEPORT) and each lets in
    half of the sessions one address may hold, so that together they let in no more than
    MSS_MAX_SESSIONS_PER_CLIENT. 40 connections: each listener gets at least 5 of them but
    once in ten million runs."""
    per_client = relay_stack.settings.relay.max_sessions_per_client
    rt = relay_stack.runtime(processes=2)
    assert rt.settings.relay.session_share() == (relay_stack.settings.relay.max_sessions // 2, per_client // 2)
    port = free_port()
    with RelayServer(rt, port=port):
        # The first looked that nothing listened there; one more of the service's own
        # processes joins (a second service would be refused: below).
        with pytest.raises(OSError, match="in use"), RelayServer(rt, port=port):
            pass
        monkeypatch.setenv(PARENT_VARIABLE, str(os.getpid()))
        with RelayServer(rt, port=port):
            _two_listeners_share(port, per_client)


def _two_listeners_share(port: int, per_client: int) -> None:
    idle: list[socket.socket] = []
    try:
        greetings = []
        for _ in range(40):
            sock, greeting = greeted(port)
            idle.append(sock)
            greetings.append(greeting.decode())
        assert sum(g.startswith("220 ") for g in greetings) == per_client
        assert greetings.count(replies.CLIENT_BUSY + "\r\n") == 40 - per_client
    finally:
        for sock in idle:
            sock.close()


def test_one_address_cannot_take_every_session(relay_stack: Stack) -> None:
    """100 idle connections from one address: 10 are let in, the others told 421, and a client
    at another address is still served."""
    before = relay_stack.counts()
    per_client = relay_stack.settings.relay.max_sessions_per_client
    assert per_client < relay_stack.settings.relay.max_sessions
    idle: list[socket.socket] = []
    try:
        greetings = []
        for _ in range(relay_stack.settings.relay.max_sessions):
            sock, greeting = greeted(relay_stack.port)
            idle.append(sock)
            greetings.append(greeting.decode())
        assert sum(g.startswith("220 ") for g in greetings) == per_client
        assert greetings.count(replies.CLIENT_BUSY + "\r\n") == len(greetings) - per_client
        client = login(relay_stack, source=OTHER_CLIENT)
        assert client.mail(SENDER) == code_of(replies.SENDER_OK)
        assert client.rcpt(RECIPIENTS[0]) == code_of(replies.RECIPIENT_OK)
        queue_id(client.data(message(SENDER, RECIPIENTS[:1])))
        client.quit()
    finally:
        for sock in idle:
            sock.close()
    assert relay_stack.counts()[0] == before[0] + 1


# -- messages taken in at once -------------------------------------------------------------

THIRD_CLIENT = "127.0.0.3"


def _one_message_thread(stack: Stack) -> Runtime:
    """A runtime with one message thread: its servers take in two messages at once from one
    client address, three in all."""
    return dataclasses.replace(stack.runtime(), messages=MessageThreads(1))


def _ready_for_data(client: smtplib.SMTP) -> smtplib.SMTP:
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(RECIPIENTS[0])[0] == 250
    return client


def _half_sent(client: smtplib.SMTP, body: bytes) -> bytes:
    """DATA answered 354 and the first half of ``body`` sent; returns the rest."""
    _ready_for_data(client).putcmd("data")
    assert client.getreply() == code_of(replies.START_MAIL_INPUT)
    client.send(body[: len(body) // 2])
    return body[len(body) // 2 :]


def _slots_given_back(relay: RelayServer) -> bool:
    deadline = time.monotonic() + 10
    while relay.registry is not None and relay.registry.slots.taken and time.monotonic() < deadline:
        time.sleep(0.02)
    return relay.registry is not None and relay.registry.slots.taken == 0


def test_a_data_past_the_messages_taken_in_at_once_waits_for_354_until_one_ends(
    relay_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message thread: two messages at once from an address, three in all. A third DATA
    from the same address, or one from a third address once the server is full, is
    answered 354 only when a message ends; another address still has its place. Every
    slot is given back, also by a client that goes away in the middle of its message."""
    # Longer than the test, however slow the machine.
    monkeypatch.setattr(protocol, "SLOT_WAIT", 120.0)
    monkeypatch.setattr(protocol, "SLOT_WAIT_LONGEST", 120.0)
    before = relay_stack.counts()
    body = message(SENDER, RECIPIENTS[:1]) + b"\r\n.\r\n"
    with RelayServer(_one_message_thread(relay_stack)) as relay:
        first, second, third = (login(relay_stack, port=relay.port) for _ in range(3))
        first_rest, second_rest = _half_sent(first, body), _half_sent(second, body)
        _ready_for_data(third).putcmd("data")
        assert not answered_within(third, 1.0)  # its address has its two
        other = login(relay_stack, port=relay.port, source=OTHER_CLIENT)
        other_rest = _half_sent(other, body)  # another address: the server's third place
        late = login(relay_stack, port=relay.port, source=THIRD_CLIENT)
        _ready_for_data(late).putcmd("data")
        assert not answered_within(late, 1.0)  # the server is full
        other.send(other_rest)
        queue_id(other.getreply())
        assert late.getreply() == code_of(replies.START_MAIL_INPUT)  # the freed place
        late.send(body)
        queue_id(late.getreply())
        assert not answered_within(third, 0.2)  # its address still has its two
        first.send(first_rest)
        queue_id(first.getreply())
        assert third.getreply() == code_of(replies.START_MAIL_INPUT)
        third.send(body)
        queue_id(third.getreply())
        second.send(second_rest)
        queue_id(second.getreply())
        # A client that leaves in the middle of a message gives its place back.
        _half_sent(first, body)
        first.close()
        assert _slots_given_back(relay)
        for client in (second, third, other, late):
            client.quit()
    assert relay_stack.counts()[0] == before[0] + 5


def test_a_client_that_sends_slowly_keeps_nobody_out_past_the_wait(
    relay_stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Messages whose sender never finishes hold their places; the next DATA from the same
    address goes ahead without one once the wait is over."""
    monkeypatch.setattr(protocol, "SLOT_WAIT", 1.0)
    caplog.set_level("INFO", logger="mss.relay")
    before = relay_stack.counts()
    body = message(SENDER, RECIPIENTS[:1]) + b"\r\n.\r\n"
    with RelayServer(_one_message_thread(relay_stack)) as relay:
        slow = [login(relay_stack, port=relay.port) for _ in range(2)]
        rests = [_half_sent(client, body) for client in slow]
        waiting = _ready_for_data(login(relay_stack, port=relay.port))
        queue_id(waiting.data(message(SENDER, RECIPIENTS[:1])))
        assert relay_stack.counts()[0] == before[0] + 1  # while the slow ones still send
        assert any("without a slot" in record.getMessage() for record in caplog.records)
        for client, rest in zip(slow, rests, strict=True):
            client.send(rest)
            queue_id(client.getreply())
            client.quit()
        waiting.quit()
        assert _slots_given_back(relay)
    assert relay_stack.counts()[0] == before[0] + 3


async def test_a_wait_for_a_slot_lasts_while_messages_end_and_no_longer_than_the_longest() -> None:
    """Each message that ends starts the wait again; once none ends for ``wait`` seconds,
    or after ``longest`` in all, the DATA goes ahead without a slot."""

    async def messages_ending(slots: protocol.DataSlots, seconds: float) -> None:
        """Another address's messages, each ending 0.1 s after it started."""
        ends = asyncio.get_running_loop().time() + seconds
        while asyncio.get_running_loop().time() < ends:
            async with slots.slot(OTHER_CLIENT) as had:
                assert had
                await asyncio.sleep(0.1)

    async def asked(slots: protocol.DataSlots) -> bool:
        async with slots.slot("127.0.0.1") as had:
            return had

    slots = protocol.DataSlots(1, wait=1.0, longest=60.0)
    async with slots.slot("127.0.0.1"):  # its address's one place, held
        waiting = asyncio.create_task(asked(slots))
        await messages_ending(slots, 2.0)  # twice the wait, messages ending all along
        assert not waiting.done()
        assert await waiting is False  # none ends any more: it goes ahead after the wait
        assert slots.taken == 1
    slots = protocol.DataSlots(1, wait=1.0, longest=1.5)
    async with slots.slot("127.0.0.1"):
        waiting = asyncio.create_task(asked(slots))
        ending = asyncio.create_task(messages_ending(slots, 3.0))
        assert await waiting is False
        assert not ending.done()  # messages still end: the longest wait was what ran out
        await ending
    assert slots.taken == 0


async def test_a_freed_slot_goes_to_the_first_waiter_it_fits_never_to_a_late_comer() -> None:
    """Waiters take the freed slots in the order they asked; one whose address holds its
    share lets the next by; a session that asks while another that fits still waits queues
    behind it, even in the moment the slot is free."""
    slots = protocol.DataSlots(2, wait=60.0, longest=60.0)  # two per address, three in all
    had_in_order: list[str] = []
    ends: dict[str, asyncio.Event] = {}
    messages: list[asyncio.Task[None]] = []

    async def a_message(name: str, client: str) -> None:
        ends[name] = asyncio.Event()
        async with slots.slot(client) as had:
            assert had
            had_in_order.append(name)
            await ends[name].wait()

    def asks(name: str, client: str) -> None:
        messages.append(asyncio.create_task(a_message(name, client)))

    async def settled() -> None:
        """Every session woken has looked whether it is its turn."""
        for _ in range(50):
            await asyncio.sleep(0)

    for name, client in (("a1", "A"), ("a2", "A"), ("b1", "B")):
        asks(name, client)
    await settled()
    assert had_in_order == ["a1", "a2", "b1"] and slots.taken == 3
    for name, client in (("a3", "A"), ("c1", "C"), ("d1", "D")):
        asks(name, client)
    await settled()
    assert slots.waiting == 3
    ends["b1"].set()
    await settled()
    assert had_in_order[3:] == ["c1"]  # a3's address holds its two: c1 is next
    ends["c1"].set()
    asks("e1", "E")  # asks as the slot is freed: d1 asked first
    await settled()
    assert had_in_order[4:] == ["d1"] and slots.waiting == 2
    ends["a1"].set()
    await settled()
    assert had_in_order[5:] == ["a3"]  # its address is under its share again, and it came first
    ends["d1"].set()
    await settled()
    assert had_in_order[6:] == ["e1"]
    for end in ends.values():
        end.set()
    await asyncio.gather(*messages)
    assert slots.taken == 0 and slots.waiting == 0


async def test_the_turn_passes_on_when_a_waiter_takes_its_slot() -> None:
    """A session that asks while the waiter ahead of it has a slot freed for it waits its
    turn, and gets its own slot as soon as that waiter takes one (two were freed), without
    waiting for another message to end."""
    slots = protocol.DataSlots(1, wait=60.0, longest=60.0)  # one per address, two in all
    ends = {name: asyncio.Event() for name in "abcd"}
    had: list[str] = []

    async def a_message(name: str) -> None:
        async with slots.slot(name.upper()) as taken:
            assert taken
            had.append(name)
            await ends[name].wait()

    def asks(name: str) -> asyncio.Task[None]:
        return asyncio.create_task(a_message(name))

    async def settled() -> None:
        for _ in range(50):
            await asyncio.sleep(0)

    messages = {name: asks(name) for name in "ab"}
    await settled()
    messages["c"] = asks("c")
    await settled()
    assert had == ["a", "b"] and slots.waiting == 1
    ends["a"].set()
    ends["b"].set()  # two slots freed at once
    messages["d"] = asks("d")  # asks before c has woken: c is first
    await settled()
    assert had[2:] == ["c", "d"] and slots.waiting == 0
    for end in ends.values():
        end.set()
    await asyncio.gather(*messages.values())
    assert slots.taken == 0


def test_a_session_that_waits_for_its_354_is_not_closed_as_idle(
    relay_stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timeout does not run while a DATA waits for a slot (the wait is the
    server's doing); it runs again once the message is in."""
    monkeypatch.setattr(protocol, "SLOT_WAIT", 120.0)
    monkeypatch.setattr(protocol, "SLOT_WAIT_LONGEST", 120.0)
    before = relay_stack.counts()
    body = message(SENDER, RECIPIENTS[:1]) + b"\r\n.\r\n"
    rt = dataclasses.replace(relay_stack.runtime(command_timeout=1.0), messages=MessageThreads(1))
    with RelayServer(rt) as relay:
        holders = [login(relay_stack, port=relay.port) for _ in range(2)]
        for holder in holders:
            _ready_for_data(holder).putcmd("data")
            assert holder.getreply() == code_of(replies.START_MAIL_INPUT)
            holder.send(body[: -len(b".\r\n")])
        waiting = _ready_for_data(login(relay_stack, port=relay.port))
        waiting.putcmd("data")
        # Three idle timeouts long; the holders send a line now and then, so stay in.
        for _ in range(12):
            assert not answered_within(waiting, 0.25)
            for holder in holders:
                holder.send(b"Suite de la lettre.\r\n")
        for holder in holders:  # both at once: neither stays idle past its timeout meanwhile
            holder.send(b".\r\n")
        for holder in holders:
            queue_id(holder.getreply())
        assert waiting.getreply() == code_of(replies.START_MAIL_INPUT)
        waiting.send(body)
        queue_id(waiting.getreply())
        # Idle again after its message: told and closed.
        assert waiting.getreply() == code_of(replies.IDLE_TIMEOUT)
        for holder in holders:
            holder.close()
        assert _slots_given_back(relay)
    assert relay_stack.counts()[0] == before[0] + 3


def test_unauthenticated_session_has_a_deadline_noop_and_rset_do_not_move(relay_stack: Stack) -> None:
    with RelayServer(relay_stack.runtime(login_timeout=1.0)) as relay:
        client = connect(relay_stack, port=relay.port)
        said = wait_for_close(client.sock, b"NOOP\r\nRSET\r\n")
        client.close()
        assert said[-1].decode() == replies.LOGIN_TIMEOUT
        assert set(said[:-1]) == {replies.OK.encode()}
        # Before STARTTLS too.
        sock, greeting = greeted(relay.port)
        with sock:
            assert greeting.startswith(b"220 ")
            assert wait_for_close(sock, b"NOOP\r\n")[-1].decode() == replies.LOGIN_TIMEOUT
        # An authenticated session is past that deadline.
        client = login(relay_stack, port=relay.port)
        time.sleep(1.5)
        assert client.mail(SENDER) == code_of(replies.SENDER_OK)
        client.quit()


def test_noop_and_rset_are_not_activity(relay_stack: Stack) -> None:
    with RelayServer(relay_stack.runtime(command_timeout=1.0)) as relay:
        client = login(relay_stack, port=relay.port)
        said = wait_for_close(client.sock, b"NOOP\r\nRSET\r\n")
        assert said[-1].decode() == replies.IDLE_TIMEOUT
        client.close()


def test_command_lines_end_with_crlf(relay_stack: Stack) -> None:
    before = relay_stack.counts()
    client = login(relay_stack)
    assert client.mail(SENDER) == code_of(replies.SENDER_OK)
    client.send(f"RCPT TO:<{RECIPIENTS[0]}\n>\r\n".encode())
    assert client.getreply() == code_of(replies.BARE_LINE_END)
    assert client.getreply() == code_of(replies.COMMAND_NOT_RECOGNIZED)  # the stray ">"
    for line in (f"RCPT TO:<{RECIPIENTS[0]}>\n", "NOOP\rRCPT TO:<x@y>\r\n", f"RCPT TO:<{RECIPIENTS[0]}>\r\r\n"):
        client.send(line.encode())
        assert client.getreply() == code_of(replies.BARE_LINE_END), line
    # None of those recipients was taken.
    assert client.docmd("DATA") == code_of(replies.NEED_RCPT)
    assert client.rcpt(RECIPIENTS[0]) == code_of(replies.RECIPIENT_OK)
    queue_id(client.data(message(SENDER, RECIPIENTS[:1])))
    client.quit()
    assert relay_stack.counts()[0] == before[0] + 1


@pytest.mark.parametrize("line", [b"XYZZY\r\n", b"AUTH PLAIN AAAA\r\n"], ids=["unrecognized", "over-budget"])
def test_cut_off_session_closes_cleanly(relay_stack: Stack, caplog: pytest.LogCaptureFixture, line: bytes) -> None:
    """aiosmtpd's cut-offs with more commands pipelined behind them: one 421, then the end."""
    client = connect(relay_stack)
    with caplog.at_level("WARNING"):
        client.sock.sendall(line * 20)
        said = wait_for_close(client.sock)
        client.close()
        still_serving(relay_stack, relay_stack.counts())
    assert said[-1].decode() in {replies.TOO_MANY_UNRECOGNIZED, replies.COMMAND_LIMIT}
    assert all(not reply.startswith(b"421") for reply in said[:-1])
    assert not [r for r in caplog.records if r.levelname in {"ERROR", "CRITICAL"}], [
        r.getMessage() for r in caplog.records
    ]
