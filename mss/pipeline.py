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
import re
import secrets
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from typing import Any, cast

from cryptography import x509

from directory import certificates
from directory import revision as directory_revision
from mss import metrics, peers, receipts, standing, store, trust, webhooks
from mss.accounts import UnlockedAccount
from mss.addresses import normalise_address
from mss.crypto import envelope as cms_envelope
from mss.crypto import pki, smime
from mss.db import Reader, read_scope, session_scope, utcnow
from mss.documents import CdaInfo, Document, DocumentLimits, message_header_values, workers
from mss.errors import (
    BareCarriageReturn,
    CryptoError,
    DecryptionError,
    DirectoryError,
    DomainNotServed,
    FromHeaderMismatch,
    MalformedMessage,
    MalformedOriginator,
    MessageTooLarge,
    MimeTooComplex,
    MssError,
    NotEncryptedForRecipients,
    RecipientHasNoCertificate,
    RepeatedHeaderField,
    SenderHeaderMismatch,
    SenderMismatch,
    UnopenableEnvelope,
    UnsupportedCms,
)
from mss.mime import (
    HEADER_CLASSES,
    MAX_MIME_DEPTH,
    MAX_MIME_PARTS,
    PARSE_FAILURES,
    SUMMARY_HEADERS,
    decoded_payload,
    has_bare_cr,
    parse_bytes,
    parts_with_depth,
)
from mss.outbound import queue
from mss.receipts import DEFAULT_NOTIFY, Notify, issuer
from mss.runtime import Runtime
from mss.store import CdaSummary, DocumentSummary, MessageMeta


@dataclass(frozen=True)
class RecipientRequest:
    """A recipient as the client asked for it (RFC 3461 NOTIFY, ORCPT)."""

    address: str
    notify: Notify = DEFAULT_NOTIFY
    orcpt: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.notify, Notify):  # a plain set of NOTIFY words
            object.__setattr__(self, "notify", Notify(self.notify))


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


def check_sender(sender: UnlockedAccount, mail_from: str) -> None:
    """The envelope sender must be the authenticated account. Raises SenderMismatch."""
    if normalise_address(mail_from) != sender.address:
        raise SenderMismatch(f"sender {normalise_address(mail_from)} is not the authenticated account {sender.address}")


def _sender_certificate_serial(sender: UnlockedAccount) -> str:
    return pki.serial_hex(sender.certificate.serial_number)


def check_sender_standing(rt: Runtime, sender: UnlockedAccount) -> int:
    """The sender still stands, with the certificate its session signs with (a revocation,
    a disable or a rekey since it logged in refuses its next message). Returns the
    directory's revision, read just before: the transaction's recipients may be looked up
    at it (``known_recipient``). Raises a StandingError subclass (``mss.standing``)."""
    with read_scope(rt.engine) as reader:
        revision = directory_revision.current(reader)
        standing.check_session(reader, rt.settings, sender)
    return revision


def known_recipient(rt: Runtime, address: str, revision: int) -> str | None:
    """The normalised address of a recipient found reachable at ``revision`` of the
    directory, or None: then only ``check_recipient`` can tell. Reads no database (an SMTP
    transaction asks it at RCPT with the revision read at its MAIL; ``submit`` reads the
    revision again, and everything again if it moved)."""
    verdict = _kept_verdict(rt, normalise_address(address), revision)
    return verdict.address if verdict is not None else None


def check_recipient(rt: Runtime, address: str) -> str:
    """The normalised address of a recipient that may receive; raises otherwise.

    An address of another operator's domain may receive when that domain is on the trust
    list; nothing needs to be known of its certificate yet (``submit`` looks for one).
    A recipient found reachable at the directory's current revision is not read again.
    Raises DomainNotServed (neither served nor trusted: never an open relay),
    UnknownAddress, RevokedAddress, RecipientHasNoCertificate.
    """
    address = normalise_address(address)
    with read_scope(rt.engine) as reader:
        verdict = _recipient_verdicts(reader, rt, [address])[address]
    if isinstance(verdict, MssError):
        raise verdict
    return verdict.address


@dataclass(frozen=True)
class _Reachable:
    """A recipient that may receive: its stored address and, in a served domain, the
    certificate to encrypt to (None at another operator: ``submit`` looks for one)."""

    address: str
    certificate: x509.Certificate | None


def _kept_verdict(rt: Runtime, address: str, revision: int) -> _Reachable | None:
    """What ``_recipient_verdicts`` found of ``address`` at ``revision``, while its
    certificate is within its validity (time alone ends it, with no write to the directory)."""
    verdict = rt.recipients.get(address, revision)
    if verdict is None:
        return None
    certificate = verdict.certificate
    if certificate is not None and not certificate.not_valid_before_utc <= utcnow() < certificate.not_valid_after_utc:
        return None
    return cast(_Reachable, verdict)


def _recipient_verdicts(reader: Reader, rt: Runtime, addresses: list[str]) -> dict[str, _Reachable | MssError]:
    """``_check_recipients``' verdicts, without reading again those found reachable at the
    directory's current revision: a write to the directory's entries, certificates or trust
    list since (a revocation, a rekey) moves the revision, and they are read again. Refusals
    are always read again."""
    revision = directory_revision.current(reader)  # before what it vouches for
    verdicts: dict[str, _Reachable | MssError] = {}
    unread: list[str] = []
    for address in addresses:
        kept = _kept_verdict(rt, normalise_address(address), revision)
        if kept is None:
            unread.append(address)
        else:
            verdicts[address] = kept
    if unread:
        read = _check_recipients(reader, rt, unread)
        rt.recipients.keep(revision, {v.address: v for v in read.values() if isinstance(v, _Reachable)})
        verdicts.update(read)
    return verdicts


def _check_recipients(session: Reader, rt: Runtime, addresses: list[str]) -> dict[str, _Reachable | MssError]:
    """Each of ``addresses`` checked as ``check_recipient`` says, in two queries at most
    whatever their number: the trust list (for addresses of other domains), then the
    directory entries with their current certificates. Every call reads the database: a
    revocation counts at once."""
    settings = rt.settings
    wanted = {address: normalise_address(address) for address in addresses}
    remote = {trust.domain_of(a) for a in wanted.values() if not settings.serves(a)}
    trusted = trust.trusted_among(session, remote) if remote else set()
    reachable = [a for a in wanted.values() if settings.serves(a) or trust.domain_of(a) in trusted]
    entries, ders = certificates.active_with_certificate_ders(session, reachable) if reachable else ({}, {})
    verdicts: dict[str, _Reachable | MssError] = {}
    for address, normalised in wanted.items():
        entry = entries.get(normalised)
        if entry is None:
            verdicts[address] = DomainNotServed(
                f"{normalised} is neither in a domain served here nor in one on the trust list"
            )
        elif not isinstance(entry, str):
            verdicts[address] = entry
        elif not settings.serves(entry):
            verdicts[address] = _Reachable(entry, None)
        elif entry not in ders:
            verdicts[address] = RecipientHasNoCertificate(
                f"{entry} has no valid certificate: nothing can be encrypted to it"
            )
        else:
            verdicts[address] = _Reachable(entry, rt.certificates.load(ders[entry]))
    return verdicts


# -- submission --------------------------------------------------------------------------

SMIME_TYPES = smime.PKCS7_MIME_TYPES
SIGNATURE_TYPES = smime.PKCS7_SIGNATURE_TYPES
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
    # "From : x" after the first line: Python drops it as a misplaced mbox separator, an
    # RFC 5322 reader sees another From: field (obs-from, section 4.5.2).
    email.errors.MisplacedEnvelopeHeaderDefect,
)
# A referral nests a few levels (mixed, alternative, related, a forwarded message):
# mime.MAX_MIME_DEPTH and MAX_MIME_PARTS bound what a message may hold.
# RFC 5322 3.6: fields a message holds at most once. Two From: (or two To:, two Date: ...)
# are read as one or the other depending on the reader; the signed message must mean one thing.
ONCE_FIELDS = (
    "Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID", "In-Reply-To", "References", "Subject",
)  # fmt: skip
# The empty line that ends the header section.
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


class _ParseOncePolicy(email.policy.EmailPolicy):
    """``mss.mime.POLICY`` whose messages parse each header field once.

    The email package parses a field's value again at every read (``message["To"]``,
    ``get_content_type()`` ...); ``_parse`` reads every field to check it and the pipeline
    reads many again. Each message gets its own instance, whose ``parsed_fields`` keeps the
    header objects (immutable) by their raw field for as long as the message lives.
    Serialising a message still writes the raw fields, as ``email.policy.default`` does.
    Made with ``header_factory=HEADER_CLASSES``: a policy made without one makes a registry
    of its own, which makes a class per field again.
    """

    parsed_fields: dict[tuple[str, str], object] | None = None

    def header_fetch_parse(self, name: str, value: str) -> Any:
        cache = self.parsed_fields
        if cache is None or hasattr(value, "name"):
            return super().header_fetch_parse(name, value)
        header = cache.get((name, value))
        if header is None:
            header = cache[(name, value)] = super().header_fetch_parse(name, value)
        return header


def _parse(raw: bytes) -> EmailMessage:
    """The message parsed once, refused if it could be read in two ways or is too complex.

    Raises BareCarriageReturn, MimeTooComplex, RepeatedHeaderField, MalformedMessage.
    """
    if has_bare_cr(raw):
        raise BareCarriageReturn("the message holds a CR that does not start a CRLF line end")
    try:
        # A policy takes every attribute its class declares as a keyword (email._policybase);
        # parsed with an EmailPolicy, the message is an EmailMessage.
        policy = _ParseOncePolicy(parsed_fields={}, header_factory=HEADER_CLASSES)  # type: ignore[call-overload]
        message = cast(EmailMessage, parse_bytes(raw, policy))
    except RecursionError as exc:
        raise MimeTooComplex(f"its MIME parts nest deeper than {MAX_MIME_DEPTH} levels") from exc
    except PARSE_FAILURES as exc:
        raise MalformedMessage(f"the message is not parseable MIME ({exc.__class__.__name__})") from exc
    for parts, (part, depth) in enumerate(parts_with_depth(message), start=1):
        if depth > MAX_MIME_DEPTH:
            raise MimeTooComplex(f"its MIME parts nest deeper than {MAX_MIME_DEPTH} levels")
        if parts > MAX_MIME_PARTS:
            raise MimeTooComplex(f"it has more than {MAX_MIME_PARTS} MIME parts")
        # Parsed with an EmailPolicy, every part is an EmailMessage.
        _check_header_values(cast(EmailMessage, part))
        _check_defects(cast(EmailMessage, part))
    for name in ONCE_FIELDS:
        count = len(message.get_all(name) or ())
        if count > 1:
            raise RepeatedHeaderField(f"{name}: appears {count} times")
    return message


def _check_defects(part: EmailMessage) -> None:
    """Raises MalformedMessage when the parser noted a defect of ``FATAL_DEFECTS`` in ``part``."""
    for defect in part.defects:
        if isinstance(defect, FATAL_DEFECTS):
            raise MalformedMessage(f"malformed MIME: {defect.__class__.__name__.removesuffix('Defect')}")


def _check_header_values(part: EmailMessage) -> None:
    """Every header field of ``part`` parsed once, here: the email package's structured
    parsers fail on some malformed values (``Message-ID: <a@``, ``To: "``) with IndexError and
    others (``mime.PARSE_FAILURES``), which every later read would meet. Raises MalformedMessage naming the field."""
    for name in part.keys():
        try:
            part.get_all(name)
        except PARSE_FAILURES as exc:
            raise MalformedMessage(f"the {name[:40]}: header field is malformed") from exc


def _one_mailbox(message: EmailMessage, name: str) -> str:
    """The address of the one well-formed mailbox in field ``name``. Raises MalformedOriginator."""
    try:
        header = message[name]
        addresses: tuple[Any, ...] = getattr(header, "addresses", ()) if header is not None else ()
        defects = getattr(header, "defects", ()) if header is not None else ()
    except PARSE_FAILURES as exc:
        raise MalformedOriginator(f"the {name}: header is not a valid address") from exc
    if header is None:
        raise MalformedOriginator(f"the message has no {name}: header")
    if len(addresses) != 1 or defects or not addresses[0].username or not addresses[0].domain:
        raise MalformedOriginator(f"the {name}: header must be exactly one well-formed mailbox")
    return normalise_address(addresses[0].addr_spec)


def _originators(message: EmailMessage) -> tuple[str, str | None]:
    """The ``From:`` address and the ``Sender:`` one (None without that field), each one
    well-formed mailbox. Raises MalformedOriginator."""
    sender = _one_mailbox(message, "Sender") if message.get("Sender") is not None else None
    return _one_mailbox(message, "From"), sender


def _from_address(message: EmailMessage) -> str:
    """The originator: one well-formed ``From:`` mailbox, and ``Sender:`` likewise if present."""
    return _originators(message)[0]


def _leaf_parts(message: EmailMessage):
    for part in message.walk():
        if part.is_multipart():
            continue
        yield part


def _inspect_documents(message: EmailMessage, limits: DocumentLimits, owner: str) -> list[Document]:
    """Every attachment checked; the text or HTML body is not a document."""
    found: list[Document] = []
    for part in _leaf_parts(message):
        content_type = part.get_content_type()
        filename = part.get_filename() or ""
        disposition = part.get_content_disposition()
        if content_type in SIGNATURE_TYPES and not filename.lower().endswith(".p7m"):
            continue  # the client's own multipart/signed signature travels inside ours
        try:
            data = decoded_payload(part)
        except (ValueError, TypeError, LookupError) as exc:
            raise MalformedMessage(f"a part of the message cannot be decoded ({exc.__class__.__name__})") from exc
        # The email package finds a malformed base64 body only when it decodes it, and
        # decodes it all the same, skipping what it cannot read: another reader may not.
        _check_defects(part)
        if content_type in BODY_TYPES and not filename and disposition != "attachment":
            continue
        # In a worker process, within the deadline: see mss.documents.workers.
        found.append(
            workers.inspect_attachment(filename or "(unnamed part)", content_type, data, limits=limits, owner=owner)
        )
    return found


@dataclass(frozen=True)
class ClientSmime:
    """What the client itself did with S/MIME, layer by layer (RFC 8551 3.5, 3.6).

    ``envelope``: the client encrypted the whole message; its envelope (DER) passes through.
    ``sealed``: the client encrypted, then signed; nothing inside can be inspected, and the
    envelope under the signatures was checked like a whole-message one. Otherwise
    ``entity`` is what the reader will see once the client's signatures (none, detached,
    opaque, at any depth up to ``smime.MAX_LAYERS``) are removed: its documents are checked;
    ``signed`` says the client signed it (those signatures are checked when it is opened).
    """

    envelope: bytes | None = None
    sealed: bool = False
    entity: EmailMessage | None = None
    signed: bool = False


def _smime_refused(exc: CryptoError) -> MalformedMessage:
    return MalformedMessage(f"malformed S/MIME: {exc.message}")


def client_smime(raw: bytes, message: EmailMessage) -> ClientSmime:
    """The client's S/MIME layers of a submitted message, walked down to its content.

    Raises MalformedMessage for S/MIME that is malformed (garbage in
    ``application/pkcs7-mime``, a truncated envelope, layers nested too deep).
    """
    if message.get_content_type() not in SMIME_TYPES and message.get_content_type() != "multipart/signed":
        return ClientSmime(entity=message)  # no S/MIME layer of the client's: not parsed twice
    try:
        layer = smime.peel(smime.canonical(raw))
        if layer.kind == smime.ENVELOPED:
            return ClientSmime(envelope=cms_envelope.to_der(layer.cms))
        depth = 0
        while layer.kind in (smime.SIGNED, smime.DETACHED):
            depth += 1
            if depth > smime.MAX_LAYERS:
                raise MalformedMessage(f"S/MIME layers are nested more than {smime.MAX_LAYERS} deep")
            content = layer.content
            layer = smime.peel(content)
    except CryptoError as exc:
        raise _smime_refused(exc) from exc
    if layer.kind == smime.ENVELOPED:
        return ClientSmime(envelope=layer.cms, sealed=True)
    return ClientSmime(entity=message if depth == 0 else _parse(content), signed=depth > 0)


def check_envelope_recipients(envelope: bytes, recipients: list[str], certificates: list) -> None:
    """Every recipient can open the client's envelope here.

    Raises NotEncryptedForRecipients when some recipient is not among its RecipientInfos,
    UnopenableEnvelope when one is but through an algorithm or recipient kind not done here
    (it could never be read), MalformedMessage when the envelope is malformed.
    """
    unreadable = []
    try:
        parsed = cms_envelope.load(envelope)
        for address, certificate in zip(recipients, certificates, strict=True):
            try:
                cms_envelope.check_openable(parsed, certificate)
            except DecryptionError:
                unreadable.append(address)
    except UnsupportedCms as exc:
        raise UnopenableEnvelope(f"the encrypted message cannot be opened here: {exc.message}") from exc
    except CryptoError as exc:
        raise _smime_refused(exc) from exc
    if unreadable:
        raise NotEncryptedForRecipients(f"the encrypted message cannot be opened by {', '.join(unreadable)}")


def _check_line_ends(entity: bytes) -> None:
    # RFC 5322 2.3: CR and LF occur only together. A bare CR would be signed as is and then
    # rewritten by the next MTA, breaking the signature: refused, never "fixed".
    if has_bare_cr(entity):
        raise MalformedMessage("the message holds a bare CR (a carriage return without line feed)")


def _with_headers(raw: bytes, headers: dict[str, str]) -> bytes:
    """The message with headers prepended and line ends made CRLF (the form that is signed).

    ``raw`` holds no bare CR (``_parse`` refused it): when it has as many LF as CR, every
    line already ends in CRLF and it is not copied twice over to be made so.
    """
    if raw.count(b"\n") != raw.count(b"\r"):
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    prefix = b"".join(f"{name}: {value}\r\n".encode() for name, value in headers.items())
    _check_line_ends(prefix)
    return prefix + raw


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
    with metrics.stage("parse"):
        message = _parse(submission.raw)
    author, on_behalf = _originators(message)
    if author != sender.address:
        raise FromHeaderMismatch(f"the From: header must be {sender.address}")
    if on_behalf not in (None, sender.address):
        raise SenderHeaderMismatch(f"the Sender: header must be {sender.address}, or left out")
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
    check_started = metrics.now()
    with read_scope(rt.engine) as reader:
        # Nothing is signed with a key whose certificate was revoked, or for an account
        # that may no longer send, whenever that happened.
        standing.check_session(reader, settings, sender)
        # The same checks as at RCPT, for all at once: read again unless the directory is
        # still at the revision they were read at (a revocation since counts).
        verdicts = _recipient_verdicts(reader, rt, [r.address for r in submission.recipients])
    for request in submission.recipients:
        verdict = verdicts[request.address]
        if isinstance(verdict, (DirectoryError, DomainNotServed, RecipientHasNoCertificate)):
            if len(submission.recipients) == 1:
                raise verdict
            failed[request.address] = verdict.message
            continue
        if isinstance(verdict, MssError):
            raise verdict
        if verdict.certificate is not None:
            recipient_certs.append(verdict.certificate)
        (deliverable if settings.serves(request.address) else remote).append(request)
    if not deliverable and not remote:
        raise RecipientHasNoCertificate("no recipient can receive this message")
    recipients = [r.address for r in deliverable]
    remote_certs = _remote_certificates(rt, remote)

    client = client_smime(submission.raw, message)
    documents: list[Document] = []
    client_view: dict[str, object] = {"to": str(message.get("To", "")), "cc": str(message.get("Cc", ""))}
    if client.envelope is not None:
        # True end to end: the client encrypted; we only check every recipient can open it
        # (at another operator, those whose certificate we know; its door checks the rest).
        known = [(a, c) for a, c in remote_certs.items() if c is not None]
        check_envelope_recipients(
            client.envelope, [*recipients, *(a for a, _c in known)], [*recipient_certs, *(c for _a, c in known)]
        )
    if client.envelope is not None and not client.sealed:
        # Stored as DER (NSS and gpgsm write BER), which every later reader opens.
        kind, cms = "client", client.envelope
        metrics.observe("check", check_started)
        entries = _outbound_entries(
            submission, message, added, remote, remote_certs, signed=b"", envelope=client.envelope
        )
    else:
        if client.entity is not None:
            documents = _inspect_documents(client.entity, settings_limits(settings), sender.address)
        # X-MSS-CODECDA / X-MSS-INS describe every CDA carried, bare or inside IHE_XDM.ZIP.
        # Test INS roots count as qualified only outside production.
        added.update(message_header_values(_cdas(documents), accept_test_ins=not settings.is_production))
        metrics.observe("check", check_started)
        # The client's own signatures, if any, travel inside ours, byte for byte. The
        # entity, the SignedData and its MIME form are each as large as the message, and
        # are let go of as soon as the next form is made (a 1 MB message: 2 MB less held
        # through encryption, 3.5 MB less through the commit).
        with metrics.stage("sign"):
            # Canonical: _parse refused a bare CR, _with_headers made every line end CRLF.
            signed = smime.sign(
                _with_headers(submission.raw, added), sender.certificate, sender.private_key, known_canonical=True
            )
        # Recipients at other operators read their own copy, made from the SignedData.
        entries = _outbound_entries(submission, message, added, remote, remote_certs, signed=signed, envelope=None)
        # The envelope holds the SignedData as an RFC 8551 signed-data entity: what a mail
        # client expects once it decrypts, and what `openssl cms -verify` reads as S/MIME.
        signed_entity = smime.signed_entity(signed)
        del signed
        kind = "signed"
        client_view = {"to": str(message.get("To", "")), "cc": str(message.get("Cc", ""))}
        if not client.signed:
            # What a mail client is served needs no opening: ours is the only signature. The
            # client's own (a document forwarded signed by its author, say) are checked at
            # the first opening, which names their signer.
            client_view["entity"] = store.entity_facts(
                signed_entity, store.submission_signature(sender.address, _sender_certificate_serial(sender), utcnow())
            )
        with metrics.stage("encrypt"):
            cms = smime.encrypt(signed_entity, [*recipient_certs, sender.certificate])
        del signed_entity

    meta = MessageMeta(
        sender=sender.address,
        recipients=recipients + [r.address for r in remote],
        subject=str(message.get("Subject", "")),
        date=str(added.get("Date") or message.get("Date", "")),
        message_id=message_id,
        headers={k: v for k, v in added.items() if k.startswith("X-MSS-")},
        documents=[document_summary(d) for d in documents],
        mdn_to=receipts.wants_mdn(message, envelope_sender=sender.address),
        client=client_view,
    )
    notify_of = {r.address: r.notify for r in submission.recipients}
    notices = issuer.for_submission(
        rt,
        meta,
        sender_certificate=sender.certificate,
        envelope_id=submission.envelope_id,
        delivered=[(r.address, r.notify) for r in deliverable],
        failed={address: (reason, notify_of[address]) for address, reason in failed.items()},
        original_headers=_header_block(submission.raw),
    )
    commit_started = metrics.now()
    with rt.message_writes(), session_scope(rt.engine) as session:
        row = store.store_submission(
            session,
            rt.master_key,
            store.NewMessage(
                queue_id=queue_id,
                kind=kind,
                cms=cms,
                meta=meta,
                delivered=[(r.address, ",".join(sorted(r.notify)), meta.mdn_to is not None) for r in deliverable],
                failed=failed,
            ),
            channel=submission.channel,
            request_id=submission.request_id,
            checked=[d.kind for d in documents],
            queued=[
                (r.address, ",".join(sorted(r.notify)), meta.mdn_to is not None, _protection_reason(entry))
                for entry in entries
                for r in remote
                if any(q.address == r.address for q in entry.recipients)
            ],
            notices=notices,
        )
        webhooks.record_final(session, settings, row)
        for entry in entries:
            queue.enqueue(
                session,
                settings,
                rt.master_key,
                replace(entry, message_id=row.id),
                request_id=submission.request_id,
                subject=queue_id,
            )
    metrics.observe("commit", commit_started)
    metrics.accepted(
        submission.channel, delivered=len(deliverable), failed=len(failed), kinds=[d.kind for d in documents]
    )
    return Accepted(queue_id=queue_id, message_id=message_id)


def _cdas(documents: list[Document]) -> list[CdaInfo]:
    found: list[CdaInfo] = []
    for document in documents:
        if document.cda is not None:
            found.append(document.cda)
        if document.xdm is not None:
            found.extend(document.xdm.cdas)
    return found


def _cda_summary(info: CdaInfo) -> CdaSummary:
    """What the inbox lists and filters on (sealed at rest with the rest of the metadata)."""
    return CdaSummary(
        title=info.title or "",
        type_code=info.type_code.code,
        type_label=info.type_code.display_name or "",
        ins=info.ins.value if info.ins else "",
        effective_time=info.effective_time or "",
    )


def document_summary(document: Document) -> DocumentSummary:
    """The sealed metadata's line for ``document``."""
    return DocumentSummary(
        filename=document.filename,
        kind=document.kind,
        size=document.size,
        sha256=document.sha256,
        cda=tuple(_cda_summary(info) for info in _cdas([document])),
    )


def settings_limits(settings) -> DocumentLimits:
    return DocumentLimits(max_document_size=settings.relay.max_message_size)


def _header_block(raw: bytes) -> bytes:
    """The header section only, CRLF (receipts quote headers, never content)."""
    blank = _BLANK_LINE.search(raw)
    head = raw[: blank.start()] if blank else raw
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"


# -- recipients at other operators ---------------------------------------------------------
#
# A recipient outside the served domains is reachable when its domain is on the trust list
# (``mss.trust``) and it is an active entry of the national directory. Its copy is signed
# with the sender's key like the stored one, encrypted to its certificate when one is known
# (``mss.peers``), otherwise sent signed inside mutual TLS, and committed to the outbound
# queue (``mss.outbound``) in the same transaction as the message, before ``250``.


def _remote_certificates(rt: Runtime, remote: list[RecipientRequest]) -> dict[str, object]:
    """The encryption certificate of each recipient at another operator (None when unknown)."""
    return {r.address: peers.encryption_certificate(rt.engine, rt.settings, r.address) for r in remote}


def _protection_reason(entry: queue.Entry) -> str:
    return f"queued for {entry.domain}, {queue.protection_text(entry.protection)}"


def _outer_headers(message: EmailMessage, added: dict[str, str]) -> dict[str, str]:
    """The header fields that travel outside the S/MIME body to another operator: what its
    door needs to file the message (it may not be able to decrypt it) and to send receipts.
    The patient's INS and CDA codes stay inside."""
    headers: dict[str, str] = {}
    for name in SUMMARY_HEADERS:
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
    certificate is known, signed for the others (from ``signed``, our SignedData); or, given
    the client's own ``envelope``, the message as the client wrote it, to every one."""
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
            # An ENCRYPTED group holds only recipients whose certificate is known (above).
            envelope_for = smime.encrypt(smime.signed_entity(signed), [certificates[r.address] for r in requests])  # type: ignore[misc]
            payload = smime.to_smime_message(envelope_for, headers)
        else:
            payload = smime.to_signed_smime_message(signed, headers)
        entries.append(
            queue.Entry(
                kind=queue.MESSAGE,
                domain=domain,
                protection=protection,
                mail_from=submission.sender.address,
                payload=payload,
                envelope_id=submission.envelope_id,
                ret="HDRS",
                recipients=tuple(
                    queue.Recipient(address=r.address, notify=",".join(sorted(r.notify)) or "NEVER", orcpt=r.orcpt)
                    for r in requests
                ),
            )
        )
    return entries
