"""``mss.mime.parse_bytes``: the email package's parser with long base64 bodies read whole.

It must build the very tree ``BytesParser`` builds, for well-formed messages and for
hostile ones alike: the same parts, header fields, bodies, preambles, epilogues and
defects. Each case is compared with the parser itself.
"""

from __future__ import annotations

import base64
import email.feedparser
import email.policy
import itertools
import os
import re
from email.message import EmailMessage, Message
from email.parser import BytesParser

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mss import mime
from mss.mime import MAX_MIME_DEPTH, nests_deeper_than

from document_samples import nested_multiparts

POLICY = email.policy.default


def _tree(message: Message) -> list[tuple]:
    """What a reader of ``message`` sees: every part's header fields, body text (the
    parser's own, before any decoding), preamble, epilogue and defects, in order."""
    seen = []
    for part in message.walk():
        payload = vars(part).get("_payload")
        seen.append(
            (
                list(part.raw_items()),
                payload if isinstance(payload, str) else None,
                part.preamble,
                part.epilogue,
                [type(defect).__name__ for defect in part.defects],
            )
        )
    return seen


def _same_as_the_parser(raw: bytes, *, hollowed: bool | None = None) -> Message:
    """``raw`` parsed by ``parse_bytes``, checked against the parser; ``hollowed`` says
    whether its runs must have been handed over as marks (None: either)."""
    if hollowed is not None:
        assert (mime.parse_hollowed(raw, POLICY) is not None) is hollowed
    ours = mime.parse_bytes(raw, POLICY)
    theirs = BytesParser(policy=POLICY).parsebytes(raw)
    assert _tree(ours) == _tree(theirs)
    assert _written(ours) == _written(theirs)
    return ours


def _written(message: Message) -> bytes | str:
    """The message written out again, or the error writing it meets (the generator fails on
    some hostile trees, the parser's own as much as ours)."""
    try:
        return message.as_bytes()
    except (UnicodeError, ValueError, TypeError) as exc:
        return type(exc).__name__


def _b64(size: int, *, line_end: bytes = b"\r\n") -> bytes:
    return base64.encodebytes(os.urandom(size)).replace(b"\n", line_end)


def test_a_message_with_a_large_attachment_parses_as_the_email_package_parses_it():
    message = EmailMessage()
    message["From"] = "marc.robert@chu-demo.mss.test"
    message["Subject"] = "Compte rendu"
    message.set_content("Bonjour,\nci-joint.\n")
    data = os.urandom(300_000)
    message.add_attachment(data, maintype="application", subtype="pdf", filename="cr.pdf")
    parsed = _same_as_the_parser(message.as_bytes(), hollowed=True)
    attachment = list(parsed.iter_attachments())[0]
    assert attachment.get_payload(decode=True) == data
    assert not attachment.defects


def test_runs_in_every_place_a_parser_meets_them():
    run = _b64(20_000)
    cases = {
        # where header fields are expected: the run ends them (a defect) and is body
        "headers": b"From: a@b.test\r\nSubject: x\r\n" + run + b"end\r\n",
        "preamble and epilogue": (
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n' + run + b"--B\r\n\r\ntext\r\n"
            b"--B\r\nContent-Transfer-Encoding: base64\r\n\r\n" + run + b"--B--\r\n" + run
        ),
        "part without headers": b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n' + run + b"--B--\r\n",
        "end of message without a line end": b"Subject: x\r\n\r\n" + run + b"QUJD",
        "forwarded message": (
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n'
            b"Subject: inner\r\nContent-Transfer-Encoding: base64\r\n\r\n" + run + b"--B--\r\n"
        ),
        "forwarded message's headers": (
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n'
            + run
            + b"--B--\r\n"
        ),
        "delivery status": (
            b"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; a.test\r\n\r\n" + run + b"\r\n" + run
        ),
        "line feeds only": (
            b'Content-Type: multipart/mixed; boundary="B"\n\n--B\nContent-Transfer-Encoding: base64\n\n'
            + _b64(20_000, line_end=b"\n")
            + b"--B--\n"
        ),
        "mixed line ends": b"Subject: x\r\n\r\n" + _b64(9_000) + _b64(9_000, line_end=b"\n") + b"x\r\n",
        "non-ASCII body": (
            b"Content-Type: text/plain; charset=latin-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            b"caf\xe9\r\n" + run + b"fin\xe9\r\n"
        ),
        "nested boundary in a run's place": (
            b'Content-Type: multipart/mixed; boundary="A"\r\n\r\n--A\r\n'
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\n\r\n' + run + b"--A--\r\n" + run
        ),
        "two runs apart": b"Subject: x\r\n\r\n" + run + b"\r\n" + run + b"-- \r\n" + run,
    }
    for name, raw in cases.items():
        # Each of these runs is kept in a body, preamble or epilogue: none is parsed twice.
        _same_as_the_parser(raw, hollowed=True), name


def test_a_mark_the_message_already_holds_is_never_used(monkeypatch):
    run = _b64(20_000)
    tokens = itertools.cycle([b"MSSRUNAAAA", b"MSSRUNBBBB"])
    monkeypatch.setattr(mime.secrets, "token_hex", lambda _n: next(tokens).decode()[6:].lower())
    raw = b"Subject: x\r\n\r\nMSSRUNAAAA000000\r\n" + run + b"x\r\n"
    parsed = _same_as_the_parser(raw, hollowed=True)
    assert parsed.get_payload().startswith("MSSRUNAAAA000000\r\n")


_LINES = st.sampled_from(
    [
        b"",
        b"--B",
        b"--B--",
        b"--C",
        b"--C--",
        b"Content-Type: multipart/mixed; boundary=C",
        b"Content-Type: message/rfc822",
        b"Content-Transfer-Encoding: base64",
        b"Subject: x",
        b" folded",
        b"QUJD",
        b"caf\xe9",
        "RUN",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, max_size=30), st.booleans())
def test_any_arrangement_of_lines_parses_as_the_email_package_parses_it(lines, crlf):
    end = b"\r\n" if crlf else b"\n"
    run = _b64(6_000, line_end=end)
    body = b"".join(run if line == "RUN" else line + end for line in lines)
    raw = b'Content-Type: multipart/mixed; boundary="B"' + end + end + body
    _same_as_the_parser(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(["QUJD", "QQ==", "QUI=", "=", "A", "\r\n", "\n", " ", "*", "é", "-"]), max_size=40),
    st.sampled_from(["base64", "BASE64", "base64 ", "quoted-printable", ""]),
)
def test_a_body_decodes_as_the_email_package_decodes_it(pieces, encoding):
    text = "".join(pieces)
    head = f"Content-Transfer-Encoding: {encoding}\r\n" if encoding else ""
    raw = (head + "\r\n" + text).encode("utf-8")
    ours = BytesParser(policy=POLICY).parsebytes(raw)
    theirs = BytesParser(policy=POLICY).parsebytes(raw)
    assert mime.decoded_payload(ours) == theirs.get_payload(decode=True)
    # When the email package finds a defect, so do we: the body went to the email package.
    if theirs.defects:
        assert [type(d) for d in ours.defects] == [type(d) for d in theirs.defects]


def test_runs_are_the_long_ones_less_their_last_line():
    line = b"Q" * 76 + b"\r\n"
    head = b"Subject: x\r\n\r\n"
    # 64 lines and the last: handed over; 63 and the last: too short, left to the parser.
    assert mime._runs(head + line * 65 + b"-\r\n") == [(len(head), len(head) + 64 * len(line))]
    assert mime._runs(head + (line * 64 + b"-\r\n") * 50) == []
    # Lines under 40 characters do not make a run, nor does a line outside the alphabet.
    assert mime._runs(head + (b"Q" * 39 + b"\r\n") * 100) == []
    broken = head + line * 40 + b"Q-" * 38 + b"\r\n" + line * 40
    assert mime._runs(broken) == []


def test_base64_lines_are_those_of_the_standard_library_with_crlf():
    for size in (0, 1, 56, 57, 58, 114, 1000, 100_003):
        data = os.urandom(size)
        assert mime.base64_lines(data) == base64.encodebytes(data).replace(b"\n", b"\r\n")


def _fields_read(message: Message) -> list[tuple]:
    """Every header field of every part as a reader sees it: its kind, text, defects and
    what was parsed from it (addresses, parameters), or the error reading it meets."""
    seen: list[tuple] = []
    for part in message.walk():
        for name in part.keys():
            try:
                value = part[name]
            except mime.PARSE_FAILURES as exc:
                seen.append((name, type(exc).__name__))
                continue
            params = getattr(value, "params", None)
            seen.append(
                (
                    name,
                    type(value).__mro__[1],
                    str(value),
                    [type(defect).__name__ for defect in value.defects],
                    getattr(value, "addresses", None),
                    dict(params) if params is not None else None,
                )
            )
    return seen


_FIELD_NAMES = ["To", "Cc", "From", "Subject", "Content-Type", "Content-Disposition", "Message-ID", "Date", "X-Note"]
_FIELD_PIECES = ["a@b.fr", "Dr Ré <c@d.fr>", ", ", '"', "<", ">", "@", "[", "\\", ";", "=", "name=x.pdf", "text/plain"]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(_FIELD_NAMES), st.lists(st.sampled_from(_FIELD_PIECES), max_size=6)), max_size=8)
)
def test_fields_read_through_the_service_policy_read_as_through_the_default_one(fields):
    head = "".join(f"{name}: {''.join(pieces)}\r\n" for name, pieces in fields)
    raw = (head + "\r\nbody\r\n").encode("utf-8")
    ours = BytesParser(policy=mime.POLICY).parsebytes(raw)
    theirs = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert _fields_read(ours) == _fields_read(theirs)


def test_a_kind_of_field_has_one_class_and_messages_are_written_as_before():
    first = BytesParser(policy=mime.POLICY).parsebytes(b"To: a@b.fr\r\nCc: c@d.fr\r\nSubject: x\r\n\r\n")
    second = BytesParser(policy=mime.POLICY).parsebytes(b"To: e@f.fr\r\n\r\n")
    assert type(first["To"]) is type(second["To"])
    assert type(first["Cc"]) is type(first["To"])  # both fields of one address each at most
    assert type(first["Subject"]).__mro__[1].__name__ == "UniqueUnstructuredHeader"
    # The email package's own registry makes a class for every field it reads.
    stock = BytesParser(policy=email.policy.default).parsebytes(b"To: a@b.fr\r\n\r\n")
    assert type(stock["To"]) is not type(
        BytesParser(policy=email.policy.default).parsebytes(b"To: a@b.fr\r\n\r\n")["To"]
    )
    for policy, stock_policy in ((mime.SMTP_POLICY, email.policy.SMTP), (mime.POLICY, email.policy.default)):
        written = []
        for each in (policy, stock_policy):
            message = EmailMessage(policy=each)
            message["From"] = "Dr Ré <a@b.fr>"
            message["To"] = "c@d.fr, e@f.fr"
            message["Subject"] = "Compte rendu " * 12
            message.set_content("texte\n")
            written.append(message.as_bytes())
        assert written[0] == written[1]


def _stock_parse(raw: bytes) -> Message:
    """``raw`` parsed by the email package as it comes, with the ``re`` module as its own."""
    ours = email.feedparser.re
    email.feedparser.re = re
    try:
        return BytesParser(policy=POLICY).parsebytes(raw)
    finally:
        email.feedparser.re = ours


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="aZ09'()+_,-./:=? *[]\\$^|é", min_size=1, max_size=20),
    st.lists(
        st.sampled_from(["--B", "--B--", "--B  ", "--B--\t", "--B-", "--Bx", "-B", "text", "", "--B--x"]), max_size=12
    ),
    st.booleans(),
)
def test_boundaries_are_found_as_the_email_package_finds_them(boundary, lines, crlf):
    end = "\r\n" if crlf else "\n"
    quoted = boundary.replace("\\", "\\\\").replace('"', '\\"')
    body = "".join(line.replace("B", boundary) + end for line in lines)
    raw = (f'Content-Type: multipart/mixed; boundary="{quoted}"{end}{end}{body}').encode()
    ours = BytesParser(policy=POLICY).parsebytes(raw)
    assert _tree(ours) == _tree(_stock_parse(raw))


def test_the_parser_compiles_no_pattern_for_a_boundary(monkeypatch):
    compiled = []
    monkeypatch.setattr(re, "compile", lambda pattern, flags=0: compiled.append(pattern) or re._compile(pattern, flags))
    raw = b'Content-Type: multipart/mixed; boundary="=_a1"\r\n\r\n--=_a1\r\nContent-Type: multipart/alternative; boundary="b2"\r\n\r\n--b2\r\n\r\ntext\r\n--b2--\r\n--=_a1--\r\n'
    message = BytesParser(policy=mime.POLICY).parsebytes(raw)
    assert [part.get_content_type() for part in message.walk()] == [
        "multipart/mixed",
        "multipart/alternative",
        "text/plain",
    ]
    assert not message.defects and compiled == []


def test_nesting_deeper_than_a_submission_may_is_told_digests_included() -> None:
    assert not nests_deeper_than(nested_multiparts(MAX_MIME_DEPTH - 1))  # the leaf is a level too
    assert nests_deeper_than(nested_multiparts(MAX_MIME_DEPTH))
    assert nests_deeper_than(nested_multiparts(400))  # deeper than the email package's parser goes
    # A digest's parts are messages without saying so: 16 digests nest 33 levels.
    assert not nests_deeper_than(nested_multiparts(15, subtype=b"digest"))
    assert nests_deeper_than(nested_multiparts(16, subtype=b"digest"))
    chatty = b"Content-Type: text/plain\r\n\r\n" + b"multipart message/ " * 100 + b"\r\n"
    assert not nests_deeper_than(chatty)
