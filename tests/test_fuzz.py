"""Fuzzing the relay and the document checks with Hypothesis, with a fixed seed and bounds.

Properties:

- a document check returns a ``Document`` or refuses with a ``DocumentError``, whatever the
  bytes (mutated PDFs, CDAs, IHE_XDM packages, random data), never another exception;
- every line the relay sends back to arbitrary command lines (any bytes, any line end) is a
  well-formed reply, never the ``451`` that stands for an unexpected error, and the relay
  closes each session cleanly;
- the MAIL and RCPT paths of an authenticated session, made of the characters of the address
  grammar, are taken or refused with a reply of their own, never the ``451``;
- a mutated message after DATA (bytes cut or spliced in, a structured header field of those
  characters put in front) is either stored (``250``) or refused for good (``5xx``), never
  ``4xx`` (a client would retry a defect for days).

The suite runs about 3,100 inputs in about half a minute. ``MSS_FUZZ_SCALE=N`` multiplies
the number of inputs and ``MSS_FUZZ_SEED`` changes the seed, for a longer run (README).
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from mss.documents import DocumentLimits, inspect_attachment
from mss.errors import DocumentError
from mss.relay import replies

from relay_support import (
    RECIPIENTS,
    SENDER,
    Stack,
    cda_bytes,
    connect,
    login,
    message,
    pdf_bytes,
    running_stack,
    still_serving,
    xdm_bytes,
)

SCALE = int(os.environ.get("MSS_FUZZ_SCALE", "1"))
SEED = int(os.environ.get("MSS_FUZZ_SEED", "20261130"))
LIMITS = DocumentLimits(max_check_seconds=60)


def fuzz_settings(examples: int):
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


# -- document checks ----------------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parent / "samples" / "cda"
SEEDS = (
    pdf_bytes(2),
    cda_bytes(),
    (SAMPLES / "DOC_NON_STRUCTURE_CDA-R2-N1.xml").read_bytes(),
    xdm_bytes(),
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><code code="1"/></ClinicalDocument>',
)
TOKENS = (
    b"%PDF-1.7\n", b"PK\x03\x04", b"PK\x05\x06" + bytes(18), b"<html>", b"<!DOCTYPE x>", b"&x;", b"/JavaScript",
    b"/JS (a)", b"/Launch", b"/AA <<>>", b"endobj", b"stream\n", b"xref\n", b"%%EOF", b"\x00", b"\xff\xfe",
    b'<text representation="B64" mediaType="application/pdf">JVBERi0=</text>', b"<br/>" * 50, b' a="b" c="d"',
    b"]]>", b"<![CDATA[", b"\r", b"\n",
)  # fmt: skip
NAMES = (
    ("courrier.pdf", "application/pdf"), ("cr.xml", "text/xml"), ("IHE_XDM.ZIP", "application/zip"),
    ("piece-jointe", "application/octet-stream"), ("note.txt", "text/plain"),
)  # fmt: skip


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    """A known-good document with a few mutations: flips, insertions of format tokens,
    deletions, truncation, or random bytes altogether."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=4096))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(("flip", "insert", "token", "delete", "truncate")))
        if operation == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif operation == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 256))]
        elif operation == "truncate" and at > 0:
            del data[at:]
    return bytes(data)


@pytest.mark.sqlite_only
@seed(SEED)
@fuzz_settings(2000)
@given(data=mutated_documents(), name=st.sampled_from(NAMES))
def test_document_checks_refuse_or_accept_but_never_break(data: bytes, name: tuple[str, str]) -> None:
    filename, content_type = name
    try:
        document = inspect_attachment(filename, content_type, data, limits=LIMITS)
    except DocumentError as refusal:
        assert refusal.message and "\n" not in refusal.message
        return
    assert document.size == len(data)


# -- the relay ----------------------------------------------------------------------------

_REPLY = re.compile(rb"\A[2-5]\d\d([ -].*)?\Z")


@pytest.fixture(scope="module")
def relay_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    yield from running_stack(tmp_path_factory)


COMMANDS = (
    b"EHLO", b"HELO", b"MAIL FROM:", b"RCPT TO:", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP", b"AUTH PLAIN",
    b"AUTH LOGIN", b"STARTTLS", b"BDAT", b"XYZZY", b"",
)  # fmt: skip
ENDINGS = (b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"")
ARGUMENTS = st.one_of(
    st.binary(max_size=80),
    st.sampled_from((b"<" + SENDER.encode() + b">", b"<" + RECIPIENTS[0].encode() + b">", b"<>", b"<a@b\n>",
                     b"client.test", b"SIZE=1 BODY=8BITMIME", b"NOTIFY=SUCCESS ORCPT=rfc822;a@b", b"=" * 70)),
)  # fmt: skip


@st.composite
def command_lines(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(1, 12))):
        command = draw(st.sampled_from(COMMANDS))
        argument = draw(ARGUMENTS)
        lines.append(command + (b" " if command and argument else b"") + argument + draw(st.sampled_from(ENDINGS)))
    return b"".join(lines)


def replies_until_closed(sock: ssl.SSLSocket) -> list[bytes]:
    received = b""
    sock.settimeout(15)
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            break
        except TimeoutError:
            raise AssertionError(f"the relay neither answered nor closed; last replies {received[-300:]!r}") from None
        if not chunk:
            break
        received += chunk
    return [line for line in received.split(b"\r\n") if line]


@seed(SEED)
@fuzz_settings(800)
@given(lines=command_lines())
def test_relay_answers_any_command_lines_with_replies(relay_stack: Stack, lines: bytes) -> None:
    client = connect(relay_stack)
    sock = client.sock
    try:
        # Whatever came before: end a pending line, abort a pending AUTH, then leave.
        sock.sendall(lines + b"\r\n*\r\nQUIT\r\n")
    except (ConnectionError, ssl.SSLError):
        pass  # closed already by a cut-off: what it said is read below
    said = replies_until_closed(sock)
    client.close()
    assert said, "no reply at all"
    for reply in said:
        assert _REPLY.match(reply), reply
        assert not reply.startswith(b"451"), said
        assert b"Error" not in reply, reply  # aiosmtpd's own texts are all translated


SPLICES = (
    b"\r", b"\n", b"\r\n", b"\x00", b"\r\nFrom: " + RECIPIENTS[0].encode(), b"\r\nDate: x", b"\r\nTo: a@b",
    b"\r\nContent-Type: multipart/mixed; boundary=z", b"\r\n--z\r\n", b"\r\n\r\n", b"=?utf-8?b?AAA?=",
    b"\r\nContent-Transfer-Encoding: base64", b"\xc3\x28", b" <a@b>c@d", b"\r\n.\r", b"\r\n..",
)  # fmt: skip


# Built once: the email package draws MIME boundaries from the random module.
MESSAGES = tuple(
    message(SENDER, RECIPIENTS[:1], attachments, message_id="<fuzz@client.test>")
    for attachments in ([], [("courrier.pdf", "application/pdf", pdf_bytes())], [("cr.xml", "text/xml", cda_bytes())])
)


# RFC 5322's structured fields, with values of the characters its grammar turns on: the
# email package's parsers raise on some (IndexError, TypeError, UnboundLocalError ...).
STRUCTURED_FIELDS = (
    "From", "Sender", "To", "Cc", "Reply-To", "Message-ID", "In-Reply-To", "References", "Date", "MIME-Version",
    "Content-Type", "Content-Disposition", "Content-Transfer-Encoding", "Content-ID",
)  # fmt: skip
GRAMMAR = st.text(alphabet='ab.@<>()"\\;=:,[] \t#!/-%*é', max_size=14)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(MESSAGES)))
    if draw(st.booleans()):
        field = f"{draw(st.sampled_from(STRUCTURED_FIELDS))}: {draw(GRAMMAR)}\r\n"
        data[0:0] = field.encode()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, min(len(data), 2000) if draw(st.booleans()) else len(data)))
        if draw(st.booleans()):
            data[at:at] = draw(st.sampled_from(SPLICES))
        else:
            del data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


def send_raw_data(client, raw: bytes) -> tuple[int, bytes]:
    """DATA with ``raw`` as it is (smtplib would rewrite bare CR and LF), dot-stuffed."""
    code, text = client.docmd("DATA")
    assert code == 354, (code, text)
    body = (b"\r\n" + raw).replace(b"\r\n.", b"\r\n..")[2:]
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    client.send(body + b".\r\n")
    return client.getreply()


@seed(SEED)
@fuzz_settings(200)
@given(raw=mutated_messages())
def test_relay_stores_or_refuses_for_good_any_message(relay_stack: Stack, raw: bytes) -> None:
    client = login(relay_stack)
    try:
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(RECIPIENTS[0])[0] == 250
        code, text = send_raw_data(client, raw)
    finally:
        client.close()
    assert code == 250 or 500 <= code < 600, (code, text)
    assert not text.startswith(replies.LOCAL_ERROR[4:].encode())


PATHS = st.one_of(
    GRAMMAR,
    st.builds("<{}".format, GRAMMAR),
    st.builds("{}@{}".format, GRAMMAR, GRAMMAR),
    st.builds("<{}@{}>{}".format, GRAMMAR, GRAMMAR, GRAMMAR),
)


@seed(SEED)
@fuzz_settings(60)
@given(paths=st.lists(PATHS, min_size=1, max_size=8))
def test_relay_refuses_any_path_it_cannot_read_as_syntax(relay_stack: Stack, paths: list[str]) -> None:
    """MAIL and RCPT paths of the characters of the address grammar: each is taken or
    refused with a reply of its own, never the 451 of an unexpected error."""
    client = login(relay_stack)
    try:
        for path in paths:
            for command, argument in (("MAIL", f"FROM:{path}"), ("RCPT", f"TO:{path}")):
                if command == "RCPT":
                    client.docmd("RSET")
                    assert client.mail(SENDER)[0] == 250
                client.send(f"{command} {argument}\r\n".encode())  # docmd writes ASCII only
                code, text = client.getreply()
                assert code != 451 and (code < 500 or text[:1] == b"5"), (command, argument, code, text)
            client.docmd("RSET")
    finally:
        client.close()


def test_relay_still_serves_after_the_fuzzing(relay_stack: Stack) -> None:
    still_serving(relay_stack, relay_stack.counts())
