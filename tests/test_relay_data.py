"""DATA through the relay over real TLS: what is stored on 250, and every refusal.

A refused message leaves no row in ``message`` or ``mailbox_item``, and the same server
serves the next client. What is stored is checked by decrypting it with a recipient's key.
"""

from __future__ import annotations

import subprocess
from email import message_from_bytes, policy

import aiosmtplib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from directory.certificates import current_certificate
from mss import accounts
from mss.crypto import keys, smime
from mss.db import session_scope
from mss.documents import ArchiveBomb, ForbiddenDocumentType, XmlDoctypeForbidden, XmlTooComplex
from mss.models import MailboxItem, Message
from mss.relay import replies
from mss.relay.handler import document_status
from mss.relay.protocol import MAX_HEADER_FIELDS, MAX_LINE, overlong_line

from document_samples import pdf_bytes
from relay_support import (
    MAX_MESSAGE_SIZE,
    RECIPIENTS,
    SENDER,
    Stack,
    billion_laughs_cda,
    code_of,
    login,
    message,
    queue_id,
    referral,
    still_serving,
    transaction,
    xxe_cda,
    zip_bomb_xdm,
)


def opened(stack: Stack, queue: str, reader: str) -> bytes:
    """The signed entity of a stored message, decrypted with ``reader``'s private key."""
    with session_scope(stack.rt.engine) as session:
        stored = session.execute(select(Message).where(Message.queue_id == queue)).scalar_one()
        owners = sorted(
            (item.owner, item.folder)
            for item in session.execute(select(MailboxItem).where(MailboxItem.message_id == stored.id)).scalars()
        )
        cms = stored.cms
    assert (reader, "inbox") in owners or (reader, "sent") in owners
    account = accounts.authenticate(
        stack.rt.engine, stack.settings, reader, stack.passwords[reader], accounts.Origin("cli", request_id="test")
    )
    entity = smime.decrypt(cms, account.certificate, keys.private_key_from_der(account.private_key_der))
    # The envelope holds the signed data as an RFC 8551 application/pkcs7-mime entity.
    return smime.signed_content(smime.smime_payload(entity))


def folders(stack: Stack, queue: str) -> list[tuple[str, str]]:
    with session_scope(stack.rt.engine) as session:
        stored = session.execute(select(Message).where(Message.queue_id == queue)).scalar_one()
        return sorted(
            (item.owner, item.folder)
            for item in session.execute(select(MailboxItem).where(MailboxItem.message_id == stored.id)).scalars()
        )


def test_referral_with_pdf_cda_and_xdm_to_two_recipients(relay_stack: Stack) -> None:
    raw = referral()
    client = login(relay_stack)
    replies_ = transaction(client, SENDER, RECIPIENTS, raw)
    client.quit()
    assert [r[0] for r in replies_] == [250, 250, 250, 250]
    queue = queue_id(replies_[-1])
    assert folders(relay_stack, queue) == sorted([(RECIPIENTS[0], "inbox"), (RECIPIENTS[1], "inbox"), (SENDER, "sent")])
    entity = message_from_bytes(opened(relay_stack, queue, RECIPIENTS[1]), policy=policy.default)
    names = sorted(part.get_filename() for part in entity.iter_attachments())
    assert names == ["IHE_XDM.ZIP", "LDL-SES_2022.01.xml", "courrier.pdf"]
    assert entity["From"] == SENDER


def test_dot_stuffing_and_line_ends_survive(relay_stack: Stack) -> None:
    body = ".leading dot\n..two dots\n.\nlast line\n"
    client = login(relay_stack)
    reply = transaction(client, SENDER, RECIPIENTS[:1], message(SENDER, RECIPIENTS[:1], body=body))[-1]
    client.quit()
    entity = message_from_bytes(opened(relay_stack, queue_id(reply), RECIPIENTS[0]), policy=policy.default)
    assert entity.get_body().get_content().replace("\r\n", "\n") == body


async def test_aiosmtplib_submission(relay_stack: Stack) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=relay_stack.port, start_tls=True, tls_context=relay_stack.client_context()
    )
    await client.connect()
    await client.login(SENDER, relay_stack.passwords[SENDER])
    refused, reply = await client.sendmail(SENDER, list(RECIPIENTS), referral())
    await client.quit()
    assert refused == {}
    assert reply.startswith("2.0.0 Ok: queued as ")
    assert len(folders(relay_stack, reply.rsplit(" ", 1)[1])) == 3


def test_swaks_submission(relay_stack: Stack, tmp_path) -> None:
    eml = tmp_path / "referral.eml"
    eml.write_bytes(referral(recipients=RECIPIENTS[:1]))
    result = subprocess.run(
        [
            "swaks",
            "--server",
            "127.0.0.1",
            "--port",
            str(relay_stack.port),
            "--tls",
            "--tls-verify",
            "--tls-ca-path",
            str(relay_stack.ca_file),
            "--tls-protocol",
            "tlsv1_2,tlsv1_3",
            "--auth",
            "LOGIN",
            "--auth-user",
            SENDER,
            "--auth-password",
            relay_stack.passwords[SENDER],
            "--from",
            SENDER,
            "--to",
            RECIPIENTS[0],
            "--data",
            str(eml),
            "--helo",
            "client.test",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "<~  250 2.0.0 Ok: queued as " in result.stdout
    queued = result.stdout.split("<~  250 2.0.0 Ok: queued as ")[1].split()[0]
    assert folders(relay_stack, queued) == sorted([(RECIPIENTS[0], "inbox"), (SENDER, "sent")])


def client_encrypted(stack: Stack, readers: tuple[str, ...]) -> bytes:
    """An S/MIME message the client encrypted itself, for ``readers`` only."""
    with session_scope(stack.rt.engine) as session:
        certificates = [current_certificate(session, address) for address in readers]
    envelope = smime.encrypt(message(SENDER, RECIPIENTS[:1]), [c for c in certificates if c is not None])
    headers = {"From": SENDER, "To": RECIPIENTS[0], "Subject": "chiffré par le client"}
    return smime.to_smime_message(envelope, headers)


def test_client_encrypted_message_passes_through(relay_stack: Stack) -> None:
    raw = client_encrypted(relay_stack, (RECIPIENTS[0], SENDER))
    client = login(relay_stack)
    reply = transaction(client, SENDER, RECIPIENTS[:1], raw)[-1]
    client.quit()
    with session_scope(relay_stack.rt.engine) as session:
        stored = session.execute(select(Message).where(Message.queue_id == queue_id(reply))).scalar_one()
    assert stored.kind == "client"
    assert stored.cms == smime.smime_payload(raw)


def refused(stack: Stack, raw: bytes, *, recipients: tuple[str, ...] = RECIPIENTS) -> tuple[int, bytes]:
    """The DATA reply for ``raw`` (sent after a successful MAIL and RCPT)."""
    before = stack.counts()
    client = login(stack)
    replies_ = transaction(client, SENDER, recipients, raw)
    assert [r[0] for r in replies_[:-1]] == [250] * len(replies_[:-1])
    # The session goes on after a refusal.
    assert client.noop()[0] == 250
    client.quit()
    still_serving(stack, before)
    return replies_[-1]


def test_oversize_data(relay_stack: Stack) -> None:
    big = message(SENDER, RECIPIENTS, [("big.pdf", "application/pdf", b"%PDF-1.4\n" + b"0" * MAX_MESSAGE_SIZE)])
    assert refused(relay_stack, big) == code_of(replies.MESSAGE_TOO_LARGE)


def test_overlong_line(relay_stack: Stack) -> None:
    raw = message(SENDER, RECIPIENTS).replace(b"Bonjour", b"Bonjour" + b"x" * 1200)
    assert refused(relay_stack, raw) == code_of(replies.LINE_TOO_LONG)
    # 998 octets plus CRLF is the most RFC 5322 allows, and it passes.
    raw = message(SENDER, RECIPIENTS[:1]).replace(b"Bonjour,", b"B" * 998)
    client = login(relay_stack)
    assert transaction(client, SENDER, RECIPIENTS[:1], raw)[-1][0] == 250
    client.quit()


def _every_line_measured(data: bytes, start: int, line: int, limit: int) -> tuple[bool, int]:
    """What ``overlong_line`` answers, by cutting the data into lines."""
    segments = data[start:].split(b"\n")
    if len(segments) == 1:
        return line + len(segments[0]) > limit, line + len(segments[0])
    longest = max(line + len(segments[0]), *map(len, segments[1:]))
    return longest > limit, len(segments[-1])


# Line lengths near the edges: the block size (limit // 2 + 1) and the limit itself.
_LENGTHS = st.one_of(st.integers(0, 80), st.integers(490, 512), st.integers(990, 1012), st.integers(0, 2100))


@settings(max_examples=300, deadline=None)
@given(
    lengths=st.lists(_LENGTHS, max_size=40),
    tail=st.integers(0, 1200),
    cuts=st.lists(st.integers(1, 5000), max_size=8),
    limit=st.sampled_from([MAX_LINE - 1, 10, 3]),
)
def test_overlong_line_agrees_with_measuring_every_line(lengths, tail, cuts, limit) -> None:
    data = b"".join(b"x" * (n - 1) + b"\r\n" if n else b"\n" for n in lengths) + b"y" * tail
    line, start, ends = 0, 0, sorted({min(c, len(data)) for c in cuts} | {len(data)})
    for end in ends:
        seen = data[:end]
        answer = overlong_line(bytearray(seen), start, line, limit)
        assert answer == _every_line_measured(seen, start, line, limit), (start, end, line)
        line, start = answer[1], end


@pytest.mark.parametrize("limit", [3, 10, MAX_LINE - 1])
def test_overlong_line_finds_the_shortest_long_line_wherever_it_falls(limit: int) -> None:
    # Short lines all around, so that the only line without an LF near it is the long one,
    # at every offset from the start of the tiling.
    for offset in range(limit + 4):
        before = b"\n" + b"a" * (offset % 2) + b"\n" + b"a\n" * (offset // 2)
        for length, too_long in ((limit, False), (limit + 1, True)):
            data = before + b"b" * length + b"\n" + b"a\n" * (limit + 4)
            assert overlong_line(data, 0, 0, limit) == (too_long, 0), (offset, length)


def test_overlong_line_finds_a_long_line_between_short_ones() -> None:
    short = b"a" * 75 + b"\r\n"
    for length in (1000, 1001, 1002, 1003, 1500, 5000):  # with its CRLF: at most 1001 pass
        data = short * 40 + b"b" * (length - 2) + b"\r\n" + short * 40
        assert overlong_line(data, 0, 0, MAX_LINE - 1)[0] is (length > MAX_LINE)


def test_header_flood(relay_stack: Stack) -> None:
    headers = b"".join(b"X-Filler-%d: x\r\n" % i for i in range(MAX_HEADER_FIELDS + 1))
    assert refused(relay_stack, headers + message(SENDER, RECIPIENTS)) == code_of(replies.HEADER_TOO_LARGE)
    long_header = b"X-Long: " + b"\r\n ".join([b"y" * 900] * 80) + b"\r\n"
    assert refused(relay_stack, long_header + message(SENDER, RECIPIENTS)) == code_of(replies.HEADER_TOO_LARGE)


def test_spoofed_from_header(relay_stack: Stack) -> None:
    raw = message(SENDER, RECIPIENTS, from_header=f"Dr Petit <{RECIPIENTS[0]}>")
    assert refused(relay_stack, raw) == code_of(replies.FROM_HEADER_MISMATCH)


def test_a_sender_field_names_the_account_or_is_left_out(relay_stack: Stack) -> None:
    """A mail client shows Sender: as who sent the message ("on behalf of"): naming anyone
    but the authenticated account is refused for good, as a forged From: is."""
    raw = message(SENDER, RECIPIENTS)
    forged = f"Sender: Dr Petit <{RECIPIENTS[0]}>\r\n".encode() + raw
    assert refused(relay_stack, forged) == code_of(replies.SENDER_HEADER_MISMATCH)
    own = f"Sender: {SENDER.upper()}\r\n".encode() + raw
    client = login(relay_stack)
    assert transaction(client, SENDER, RECIPIENTS, own)[-1][0] == 250
    client.quit()


def test_forbidden_attachment(relay_stack: Stack) -> None:
    exe = b"MZ\x90\x00" + b"\x00" * 60 + b"This program cannot be run in DOS mode." + b"\x00" * 200
    code, text = refused(relay_stack, message(SENDER, RECIPIENTS, [("bilan.exe", "application/octet-stream", exe)]))
    assert code == document_status(ForbiddenDocumentType)[0]
    assert text.startswith(f"{document_status(ForbiddenDocumentType)[1]} bilan.exe".encode())


def test_malformed_mime(relay_stack: Stack) -> None:
    raw = (
        f"From: {SENDER}\r\nTo: {RECIPIENTS[0]}\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="never-closed"\r\n\r\n'
        "--never-closed\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    ).encode()
    code, text = refused(relay_stack, raw)
    assert (code, text[:5]) == code_of(replies.MALFORMED_MESSAGE)[:1] + (b"5.6.0",)
    assert text.startswith(code_of(replies.MALFORMED_MESSAGE)[1])
    # No From: at all.
    assert refused(relay_stack, b"Subject: nothing else\r\n\r\nhi\r\n")[0] == 554


@pytest.mark.parametrize(
    "field",
    [
        "Cc: *)>/, :;,(=",
        "Reply-To: , .<:/",
        "Cc: \\@[\t",
        "Message-ID: <a@",
        "Date: Mon, 1 Jan 99999999999 00:00:00 +0000",
        "Resent-Date: Mon, 1 Jan 2026 00:00:00 +99999999999999999999",
    ],
    ids=["index-error", "type-error", "unbound-local-error", "unclosed-message-id", "year-overflow", "zone-overflow"],
)
def test_header_fields_the_email_package_cannot_read_are_refused_for_good(relay_stack: Stack, field: str) -> None:
    """Values on which the email package's structured parsers fail (with IndexError,
    TypeError, UnboundLocalError ... rather than a defect) are a malformed message: a 554
    naming the field, not the 451 of an unexpected error."""
    raw = (f"From: {SENDER}\r\nTo: {RECIPIENTS[0]}\r\n{field}\r\nSubject: x\r\n\r\nhello\r\n").encode()
    code, text = refused(relay_stack, raw)
    assert (code, text[:5]) == (554, b"5.6.0"), text
    assert f"the {field.partition(':')[0]}: header field is malformed".encode() in text


def test_malformed_base64_attachment_is_named_in_the_reply(relay_stack: Stack) -> None:
    raw = message(SENDER, RECIPIENTS, [("cr.pdf", "application/pdf", pdf_bytes())])
    lines = raw.split(b"\r\n")
    named = next(i for i, line in enumerate(lines) if b'filename="cr.pdf"' in line)
    first = lines.index(b"", named) + 1  # the attachment's first line of base64
    lines[first] = b"*" + lines[first][1:]
    code, text = refused(relay_stack, b"\r\n".join(lines))
    assert (code, text[:5]) == (554, b"5.6.0")
    assert b"InvalidBase64Characters" in text


def test_zip_bomb_xdm(relay_stack: Stack) -> None:
    code, text = refused(relay_stack, message(SENDER, RECIPIENTS, [("IHE_XDM.ZIP", "application/zip", zip_bomb_xdm())]))
    assert (code, text[:5].decode()) == document_status(ArchiveBomb)


def test_client_encrypted_for_someone_else(relay_stack: Stack) -> None:
    raw = client_encrypted(relay_stack, (SENDER,))
    assert refused(relay_stack, raw, recipients=RECIPIENTS[:1]) == code_of(replies.NOT_ENCRYPTED_FOR_RECIPIENTS)


@pytest.mark.parametrize("document", [xxe_cda, billion_laughs_cda], ids=["xxe", "billion-laughs"])
def test_hostile_cda(relay_stack: Stack, document) -> None:
    code, text = refused(relay_stack, message(SENDER, RECIPIENTS, [("cr.xml", "text/xml", document())]))
    assert (code, text[:5].decode()) == document_status(XmlDoctypeForbidden)
    assert b"passwd" not in text and b"lol" not in text


# -- messages that could be read in two ways, and permanent defects -----------------------


def with_header_lines(raw: bytes, old: bytes, new: bytes) -> bytes:
    """``raw`` with its header line ``old`` (without line end) replaced by ``new``."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert old + b"\r\n" in head + b"\r\n"
    return (head + b"\r\n").replace(old + b"\r\n", new + b"\r\n", 1)[:-2] + sep + body


SPOOFED = RECIPIENTS[0].encode()
ORIGINAL_FROM = b"From: " + SENDER.encode()


@pytest.mark.parametrize(
    ("new_from", "reply"),
    [
        (ORIGINAL_FROM + b"\r\nFrom: " + SPOOFED, replies.REPEATED_HEADER_FIELD),
        (ORIGINAL_FROM + b"\nFrom: " + SPOOFED, replies.REPEATED_HEADER_FIELD),
        (ORIGINAL_FROM + b"\r\nfrom: " + SPOOFED, replies.REPEATED_HEADER_FIELD),
        (b"From: <" + SENDER.encode() + b">" + SPOOFED, replies.MALFORMED_ORIGINATOR),
        (ORIGINAL_FROM + b", " + SPOOFED, replies.MALFORMED_ORIGINATOR),
        (b"From: Undisclosed:;", replies.MALFORMED_ORIGINATOR),
        (ORIGINAL_FROM + b"\r\nSender: " + SPOOFED + b", " + SENDER.encode(), replies.MALFORMED_ORIGINATOR),
        (ORIGINAL_FROM + b"\r\nSender: " + SPOOFED + b"\r\nSender: " + SENDER.encode(), replies.REPEATED_HEADER_FIELD),
        (ORIGINAL_FROM + b"\r\nFrom : " + SPOOFED, replies.MALFORMED_MESSAGE),
        (ORIGINAL_FROM + b"\r\nTo: " + SPOOFED, replies.REPEATED_HEADER_FIELD),
        (
            ORIGINAL_FROM + b"\r\nDate: Mon, 1 Jan 2024 08:00:00 +0100\r\nDate: Tue, 2 Jan 2024 08:00:00 +0100",
            replies.REPEATED_HEADER_FIELD,
        ),
        # Values the email package's parsers fail on (found by tests/test_fuzz.py).
        (ORIGINAL_FROM + b'\r\nIn-Reply-To: <a@b>\r\nX-Note: x\r\nCc: "', replies.MALFORMED_MESSAGE),
    ],
    ids=[
        "two-from",
        "two-from-bare-lf",
        "two-from-case",
        "angle-then-address",
        "two-mailboxes",
        "group",
        "sender-two-mailboxes",
        "two-senders",
        "obsolete-from",
        "two-to",
        "two-dates",
        "unparseable-cc",
    ],
)
def test_originator_and_once_fields_mean_one_thing(relay_stack: Stack, new_from: bytes, reply: str) -> None:
    raw = with_header_lines(message(SENDER, RECIPIENTS), ORIGINAL_FROM, new_from)
    code, text = refused(relay_stack, raw)
    assert (code, text[: len(reply) - 4]) == code_of(reply), text


def nested_multiparts(levels: int) -> bytes:
    head = f"From: {SENDER}\r\nTo: {RECIPIENTS[0]}\r\nSubject: nested\r\nMIME-Version: 1.0\r\n".encode()
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(levels)
    )
    closing = b"".join(b"\r\n--b%d--" % i for i in reversed(range(levels)))
    return head + opening + b"Content-Type: text/plain\r\n\r\nhi" + closing + b"\r\n"


@pytest.mark.parametrize(
    ("raw", "reply"),
    [
        (nested_multiparts(1000), replies.MIME_TOO_COMPLEX),
        (nested_multiparts(40), replies.MIME_TOO_COMPLEX),
        (
            message(SENDER, RECIPIENTS).replace(b"Subject: Lettre", b"Subject: Lettre\rX-Hidden: 1", 1),
            replies.BARE_CR_IN_MESSAGE,
        ),
        (
            message(SENDER, RECIPIENTS).replace(
                b"Subject: Lettre de liaison\r\n", b"Subject: Lettre de liaison\r\r\n", 1
            ),
            replies.BARE_CR_IN_MESSAGE,
        ),
        (message(SENDER, RECIPIENTS).replace(b"Bonjour,", b"Bonjour,\r.\rsuite", 1), replies.BARE_CR_IN_MESSAGE),
        (
            message(SENDER, RECIPIENTS, message_id="<x@client.test>").replace(b"<x@client.test>", b"<fuzz@"),
            replies.MALFORMED_MESSAGE,
        ),
    ],
    ids=["nested-1000", "nested-40", "bare-cr-header", "cr-cr-lf", "cr-dot-cr", "truncated-message-id"],
)
def test_permanent_defects_get_permanent_replies(relay_stack: Stack, raw: bytes, reply: str) -> None:
    code, text = refused(relay_stack, raw)
    assert (code, text[: len(reply) - 4]) == code_of(reply), text


def test_a_few_levels_of_nesting_pass(relay_stack: Stack) -> None:
    client = login(relay_stack)
    assert transaction(client, SENDER, RECIPIENTS[:1], nested_multiparts(8))[-1][0] == 250
    client.quit()


def test_hostile_documents_are_refused_while_ordinary_mail_goes_through(relay_stack: Stack) -> None:
    """Six sessions send a CDA with 40,000 attributes on one element (it once held the
    service for 10 s each) while a seventh sends an ordinary referral."""
    from concurrent.futures import ThreadPoolExecutor

    from test_documents_hostile import with_attributes

    hostile = message(SENDER, RECIPIENTS[:1], [("cr.xml", "text/xml", with_attributes(40_000))])
    before = relay_stack.counts()

    def send(raw: bytes) -> tuple[int, bytes]:
        client = login(relay_stack)
        try:
            return transaction(client, SENDER, RECIPIENTS[:1], raw)[-1]
        finally:
            client.quit()

    with ThreadPoolExecutor(max_workers=6) as pool:
        pending = [pool.submit(send, hostile) for _ in range(6)]
        ordinary = send(referral(recipients=RECIPIENTS[:1]))
        refusals = [future.result() for future in pending]
    assert ordinary[0] == 250, ordinary
    for code, text in refusals:
        assert (code, text[:5]) == (document_status(XmlTooComplex)[0], document_status(XmlTooComplex)[1].encode())
        assert b"cr.xml has an element with more than" in text
    assert relay_stack.counts()[0] == before[0] + 1
    still_serving(relay_stack, relay_stack.counts())
