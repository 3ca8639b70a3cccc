"""Receipts as mail: delivery status (RFC 3464) and disposition (RFC 8098) notifications.

This module owns the wire form of receipts and of the requests for them: it builds the
``multipart/report`` messages (RFC 6522), parses the SMTP DSN parameters (RFC 3461: NOTIFY,
ORCPT, RET, ENVID) and decides from a message's header fields whether its sender asked for
a disposition notification it may be sent. Everything here is pure: values in, a
``Report`` (the notification's bytes and the fields read from it) or a value out; sealing
and storing them is ``mss.receipts.issuer``'s.

Receipts never carry content: a DSN quotes the original header fields only
(``text/rfc822-headers``), whatever ``RET=FULL`` asked for, and an MDN quotes nothing but
the Message-ID and, when the caller passes one, a subject hint.
"""

from __future__ import annotations

import email.policy
import re
import secrets
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import quoprimime
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesHeaderParser, BytesParser
from email.utils import format_datetime, getaddresses, make_msgid
from functools import lru_cache
from typing import Literal

from mss.errors import DsnParameterError, ReceiptError
from mss.mime import SMTP_POLICY

# The policy of every message built here: CRLF line ends, as signed and as sent.
POLICY = SMTP_POLICY

Action = Literal["delivered", "failed", "relayed", "delayed", "expanded"]
Disposition = Literal["processed", "displayed"]
DispositionMode = Literal[
    "automatic-action/MDN-sent-automatically",
    "manual-action/MDN-sent-automatically",
    "manual-action/MDN-sent-manually",
    "automatic-action/MDN-sent-manually",
]

# RFC 3464 2.3.3 actions, with the status classes (RFC 3463) each may carry. "failed" may
# be transient when the MTA gave up retrying (4.4.7 message expired), hence 4 or 5.
_ACTION_CLASSES = {"delivered": "2", "relayed": "2", "expanded": "2", "delayed": "4", "failed": "45"}
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+$")
_DIAGNOSTIC_TYPE = re.compile(r"^([A-Za-z][A-Za-z0-9-]*)\s*;\s*(.*)$", re.DOTALL)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")
_ADDR_SPEC = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_MSG_ID = re.compile(r"^<?([!-;=?-~]+@[!-;=?-Z^-~]+)>?$")  # RFC 5322 3.6.4, no < > inside
# Used with fullmatch: "$" would also accept a value ending in a newline (header injection).
_PRINTABLE = re.compile(r"[\x20-\x7e]*")

DISPOSITIONS = ("processed", "displayed")
DISPOSITION_MODES = (
    "automatic-action/MDN-sent-automatically",
    "manual-action/MDN-sent-automatically",
    "manual-action/MDN-sent-manually",
    "automatic-action/MDN-sent-manually",
)


@dataclass(frozen=True)
class Report:
    """A notification as it travels: its bytes (CRLF line ends, as signed and as sent) and
    the header fields that whoever seals, lists or forwards it reads (decoded)."""

    wire: bytes = field(repr=False)
    sender: str
    """The From address (lower case)."""
    to: str
    """The addressee (lower case)."""
    subject: str
    date: str
    message_id: str

    @classmethod
    def of(cls, message: EmailMessage) -> Report:
        """``message`` (with From, To, Subject, Date and Message-ID) written out once."""
        return cls(
            wire=message.as_bytes(policy=POLICY),
            sender=str(message["From"].addresses[0].addr_spec).lower(),
            to=str(message["To"].addresses[0].addr_spec).lower(),
            subject=str(message["Subject"]),
            date=str(message["Date"]),
            message_id=str(message["Message-ID"]),
        )

    def as_bytes(self) -> bytes:
        return self.wire

    def headers(self) -> EmailMessage:
        """Its header section read back (the body is not parsed), for the fields beyond these."""
        message = BytesHeaderParser(policy=POLICY).parsebytes(self.wire)
        assert isinstance(message, EmailMessage)  # the policy's message factory
        return message

    def message(self) -> EmailMessage:
        """The notification read back whole."""
        message = BytesParser(policy=POLICY).parsebytes(self.wire)
        assert isinstance(message, EmailMessage)  # the policy's message factory
        return message


# -- checks shared by the builders -------------------------------------------------------


def _address(value: str, what: str) -> str:
    # DSN and MDN fields are US-ASCII (RFC 3464 2.1.2, RFC 8098 3.1); the addresses of this
    # trust space are too (the relay does not offer SMTPUTF8).
    if not isinstance(value, str) or not _ADDR_SPEC.match(value) or ".." in value:
        raise ReceiptError(f"{what} is not a plain mail address: {value!r}")
    return value


def _message_id(value: str, what: str = "the original Message-ID") -> str:
    match = _MSG_ID.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ReceiptError(f"{what} is not a Message-ID: {value!r}")
    return f"<{match.group(1)}>"


def _ascii_field(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip() or not _PRINTABLE.fullmatch(value):
        raise ReceiptError(f"{what} must be printable US-ASCII on one line: {value!r}")
    return value.strip()


def _aware(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ReceiptError(f"{what} must be a timezone-aware datetime")
    return value


def _block(fields: Iterable[tuple[str, str]]) -> Message:
    """One header block of a report part (a group of ``Name: value`` lines)."""
    block = Message(policy=POLICY)
    for name, value in fields:
        block[name] = value
    return block


def _human_part(text: str) -> MIMEPart:
    part = MIMEPart(policy=POLICY)
    # Quoted-printable keeps the French accents readable and the part 7-bit clean.
    part.set_content(text, charset="utf-8", cte="quoted-printable")
    return part


def _report(report_type: str, headers: list[tuple[str, str]], parts: list[Message]) -> EmailMessage:
    """A multipart/report (RFC 6522) with the given top-level header fields and parts."""
    message = EmailMessage(policy=POLICY)
    for name, value in headers:
        message[name] = value
    message["MIME-Version"] = "1.0"
    message["Content-Type"] = f"multipart/report; report-type={report_type}"
    for part in parts:
        # the parts are built with the EmailMessage policy
        message.attach(part)  # type: ignore[arg-type]
    return message


def _french_date(value: datetime) -> str:
    utc = value.astimezone(UTC)
    return f"{utc:%d/%m/%Y} à {utc:%H:%M} (UTC)"


def _english_date(value: datetime) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def _paragraphs(*paragraphs: str) -> str:
    return "\n\n".join(textwrap.fill(p, width=76, break_long_words=False, break_on_hyphens=False) for p in paragraphs)


# -- delivery status notifications (RFC 3464) --------------------------------------------


@dataclass(frozen=True)
class RecipientStatus:
    """The fate of one recipient, as a DSN reports it (RFC 3464 2.3).

    ``status`` is an RFC 3463 code (``2.0.0``, ``5.1.1``); ``diagnostic`` the SMTP reply
    (``550 5.1.1 ...``, or already typed ``smtp; 550 ...``) when there is one;
    ``original_recipient`` the decoded ORCPT (``rfc822;addr``) when the client gave one.
    """

    address: str
    action: Action
    status: str
    diagnostic: str | None = None
    original_recipient: str | None = None

    def __post_init__(self) -> None:
        _address(self.address, "the recipient")
        if self.action not in _ACTION_CLASSES:
            raise ReceiptError(f"unknown DSN action {self.action!r} (RFC 3464 2.3.3)")
        match = _STATUS.match(self.status) if isinstance(self.status, str) else None
        if match is None:
            raise ReceiptError(f"{self.status!r} is not an RFC 3463 status code (class.subject.detail)")
        if match.group(1) not in _ACTION_CLASSES[self.action]:
            raise ReceiptError(f"status {self.status} contradicts action {self.action}")
        if self.diagnostic is not None:
            _ascii_field(self.diagnostic, "the diagnostic")
        if self.original_recipient is not None:
            addr_type, semicolon, address = self.original_recipient.partition(";")
            if not semicolon or not _ATOM.match(addr_type.strip()):
                raise ReceiptError(f"the original recipient must read addr-type;address: {self.original_recipient!r}")
            _ascii_field(address, "the original recipient")

    @property
    def diagnostic_code(self) -> str | None:
        """The Diagnostic-Code field value: ``smtp; 550 5.1.1 ...``."""
        if self.diagnostic is None:
            return None
        match = _DIAGNOSTIC_TYPE.match(self.diagnostic.strip())
        if match:
            return f"{match.group(1)}; {match.group(2)}"
        return f"smtp; {self.diagnostic.strip()}"

    @property
    def diagnostic_text(self) -> str | None:
        """The diagnostic without its type, for people."""
        code = self.diagnostic_code
        return None if code is None else code.partition(";")[2].strip()


_DSN_FR = {
    "delivered": "a été remis à {address}.",
    "relayed": "a été transmis à {address} par un autre serveur, qui n'enverra peut-être pas d'autre avis.",
    "expanded": "a été remis à {address}, qui le redistribue à d'autres destinataires.",
    "delayed": "n'a pas encore pu être remis à {address} ; de nouveaux essais sont en cours.",
    "failed": "n'a pas pu être remis à {address}.",
}
_DSN_EN = {
    "delivered": "was delivered to {address}.",
    "relayed": "was relayed to {address} by another server, which may send no further notice.",
    "expanded": "was delivered to {address}, which redistributes it to other recipients.",
    "delayed": "could not be delivered to {address} yet; delivery is still being attempted.",
    "failed": "could not be delivered to {address}.",
}
_SUBJECT_WORDS = {
    "failed": ("échec de remise", "delivery failure"),
    "delayed": ("remise retardée", "delivery delayed"),
    "relayed": ("transmis", "relayed"),
    "expanded": ("remis", "delivered"),
    "delivered": ("remis", "delivered"),
}


def _dsn_text(reporting_mta: str, message_id: str, arrival: datetime, recipients: list[RecipientStatus]) -> str:
    def lines(table: dict[str, str], reason_label: str) -> str:
        out = []
        for r in recipients:
            out.append("  - " + table[r.action].format(address=r.address))
            if r.diagnostic_text:
                out.append(f"    {reason_label} {r.diagnostic_text}")
        return "\n".join(out)

    french = _paragraphs(
        f"Ceci est un avis de remise automatique du service de messagerie sécurisée {reporting_mta}.",
        f"Votre message {message_id}, reçu le {_french_date(arrival)} :",
    )
    english = _paragraphs(
        f"This is an automatic delivery status notification from the secure messaging service {reporting_mta}.",
        f"Your message {message_id}, received on {_english_date(arrival)}:",
    )
    return (
        f"{french}\n\n{lines(_DSN_FR, 'Motif :')}\n\n"
        + _paragraphs("Cet avis ne reprend que les en-têtes de votre message, jamais son contenu.")
        + "\n\n--\n\n"
        + f"{english}\n\n{lines(_DSN_EN, 'Reason:')}\n\n"
        + _paragraphs("This notice quotes only the header fields of your message, never its content.")
        + "\n"
    )


def _header_section(original_headers: bytes) -> str:
    """The header section of ``original_headers`` (cut at the first empty line), as text."""
    if not isinstance(original_headers, (bytes, bytearray)):
        raise ReceiptError("the original headers must be bytes")
    unified = bytes(original_headers).replace(b"\r\n", b"\n")
    # Whatever the caller passed, nothing after the header section may leave: a receipt
    # never carries content.
    head = unified.split(b"\n\n", 1)[0].strip(b"\n")
    if not head:
        raise ReceiptError("the original headers are empty")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        # RFC 6532 header fields may be UTF-8; the part then says so in its charset.
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReceiptError("the original headers are neither ASCII nor UTF-8") from exc
    first = text.split("\n", 1)[0]
    if ":" not in first or first[:1] in (" ", "\t"):
        raise ReceiptError("the original headers do not start with a header field")
    return text + "\n"


def build_dsn(
    *,
    reporting_mta: str,
    original_envelope_id: str | None,
    original_message_id: str,
    sender: str,
    recipients: list[RecipientStatus],
    arrival_date: datetime,
    original_headers: bytes,
    postmaster: str | None = None,
    date: datetime | None = None,
    message_id: str | None = None,
) -> Report:
    """A delivery status notification (RFC 3464) for ``sender``, one block per recipient.

    ``multipart/report; report-type=delivery-status`` with a French-then-English text, the
    ``message/delivery-status`` part and the original header section only
    (``text/rfc822-headers``, cut at the first empty line whatever is passed). ``postmaster``
    is the From address (default ``postmaster@<reporting_mta>``; pass the address of the
    certificate that will sign the DSN). It must travel with an empty envelope sender
    (``MAIL FROM:<>``, RFC 3464 2). Raises ReceiptError on a malformed value.
    """
    reporting_mta = _ascii_field(reporting_mta, "the reporting MTA")
    if not _HOST.match(reporting_mta):
        raise ReceiptError(f"the reporting MTA must be a host name: {reporting_mta!r}")
    original_id = _message_id(original_message_id)
    to = _address(sender, "the sender")
    host = reporting_mta.rstrip(".")
    origin = _address(postmaster or f"postmaster@{host}", "the postmaster address")
    if not recipients:
        raise ReceiptError("a DSN reports on at least one recipient")
    for recipient in recipients:
        if not isinstance(recipient, RecipientStatus):
            raise ReceiptError("recipients must be RecipientStatus values")
    arrival = _aware(arrival_date, "the arrival date")
    sent = _aware(date, "the date") if date is not None else datetime.now(UTC)
    if original_envelope_id is not None:
        # RFC 3464 2.2.1: the ENVID as the client gave it (xtext-decoded), case preserved.
        original_envelope_id = _ascii_field(original_envelope_id, "the original envelope id")

    per_message = [("Reporting-MTA", f"dns; {reporting_mta}")]
    if original_envelope_id is not None:
        per_message.insert(0, ("Original-Envelope-Id", original_envelope_id))
    per_message.append(("Arrival-Date", format_datetime(arrival.astimezone(UTC))))
    blocks = [per_message]
    for r in recipients:
        fields = []
        if r.original_recipient is not None:
            addr_type, _, address = r.original_recipient.partition(";")
            fields.append(("Original-Recipient", f"{addr_type.strip()}; {address.strip()}"))
        fields += [("Final-Recipient", f"rfc822; {r.address}"), ("Action", r.action), ("Status", r.status)]
        if r.diagnostic_code is not None:
            fields.append(("Diagnostic-Code", r.diagnostic_code))
        blocks.append(fields)

    # The subject names the worst outcome first, so a failure is never read as a success.
    order = ["failed", "delayed", "relayed", "expanded", "delivered"]
    french, english = _SUBJECT_WORDS[min((r.action for r in recipients), key=order.index)]
    subject = f"Avis de remise : {french} / Delivery status notification: {english}"
    date_text = format_datetime(sent.astimezone(UTC))
    dsn_id = _message_id(message_id, "the Message-ID") if message_id else make_msgid(domain=host)
    headers = (
        _from_line(origin)
        + _lines(("To", to))
        + _subject_line(subject)
        + _lines(
            ("Date", date_text),
            ("Message-ID", dsn_id),
            ("In-Reply-To", original_id),
            ("References", original_id),
            # RFC 3834 5: no automatic reply to this one (vacation, MDN, another DSN).
            ("Auto-Submitted", "auto-replied"),
        )
    )
    parts = [
        _text_part("plain", _dsn_text(reporting_mta, original_id, arrival, recipients), quoted_printable=True),
        "Content-Type: message/delivery-status\r\n\r\n" + "\r\n".join(_lines(*block) for block in blocks),
        _text_part("rfc822-headers", _header_section(original_headers)),
    ]
    return Report(
        wire=_multipart_report("delivery-status", headers, parts),
        sender=origin.lower(),
        to=to.lower(),
        subject=subject,
        date=date_text,
        message_id=dsn_id,
    )


# A DSN is written out as text: building it field by field with the email package costs
# ten times as much (each field parsed when set and again when written). The fields with
# words outside US-ASCII (From, Subject) are still encoded and folded by the email package,
# once per value.


# Where the email package's policy folds a line (``max_line_length``), CRLF apart.
_FOLD_AT = POLICY.max_line_length or 78


@lru_cache(maxsize=16)
def _from_line(origin: str) -> str:
    return _folded("From", str(Address("Service de messagerie sécurisée", addr_spec=origin)))


@lru_cache(maxsize=16)
def _subject_line(subject: str) -> str:
    return _folded("Subject", subject)


def _folded(name: str, value: str) -> str:
    """``name: value`` encoded (RFC 2047) and folded as the email package writes a field."""
    return POLICY.header_factory(name, value).fold(policy=POLICY)


def _lines(*fields: tuple[str, str]) -> str:
    """US-ASCII header fields, folded by the email package where a line would pass 78 characters."""
    out = []
    for name, value in fields:
        line = f"{name}: {value}\r\n"
        out.append(line if len(line) <= _FOLD_AT + 2 else _folded(name, value))
    return "".join(out)


def _text_part(subtype: str, text: str, *, quoted_printable: bool = False) -> str:
    """A text part as the email package's ``set_content`` writes it: US-ASCII in 7 bits when
    the text allows, else UTF-8 in quoted-printable."""
    lines = text.encode("utf-8").splitlines()
    body = b"\n".join(lines) + b"\n"
    if not quoted_printable and text.isascii() and all(len(line) <= 998 for line in lines):
        charset, cte, data = "us-ascii", "7bit", body.decode("ascii")
    else:
        charset, cte, data = "utf-8", "quoted-printable", quoprimime.body_encode(body.decode("latin-1"), _FOLD_AT)
    return (
        f'Content-Type: text/{subtype}; charset="{charset}"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
        + data.replace("\n", "\r\n")
    )


def _multipart_report(report_type: str, headers: str, parts: list[str]) -> bytes:
    """A multipart/report (RFC 6522) of ``headers`` (written fields) and ``parts`` (each its
    header fields, an empty line and its body), as bytes."""
    boundary = "=_" + secrets.token_hex(16)
    while any(boundary in part for part in parts):  # 128 random bits: only in theory
        boundary = "=_" + secrets.token_hex(16)
    body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts)
    return (
        f"{headers}MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type={report_type};\r\n boundary="{boundary}"\r\n\r\n'
        f"{body}--{boundary}--\r\n"
    ).encode("ascii")


# -- message disposition notifications (RFC 8098) ----------------------------------------


_MDN_FR = {"processed": "a été déposé dans la boîte de {recipient}", "displayed": "a été affiché par {recipient}"}
_MDN_EN = {"processed": "was placed in the mailbox of {recipient}", "displayed": "was displayed by {recipient}"}
_MDN_CAVEAT_FR = {
    "processed": "Cet accusé indique que le message est arrivé dans la boîte du destinataire ; il ne garantit pas "
    "qu'il a été ouvert, lu ni compris.",
    "displayed": "Cet accusé indique que le message a été affiché ; il ne garantit pas qu'il a été lu ni compris.",
}
_MDN_CAVEAT_EN = {
    "processed": "This receipt shows that the message reached the recipient's mailbox; it does not guarantee that "
    "it was opened, read or understood.",
    "displayed": "This receipt shows that the message was displayed; it does not guarantee that it was read or "
    "understood.",
}


def _subject_hint(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReceiptError("the subject hint must be text")
    # Display text: line breaks and control characters collapse to spaces (no header
    # injection through a crafted original subject), and it is kept short.
    cleaned = " ".join(re.sub(r"[\x00-\x1f\x7f]", " ", value).split())
    if not cleaned:
        return None
    return cleaned if len(cleaned) <= 200 else cleaned[:199] + "…"


def build_mdn(
    *,
    reporting_ua: str,
    final_recipient: str,
    original_message_id: str,
    disposition: Disposition,
    sender: str,
    mode: DispositionMode,
    subject_hint: str | None,
    date: datetime | None = None,
    message_id: str | None = None,
) -> Report:
    """A message disposition notification (RFC 8098) from ``final_recipient`` to ``sender``.

    ``multipart/report; report-type=disposition-notification`` with a French-then-English
    text and the ``message/disposition-notification`` part (Reporting-UA, Final-Recipient,
    Original-Message-ID, Disposition ``<mode>; <disposition>``). ``subject_hint`` only
    appears in the subject and the text. Raises ReceiptError on a malformed value.
    """
    reporting_ua = _ascii_field(reporting_ua, "the reporting user agent")
    recipient = _address(final_recipient, "the final recipient")
    to = _address(sender, "the sender")
    original_id = _message_id(original_message_id)
    if disposition not in DISPOSITIONS:
        raise ReceiptError(f"disposition must be one of {', '.join(DISPOSITIONS)}, not {disposition!r}")
    if mode not in DISPOSITION_MODES:
        raise ReceiptError(f"unknown disposition mode {mode!r} (RFC 8098 3.2.6.1)")
    hint = _subject_hint(subject_hint)
    sent = _aware(date, "the date") if date is not None else datetime.now(UTC)
    domain = recipient.rpartition("@")[2]

    notification = MIMEPart(policy=POLICY)
    notification["Content-Type"] = "message/disposition-notification"
    notification.set_payload(
        [
            _block(
                [
                    ("Reporting-UA", reporting_ua),
                    ("Final-Recipient", f"rfc822; {recipient}"),
                    ("Original-Message-ID", original_id),
                    ("Disposition", f"{mode}; {disposition}"),
                ]
            )
        ]
    )

    about = f" « {hint} »" if hint else ""
    about_en = f' "{hint}"' if hint else ""
    text = (
        _paragraphs(
            f"Votre message{about} ({original_id}) {_MDN_FR[disposition].format(recipient=recipient)} "
            f"le {_french_date(sent)}.",
            _MDN_CAVEAT_FR[disposition],
        )
        + "\n\n--\n\n"
        + _paragraphs(
            f"Your message{about_en} ({original_id}) {_MDN_EN[disposition].format(recipient=recipient)} "
            f"on {_english_date(sent)}.",
            _MDN_CAVEAT_EN[disposition],
        )
        + "\n"
    )
    kind_fr, kind_en = ("Accusé de lecture", "Read receipt") if disposition == "displayed" else (
        "Accusé de réception", "Delivery receipt")  # fmt: skip
    subject = f"{kind_fr} / {kind_en}" + (f" : {hint}" if hint else "")
    headers = [
        ("From", recipient),
        ("To", to),
        ("Subject", subject),
        ("Date", format_datetime(sent.astimezone(UTC))),
        ("Message-ID", _message_id(message_id, "the Message-ID") if message_id else make_msgid(domain=domain)),
        ("In-Reply-To", original_id),
        ("References", original_id),
    ]
    if mode.endswith("/MDN-sent-automatically"):
        # RFC 3834 5: sent without a person deciding to, so no automatic reply to it.
        headers.append(("Auto-Submitted", "auto-replied"))
    return Report.of(_report("disposition-notification", headers, [_human_part(text), notification]))


# -- SMTP DSN parameters (RFC 3461) ------------------------------------------------------


NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")
NEVER = "NEVER"


class Notify(frozenset[str]):
    """The one form of an RFC 3461 NOTIFY value: some of SUCCESS, FAILURE, DELAY, or
    exactly ``{"NEVER"}`` (no DSN at all)."""

    @property
    def never(self) -> bool:
        """NOTIFY=NEVER: no DSN at all for this recipient."""
        return NEVER in self

    @property
    def value(self) -> str:
        """The canonical NOTIFY text (``NEVER`` or ``SUCCESS,FAILURE,DELAY`` in that order)."""
        return NEVER if self.never else ",".join(w for w in NOTIFY_WORDS if w in self) or NEVER

    def wants(self, action: str) -> bool:
        """True when a DSN with this RFC 3464 action was asked for."""
        if action in ("delivered", "relayed", "expanded"):
            return "SUCCESS" in self
        if action == "failed":
            return "FAILURE" in self
        if action == "delayed":
            return "DELAY" in self
        raise ReceiptError(f"unknown DSN action {action!r} (RFC 3464 2.3.3)")


# RFC 3461 4.1 leaves the default to the MTA: FAILURE or FAILURE,DELAY. Like most MTAs,
# tell the sender about delays too.
DEFAULT_NOTIFY = Notify({"FAILURE", "DELAY"})
_MAX_ORCPT = 500  # RFC 3461 4.2, the xtext-encoded value
_MAX_ENVID = 100  # RFC 3461 4.4, the xtext-encoded value
_MAIL_KEYWORDS = ("RET", "ENVID")
_RCPT_KEYWORDS = ("NOTIFY", "ORCPT")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")


@dataclass(frozen=True)
class OriginalRecipient:
    """An ORCPT value (RFC 3461 4.2): an address type and the decoded address."""

    addr_type: str
    address: str

    def __str__(self) -> str:
        return f"{self.addr_type};{self.address}"


@dataclass(frozen=True)
class NotifySpec:
    """What a client asked for with RFC 3461 parameters.

    ``notify`` is a :class:`Notify`; ``notify_given`` tells an explicit NOTIFY from the
    default. ``ret`` (FULL or HDRS) is recorded but a receipt returns header fields only,
    whatever it says.
    """

    notify: Notify = DEFAULT_NOTIFY
    notify_given: bool = False
    orcpt: OriginalRecipient | None = None
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None

    @property
    def never(self) -> bool:
        """NOTIFY=NEVER: no DSN at all for this recipient."""
        return self.notify.never

    @property
    def notify_value(self) -> str:
        """The canonical NOTIFY text (``NEVER`` or ``SUCCESS,FAILURE,DELAY`` in that order)."""
        return self.notify.value

    def wants(self, action: str) -> bool:
        """True when a DSN with this RFC 3464 action was asked for."""
        return self.notify.wants(action)


def decode_xtext(value: str, keyword: str) -> str:
    """RFC 3461 4: ``+XX`` (two upper-case hex digits) stands for one octet; decoded text
    must be printable US-ASCII. Raises DsnParameterError."""
    for char in value:
        # xchar: "!" to "~" except "+" and "=" (a "+" must start a hexchar).
        if not ("!" <= char <= "~") or char == "=":
            raise DsnParameterError(keyword, f"{char!r} is not allowed in xtext (RFC 3461 4)")
    plus_count = value.count("+")
    if plus_count != len(_XTEXT_HEX.findall(value)):
        raise DsnParameterError(keyword, "'+' must be followed by two upper-case hexadecimal digits (RFC 3461 4)")
    decoded = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)
    if not _PRINTABLE.fullmatch(decoded):
        raise DsnParameterError(keyword, "the decoded value must be printable US-ASCII (RFC 3461 4)")
    return decoded


def _parse_notify_value(value: str) -> Notify:
    words = value.upper().split(",")
    if NEVER in words:
        if words != [NEVER]:
            raise DsnParameterError("NOTIFY", "NEVER cannot be combined with SUCCESS, FAILURE or DELAY (RFC 3461 4.1)")
        return Notify({NEVER})
    for word in words:
        if word not in NOTIFY_WORDS:
            shown = word or "an empty item"
            raise DsnParameterError("NOTIFY", f"{shown} is not one of NEVER, SUCCESS, FAILURE, DELAY")
    if len(set(words)) != len(words):
        raise DsnParameterError("NOTIFY", "a keyword is repeated")
    return Notify(words)


def _parse_orcpt(value: str) -> OriginalRecipient:
    if len(value) > _MAX_ORCPT:
        raise DsnParameterError("ORCPT", f"longer than {_MAX_ORCPT} characters (RFC 3461 4.2)")
    addr_type, semicolon, encoded = value.partition(";")
    if not semicolon or not _ATOM.match(addr_type):
        raise DsnParameterError("ORCPT", "must read addr-type;address, such as rfc822;someone@example.org")
    if not encoded:
        raise DsnParameterError("ORCPT", "the original address is empty")
    # RFC 3461 4.2: the address need not follow its type's syntax; only the xtext is checked.
    return OriginalRecipient(addr_type=addr_type.lower(), address=decode_xtext(encoded, "ORCPT"))


def _params(params: Iterable[str] | Mapping[str, str | None] | str) -> list[tuple[str, str | None]]:
    if isinstance(params, str):
        params = params.split()
    if isinstance(params, Mapping):
        return [(str(k), None if v is None else str(v)) for k, v in params.items()]
    pairs = []
    for token in params:
        if not isinstance(token, str):
            raise DsnParameterError("parameters", f"{token!r} is not text")
        keyword, equals, value = token.partition("=")
        pairs.append((keyword, value if equals else None))
    return pairs


def parse_notify(
    params: Iterable[str] | Mapping[str, str | None] | str, *, command: Literal["MAIL", "RCPT"] | None = None
) -> NotifySpec:
    """Parse the RFC 3461 parameters among ``params`` (``["NOTIFY=SUCCESS,FAILURE", ...]``,
    a mapping, or the raw parameter text); other ESMTP parameters are left to the caller.

    ``command`` (MAIL or RCPT) refuses a parameter given to the wrong command (RET and
    ENVID belong to MAIL, NOTIFY and ORCPT to RCPT). Returns a NotifySpec. Raises
    DsnParameterError (a PolicyError: reply 501 5.5.4) on a malformed or repeated parameter.
    """
    seen: set[str] = set()
    notify, notify_given = DEFAULT_NOTIFY, False
    orcpt: OriginalRecipient | None = None
    ret: Literal["FULL", "HDRS"] | None = None
    envid: str | None = None
    for raw_keyword, value in _params(params):
        keyword = raw_keyword.upper()
        if keyword not in _MAIL_KEYWORDS + _RCPT_KEYWORDS:
            continue
        if command == "MAIL" and keyword in _RCPT_KEYWORDS or command == "RCPT" and keyword in _MAIL_KEYWORDS:
            raise DsnParameterError(keyword, f"{keyword} is not a parameter of {command} (RFC 3461 4)")
        if keyword in seen:
            raise DsnParameterError(keyword, "given more than once (RFC 3461 4)")
        seen.add(keyword)
        if not value:
            raise DsnParameterError(keyword, "a value is required")
        if keyword == "NOTIFY":
            notify, notify_given = _parse_notify_value(value), True
        elif keyword == "ORCPT":
            orcpt = _parse_orcpt(value)
        elif keyword == "RET":
            upper = value.upper()
            if upper not in ("FULL", "HDRS"):
                raise DsnParameterError("RET", "must be FULL or HDRS (RFC 3461 4.3)")
            ret = "FULL" if upper == "FULL" else "HDRS"
        else:
            if len(value) > _MAX_ENVID:
                raise DsnParameterError("ENVID", f"longer than {_MAX_ENVID} characters (RFC 3461 4.4)")
            envid = decode_xtext(value, "ENVID")
    return NotifySpec(notify=notify, notify_given=notify_given, orcpt=orcpt, ret=ret, envid=envid)


# -- was a disposition notification asked for? (RFC 8098 2) ------------------------------


def _same_address(a: str, b: str) -> bool:
    # RFC 8098 2.1: the local part compares case-sensitively, the domain case-insensitively.
    a_local, _, a_domain = a.rpartition("@")
    b_local, _, b_domain = b.rpartition("@")
    return a_local == b_local and a_domain.lower() == b_domain.lower()


def _single_address(values: list[str]) -> str | None:
    """The one distinct addr-spec in these header values, or None (none, several, invalid)."""
    addresses = {addr for _name, addr in getaddresses(values)} if values else set()
    if len(addresses) != 1:
        return None
    (address,) = addresses
    if not _ADDR_SPEC.match(address) or ".." in address:
        return None
    return address


def wants_mdn(headers: Message | bytes, *, envelope_sender: str | None = None) -> str | None:
    """The Disposition-Notification-To address when an MDN may be sent without asking.

    ``headers`` is a parsed message or its raw header section. Returns None when no MDN
    was asked for, when the message is itself a report (never an MDN for an MDN or a DSN),
    when the request names several addresses or an invalid one, when it carries a
    ``required`` option we do not know (RFC 8098 2.2), or when the address differs from the
    Return-Path (RFC 8098 2.1). With no Return-Path yet (at submission), the envelope
    sender stands in for it, else the Sender or From field: this service has already
    checked From against the authenticated account by then. Raises nothing.
    """
    if isinstance(headers, (bytes, bytearray)):
        parsed: Message = BytesHeaderParser(policy=email.policy.compat32).parsebytes(bytes(headers))
    else:
        parsed = headers
    requests = parsed.get_all("Disposition-Notification-To") or []
    if len(requests) != 1:
        return None  # absent, or repeated (RFC 8098 2.1 allows one field)
    if parsed.get_content_type() == "multipart/report":
        return None
    for option in parsed.get_all("Disposition-Notification-Options") or []:
        # attribute=importance,value: an importance of "required" on an option we do not
        # implement (we implement none) forbids the MDN.
        for item in str(option).split(";"):
            _attribute, _, rest = item.partition("=")
            if rest.split(",", 1)[0].strip().lower() == "required":
                return None
    requested = _single_address([str(requests[0])])
    if requested is None:
        return None
    return_paths = parsed.get_all("Return-Path") or []
    if return_paths:
        # The topmost Return-Path is the one the final delivery added.
        reference = _single_address([str(return_paths[0])])
    elif envelope_sender is not None:
        reference = envelope_sender if _ADDR_SPEC.match(envelope_sender) else None
    else:
        reference = _single_address([str(v) for v in parsed.get_all("Sender") or parsed.get_all("From") or []])
    if reference is None or not _same_address(requested, reference):
        return None
    return requested
