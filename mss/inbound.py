"""Mail arriving from another operator: who may send it, who may receive it, how it is kept.

The MX door (``mss.relay.mx``) translates SMTP into these calls, as the submission door does
into ``mss.pipeline``; the rules live here:

- the peer presented a client certificate that chains to ``MSS_PEER_CA_FILE`` (the TLS layer
  refused any other) and its envelope sender is in a domain on the trust list, not served
  here; a null sender (a receipt) is judged by its ``From:`` domain instead;
- each recipient is local, active in the directory, has an account and a certificate;
- the message carries a Message-ID: a delivery repeated after a lost ``250`` (the sender
  retries) is recognised by envelope sender, Message-ID and recipient, and stored once.

What arrives is stored as ciphertext like any message: one already encrypted to its
recipients is kept as is; one only signed (``application/pkcs7-mime; smime-type=signed-data``)
or plain is encrypted to them on arrival. A signature is verified now against every trusted
CA (the peer CA's CRL fetched if needed), and the outcome is kept with the message's sealed
metadata (``origin``) so the reader sees who signed it and which operator delivered it; a
verified signer's certificate is kept to encrypt replies to them.

A delivery or disposition report is linked to the message it reports on (found by its
Message-ID among those its addressee sent) and shown in that sender's Sent view. Receipts
for a remote sender (a ``failed`` or asked-for ``delivered`` DSN, the ``processed`` MDN) go
back through the outbound queue, signed by this operator.
"""

from __future__ import annotations

import email.policy
import email.utils
import hashlib
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from email.message import Message as EmailPart
from email.parser import BytesHeaderParser

from cryptography import x509
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from directory import certificates, service
from directory.models import Certificate
from mss import audit, peers, pipeline, receipts, store, trust, webhooks
from mss.addresses import listed_addresses, normalise_address
from mss.crypto import smime, verify
from mss.db import session_scope, utcnow
from mss.errors import (
    CryptoError,
    DirectoryError,
    DomainNotServed,
    FromHeaderMismatch,
    MalformedMessage,
    MessageTooLarge,
    NoMailboxHere,
    NotEncryptedForRecipients,
    PeerNotAuthenticated,
    RecipientHasNoCertificate,
    SenderNotTrusted,
    SignatureError,
)
from mss.mime import PARSE_FAILURES, decoded_payload, subparts
from mss.models import Account, InboundDelivery, Message, Receipt
from mss.pipeline import RecipientRequest
from mss.receipts import federation as notices
from mss.receipts.wire import Action
from mss.runtime import Runtime
from mss.store import MessageMeta

log = logging.getLogger("mss.inbound")

ENCRYPTED, SIGNED, PLAIN = "encrypted", "signed", "plain"
_REPORT_STATUSES = {"delivered", "relayed", "failed", "delayed", "expanded", "processed", "displayed"}


@dataclass(frozen=True)
class Peer:
    """The other operator's server as the TLS layer identified it."""

    address: str
    certificate: x509.Certificate | None

    @property
    def name(self) -> str:
        """The certificate's common name (its host), else the IP address."""
        if self.certificate is not None:
            names = self.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            if names:
                return str(names[0].value)
        return self.address

    def describe(self) -> str:
        if self.certificate is None:
            return f"{self.address} (no certificate)"
        return f"{self.certificate.subject.rfc4514_string()} issued by {self.certificate.issuer.rfc4514_string()}"


@dataclass(frozen=True)
class Arrival:
    """One message handed in by another operator's server."""

    peer: Peer
    mail_from: str  # "" for the null sender <>
    recipients: tuple[RecipientRequest, ...]
    raw: bytes
    envelope_id: str | None = None
    request_id: str = ""


@dataclass(frozen=True)
class Received:
    """A message stored (or found already stored) under ``queue_id``."""

    queue_id: str
    duplicate: bool = False


# -- checks at MAIL and RCPT -------------------------------------------------------------------


def check_peer(peer: Peer) -> None:
    """Raises PeerNotAuthenticated when the peer presented no client certificate."""
    if peer.certificate is None:
        raise PeerNotAuthenticated("a client certificate from the health PKI is required on this port")


def _check_remote_domain(session: Session, rt: Runtime, address: str, what: str) -> None:
    domain = trust.domain_of(address)
    if rt.settings.serves(address):
        raise SenderNotTrusted(f"{what} {address} is in a domain served here: it cannot come from another operator")
    if not trust.is_trusted(session, domain):
        raise SenderNotTrusted(f"{what} domain {domain} is not on the trust list")


def check_sender(rt: Runtime, mail_from: str) -> str:
    """The normalised envelope sender ("" for the null sender).

    Raises SenderNotTrusted (a domain not on the trust list, or one served here),
    UnknownAddress or RevokedAddress (not an active directory entry).
    """
    address = normalise_address(mail_from)
    if not address:
        return ""
    with session_scope(rt.engine, readonly=True) as session:
        _check_remote_domain(session, rt, address, "sender")
        return service.require_active(session, address).address


def _local_recipient(session: Session, rt: Runtime, address: str) -> x509.Certificate:
    if not rt.settings.serves(address):
        raise DomainNotServed(f"{address} is not in a domain served here")
    entry = service.require_active(session, address)
    if session.execute(select(col(Account.id)).where(col(Account.address) == entry.address)).first() is None:
        raise NoMailboxHere(f"{entry.address} has no mailbox here")
    certificate = certificates.current_certificate(session, entry.address)
    if certificate is None:
        raise RecipientHasNoCertificate(f"{entry.address} has no valid certificate")
    return certificate


def check_recipient(rt: Runtime, address: str) -> str:
    """The normalised address of a local recipient that may receive from another operator.

    Raises DomainNotServed (no relaying through this door), UnknownAddress, RevokedAddress,
    NoMailboxHere, RecipientHasNoCertificate.
    """
    address = normalise_address(address)
    with session_scope(rt.engine, readonly=True) as session:
        _local_recipient(session, rt, address)
    return address


# -- DATA --------------------------------------------------------------------------------------


def _digest(message_id: str) -> str:
    return hashlib.sha256(message_id.strip().encode("utf-8", "surrogateescape")).hexdigest()


def _already(session: Session, sender_key: str, digest: str, addresses: list[str]) -> dict[str, str]:
    rows = session.execute(
        select(col(InboundDelivery.recipient), col(Message.queue_id))
        .join(Message, col(Message.id) == col(InboundDelivery.message_id))
        .where(
            col(InboundDelivery.sender) == sender_key,
            col(InboundDelivery.message_ident) == digest,
            col(InboundDelivery.recipient).in_(addresses),
        )
    ).all()
    return {recipient: queue_id for recipient, queue_id in rows}


def _all_certificates(session: Session, address: str) -> list[x509.Certificate]:
    rows = session.execute(
        select(col(Certificate.der)).where(
            col(Certificate.address) == address,
            col(Certificate.usage) == "smime",
            col(Certificate.revoked_at).is_(None),
        )
    ).scalars()
    return [x509.load_der_x509_certificate(der) for der in rows]


def _verify(rt: Runtime, signed_der: bytes) -> verify.SignatureReport:
    peers.ensure_crls(rt.engine, rt.settings, peers.embedded_certificates(signed_der))
    with session_scope(rt.engine, readonly=True) as session:
        material = peers.trust_material(session, rt.settings)
    return verify.verify_signed_data(signed_der, trust_roots=material.roots, crls=material.crls)


def _addresses(message: EmailPart, names: tuple[str, ...]) -> list[str]:
    return listed_addresses(str(value) for name in names for value in message.get_all(name) or [])


def _header(message: EmailPart | None, name: str) -> str:
    if message is None:
        return ""
    try:
        value = message.get(name)
    except PARSE_FAILURES:
        return ""
    return " ".join(str(value).split()) if value is not None else ""


def receive(rt: Runtime, arrival: Arrival) -> Received:
    """Check, store (encrypted) and acknowledge a message from another operator.

    Returns only after the commit, or with ``duplicate`` when every recipient already has
    it. Raises MessageTooLarge, MalformedMessage, FromHeaderMismatch, SenderNotTrusted,
    NotEncryptedForRecipients, DocumentError subclasses, and the recipient errors of
    ``check_recipient`` when no recipient can receive it any more.
    """
    settings = rt.settings
    if len(arrival.raw) > settings.relay.max_message_size:
        raise MessageTooLarge(f"the message exceeds {settings.relay.max_message_size} bytes")
    if not arrival.recipients:
        raise MalformedMessage("the message has no recipient")
    message = pipeline._parse(arrival.raw)
    message_id = _header(message, "Message-ID")
    if not message_id:
        raise MalformedMessage("a message from another operator must carry a Message-ID (it makes retries safe)")
    from_address = pipeline._from_address(message)
    with session_scope(rt.engine, readonly=True) as session:
        if arrival.mail_from:
            if from_address != arrival.mail_from:
                raise FromHeaderMismatch(f"the From: header must be the envelope sender {arrival.mail_from}")
        else:
            _check_remote_domain(session, rt, from_address, "sender")
    sender_key = arrival.mail_from or from_address
    digest = _digest(message_id)
    wanted = [r.address for r in arrival.recipients]
    with session_scope(rt.engine, readonly=True) as session:
        already = _already(session, sender_key, digest, wanted)
        remaining = [r for r in arrival.recipients if r.address not in already]
        if not remaining:
            return _duplicate(rt, arrival, sender_key, next(iter(already.values())))
        certs: dict[str, x509.Certificate] = {}
        keys_of: dict[str, list[x509.Certificate]] = {}
        failed: dict[str, str] = {}
        first_error: Exception | None = None
        for request in remaining:
            try:
                certs[request.address] = _local_recipient(session, rt, request.address)
                keys_of[request.address] = _all_certificates(session, request.address)
            except (DirectoryError, DomainNotServed, NoMailboxHere, RecipientHasNoCertificate) as exc:
                failed[request.address] = exc.message
                first_error = first_error or exc
    deliverable = [r for r in remaining if r.address in certs]
    if not deliverable:
        assert first_error is not None
        raise first_error

    inner: EmailMessage | None = None
    report: verify.SignatureReport | None = None
    content_type = message.get_content_type()
    if content_type in pipeline.SMIME_TYPES:
        der = decoded_payload(message)
        try:
            structure = smime.content_type(der)
        except CryptoError as exc:
            raise MalformedMessage("the S/MIME body is not CMS") from exc
        if structure == smime.ENVELOPED_DATA:
            unreadable = [a for a in certs if not any(smime.can_decrypt_for(der, c) for c in keys_of[a] or [certs[a]])]
            if unreadable:
                raise NotEncryptedForRecipients(f"the encrypted message cannot be opened by {', '.join(unreadable)}")
            protection, cms = ENCRYPTED, der
        elif structure == smime.SIGNED_DATA:
            try:
                report = _verify(rt, der)
            except SignatureError as exc:
                raise MalformedMessage(f"the signed message is unusable: {exc.message}") from exc
            inner = pipeline._parse(report.content)
            protection = SIGNED
            cms = smime.encrypt(smime.signed_entity(der), list(certs.values()))
        else:
            raise MalformedMessage(f"an S/MIME body must be enveloped or signed data, not {structure}")
    else:
        inner = message
        protection = PLAIN
        canonical = arrival.raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        cms = smime.encrypt(canonical, list(certs.values()))

    is_report = inner is not None and inner.get_content_type() == "multipart/report"
    documents = []
    if inner is not None and not is_report:
        # Checked in the document workers like any submission; the sender's share of them.
        documents = pipeline._inspect_documents(inner, pipeline.settings_limits(settings), from_address)
    origin = {
        "operator": arrival.peer.name,
        "domain": trust.domain_of(sender_key),
        "protection": protection,
        "signature": report.status if report is not None else "",
        "signer": (report.signer_address or "") if report is not None else "",
        "peer_certificate": arrival.peer.describe()[:300],
    }
    mdn_to = None
    if arrival.mail_from and not is_report:
        mdn_to = receipts.wants_mdn(message, envelope_sender=arrival.mail_from)
    listed = _addresses(message, ("To", "Cc")) or (_addresses(inner, ("To", "Cc")) if inner is not None else [])
    meta = MessageMeta(
        sender=sender_key,
        recipients=listed or [r.address for r in deliverable],
        subject=_header(message, "Subject") or _header(inner, "Subject"),
        date=_header(message, "Date") or _header(inner, "Date"),
        message_id=message_id,
        headers={
            k: _header(inner, k) for k in (inner.keys() if inner is not None else []) if k.upper().startswith("X-MSS-")
        },
        documents=[pipeline.document_summary(d) for d in documents],
        mdn_to=mdn_to,
        origin=origin,
    )
    back = _receipts_for_sender(rt, arrival, meta, deliverable, failed) if arrival.mail_from and not is_report else []
    queue_id = pipeline.new_queue_id()
    try:
        with rt.message_writes(), session_scope(rt.engine) as session:
            row = store.store_inbound(
                session,
                rt.master_key,
                store.NewMessage(
                    queue_id=queue_id,
                    kind="receipt" if is_report else "client",
                    cms=cms,
                    meta=meta,
                    delivered=[(r.address, ",".join(sorted(r.notify)), mdn_to is not None) for r in deliverable],
                    failed=failed,
                ),
                sender_key=sender_key,
                message_digest=digest,
                peer=f"{arrival.peer.address} {arrival.peer.name}",
                request_id=arrival.request_id,
            )
            if is_report and inner is not None:
                _link_report(session, rt, row, inner, [r.address for r in deliverable], request_id=arrival.request_id)
            for notification in back:
                notices.to_remote_sender(session, rt, notification, about=row.id, request_id=arrival.request_id)
    except IntegrityError:
        # The same message for the same recipient was committed meanwhile (a retry that
        # overtook a slow first attempt): that copy is the one.
        with session_scope(rt.engine, readonly=True) as session:
            found = _already(session, sender_key, digest, wanted)
        if not found:
            raise
        return _duplicate(rt, arrival, sender_key, next(iter(found.values())))
    if report is not None and report.status == verify.VALID and report.signer_address:
        signer = report.signer_address.lower()
        if not settings.serves(signer):
            # Stored by now: keeping the certificate decides nothing (learn_signer).
            peers.learn_signer(rt.engine, signer, report.signer_certificate)
    return Received(queue_id=queue_id)


def _duplicate(rt: Runtime, arrival: Arrival, sender_key: str, queue_id: str) -> Received:
    """A delivery repeated after a lost ``250``: acknowledged again, stored once, on record."""
    log.info("message from %s already received as %s: stored once", sender_key, queue_id)
    with session_scope(rt.engine) as session:
        audit.record(
            session,
            actor=sender_key,
            action="message.duplicate",
            object=queue_id,
            request_id=arrival.request_id,
            peer=arrival.peer.address,
        )
    return Received(queue_id=queue_id, duplicate=True)


async def receive_async(rt: Runtime, arrival: Arrival) -> Received:
    """``receive`` in one of the runtime's message threads (it parses, verifies, encrypts
    and commits)."""
    return await rt.messages.run(receive, rt, arrival)


# -- receipts for the remote sender ------------------------------------------------------------


def _receipts_for_sender(
    rt: Runtime, arrival: Arrival, meta: MessageMeta, deliverable: list[RecipientRequest], failed: dict[str, str]
) -> list[receipts.Report]:
    """The DSNs and MDNs a remote sender is owed for this arrival (built, not yet queued)."""
    reporter = notices.reporter(rt.settings)
    headers = pipeline._header_block(arrival.raw)
    out: list[receipts.Report] = []
    by_address = {r.address: r for r in arrival.recipients}
    success = [r for r in deliverable if "SUCCESS" in r.notify]
    failures = [a for a in failed if "NEVER" not in by_address[a].notify]
    outcomes: tuple[tuple[Action, list[str]], ...] = (("delivered", [r.address for r in success]), ("failed", failures))
    for action, addresses in outcomes:
        if not addresses:
            continue
        statuses = [
            receipts.RecipientStatus(
                address=a,
                action=action,
                status="2.0.0" if action == "delivered" else "5.7.1",
                diagnostic=None if action == "delivered" else f"smtp; 550 5.7.1 {_ascii(failed[a])}",
                original_recipient=by_address[a].orcpt,
            )
            for a in addresses
        ]
        out.append(
            receipts.build_dsn(
                reporting_mta=reporter,
                original_envelope_id=arrival.envelope_id,
                original_message_id=meta.message_id,
                sender=arrival.mail_from,
                recipients=statuses,
                arrival_date=utcnow(),
                original_headers=headers,
                postmaster=certificates.operator_address(rt.settings),
            )
        )
    if meta.mdn_to:
        for request in deliverable:
            out.append(
                receipts.build_mdn(
                    reporting_ua=reporter,
                    final_recipient=request.address,
                    original_message_id=meta.message_id,
                    disposition="processed",
                    sender=arrival.mail_from,
                    mode="automatic-action/MDN-sent-automatically",
                    subject_hint=None,
                )
            )
    return out


def _ascii(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))[:300]


# -- reports from other operators ----------------------------------------------------------------


def _report_entries(report: EmailMessage) -> tuple[str, str | None, list[tuple[str, str, str]]]:
    """(kind, original Message-ID, [(recipient, status, reason)]) read from a report."""
    original: str | None = None
    entries: list[tuple[str, str, str]] = []
    kind = (
        "mdn"
        if email.utils.collapse_rfc2231_value(report.get_param("report-type") or "").lower()
        == "disposition-notification"
        else "dsn"
    )
    for part in report.walk():
        content_type = part.get_content_type()
        if content_type == "message/delivery-status":
            for block in subparts(part)[1:]:
                recipient = str(block.get("Final-Recipient", "")).partition(";")[2].strip().lower()
                action = str(block.get("Action", "")).strip().lower()
                reason = str(block.get("Diagnostic-Code", "")).partition(";")[2].strip()
                if recipient and action in _REPORT_STATUSES:
                    entries.append((recipient, action, reason))
        elif content_type == "message/disposition-notification":
            for block in subparts(part):
                recipient = str(block.get("Final-Recipient", "")).partition(";")[2].strip().lower()
                disposition = str(block.get("Disposition", "")).rpartition(";")[2].strip().lower()
                original = original or str(block.get("Original-Message-ID", "")).strip() or None
                if recipient and disposition in _REPORT_STATUSES:
                    entries.append((recipient, disposition, ""))
        elif content_type in {"text/rfc822-headers", "message/rfc822-headers"} and original is None:
            payload = decoded_payload(part)
            headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(payload)
            original = (headers.get("Message-ID") or "").strip() or None
        elif content_type == "message/rfc822" and original is None:
            enclosed = subparts(part)
            if enclosed:
                original = (str(enclosed[0].get("Message-ID") or "")).strip() or None
    return kind, original, entries


def _link_report(
    session: Session,
    rt: Runtime,
    notification: store.StoredMessage,
    report: EmailMessage,
    owners: list[str],
    *,
    request_id: str,
) -> int:
    """Link a report to the message it is about among those ``owners`` sent; return how
    many receipt rows were written (0 when the original is not found: the report stays in
    the inbox, unlinked)."""
    kind, original_id, entries = _report_entries(report)
    if original_id is None or not entries:
        return 0
    bracketed = original_id if original_id.startswith("<") else f"<{original_id}>"
    original = (
        session.execute(
            select(Message)
            .where(col(Message.message_id).in_([original_id, bracketed]), col(Message.sender).in_(owners))
            .order_by(col(Message.id).desc())
        )
        .scalars()
        .first()
    )
    if original is None:
        # The peer's text is not logged (a Message-ID may name a patient or a service, or
        # carry what a log reader would take for another line): its digest, as stored.
        log.info(
            "report %s is about a Message-ID (sha256 %s) none of its addressees sent",
            notification.queue_id,
            _digest(original_id)[:16],
        )
        return 0
    # Another operator speaks for the recipients it was sent to, never for one served here
    # (their receipts are ours to write) nor for an address the original did not name.
    sent_to = set(MessageMeta.open(rt.master_key, original.meta_sealed).recipients)
    kept = [e for e in entries if normalise_address(e[0]) in sent_to and not rt.settings.serves(e[0])]
    if len(kept) < len(entries):
        log.warning(
            "report %s names %d recipient(s) of %s it cannot speak for: left out",
            notification.queue_id,
            len(entries) - len(kept),
            original.queue_id,
        )
    for recipient, status, reason in kept:
        session.add(
            Receipt(
                message_id=original.id,
                recipient=recipient,
                kind=kind,
                status=status,
                reason=reason[:500],
                notification_id=notification.id,
            )
        )
        audit.record(
            session,
            actor="system",
            action=f"receipt.{kind}",
            object=original.queue_id,
            request_id=request_id,
            recipient=recipient,
            status=status,
            remote=True,
        )
    session.flush()
    webhooks.record_final(session, rt.settings, original)
    return len(kept)
