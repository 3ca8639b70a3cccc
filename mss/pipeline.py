"""One pipeline for every door: policy, document checks, sign, encrypt, store, receipts, audit.

The SMTP handler and the web controllers translate their protocol into a ``Submission`` and
call ``check_sender``, ``check_recipient`` and ``submit``; the rules live here, not there.
``submit`` is blocking (crypto, parsing, database): async callers run it with
``asyncio.to_thread``.
"""

from __future__ import annotations

import email.errors
import email.policy
import email.utils
import secrets
import socket
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.parser import BytesParser

from mss import peers, receipts, standing, store, trust
from mss.accounts import UnlockedAccount
from mss.crypto import pki, smime
from mss.db import session_scope, utcnow
from mss.documents import CdaInfo, Document, DocumentLimits, inspect_attachment, message_header_values
from mss.errors import (
    DirectoryError,
    DomainNotServed,
    FromHeaderMismatch,
    MalformedMessage,
    MessageTooLarge,
    NotEncryptedForRecipients,
    RecipientHasNoCertificate,
    SenderMismatch,
)
from mss.outbound import queue
from mss.runtime import Runtime
from mss.store import MessageMeta, Notice


@dataclass(frozen=True)
class RecipientRequest:
    """A recipient as the client asked for it (RFC 3461 NOTIFY, ORCPT)."""

    address: str
    # SUCCESS, FAILURE, DELAY, or NEVER; without NOTIFY, RFC 3461's FAILURE and DELAY.
    notify: frozenset[str] = receipts.DEFAULT_NOTIFY
    orcpt: str | None = None


@dataclass(frozen=True)
class Submission:
    """A message handed in by an authenticated account, ready for the pipeline."""

    sender: UnlockedAccount
    recipients: tuple[RecipientRequest, ...]
    raw: bytes  # the RFC 5322 message as received (CRLF or LF line ends)
    channel: str  # "smtp" or "web"
    request_id: str = ""
    envelope_id: str | None = None  # RFC 3461 ENVID
    extra_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    """A message durably stored: its queue id and its RFC 5322 Message-ID."""

    queue_id: str
    message_id: str


def normalise_address(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


def check_sender(sender: UnlockedAccount, mail_from: str) -> None:
    """The envelope sender must be the authenticated account. Raises SenderMismatch."""
    if normalise_address(mail_from) != sender.address:
        raise SenderMismatch(f"sender {normalise_address(mail_from)} is not the authenticated account {sender.address}")


def _sender_certificate_serial(sender: UnlockedAccount) -> str:
    return pki.serial_hex(sender.certificate.serial_number)


def check_sender_standing(rt: Runtime, sender: UnlockedAccount) -> None:
    """The sender still stands, with the certificate its session signs with (a revocation,
    a disable or a rekey since it logged in refuses its next message). Raises a
    StandingError subclass (``mss.standing``)."""
    with session_scope(rt.engine, readonly=True) as session:
        standing.check(session, rt.settings, sender.address, certificate_serial=_sender_certificate_serial(sender))


def check_recipient(rt: Runtime, address: str) -> str:
    """The normalised address of a recipient that may receive; raises otherwise.

    An address of another operator's domain may receive when that domain is on the trust
    list; nothing needs to be known of its certificate yet (``submit`` looks for one).
    Raises DomainNotServed (neither served nor trusted: never an open relay),
    UnknownAddress, RevokedAddress, RecipientHasNoCertificate.
    """
    from directory import service
    from mss.db import session_scope

    address = normalise_address(address)
    with session_scope(rt.engine, readonly=True) as session:
        if not rt.settings.serves(address):
            _require_trusted(session, address)
            return service.require_active(session, address).address
        entry = service.require_active(session, address)
        _certificate_for(session, entry.address)
        return entry.address


def _certificate_for(session, address: str):  # type: ignore[no-untyped-def]
    from directory import certificates

    cert = certificates.current_certificate(session, address)
    if cert is None:
        raise RecipientHasNoCertificate(f"{address} has no valid certificate: nothing can be encrypted to it")
    return cert



# -- submission --------------------------------------------------------------------------

SMIME_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
SIGNATURE_TYPES = {"application/pkcs7-signature", "application/x-pkcs7-signature"}
BODY_TYPES = {"text/plain", "text/html"}
# Structural defects that mean the MIME tree is not what the sender meant to send.
FATAL_DEFECTS = (
    email.errors.NoBoundaryInMultipartDefect,
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MissingHeaderBodySeparatorDefect,
    email.errors.MultipartInvariantViolationDefect,
    email.errors.InvalidBase64CharactersDefect,
    email.errors.InvalidBase64LengthDefect,
    email.errors.InvalidBase64PaddingDefect,
    email.errors.InvalidHeaderDefect,
)


def _parse(raw: bytes) -> EmailMessage:
    try:
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
    except (ValueError, TypeError, LookupError, IndexError) as exc:
        raise MalformedMessage(f"the message is not parseable MIME ({exc.__class__.__name__})") from exc
    for part in message.walk():
        for defect in part.defects:
            if isinstance(defect, FATAL_DEFECTS):
                raise MalformedMessage(f"malformed MIME: {defect.__class__.__name__.removesuffix('Defect')}")
    return message  # type: ignore[return-value]


def _from_address(message: EmailMessage) -> str:
    try:
        header = message["From"]
        addresses = getattr(header, "addresses", ()) if header is not None else ()
    except (ValueError, IndexError, TypeError) as exc:
        raise MalformedMessage("the From: header is not a valid address") from exc
    if len(addresses) != 1:
        raise MalformedMessage("the message must have exactly one From: address")
    return normalise_address(addresses[0].addr_spec)


def _leaf_parts(message: EmailMessage):  # type: ignore[no-untyped-def]
    for part in message.walk():
        if part.is_multipart():
            continue
        yield part


def _inspect_documents(message: EmailMessage, limits: DocumentLimits) -> list[Document]:
    """Every attachment checked; the text or HTML body is not a document."""
    found: list[Document] = []
    for part in _leaf_parts(message):
        content_type = part.get_content_type()
        filename = part.get_filename() or ""
        disposition = part.get_content_disposition()
        if content_type in SIGNATURE_TYPES and not filename.lower().endswith(".p7m"):
            continue  # the client's own multipart/signed signature travels inside ours
        try:
            data = part.get_payload(decode=True) or b""
        except (ValueError, TypeError, LookupError) as exc:
            raise MalformedMessage(f"a part of the message cannot be decoded ({exc.__class__.__name__})") from exc
        if content_type in BODY_TYPES and not filename and disposition != "attachment":
            continue
        found.append(inspect_attachment(filename or "(unnamed part)", content_type, data, limits=limits))
    return found


def _client_envelope(message: EmailMessage) -> bytes | None:
    """The DER EnvelopedData of a message the client already encrypted, else None."""
    if message.get_content_type() not in SMIME_TYPES:
        return None
    smime_type = (message.get_param("smime-type") or "").lower()
    if smime_type not in {"enveloped-data", "authenveloped-data", ""}:
        raise MalformedMessage("opaque signed S/MIME is not accepted: send it as multipart/signed, or unsigned")
    der = message.get_payload(decode=True) or b""
    if not smime.is_enveloped(der):
        raise MalformedMessage("the S/MIME body is not a CMS EnvelopedData")
    return der


def _with_headers(raw: bytes, headers: dict[str, str]) -> bytes:
    """The message with headers prepended and line ends made CRLF (the form that is signed)."""
    text = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    prefix = b"".join(f"{name}: {value}\r\n".encode("utf-8") for name, value in headers.items())
    return prefix + text


def new_queue_id() -> str:
    return secrets.token_hex(10).upper()


def submit(rt: Runtime, submission: Submission) -> Accepted:
    """Check, sign, encrypt and durably store a message with its receipts and audit events.

    Returns only after the commit. Raises a StandingError subclass (the sender may no longer
    send), MessageTooLarge, MalformedMessage, FromHeaderMismatch, DocumentError subclasses, NotEncryptedForRecipients,
    RecipientHasNoCertificate, UnknownAddress, RevokedAddress, DomainNotServed.
    """
    settings = rt.settings
    sender = submission.sender
    if len(submission.raw) > settings.relay.max_message_size:
        raise MessageTooLarge(f"the message exceeds {settings.relay.max_message_size} bytes")
    if not submission.recipients:
        raise MalformedMessage("the message has no recipient")
    message = _parse(submission.raw)
    if _from_address(message) != sender.address:
        raise FromHeaderMismatch(f"the From: header must be {sender.address}")
    recipients = [r.address for r in submission.recipients]
    queue_id = new_queue_id()
    domain = sender.address.rpartition("@")[2]
    added: dict[str, str] = dict(submission.extra_headers)
    message_id = (message.get("Message-ID") or "").strip()
    if not message_id:
        message_id = f"<{queue_id.lower()}@{domain}>"
        added["Message-ID"] = message_id
    if message.get("Date") is None:
        added["Date"] = email.utils.format_datetime(utcnow())

    # Recipients are re-checked at DATA: one revoked since RCPT fails alone, with a DSN.
    failed: dict[str, str] = {}
    deliverable: list[RecipientRequest] = []
    remote: list[RecipientRequest] = []  # at other operators: queued, not stored here
    recipient_certs = []
    with session_scope(rt.engine, readonly=True) as session:
        # Nothing is signed with a key whose certificate was revoked, or for an account
        # that may no longer send, whenever that happened.
        standing.check(session, settings, sender.address, certificate_serial=_sender_certificate_serial(sender))
        for request in submission.recipients:
            try:
                check_recipient_is_active(session, settings, request.address)
                if settings.serves(request.address):
                    recipient_certs.append(_certificate_for(session, request.address))
            except (DirectoryError, DomainNotServed, RecipientHasNoCertificate) as exc:
                if len(submission.recipients) == 1:
                    raise
                failed[request.address] = exc.message
                continue
            (deliverable if settings.serves(request.address) else remote).append(request)
    if not deliverable and not remote:
        raise RecipientHasNoCertificate("no recipient can receive this message")
    recipients = [r.address for r in deliverable]
    remote_certs = _remote_certificates(rt, remote)

    envelope = _client_envelope(message)
    documents: list[Document] = []
    signed = b""
    if envelope is not None:
        # True end to end: the client encrypted; we only check every recipient can open it
        # (at another operator, those whose certificate we know; its door checks the rest).
        known = [*zip(recipients, recipient_certs), *((a, c) for a, c in remote_certs.items() if c is not None)]
        unreadable = [a for a, c in known if not smime.can_decrypt_for(envelope, c)]
        if unreadable:
            raise NotEncryptedForRecipients(f"the encrypted message cannot be opened by {', '.join(unreadable)}")
        kind, cms = "client", envelope
    else:
        documents = _inspect_documents(message, settings_limits(settings))
        # X-MSS-CODECDA / X-MSS-INS describe every CDA carried, bare or inside IHE_XDM.ZIP.
        # Test INS roots count as qualified only outside production.
        added.update(message_header_values(_cdas(documents), accept_test_ins=not settings.is_production))
        entity = _with_headers(submission.raw, added)
        signed = smime.sign(entity, sender.certificate, sender.private_key)
        # The envelope holds the SignedData as an RFC 8551 signed-data entity: what a mail
        # client expects once it decrypts, and what `openssl cms -verify` reads as S/MIME.
        # Recipients at other operators read their own copy (``_outbound_entries``).
        cms = smime.encrypt(smime.signed_entity(signed), [*recipient_certs, sender.certificate])
        kind = "signed"

    meta = MessageMeta(
        sender=sender.address,
        recipients=recipients + [r.address for r in remote],
        subject=str(message.get("Subject", "")),
        date=str(added.get("Date") or message.get("Date", "")),
        message_id=message_id,
        headers={k: v for k, v in added.items() if k.startswith("X-MSS-")},
        documents=[document_summary(d) for d in documents],
        mdn_to=receipts.wants_mdn(message, envelope_sender=sender.address),
    )
    notices = receipts_for(
        rt, submission, meta, deliverable=deliverable, failed=failed, original_headers=_header_block(submission.raw)
    )
    entries = _outbound_entries(submission, message, added, remote, remote_certs, signed=signed, envelope=envelope)
    with session_scope(rt.engine) as session:
        row = store.store_submission(
            session, rt.master_key, queue_id=queue_id, kind=kind, cms=cms, meta=meta,
            delivered=[(r.address, ",".join(sorted(r.notify)), meta.mdn_to is not None) for r in deliverable],
            failed=failed, channel=submission.channel, request_id=submission.request_id,
            checked=[d.kind for d in documents],
            queued=[(r.address, ",".join(sorted(r.notify)), meta.mdn_to is not None, _protection_reason(entry))
                    for entry in entries for r in remote if any(q.address == r.address for q in entry.recipients)],
        )
        store.store_receipts(session, rt.master_key, queue_id=queue_id, notices=notices, request_id=submission.request_id)
        for entry in entries:
            queue.enqueue(session, settings, rt.master_key, replace(entry, message_id=row.id),
                          request_id=submission.request_id, subject=queue_id)
    return Accepted(queue_id=queue_id, message_id=message_id)


def _cdas(documents: list[Document]) -> list[CdaInfo]:
    found: list[CdaInfo] = []
    for document in documents:
        if document.cda is not None:
            found.append(document.cda)
        if document.xdm is not None:
            found.extend(document.xdm.cdas)
    return found


def _cda_summary(info: CdaInfo) -> dict[str, object]:
    """What the inbox lists and filters on (sealed at rest with the rest of the metadata)."""
    return {
        "title": info.title or "",
        "type_code": info.type_code.code,
        "type_label": info.type_code.display_name or "",
        "ins": info.ins.value if info.ins else "",
        "effective_time": info.effective_time or "",
    }


def document_summary(document: Document) -> dict[str, object]:
    summary: dict[str, object] = {
        "filename": document.filename, "kind": document.kind, "size": document.size, "sha256": document.sha256,
    }
    cdas = _cdas([document])
    if cdas:
        summary["cda"] = [_cda_summary(info) for info in cdas]
    return summary


def check_recipient_is_active(session, settings, address: str) -> None:  # type: ignore[no-untyped-def]
    """Re-checked at DATA: a revocation between RCPT and DATA still refuses the message
    (and so does a domain taken off the trust list)."""
    from directory import service

    if not settings.serves(address):
        _require_trusted(session, address)
    service.require_active(session, address)


def settings_limits(settings) -> DocumentLimits:  # type: ignore[no-untyped-def]
    return DocumentLimits(max_document_size=settings.relay.max_message_size)


def _header_block(raw: bytes) -> bytes:
    """The header section only (receipts quote headers, never content)."""
    text = raw.replace(b"\r\n", b"\n")
    head, _sep, _body = text.partition(b"\n\n")
    return head.replace(b"\n", b"\r\n") + b"\r\n"


def _operator_seal(rt: Runtime, notification: EmailMessage, to_certificate) -> bytes:  # type: ignore[no-untyped-def]
    """A receipt signed with the operator's certificate and encrypted to its reader."""
    from directory import certificates

    with session_scope(rt.engine) as session:
        key, cert = certificates.operator_identity(session, rt.settings, rt.master_key)
    entity = notification.as_bytes(policy=email.policy.SMTP)
    return smime.encrypt(smime.signed_entity(smime.sign(entity, cert, key)), [to_certificate])


def _notice(rt: Runtime, *, kind: str, status: str, recipients: list[str], reason: str,
            notification: EmailMessage, sender: UnlockedAccount) -> Notice:  # type: ignore[name-defined]
    meta = MessageMeta(
        sender=str(notification["From"].addresses[0].addr_spec).lower(),
        recipients=[sender.address],
        subject=str(notification["Subject"]),
        date=str(notification["Date"]),
        message_id=str(notification["Message-ID"]),
    )
    return Notice(kind=kind, status=status, recipients=tuple(recipients), reason=reason,
                  cms=_operator_seal(rt, notification, sender.certificate), meta=meta)


def receipts_for(
    rt: Runtime,
    submission: Submission,
    meta: MessageMeta,
    *,
    deliverable: list[RecipientRequest],
    failed: dict[str, str],
    original_headers: bytes,
) -> list[Notice]:
    """The DSN (RFC 3464) and MDN (RFC 8098) a submission calls for, ready to store.

    A failure DSN unless NOTIFY=NEVER; a success DSN when asked (NOTIFY=SUCCESS) or when the
    operator sends them always; an MDN ``processed`` per recipient when the sender asked
    with Disposition-Notification-To.
    """
    from directory import certificates

    settings = rt.settings
    reporter = settings.pki.hostnames[0] if settings.pki.hostnames else socket.getfqdn()
    arrival = utcnow()
    notices: list[Notice] = []
    by_address = {r.address: r for r in submission.recipients}
    success = [
        r.address for r in deliverable
        if "SUCCESS" in r.notify or (settings.relay.dsn_on_success and "NEVER" not in r.notify)
    ]
    failures = [a for a in failed if "NEVER" not in by_address[a].notify]
    for status, addresses in (("delivered", success), ("failed", failures)):
        if not addresses:
            continue
        statuses = [
            receipts.RecipientStatus(address=a, action="delivered", status="2.0.0", diagnostic=None)
            if status == "delivered"
            else receipts.RecipientStatus(address=a, action="failed", status="5.7.1", diagnostic=f"smtp; 550 5.7.1 {failed[a]}")
            for a in addresses
        ]
        dsn = receipts.build_dsn(
            reporting_mta=reporter,
            original_envelope_id=submission.envelope_id,
            original_message_id=meta.message_id,
            sender=meta.sender,
            recipients=statuses,
            arrival_date=arrival,
            original_headers=original_headers,
            postmaster=certificates.operator_address(settings),
        )
        reason = "" if status == "delivered" else "; ".join(failed[a] for a in addresses)
        notices.append(_notice(rt, kind="dsn", status=status, recipients=addresses, reason=reason,
                               notification=dsn, sender=submission.sender))
    if meta.mdn_to:
        for request in deliverable:
            mdn = receipts.build_mdn(
                reporting_ua=reporter,
                final_recipient=request.address,
                original_message_id=meta.message_id,
                disposition="processed",
                sender=meta.sender,
                mode="automatic-action/MDN-sent-automatically",
                subject_hint=None,
            )
            notices.append(_notice(rt, kind="mdn", status="processed", recipients=[request.address], reason="",
                                   notification=mdn, sender=submission.sender))
    return notices


# -- recipients at other operators ---------------------------------------------------------
#
# A recipient outside the served domains is reachable when its domain is on the trust list
# (``mss.trust``) and it is an active entry of the national directory. Its copy is signed
# with the sender's key like the stored one, encrypted to its certificate when one is known
# (``mss.peers``), otherwise sent signed inside mutual TLS, and committed to the outbound
# queue (``mss.outbound``) in the same transaction as the message, before ``250``.

# Header fields of the message that travel outside the S/MIME body to another operator:
# what its door needs to file the message (it may not be able to decrypt it) and to send
# receipts. The patient's INS and CDA codes stay inside.
_OUTER_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
                  "Disposition-Notification-To")


def _require_trusted(session, address: str) -> None:  # type: ignore[no-untyped-def]
    domain = trust.domain_of(address)
    if not trust.is_trusted(session, domain):
        raise DomainNotServed(f"{address} is neither in a domain served here nor in one on the trust list")


def _remote_certificates(rt: Runtime, remote: list[RecipientRequest]) -> dict[str, object]:
    """The encryption certificate of each recipient at another operator (None when unknown)."""
    return {r.address: peers.encryption_certificate(rt.engine, rt.settings, r.address) for r in remote}


def _protection_reason(entry: queue.Entry) -> str:
    return f"queued for {entry.domain}, {queue.protection_text(entry.protection)}"


def _outer_headers(message: EmailMessage, added: dict[str, str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name in _OUTER_HEADERS:
        value = added.get(name) or message.get(name)
        if value is not None and str(value).strip():
            headers[name] = " ".join(str(value).split())
    return headers


def _outbound_entries(
    submission: Submission,
    message: EmailMessage,
    added: dict[str, str],
    remote: list[RecipientRequest],
    certificates: dict[str, object],
    *,
    signed: bytes,
    envelope: bytes | None,
) -> list[queue.Entry]:
    """One queue entry per domain and protection: encrypted to the recipients whose
    certificate is known, signed for the others (a client's own envelope travels as is)."""
    groups: dict[tuple[str, str], list[RecipientRequest]] = {}
    for request in remote:
        known = certificates.get(request.address) is not None
        protection = queue.ENCRYPTED if envelope is not None or known else queue.SIGNED
        groups.setdefault((trust.domain_of(request.address), protection), []).append(request)
    headers = _outer_headers(message, added)
    entries = []
    for (domain, protection), requests in groups.items():
        if envelope is not None:
            payload = submission.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        elif protection == queue.ENCRYPTED:
            envelope_for = smime.encrypt(smime.signed_entity(signed), [certificates[r.address] for r in requests])  # type: ignore[misc]
            payload = smime.to_smime_message(envelope_for, headers)
        else:
            payload = smime.to_signed_smime_message(signed, headers)
        entries.append(queue.Entry(
            kind=queue.MESSAGE, domain=domain, protection=protection, mail_from=submission.sender.address,
            payload=payload, envelope_id=submission.envelope_id, ret="HDRS",
            recipients=tuple(
                queue.Recipient(address=r.address, notify=",".join(sorted(r.notify)) or "NEVER", orcpt=r.orcpt)
                for r in requests
            ),
        ))
    return entries
