"""Receipts as mail: DSN (RFC 3464) and MDN (RFC 8098) read back with Python's email package,
RFC 3461 parameters, and the RFC 8098 rule on when an MDN may be sent."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

import pytest

from mss import receipts
from mss.errors import PolicyError
from mss.receipts import DsnParameterError, ReceiptError, RecipientStatus

ARRIVAL = datetime(2026, 11, 22, 14, 3, 7, tzinfo=UTC)
BODY_MARKER = b"Patient: DUPONT Jeanne, INS 2840512345678 - compte rendu confidentiel"
ORIGINAL = (
    b"From: Dr Alice Martin <dr.alice@mss.test>\r\n"
    b"To: dr.bob@mss.test, dr.carol@mss.test\r\n"
    b"Subject: Lettre de liaison\r\n"
    b"Message-ID: <orig-1@mss.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain\r\n"
    b"\r\n" + BODY_MARKER + b"\r\n"
)


def parse(message: EmailMessage | receipts.Report) -> EmailMessage:
    """What a receiving mail client sees: the bytes on the wire, parsed again."""
    wire = message.as_bytes()
    assert b"\n" not in wire.replace(b"\r\n", b""), "every line must end in CRLF"
    parsed = email.message_from_bytes(wire, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage) and not parsed.defects
    return parsed


def dsn(recipients: list[RecipientStatus] | None = None, **overrides: object) -> receipts.Report:
    values: dict[str, object] = dict(
        reporting_mta="mx.mss.test",
        original_envelope_id="QQ314159",
        original_message_id="<orig-1@mss.test>",
        sender="dr.alice@mss.test",
        recipients=recipients or [
            RecipientStatus("dr.bob@mss.test", "delivered", "2.0.0"),
            RecipientStatus("dr.carol@mss.test", "failed", "5.1.1", "550 5.1.1 dr.carol@mss.test is not in the directory",
                            original_recipient="rfc822;Dr.Carol@mss.test"),
        ],
        arrival_date=ARRIVAL,
        original_headers=ORIGINAL,
    )  # fmt: skip
    values.update(overrides)
    return receipts.build_dsn(**values)


def human_text(report: EmailMessage) -> str:
    """The human-readable part, its lines unwrapped (wrapping is presentation)."""
    first = next(iter(report.iter_parts()))
    assert first.get_content_type() == "text/plain" and first.get_content_charset() == "utf-8"
    return " ".join(first.get_content().split())


# -- DSN ---------------------------------------------------------------------------------


def test_dsn_is_an_rfc_3464_report() -> None:
    report = parse(dsn(date=ARRIVAL + timedelta(seconds=2), message_id="<dsn-1@mx.mss.test>"))
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in report.iter_parts()] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers",
    ]  # fmt: skip
    assert report["To"] == "dr.alice@mss.test"
    assert report["From"].addresses[0].addr_spec == "postmaster@mx.mss.test"
    assert report["Message-ID"] == "<dsn-1@mx.mss.test>"
    assert parsedate_to_datetime(report["Date"]) == ARRIVAL + timedelta(seconds=2)
    assert report["In-Reply-To"] == report["References"] == "<orig-1@mss.test>"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"
    assert "delivery failure" in report["Subject"] and "échec de remise" in report["Subject"]

    status = list(report.iter_parts())[1]
    per_message, bob, carol = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.mss.test"
    assert per_message["Original-Envelope-Id"] == "QQ314159"
    assert parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert (bob["Final-Recipient"], bob["Action"], bob["Status"]) == ("rfc822; dr.bob@mss.test", "delivered", "2.0.0")
    assert bob["Diagnostic-Code"] is None and bob["Original-Recipient"] is None
    assert (carol["Final-Recipient"], carol["Action"], carol["Status"]) == (
        "rfc822; dr.carol@mss.test",
        "failed",
        "5.1.1",
    )
    assert carol["Diagnostic-Code"] == "smtp; 550 5.1.1 dr.carol@mss.test is not in the directory"
    assert carol["Original-Recipient"] == "rfc822; Dr.Carol@mss.test"


def test_dsn_long_fields_are_folded_and_read_back_whole() -> None:
    diagnostic = "smtp; 550 5.7.1 " + " ".join(f"mot{i}" for i in range(80))
    built = dsn([RecipientStatus("dr.carol@mss.test", "failed", "5.7.1", diagnostic)])
    status_part = built.as_bytes().split(b"Content-Type: message/delivery-status")[1].split(b"\r\n--")[0]
    assert max(len(line) for line in status_part.split(b"\r\n")) <= 78
    block = list(parse(built).iter_parts())[1].get_payload()[1]
    assert block["Diagnostic-Code"] == diagnostic


def test_dsn_human_part_names_each_recipient_in_french_then_english() -> None:
    text = human_text(parse(dsn()))
    french = text.index("a été remis à dr.bob@mss.test")
    assert text.index("n'a pas pu être remis à dr.carol@mss.test") > french
    assert text.index("Motif : 550 5.1.1 dr.carol@mss.test is not in the directory") > french
    english = text.index("was delivered to dr.bob@mss.test")
    assert english > french
    assert text.index("could not be delivered to dr.carol@mss.test") > english
    assert "<orig-1@mss.test>" in text and "22/11/2026 à 14:03 (UTC)" in text and "2026-11-22 14:03 UTC" in text


@pytest.mark.parametrize(
    "given", [ORIGINAL, ORIGINAL.replace(b"\r\n", b"\n"), ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"]
)
def test_dsn_quotes_headers_and_never_the_body(given: bytes) -> None:
    built = dsn(original_headers=given)
    wire = built.as_bytes()
    assert BODY_MARKER not in wire and b"DUPONT" not in wire
    report = parse(built)
    for part in report.walk():
        if not part.is_multipart() and part.get_content_type() != "message/delivery-status":
            assert "DUPONT" not in part.get_content()
    quoted = list(report.iter_parts())[2]
    headers = email.message_from_string(quoted.get_content(), policy=email.policy.default)
    assert headers["Subject"] == "Lettre de liaison"
    assert headers["Message-ID"] == "<orig-1@mss.test>"
    assert headers.get_content() == ""


def test_dsn_quotes_utf8_headers_readably() -> None:
    utf8 = "Subject: Compte rendu opératoire\r\nFrom: dr.alice@mss.test\r\n".encode()
    report = parse(dsn(original_headers=utf8))
    quoted = list(report.iter_parts())[2]
    assert quoted.get_content_charset() == "utf-8"
    assert "Compte rendu opératoire" in quoted.get_content()


def test_dsn_subject_and_actions_for_each_outcome() -> None:
    delivered = parse(dsn([RecipientStatus("dr.bob@mss.test", "delivered", "2.0.0")], original_envelope_id=None))
    assert "Delivery status notification: delivered" in delivered["Subject"]
    assert list(delivered.iter_parts())[1].get_payload()[0]["Original-Envelope-Id"] is None
    mixed = parse(dsn([
        RecipientStatus("dr.bob@mss.test", "relayed", "2.0.0"),
        RecipientStatus("dr.carol@mss.test", "delayed", "4.4.1", "smtp; 451 4.4.1 no answer from host"),
        RecipientStatus("dr.dan@mss.test", "failed", "4.4.7", "x-mss; message expired"),
    ]))  # fmt: skip
    assert "delivery failure" in mixed["Subject"]  # the worst outcome comes first
    blocks = list(mixed.iter_parts())[1].get_payload()[1:]
    assert [b["Action"] for b in blocks] == ["relayed", "delayed", "failed"]
    # An already-typed diagnostic is kept as is, never prefixed twice.
    assert blocks[1]["Diagnostic-Code"] == "smtp; 451 4.4.1 no answer from host"
    assert blocks[2]["Diagnostic-Code"] == "x-mss; message expired"
    text = human_text(mixed)
    assert "a été transmis à dr.bob@mss.test" in text and "was relayed to dr.bob@mss.test" in text
    assert (
        "n'a pas encore pu être remis à dr.carol@mss.test" in text and "Reason: 451 4.4.1 no answer from host" in text
    )


def test_dsn_postmaster_address_can_be_the_signers() -> None:
    report = parse(dsn(postmaster="postmaster@mss.test"))
    assert report["From"].addresses[0].addr_spec == "postmaster@mss.test"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"address": "dr.bob@mss.test\r\nBcc: x@y.test", "action": "delivered", "status": "2.0.0"},
            "not a plain mail address",
        ),
        ({"address": "dr.bob@mss.test", "action": "bounced", "status": "5.0.0"}, "unknown DSN action"),
        ({"address": "dr.bob@mss.test", "action": "delivered", "status": "2.0"}, "not an RFC 3463 status"),
        ({"address": "dr.bob@mss.test", "action": "delivered", "status": "5.1.1"}, "contradicts action delivered"),
        ({"address": "dr.bob@mss.test", "action": "failed", "status": "2.0.0"}, "contradicts action failed"),
        ({"address": "dr.bob@mss.test", "action": "delayed", "status": "5.0.0"}, "contradicts action delayed"),
        (
            {"address": "dr.bob@mss.test", "action": "failed", "status": "5.1.1", "diagnostic": "550 refusé"},
            "printable US-ASCII",
        ),
        (
            {"address": "dr.bob@mss.test", "action": "failed", "status": "5.1.1", "diagnostic": "550\r\nX: y"},
            "printable US-ASCII",
        ),
        (
            {
                "address": "dr.bob@mss.test",
                "action": "failed",
                "status": "5.1.1",
                "original_recipient": "dr.bob@mss.test",
            },
            "addr-type;address",
        ),
    ],
)
def test_recipient_status_is_checked(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ReceiptError, match=message):
        RecipientStatus(**kwargs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"reporting_mta": "mx mss.test"}, "must be a host name"),
        ({"sender": "not-an-address"}, "the sender is not a plain mail address"),
        ({"original_message_id": "no id here"}, "not a Message-ID"),
        ({"original_message_id": "<a@b>\r\nBcc: x@y"}, "not a Message-ID"),
        ({"arrival_date": datetime(2026, 11, 22, 14, 3)}, "timezone-aware"),
        ({"recipients": []}, "at least one recipient"),
        ({"original_headers": b"\r\n\r\nbody only"}, "headers are empty"),
        ({"original_headers": b"just some text\r\n"}, "do not start with a header field"),
        ({"original_headers": "Subject: x\r\n"}, "must be bytes"),
        ({"original_envelope_id": "env\r\nid"}, "printable US-ASCII"),
    ],
)
def test_dsn_inputs_are_checked(overrides: dict[str, object], message: str) -> None:
    if overrides.get("recipients") == []:
        with pytest.raises(ReceiptError, match=message):
            receipts.build_dsn(
                reporting_mta="mx.mss.test", original_envelope_id=None, original_message_id="<a@b>",
                sender="dr.alice@mss.test", recipients=[], arrival_date=ARRIVAL, original_headers=ORIGINAL,
            )  # fmt: skip
        return
    with pytest.raises(ReceiptError, match=message):
        dsn(**overrides)


# -- MDN ---------------------------------------------------------------------------------


def mdn(**overrides: object) -> receipts.Report:
    values: dict[str, object] = dict(
        reporting_ua="mss.test; mss web inbox",
        final_recipient="dr.bob@mss.test",
        original_message_id="<orig-1@mss.test>",
        disposition="processed",
        sender="dr.alice@mss.test",
        mode="automatic-action/MDN-sent-automatically",
        subject_hint=None,
    )
    values.update(overrides)
    return receipts.build_mdn(**values)


def notification_fields(report: EmailMessage) -> Message:
    part = list(report.iter_parts())[1]
    assert part.get_content_type() == "message/disposition-notification"
    return part.get_payload(0)


def test_mdn_is_an_rfc_8098_report() -> None:
    report = parse(mdn(date=ARRIVAL, message_id="<mdn-1@mss.test>"))
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "disposition-notification"
    assert [p.get_content_type() for p in report.iter_parts()] == ["text/plain", "message/disposition-notification"]
    assert report["From"].addresses[0].addr_spec == "dr.bob@mss.test"
    assert report["To"] == "dr.alice@mss.test"
    assert report["Message-ID"] == "<mdn-1@mss.test>"
    assert report["In-Reply-To"] == "<orig-1@mss.test>"
    assert report["Auto-Submitted"] == "auto-replied"
    # RFC 8098 2.1: an MDN never asks for an MDN.
    assert report["Disposition-Notification-To"] is None
    fields = notification_fields(report)
    assert fields["Reporting-UA"] == "mss.test; mss web inbox"
    assert fields["Final-Recipient"] == "rfc822; dr.bob@mss.test"
    assert fields["Original-Message-ID"] == "<orig-1@mss.test>"
    assert fields["Disposition"] == "automatic-action/MDN-sent-automatically; processed"
    text = human_text(report)
    assert text.index("a été déposé dans la boîte de dr.bob@mss.test") < text.index(
        "was placed in the mailbox of dr.bob@mss.test"
    )
    assert "22/11/2026 à 14:03 (UTC)" in text and "ne garantit pas" in text and "does not guarantee" in text


@pytest.mark.parametrize(
    ("mode", "auto"),
    [
        ("manual-action/MDN-sent-manually", False),
        ("manual-action/MDN-sent-automatically", True),
        ("automatic-action/MDN-sent-manually", False),
    ],
)
def test_mdn_displayed_modes(mode: str, auto: bool) -> None:
    report = parse(mdn(disposition="displayed", mode=mode, original_message_id="orig-1@mss.test"))
    assert notification_fields(report)["Disposition"] == f"{mode}; displayed"
    assert notification_fields(report)["Original-Message-ID"] == "<orig-1@mss.test>"
    assert (report["Auto-Submitted"] == "auto-replied") is auto
    assert "Read receipt" in report["Subject"]
    assert "a été affiché par dr.bob@mss.test" in human_text(report)


def test_mdn_subject_hint_is_display_text_only() -> None:
    report = parse(mdn(disposition="displayed", subject_hint="Lettre de liaison\r\nBcc: spy@evil.test\n\tsuite"))
    assert report["Bcc"] is None
    assert report["Subject"] == "Accusé de lecture / Read receipt : Lettre de liaison Bcc: spy@evil.test suite"
    assert "« Lettre de liaison Bcc: spy@evil.test suite »" in human_text(report)
    long_hint = parse(mdn(subject_hint="x" * 500))["Subject"]
    assert len(long_hint) < 260 and long_hint.endswith("…")
    assert "Accusé de réception / Delivery receipt" == parse(mdn(subject_hint="  \r\n "))["Subject"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"disposition": "deleted"}, "disposition must be one of"),
        ({"mode": "automatic-action"}, "unknown disposition mode"),
        ({"final_recipient": "bob"}, "the final recipient is not a plain mail address"),
        ({"sender": "a@b.test\nX: y"}, "the sender is not a plain mail address"),
        ({"reporting_ua": "ua\r\nX: y"}, "printable US-ASCII"),
        ({"original_message_id": ""}, "not a Message-ID"),
        ({"date": datetime(2026, 1, 1)}, "timezone-aware"),
    ],
)
def test_mdn_inputs_are_checked(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ReceiptError, match=message):
        mdn(**overrides)


# -- RFC 3461 parameters -----------------------------------------------------------------


def test_notify_defaults_and_lists() -> None:
    default = receipts.parse_notify([])
    assert default.notify == {"FAILURE", "DELAY"} and not default.notify_given and not default.never
    assert (default.orcpt, default.ret, default.envid) == (None, None, None)
    spec = receipts.parse_notify(["notify=delay,Success", "SIZE=1000", "BODY=8BITMIME"])
    assert spec.notify == {"SUCCESS", "DELAY"} and spec.notify_given
    assert spec.notify_value == "SUCCESS,DELAY"
    assert spec.wants("delivered") and spec.wants("relayed") and spec.wants("delayed") and not spec.wants("failed")
    never = receipts.parse_notify(["NOTIFY=NEVER"])
    assert never.never and never.notify_value == "NEVER"
    assert not any(never.wants(a) for a in ("delivered", "failed", "delayed"))
    with pytest.raises(ReceiptError, match="unknown DSN action"):
        never.wants("bounced")


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("NOTIFY=NEVER,SUCCESS", "NEVER cannot be combined"),
        ("NOTIFY=FAILURE,NEVER", "NEVER cannot be combined"),
        ("NOTIFY=SUCCESS,,FAILURE", "an empty item is not one of"),
        ("NOTIFY=SUCCESS,", "an empty item is not one of"),
        ("NOTIFY=SUCCESS,SUCCESS", "repeated"),
        ("NOTIFY=ALWAYS", "ALWAYS is not one of"),
        ("NOTIFY=", "a value is required"),
        ("NOTIFY", "a value is required"),
        ("ORCPT=dr.bob@mss.test", "addr-type;address"),
        ("ORCPT=rfc 822;dr.bob@mss.test", "addr-type;address"),
        ("ORCPT=rfc822;", "the original address is empty"),
        ("ORCPT=rfc822;dr+2bbob@mss.test", "two upper-case hexadecimal digits"),
        ("ORCPT=rfc822;dr.bob@mss.test+", "two upper-case hexadecimal digits"),
        ("ORCPT=rfc822;dr=bob@mss.test", "not allowed in xtext"),
        ("ORCPT=rfc822;dr.bób@mss.test", "not allowed in xtext"),
        ("ORCPT=rfc822;dr+0Abob@mss.test", "printable US-ASCII"),
        ("ORCPT=rfc822;" + "a" * 494, "longer than 500"),
        ("RET=ALL", "must be FULL or HDRS"),
        ("ENVID=" + "x" * 101, "longer than 100"),
        ("ENVID=a+2", "two upper-case hexadecimal digits"),
    ],
)
def test_bad_dsn_parameters_are_refused(param: str, message: str) -> None:
    with pytest.raises(DsnParameterError, match=message) as caught:
        receipts.parse_notify([param])
    assert isinstance(caught.value, PolicyError)
    assert caught.value.keyword == param.partition("=")[0].upper()


def test_orcpt_ret_envid_are_decoded() -> None:
    spec = receipts.parse_notify("NOTIFY=SUCCESS ORCPT=RFC822;dr+2Bbob+20x@MSS.test RET=hdrs ENVID=QQ+2B314+3D")
    assert spec.orcpt == receipts.OriginalRecipient("rfc822", "dr+bob x@MSS.test")
    assert str(spec.orcpt) == "rfc822;dr+bob x@MSS.test"
    assert (spec.ret, spec.envid) == ("HDRS", "QQ+314=")
    assert receipts.parse_notify({"RET": "FULL", "ENVID": "abc"}).ret == "FULL"
    assert receipts.parse_notify(["ORCPT=rfc822;" + "a" * 493]).orcpt is not None  # 500 exactly


def test_dsn_parameters_belong_to_their_command() -> None:
    assert receipts.parse_notify(["RET=FULL", "ENVID=x"], command="MAIL").ret == "FULL"
    assert receipts.parse_notify(["NOTIFY=NEVER", "ORCPT=rfc822;a@b"], command="RCPT").never
    with pytest.raises(DsnParameterError, match="NOTIFY is not a parameter of MAIL"):
        receipts.parse_notify(["NOTIFY=SUCCESS"], command="MAIL")
    with pytest.raises(DsnParameterError, match="ENVID is not a parameter of RCPT"):
        receipts.parse_notify(["ENVID=x"], command="RCPT")
    with pytest.raises(DsnParameterError, match="more than once"):
        receipts.parse_notify(["NOTIFY=SUCCESS", "notify=FAILURE"])
    with pytest.raises(DsnParameterError, match="more than once"):
        receipts.parse_notify(["RET=FULL", "RET=HDRS"])


def test_notify_spec_feeds_the_dsn() -> None:
    spec = receipts.parse_notify(["NOTIFY=FAILURE", "ORCPT=rfc822;Dr.Carol+40old@mss.test"])
    status = RecipientStatus(
        "dr.carol@mss.test", "failed", "5.1.1", "550 5.1.1 unknown", original_recipient=str(spec.orcpt)
    )
    block = list(parse(dsn([status])).iter_parts())[1].get_payload()[1]
    assert block["Original-Recipient"] == "rfc822; Dr.Carol@old@mss.test"


# -- when an MDN may be sent -------------------------------------------------------------


def message(*lines: str) -> EmailMessage:
    raw = "\r\n".join(lines).encode() + b"\r\n\r\nbody\r\n"
    return email.message_from_bytes(raw, policy=email.policy.default)


FROM = "From: Dr Alice <dr.alice@mss.test>"


@pytest.mark.parametrize(
    ("lines", "kwargs", "expected"),
    [
        ((FROM, "Return-Path: <dr.alice@mss.test>", "Disposition-Notification-To: Dr Alice <dr.alice@mss.test>"), {}, "dr.alice@mss.test"),
        ((FROM, "Return-Path: <dr.alice@MSS.TEST>", "Disposition-Notification-To: dr.alice@mss.test"), {}, "dr.alice@mss.test"),
        ((FROM, "Return-Path: <Dr.Alice@mss.test>", "Disposition-Notification-To: dr.alice@mss.test"), {}, None),
        ((FROM, "Return-Path: <other@mss.test>", "Disposition-Notification-To: dr.alice@mss.test"), {}, None),
        ((FROM, "Return-Path: <>", "Disposition-Notification-To: dr.alice@mss.test"), {}, None),
        ((FROM, "Disposition-Notification-To: dr.alice@mss.test"), {"envelope_sender": "dr.alice@mss.test"}, "dr.alice@mss.test"),
        ((FROM, "Disposition-Notification-To: dr.alice@mss.test"), {"envelope_sender": "other@mss.test"}, None),
        ((FROM, "Disposition-Notification-To: dr.alice@mss.test"), {}, "dr.alice@mss.test"),
        ((FROM, "Disposition-Notification-To: secretary@mss.test"), {}, None),
        ((FROM, "Sender: secretary@mss.test", "Disposition-Notification-To: secretary@mss.test"), {}, "secretary@mss.test"),
        ((FROM, "Return-Path: <dr.alice@mss.test>"), {}, None),
        ((FROM, "Return-Path: <dr.alice@mss.test>", "Disposition-Notification-To: dr.alice@mss.test, other@mss.test"), {}, None),
        ((FROM, "Return-Path: <dr.alice@mss.test>", "Disposition-Notification-To: dr.alice@mss.test",
          "Disposition-Notification-To: dr.alice@mss.test"), {}, None),
        ((FROM, "Return-Path: <dr.alice@mss.test>", "Disposition-Notification-To: not an address"), {}, None),
        ((FROM, "Return-Path: <dr.alice@mss.test>", "Disposition-Notification-To: dr.alice@mss.test",
          "Disposition-Notification-Options: signed-receipt-protocol=required,pkcs7-signature"), {}, None),
        ((FROM, "Return-Path: <dr.alice@mss.test>", "Disposition-Notification-To: dr.alice@mss.test",
          "Disposition-Notification-Options: signed-receipt-protocol=optional,pkcs7-signature"), {}, "dr.alice@mss.test"),
        ((FROM, "Return-Path: <dr.alice@mss.test>", "Disposition-Notification-To: dr.alice@mss.test",
          "Content-Type: multipart/report; report-type=disposition-notification; boundary=x"), {}, None),
    ],
)  # fmt: skip
def test_wants_mdn_follows_rfc_8098(lines: tuple[str, ...], kwargs: dict[str, str], expected: str | None) -> None:
    assert receipts.wants_mdn(message(*lines), **kwargs) == expected


def test_wants_mdn_reads_raw_headers() -> None:
    raw = b"From: dr.alice@mss.test\r\nReturn-Path: <dr.alice@mss.test>\r\nDisposition-Notification-To: dr.alice@mss.test\r\n"
    assert receipts.wants_mdn(raw) == "dr.alice@mss.test"
    assert receipts.wants_mdn(raw + b"\r\nbody\r\n") == "dr.alice@mss.test"
    assert receipts.wants_mdn(ORIGINAL) is None


def test_no_mdn_for_our_own_receipts() -> None:
    for built in (mdn(), dsn()):
        report = built.message()
        report["Disposition-Notification-To"] = "dr.alice@mss.test"
        assert receipts.wants_mdn(parse(report), envelope_sender="dr.alice@mss.test") is None


def test_xtext_that_decodes_to_a_trailing_newline_is_refused() -> None:
    # "+0A" is a line feed: accepted, it would end an ENVID inside a DSN header field.
    from mss.errors import DsnParameterError
    from mss.receipts import decode_xtext

    with pytest.raises(DsnParameterError):
        decode_xtext("abc+0A", "ENVID")


def test_unlocked_account_repr_hides_the_key() -> None:
    from mss.accounts import UnlockedAccount

    shown = repr(UnlockedAccount(address="a@mss.test", private_key_der=b"SECRET-KEY-BYTES", certificate=None))
    assert "SECRET-KEY-BYTES" not in shown
