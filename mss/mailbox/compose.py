"""Writing from the web or the API: a draft becomes an RFC 5322 message handed to the pipeline.

The message is built exactly as a mail client would build it (``email.message.EmailMessage``:
text body, attachments in base64, ``Disposition-Notification-To`` when a read receipt is
asked) and submitted through ``mss.pipeline.submit`` with ``channel="web"``: the rules
(directory, documents, signature, encryption, receipts, audit) are the pipeline's. What is
checked here first is only what lets the form say precisely which field is wrong.

Reply and forward may keep the attachments of the original message; the body then says
whose signature they carried when they arrived, since the new signature is the sender's.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage

from sqlalchemy import select
from sqlmodel import col

from directory.models import DirectoryEntry
from mss import pipeline
from mss.accounts import UnlockedAccount
from mss.addresses import normalise_address
from mss.db import session_scope
from mss.documents import DocumentLimits, workers
from mss.documents.cda import RPPS_ROOT, Author, CdaInfo, Identifier, Organisation, PersonName
from mss.documents.sniff import sniff
from mss.documents.xdm import build_xdm
from mss.errors import DirectoryError, DocumentError, DomainNotServed, MssError, PolicyError
from mss.mailbox.content import Signature
from mss.mailbox.items import limits_of
from mss.mailbox.opening import open_attachment, thread_of
from mss.mime import SMTP_POLICY
from mss.pipeline import Accepted, RecipientRequest, Submission
from mss.runtime import Runtime

MAX_SUBJECT = 250
MAX_BODY = 1_000_000
XDM_FILENAME = "IHE_XDM.ZIP"
CONTENT_TYPES = {"pdf": "application/pdf", "cda": "text/xml", "xdm": "application/zip"}
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Problem:
    """What is wrong with one field: an English sentence (a gettext msgid with ``%(name)s``
    placeholders) and its values, or the service error that said it."""

    msgid: str
    values: dict[str, object] = field(default_factory=dict)
    error: MssError | None = None

    def __str__(self) -> str:
        return self.error.message if self.error is not None else self.msgid % self.values


class DraftInvalid(MssError):
    """A draft cannot be sent as it is; ``errors`` maps each field to what is wrong."""

    def __init__(self, errors: dict[str, list[Problem]]) -> None:
        super().__init__(
            "the message cannot be sent: " + "; ".join(str(p) for ps in errors.values() for p in ps), errors=errors
        )
        self.errors = errors


def _problem(
    errors: dict[str, list[Problem]], name: str, msgid: str, error: MssError | None = None, **values: object
) -> None:
    errors.setdefault(name, []).append(Problem(msgid, values, error))


@dataclass(frozen=True)
class Upload:
    """An attachment as received from the form or the API."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Draft:
    """What the writer asked for."""

    to: tuple[str, ...]
    subject: str
    body: str
    attachments: tuple[Upload, ...] = ()
    read_receipt: bool = False
    package_xdm: bool = False
    reply_to: str | None = None
    """Queue id of the message answered (its Message-ID goes to In-Reply-To, the thread to
    References)."""
    source: str | None = None
    """Queue id of the message replied to or forwarded, whose attachments ``keep`` takes; a
    forward (``source`` without ``reply_to``) keeps the thread in References."""
    keep: tuple[int, ...] = ()


@dataclass(frozen=True)
class KeptAttachment:
    """An attachment carried over from an earlier message, with who had signed it."""

    filename: str
    signature: Signature
    sender: str


def english_note(kept: list[KeptAttachment]) -> str:
    """The default paragraph that says whose signature forwarded attachments carried."""
    lines = ["Attachments carried over from an earlier message:"]
    for item in kept:
        signer = item.signature.signer_name or item.signature.signer_address or item.sender
        lines.append(f"- {item.filename}: signed by {signer} ({item.signature.status})")
    return "\n".join(lines)


def split_addresses(text: str) -> tuple[str, ...]:
    """Addresses from a comma, semicolon or whitespace separated list, lower case, in order."""
    seen: list[str] = []
    for part in re.split(r"[,;\s]+", text or ""):
        address = normalise_address(part)
        if address and address not in seen:
            seen.append(address)
    return tuple(seen)


def _clean_filename(name: str) -> str:
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '"<>|:*?').strip(" .")
    return base[:120] or "document"


def _author(rt: Runtime, address: str) -> Author:
    with session_scope(rt.engine) as session:
        entry = session.execute(select(DirectoryEntry).where(col(DirectoryEntry.address) == address)).scalars().first()
    if entry is None:
        return Author(name=None, id=None, rpps=None, organisation=None)
    name = (
        PersonName(
            family=entry.last_name or None, given=tuple(p for p in (entry.first_name,) if p), prefix=entry.title or None
        )
        if entry.kind == "PER"
        else None
    )
    rpps = entry.rpps or None
    return Author(
        name=name,
        id=Identifier(root=RPPS_ROOT, extension="8" + rpps) if rpps else None,
        rpps=rpps,
        organisation=Organisation(name=entry.org_name or None),
    )


def _display_name(rt: Runtime, address: str) -> str:
    with session_scope(rt.engine) as session:
        entry = session.execute(select(DirectoryEntry).where(col(DirectoryEntry.address) == address)).scalars().first()
    return entry.display_name if entry is not None and entry.display_name != address else ""


def _check_recipients(rt: Runtime, to: tuple[str, ...], errors: dict[str, list[Problem]]) -> list[str]:
    if not to:
        _problem(errors, "to", "Choose at least one recipient from the directory.")
        return []
    if len(to) > rt.settings.relay.max_recipients:
        _problem(
            errors, "to", "A message may have at most %(count)s recipients.", count=rt.settings.relay.max_recipients
        )
        return []
    checked: list[str] = []
    for address in to:
        if not _ADDRESS.match(address):
            _problem(errors, "to", "%(address)s is not an e-mail address.", address=address[:100])
            continue
        try:
            checked.append(pipeline.check_recipient(rt, address))
        except (DirectoryError, DomainNotServed, PolicyError) as exc:
            _problem(errors, "to", "", exc)
    return checked


def _checked_upload(upload: Upload, limits: DocumentLimits) -> tuple[Upload, CdaInfo | None]:
    """The upload with a clean name and the content type its content calls for. Raises DocumentError."""
    name = _clean_filename(upload.filename)
    kind = sniff(upload.data, upload.content_type or "application/octet-stream", name)
    if kind == "text":
        kind_type = "text/plain"
    else:
        kind_type = CONTENT_TYPES[kind]
    document = workers.inspect_attachment(name, kind_type, upload.data, limits=limits)
    return Upload(filename=name, content_type=kind_type, data=upload.data), document.cda


def build_message(
    rt: Runtime,
    sender: UnlockedAccount,
    draft: Draft,
    *,
    note: Callable[[list[KeptAttachment]], str] = english_note,
    request_id: str = "",
) -> tuple[bytes, tuple[str, ...]]:
    """The RFC 5322 bytes of a draft and its checked recipients. Raises DraftInvalid."""
    errors: dict[str, list[Problem]] = {}
    recipients = _check_recipients(rt, draft.to, errors)
    subject = " ".join((draft.subject or "").split())
    if len(subject) > MAX_SUBJECT:
        _problem(errors, "subject", "The subject is limited to %(count)s characters.", count=MAX_SUBJECT)
    body = (draft.body or "").replace("\r\n", "\n")
    if len(body.encode("utf-8")) > MAX_BODY:
        _problem(errors, "body", "The text is too long.")

    limits = limits_of(rt)
    uploads: list[tuple[Upload, CdaInfo | None]] = []
    for upload in draft.attachments:
        if not upload.data and not upload.filename:
            continue
        try:
            uploads.append(_checked_upload(upload, limits))
        except DocumentError as exc:
            _problem(errors, "attachments", "", exc)

    kept: list[KeptAttachment] = []
    reply_headers: dict[str, str] = {}
    if draft.reply_to:
        reply_headers = _thread_headers(rt, sender, draft.reply_to, reply=True, errors=errors)
    elif draft.source:
        reply_headers = _thread_headers(rt, sender, draft.source, reply=False, errors=errors)
    queue_id = draft.source
    for attachment_index in draft.keep if queue_id else ():
        try:
            opened = open_attachment(
                rt,
                sender,
                queue_id,  # type: ignore[arg-type]  # the loop runs only when queue_id is set
                attachment_index,
                action="attachment.forward",
                request_id=request_id,
            )
        except MssError as exc:
            _problem(errors, "attachments", "", exc)
            continue
        original = opened.attachment
        try:
            uploads.append(_checked_upload(Upload(original.filename, original.content_type, original.data), limits))
        except DocumentError as exc:
            _problem(errors, "attachments", "", exc)
            continue
        kept.append(KeptAttachment(filename=original.filename, signature=opened.signature, sender=opened.meta.sender))
    if not body.strip() and not uploads:
        _problem(errors, "body", "Write a text or attach a document.")
    if draft.package_xdm and not any(cda is not None for _u, cda in uploads):
        _problem(errors, "package_xdm", "There is no CDA document to package.")
    if errors:
        raise DraftInvalid(errors)

    if draft.package_xdm:
        uploads = _package(rt, sender.address, uploads, limits, errors)
        if errors:
            raise DraftInvalid(errors)

    if kept:
        body = (body.rstrip("\n") + "\n\n" if body.strip() else "") + note(kept) + "\n"

    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = Address(display_name=_display_name(rt, sender.address), addr_spec=sender.address)
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(email.utils.localtime())
    domain = sender.address.rpartition("@")[2]
    message["Message-ID"] = email.utils.make_msgid(domain=domain)
    for name, value in reply_headers.items():
        message[name] = value
    if draft.read_receipt:
        message["Disposition-Notification-To"] = sender.address
    message.set_content(body or "\n", subtype="plain", charset="utf-8", cte="quoted-printable")
    for upload, _cda in uploads:
        maintype, _slash, subtype = upload.content_type.partition("/")
        message.add_attachment(upload.data, maintype=maintype, subtype=subtype, filename=upload.filename)
    return message.as_bytes(policy=SMTP_POLICY), tuple(recipients)


def _thread_headers(
    rt: Runtime, sender: UnlockedAccount, queue_id: str, *, reply: bool, errors: dict[str, list[Problem]]
) -> dict[str, str]:
    """RFC 5322 3.6.4: a reply names its parent in In-Reply-To and the thread in References;
    a forward keeps the thread in References (it answers no one)."""
    try:
        parent, references = thread_of(rt, sender, queue_id)
    except MssError:
        if reply:
            _problem(errors, "to", "The message answered is not in this mailbox.")
        else:
            _problem(errors, "attachments", "The forwarded message is not in this mailbox.")
        return {}
    headers = {"References": " ".join(references)} if references else {}
    if reply and parent:
        headers["In-Reply-To"] = parent
    return headers


def _package(
    rt: Runtime,
    sender: str,
    uploads: list[tuple[Upload, CdaInfo | None]],
    limits: DocumentLimits,
    errors: dict[str, list[Problem]],
) -> list[tuple[Upload, CdaInfo | None]]:
    """The CDA uploads replaced by one IHE_XDM.ZIP holding them (other files stay as they are)."""
    cdas = [(u, cda) for u, cda in uploads if cda is not None]
    others = [(u, cda) for u, cda in uploads if cda is None]
    try:
        archive = build_xdm(
            [(u.filename, u.data, cda) for u, cda in cdas],
            author=_author(rt, sender),
            patient=cdas[0][1].patient,
            limits=limits,
        )
    except DocumentError as exc:
        _problem(errors, "package_xdm", "", exc)
        return uploads
    except ValueError:
        _problem(errors, "package_xdm", "There is no CDA document to package.")
        return uploads
    return [(Upload(XDM_FILENAME, CONTENT_TYPES["xdm"], archive), None), *others]


def send(
    rt: Runtime,
    sender: UnlockedAccount,
    draft: Draft,
    *,
    request_id: str = "",
    note: Callable[[list[KeptAttachment]], str] = english_note,
) -> Accepted:
    """Build the draft and submit it like any other message; return the queue id.

    Raises DraftInvalid for a field that is wrong, and what ``pipeline.submit`` raises
    (PolicyError, DocumentError, DirectoryError subclasses) for what the pipeline refuses.
    """
    raw, recipients = build_message(rt, sender, draft, note=note, request_id=request_id)
    submission = Submission(
        sender=sender,
        recipients=tuple(RecipientRequest(address=a) for a in recipients),
        raw=raw,
        channel="web",
        request_id=request_id,
    )
    return pipeline.submit(rt, submission)
