"""The relay's named replies and its ESMTP parameter parsing (no network)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mss.relay import esmtp, replies

RELAY_DIR = Path(replies.__file__).resolve().parent
REPLY = re.compile(r"\A[245]\d\d[ -]")
ENHANCED = re.compile(r"\A([245])\d\d [245]\.\d{1,3}\.\d{1,3} ")


def _reply_constants() -> dict[str, str]:
    return {
        name: value
        for name, value in vars(replies).items()
        if name.isupper() and isinstance(value, str) and REPLY.match(value) and "{" not in value
    }


def test_every_final_reply_carries_a_matching_enhanced_status_code() -> None:
    constants = _reply_constants()
    assert len(constants) > 40
    for name, value in constants.items():
        if value.startswith(("250-", "354 ")) or value == replies.EHLO_LAST:
            continue
        match = ENHANCED.match(value)
        assert match, f"{name} = {value!r} has no enhanced status code"
        assert match.group(1) == value[0], f"{name}: the status class differs from the reply code"


def test_the_required_replies_have_the_required_codes() -> None:
    expected = {
        "AUTH_FAILED": "535 5.7.8",
        "AUTH_TEMPORARY_FAILURE": "454 4.7.0",
        "AUTH_REQUIRED": "530 5.7.0",
        "SENDER_NOT_AUTHENTICATED_ACCOUNT": "553 5.7.1",
        "MESSAGE_TOO_LARGE": "552 5.3.4",
        "RELAY_DENIED": "550 5.7.1",
        "UNKNOWN_RECIPIENT": "550 5.1.1",
        "REVOKED_RECIPIENT": "550 5.7.1",
        "TOO_MANY_RECIPIENTS": "452 4.5.3",
        "PARAMETER_SYNTAX": "501 5.5.4",
        "LINE_TOO_LONG": "500 5.5.2",
        "FROM_HEADER_MISMATCH": "550 5.7.1",
        "SENDER_HEADER_MISMATCH": "550 5.7.1",
        "MALFORMED_MESSAGE": "554 5.6.0",
        "LOCAL_ERROR": "451 4.3.0",
        "SERVICE_BUSY": "421 4.3.2",
    }
    for name, prefix in expected.items():
        assert getattr(replies, name).startswith(prefix + " "), name
    assert replies.queued("ABC123") == "250 2.0.0 Ok: queued as ABC123"


def test_library_replies_are_translated_to_ours() -> None:
    assert replies.translate("250 OK") == replies.OK
    assert replies.translate("530 5.7.0 Authentication required") == replies.AUTH_REQUIRED
    assert replies.translate("530 Must issue a STARTTLS command first") == replies.STARTTLS_REQUIRED
    assert replies.translate('500 Error: command "XYZZY" not recognized') == replies.COMMAND_NOT_RECOGNIZED
    # Unknown final replies get the class's undefined enhanced code; others pass unchanged.
    assert replies.translate("250 Supported commands: DATA") == "250 2.0.0 Supported commands: DATA"
    # aiosmtpd's cut-offs, after which it closes the connection.
    assert replies.translate("421 4.7.0 AUTH sent too many times") == replies.COMMAND_LIMIT
    assert replies.translate("502 5.5.1 Too many unrecognized commands, goodbye.") == replies.TOO_MANY_UNRECOGNIZED
    for untouched in ("220 mx.example ESMTP", "250-SIZE 100", replies.EHLO_LAST, "334 VXNlcm5hbWU6", "354 go"):
        assert replies.translate(untouched) == untouched


def test_document_refusal_keeps_one_safe_line() -> None:
    assert replies.document_refused(550, "5.7.1", "virus.exe is not allowed") == "550 5.7.1 virus.exe is not allowed"
    forged = replies.document_refused(554, "5.6.0", "a.pdf\r\n250 2.0.0 Ok: queued as X")
    assert "\r" not in forged and "\n" not in forged and forged.startswith("554 5.6.0 a.pdf??250")
    assert len(replies.document_refused(554, "5.6.0", "x" * 5000)) < 220
    # A code and a status that disagree, or that are not failures, fall back to the default.
    for code, status in ((250, "2.0.0"), (554, "4.6.0"), (554, "5.6"), ("554", "5.6.0"), (554, None)):
        assert replies.document_refused(code, status, "text") == replies.DOCUMENT_REFUSED_DEFAULT


def test_no_reply_literal_outside_replies_module() -> None:
    """Relay modules other than ``replies`` hold no SMTP reply string literal."""
    for path in RELAY_DIR.glob("*.py"):
        if path.name == "replies.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert not re.match(r"\A[2-5]\d\d[ -]", node.value), f"{path.name}: {node.value!r}"


def test_mail_parameters() -> None:
    parsed = esmtp.parse_mail("SIZE=1000 BODY=8bitmime RET=hdrs ENVID=Abc+2Bdef", size_limit=5000)
    assert parsed == esmtp.MailParameters(size=1000, ret="HDRS", envelope_id="Abc+def")
    assert esmtp.parse_mail("", size_limit=None) == esmtp.MailParameters()
    assert esmtp.parse_mail("AUTH=<>", size_limit=None) == esmtp.MailParameters()


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("SIZE=6000", replies.MESSAGE_TOO_LARGE),
        ("SIZE=abc", replies.PARAMETER_SYNTAX),
        ("SIZE", replies.PARAMETER_SYNTAX),
        ("SIZE=1 SIZE=2", replies.PARAMETER_SYNTAX),
        ("BODY=BINARYMIME", replies.PARAMETER_SYNTAX),
        ("RET=ALL", replies.PARAMETER_SYNTAX),
        ("ENVID=" + "a" * 101, replies.PARAMETER_SYNTAX),
        ("ENVID=bad+zz", replies.PARAMETER_SYNTAX),
        ("ENVID=ctl+0A", replies.PARAMETER_SYNTAX),
        ("SMTPUTF8", replies.PARAMETER_NOT_RECOGNIZED),
        ("X-FOO=1", replies.PARAMETER_NOT_RECOGNIZED),
        ("-BAD=1", replies.PARAMETER_SYNTAX),
        ("KEY=", replies.PARAMETER_SYNTAX),
    ],
)
def test_mail_parameter_refusals(text: str, reply: str) -> None:
    with pytest.raises(esmtp.ParameterRefused) as caught:
        esmtp.parse_mail(text, size_limit=5000)
    assert caught.value.reply == reply


def test_rcpt_parameters() -> None:
    parsed = esmtp.parse_rcpt("NOTIFY=success,Delay ORCPT=rfc822;Alice+2Bx@Example.TEST")
    assert parsed == esmtp.RcptParameters(notify=frozenset({"SUCCESS", "DELAY"}), orcpt="rfc822;Alice+x@Example.TEST")
    assert esmtp.parse_rcpt("NOTIFY=NEVER").notify == frozenset({"NEVER"})
    assert esmtp.parse_rcpt("") == esmtp.RcptParameters()


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("NOTIFY=NEVER,SUCCESS", replies.PARAMETER_SYNTAX),
        ("NOTIFY=SOMETIMES", replies.PARAMETER_SYNTAX),
        ("NOTIFY=SUCCESS,SUCCESS", replies.PARAMETER_SYNTAX),
        ("NOTIFY", replies.PARAMETER_SYNTAX),
        ("ORCPT=rfc822", replies.PARAMETER_SYNTAX),
        ("ORCPT=;a@b", replies.PARAMETER_SYNTAX),
        ("ORCPT=rfc822;" + "a" * 600, replies.PARAMETER_SYNTAX),
        ("ORCPT=rfc822;a+4", replies.PARAMETER_SYNTAX),
        ("ORCPT=rfc822;a@b+0A", replies.PARAMETER_SYNTAX),
        ("SIZE=10", replies.PARAMETER_NOT_RECOGNIZED),
    ],
)
def test_rcpt_parameter_refusals(text: str, reply: str) -> None:
    with pytest.raises(esmtp.ParameterRefused) as caught:
        esmtp.parse_rcpt(text)
    assert caught.value.reply == reply
