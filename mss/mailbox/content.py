"""Opening a stored message for one reader: decrypt, verify the signature, split the MIME.

The stored CMS is an EnvelopedData; inside is either our SignedData (messages signed at
submission, receipts signed by the operator) or, for a message the client encrypted itself,
the client's MIME entity. Either may hold the client's own S/MIME layers: a detached
signature (``multipart/signed``), an opaque one (``application/pkcs7-mime;
smime-type=signed-data``) or another envelope, in any order, up to ``smime.MAX_LAYERS``
deep. Every layer is opened and every signature checked with real path validation and
revocation against the operator's CA (``mss.crypto.verify``). The outcome is one status,
the worst met, never an exception, so that the reader always learns what happened; only an
envelope the reader's key cannot open raises DecryptionError.

The body is text: an HTML-only message is reduced to its text here and its markup never
reaches a browser. Attachments keep their exact bytes. Everything here is blocking (RSA,
AES, digest of the whole message): the web runs it in worker threads.
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesParser
from html.parser import HTMLParser

from cryptography import x509
from sqlalchemy import select
from sqlmodel import Session, col

from directory.models import Certificate
from mss.accounts import UnlockedAccount
from mss.crypto import keys, smime, verify
from mss.documents import sniff
from mss.errors import CryptoError, DecryptionError, DocumentError, SignatureError
from mss.mime import PARSE_FAILURES, POLICY, SUMMARY_HEADERS, decoded_payload

# Statuses beyond mss.crypto.verify's: no signature at all, or one we cannot check; and a
# signature that held when the message was submitted by a certificate revoked since.
UNSIGNED = "unsigned"
UNVERIFIABLE = "unverifiable"
REVOKED_SINCE = "revoked-since"
# A signature that holds, by a certificate that does not name the message's sender (RFC 8550
# 3: the receiving agent checks the From address against the addresses the signer's
# certificate names; one that names none cannot vouch for any sender).
OTHER_SIGNER = "other-signer"
OTHER_SIGNER_REASON = "the message was signed by someone other than its sender"
# The kinds of stored message the operator signs, whatever their From: receipts (DSN, MDN)
# and the service's notices (``mss.lifecycle``).
OPERATOR_SIGNED = ("receipt", "notice")
SMIME_TYPES = smime.PKCS7_MIME_TYPES
SIGNATURE_TYPES = smime.PKCS7_SIGNATURE_TYPES
# With several signatures (ours over a client's, or a client's nested ones), the worst shows.
_SEVERITY = {
    verify.VALID: 0,
    UNVERIFIABLE: 1,
    REVOKED_SINCE: 1,
    OTHER_SIGNER: 2,
    verify.UNTRUSTED: 2,
    verify.EXPIRED: 3,
    verify.REVOKED: 4,
    verify.INVALID: 5,
}
BODY_TYPES = {"text/plain", "text/html"}
# Parts of a delivery or disposition report meant for software, not for the reader.
REPORT_TYPES = {
    "message/delivery-status",
    "message/disposition-notification",
    "text/rfc822-headers",
    "message/rfc822",
    "message/global-headers",
    "message/global-delivery-status",
}


@dataclass(frozen=True)
class Signature:
    """What the signature check found, in a form the pages and the API can show."""

    status: str
    """valid, invalid, untrusted, revoked, revoked-since (valid when submitted, the signer's
    certificate revoked since ``revoked_at``), other-signer (it holds, but the signer is not
    the sender), expired, unsigned or unverifiable. Show the body with a clear warning unless
    it is valid (CBC encryption is malleable)."""
    reason: str
    signer_address: str | None = None
    signer_name: str | None = None
    signing_time: datetime | None = None
    revoked_at: datetime | None = None  # for revoked-since: when the signer's certificate was revoked

    @property
    def trusted(self) -> bool:
        """True only for a valid signature."""
        return self.status == verify.VALID


@dataclass(frozen=True)
class Attachment:
    """One attachment of an opened message, with its exact bytes."""

    index: int
    filename: str
    content_type: str
    kind: str  # pdf | cda | xdm | text | other
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """Bytes of the attachment."""
        return len(self.data)


@dataclass(frozen=True)
class Content:
    """A decrypted message: signature outcome, headers, text body and attachments."""

    signature: Signature
    headers: dict[str, str]
    body: str
    body_was_html: bool
    attachments: tuple[Attachment, ...]


def reader_key(key_der: bytes) -> smime.PrivateKey:
    """The reader's private key object. Raises CryptoError.

    The DER comes out of authenticated encryption (the session's SecretBox, filled from the
    account's argon2id-wrapped key), so OpenSSL's RSA consistency check is skipped: it
    costs about 200 ms for an RSA 3072 key, on every page that opens a message.
    """
    return keys.private_key_from_der(key_der, authenticated=True)


def _decrypt(session: Session, cms: bytes, reader: UnlockedAccount) -> bytes:
    """The envelope's content, opened with any of the reader's keys under any of their
    certificates.

    A certificate renewed for the same key has a new serial number, and a rekey leaves the
    earlier key among the reader's past keys: a message encrypted to an older certificate
    names that one, so each certificate of the reader that the envelope names is tried with
    the key that matches it.
    """
    private_key = reader_key(reader.private_key_der)
    try:
        return smime.decrypt(cms, reader.certificate, private_key)
    except DecryptionError as exc:
        if exc.details.get("reason") != "not_a_recipient":
            raise
        first_error = exc
    keyring = [private_key, *(reader_key(der) for der in reader.past_keys_der)]
    rows = session.execute(
        select(col(Certificate.der)).where(
            col(Certificate.address) == reader.address, col(Certificate.usage) == "smime"
        )
    ).scalars()
    recipients = smime.envelope_recipients(cms)
    for der in rows:
        certificate = x509.load_der_x509_certificate(der)
        if certificate == reader.certificate or not any(rid.matches(certificate) for rid in recipients):
            continue
        for key in keyring:
            if keys.key_matches_certificate(key, certificate):
                return smime.decrypt(cms, certificate, key)
    raise first_error


def open_envelope(session: Session, cms: bytes, reader: UnlockedAccount) -> bytes:
    """The content of an envelope addressed to ``reader`` (under any of their certificates,
    current or past): the signed entity, for a mail client that checks the signature itself.
    Raises DecryptionError."""
    return _decrypt(session, cms, reader)


def _report(report: verify.SignatureReport) -> Signature:
    return Signature(
        status=report.status,
        reason=report.reason,
        signer_address=report.signer_address,
        signer_name=report.signer_common_name,
        signing_time=report.signing_time,
    )


def _checked(
    layer: smime.Layer,
    roots: list[x509.Certificate],
    crls: list[bytes],
    submitted_at: datetime | None = None,
    sender: str | None = None,
) -> Signature:
    """The outcome of one signature layer, embedded or detached.

    A signature by a certificate revoked today is checked again as of ``submitted_at``
    (when this service received the message, which proves it existed then): if it held
    then, the reader learns both facts, valid when signed and revoked since (with the date).
    A valid signature by a certificate that does not name ``sender`` (or names no address
    at all: it cannot vouch for any sender) is ``other-signer``: the reader is shown who
    signed, and that it is not the sender (one valid when signed by a certificate revoked
    since already comes with its warning and its signer's name, and stays what it is). A
    certificate that names the sender among others is shown under that address.
    """
    checked, signer = _checked_alone(layer, roots, crls, submitted_at)
    if sender is None or signer is None or checked.status != verify.VALID:
        return checked
    named = verify.certificate_addresses(signer)
    same = next((a for a in named if a.lower() == sender.lower()), None)
    if same is not None:
        return replace(checked, signer_address=same)
    return replace(checked, status=OTHER_SIGNER, reason=OTHER_SIGNER_REASON)


def _checked_alone(
    layer: smime.Layer, roots: list[x509.Certificate], crls: list[bytes], submitted_at: datetime | None
) -> tuple[Signature, x509.Certificate | None]:
    """The outcome of one signature layer, with the signer's certificate when it could be read."""
    detached = layer.content if layer.kind == smime.DETACHED else None
    try:
        report = verify.verify_signed_data(layer.cms, trust_roots=roots, crls=crls, detached_content=detached)
    except SignatureError as exc:
        # Not a usable SignedData: nothing from it counts as signed.
        return Signature(status=verify.INVALID, reason=exc.message), None
    if report.status == verify.REVOKED and submitted_at is not None:
        revoked_at = verify.revocation_date(report.signer_certificate, crls)
        if revoked_at is not None and revoked_at > submitted_at:
            then = verify.verify_signed_data(
                layer.cms, trust_roots=roots, crls=crls, moment=submitted_at, detached_content=detached
            )
            if then.status == verify.VALID:
                return Signature(
                    status=REVOKED_SINCE,
                    reason=(
                        f"the signature was valid when the message was submitted ({submitted_at:%Y-%m-%d %H:%M} UTC);"
                        f" the signer's certificate was revoked on {revoked_at:%Y-%m-%d %H:%M} UTC"
                    ),
                    signer_address=report.signer_address,
                    signer_name=report.signer_common_name,
                    signing_time=report.signing_time,
                    revoked_at=revoked_at,
                ), report.signer_certificate
    return _report(report), report.signer_certificate


def parse_entity(data: bytes) -> EmailMessage:
    """A MIME entity parsed with the modern email policy."""
    return BytesParser(policy=POLICY).parsebytes(data)


@dataclass(frozen=True)
class _Trust:
    roots: list[x509.Certificate]
    crls: list[bytes]
    submitted_at: datetime | None = None
    more_crls: Callable[[bytes], list[bytes]] | None = None
    sender: str | None = None

    def crls_for(self, signed_der: bytes) -> list[bytes]:
        """The CRLs to check one SignedData with (ours, and its signer's operator's)."""
        return [*self.crls, *self.more_crls(signed_der)] if self.more_crls is not None else self.crls


def _walk(
    session: Session, inner: bytes, reader: UnlockedAccount, trust: _Trust | None
) -> tuple[list[Signature], bytes, str]:
    """The signatures met, outermost first (checked when ``trust`` is given), the innermost
    MIME entity, and the kind of the first layer. Raises DecryptionError when an envelope
    inside cannot be opened with the reader's key."""
    signatures: list[Signature] = []
    data, first = inner, ""
    for _depth in range(smime.MAX_LAYERS + 1):
        try:
            layer = smime.peel(data)
        except CryptoError as exc:
            signatures.append(
                Signature(status=verify.INVALID, reason=f"the S/MIME structure is malformed: {exc.message}")
            )
            return signatures, b"", first or smime.PLAIN
        first = first or layer.kind
        if layer.kind == smime.PLAIN:
            return signatures, data, first
        if layer.kind == smime.ENVELOPED:
            data = _decrypt(session, layer.cms, reader)
            continue
        if trust is not None:
            signatures.append(_checked(layer, trust.roots, trust.crls_for(layer.cms), trust.submitted_at, trust.sender))
        data = layer.content
    nested = Signature(
        status=UNVERIFIABLE, reason=f"the message is nested more than {smime.MAX_LAYERS} S/MIME layers deep"
    )
    return [*signatures, nested], b"", first


def _combined(signatures: list[Signature]) -> Signature:
    """The one outcome to show: the worst; among equals the innermost (the author's own)."""
    if not signatures:
        return Signature(status=UNSIGNED, reason="the sender's software did not sign this message")
    shown = signatures[-1]
    for signature in reversed(signatures):
        if _SEVERITY.get(signature.status, 1) > _SEVERITY.get(shown.status, 1):
            shown = signature
    return shown


def decrypt_and_verify(
    session: Session,
    cms: bytes,
    kind: str,
    reader: UnlockedAccount,
    roots: list[x509.Certificate],
    crls: list[bytes],
    submitted_at: datetime | None = None,
    more_crls: Callable[[bytes], list[bytes]] | None = None,
    *,
    sender: str,
) -> tuple[Signature, bytes]:
    """The signature outcome and the innermost MIME entity of a stored message.

    Our envelopes hold an RFC 8551 signed-data entity; a client's hold what the client
    wrote: signed (detached or opaque, nested or not), encrypted again, or not signed. The
    entity is returned whatever the outcome; the caller shows it with the status.
    ``more_crls`` gives CRLs for a SignedData's certificates beyond ``crls`` (another
    operator's CA). ``sender`` is the message's (its From address, which every door checks
    against the envelope): a signature that holds by anyone else's certificate is
    ``other-signer``. A notification or a notice is signed by its operator, not by its
    From address (the reporting MTA, the recipient an MDN speaks for, the postmaster): it
    is not held to that.
    Raises DecryptionError when the reader's key cannot open an envelope of the message.
    """
    inner = _decrypt(session, cms, reader)
    trust = _Trust(roots, crls, submitted_at, more_crls, sender=None if kind in OPERATOR_SIGNED else sender)
    signatures, entity, first = _walk(session, inner, reader, trust)
    if kind != "client" and first != smime.SIGNED:
        return Signature(status=verify.INVALID, reason="the stored message is not signed as it should be"), b""
    return _combined(signatures), entity


def unverified_entity(session: Session, cms: bytes, kind: str, reader: UnlockedAccount) -> bytes:
    """The MIME entity of a stored message without checking its signatures (for indexing
    the reader's own search terms, never for display). Raises DecryptionError, CryptoError."""
    inner = _decrypt(session, cms, reader)
    _signatures, entity, first = _walk(session, inner, reader, None)
    if kind != "client" and first != smime.SIGNED:
        return b""
    return entity


class _TextOfHtml(HTMLParser):
    """Collects the text of an HTML document; scripts, styles and markup are dropped."""

    BLOCKS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "pre", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "style", "head", "title", "template"}:
            self._skip += 1
        elif tag in self.BLOCKS:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in {"script", "style", "head", "title", "template"}:
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS:
            self.chunks.append("\n")
        elif tag in {"td", "th"}:
            self.chunks.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)


def html_to_text(html: str) -> str:
    """The readable text of an HTML body (no markup, no remote content, blank lines folded)."""
    parser = _TextOfHtml()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.chunks).splitlines()]
    text: list[str] = []
    for line in lines:
        if line or (text and text[-1]):
            text.append(line)
    return "\n".join(text).strip()


# What text without a declared charset most likely is: UTF-8 (every recent client), else
# Windows-1252 (what French mail clients and practice software write when they do not say).
GUESSES = ("utf-8", "windows-1252")
UNDECLARED = {"", "us-ascii", "ascii"}


def decode_text(raw: bytes, declared: str | None) -> tuple[str, str]:
    """The text of ``raw`` and, when its encoding had to be guessed, the guess ("" else).

    A declared charset that decodes the bytes is trusted. Bytes with no charset (or
    us-ascii) that are not ASCII, and bytes the declared charset cannot decode (or a charset
    nobody knows), are read as UTF-8 if they are valid UTF-8, else as Windows-1252: the
    reader is told a guess was made rather than shown replacement characters.
    """
    charset = (declared or "").strip().strip('"').lower()
    if charset not in UNDECLARED:
        try:
            return raw.decode(charset), ""
        except (LookupError, UnicodeDecodeError):
            pass
    elif raw.isascii():
        return raw.decode("ascii"), ""
    try:
        return raw.decode(GUESSES[0]), GUESSES[0]
    except UnicodeDecodeError:
        return raw.decode(GUESSES[1], errors="replace"), GUESSES[1]


def _text_of(part: EmailMessage) -> tuple[str, str]:
    """A text part's content and the charset guessed for it ("" when it said its own)."""
    raw = decoded_payload(part)
    charset = part.get_param("charset")  # text, or a tuple when written as RFC 2231 asks
    text, guess = decode_text(raw, email.utils.collapse_rfc2231_value(charset) if charset else None)
    return text.replace("\r\n", "\n"), guess


def _attachment_kind(data: bytes, content_type: str, filename: str) -> str:
    try:
        return sniff.sniff(data, content_type, filename)
    except DocumentError:
        return "other"


@dataclass(frozen=True)
class Split:
    """A MIME entity taken apart for its reader."""

    headers: dict[str, str]
    body: str
    body_was_html: bool
    attachments: tuple[Attachment, ...]
    charset_guess: str = ""
    """The charset the body was read in when its parts did not declare a usable one."""


def split_entity(
    entity_bytes: bytes, *, receipt: bool = False
) -> tuple[dict[str, str], str, bool, tuple[Attachment, ...]]:
    """Headers, text body, whether it came from HTML, and attachments (see :func:`split`)."""
    parts = split(entity_bytes, receipt=receipt)
    return parts.headers, parts.body, parts.body_was_html, parts.attachments


def split(entity_bytes: bytes, *, receipt: bool = False) -> Split:
    """Headers, text body and attachments of a MIME entity.

    Parts are split as the pipeline did at submission: inline text is the body, every other
    leaf is an attachment, a client's own detached signature is neither. In a delivery or
    disposition report, the machine-readable parts are left out. Text parts are decoded
    with :func:`decode_text`.
    """
    if not entity_bytes:
        return Split({}, "", False, ())
    entity = parse_entity(entity_bytes)
    headers: dict[str, str] = {}
    for name in SUMMARY_HEADERS:
        try:
            value = entity.get(name)
        except PARSE_FAILURES:
            value = None
        if value is not None:
            headers[name] = str(value)
    plain: list[str] = []
    html: list[str] = []
    guesses: dict[str, list[str]] = {"plain": [], "html": []}
    attachments: list[Attachment] = []
    skip: set[int] = set()
    for part in entity.walk():
        if id(part) in skip:
            continue
        content_type = part.get_content_type()
        if content_type in REPORT_TYPES:
            for sub in part.walk():
                skip.add(id(sub))
            continue
        if part.is_multipart():
            continue
        filename = part.get_filename() or ""
        disposition = part.get_content_disposition()
        if content_type in SIGNATURE_TYPES and not filename.lower().endswith(".p7m"):
            continue
        if content_type in BODY_TYPES and not filename and disposition != "attachment":
            text, guess = _text_of(part)
            kind = "plain" if content_type == "text/plain" else "html"
            (plain if kind == "plain" else html).append(text)
            if guess:
                guesses[kind].append(guess)
            continue
        if receipt:
            continue
        data = decoded_payload(part)
        name = filename or f"attachment-{len(attachments) + 1}"
        attachments.append(
            Attachment(
                index=len(attachments),
                filename=name,
                content_type=content_type,
                kind=_attachment_kind(data, content_type, name),
                data=data,
            )
        )
    if plain:
        body, was_html, guessed = "\n\n".join(text.strip("\n") for text in plain), False, guesses["plain"]
    elif html:
        body, was_html, guessed = "\n\n".join(html_to_text(text) for text in html), True, guesses["html"]
    else:
        body, was_html, guessed = "", False, []
    # Windows-1252 wins when parts were guessed differently: it is the guess to doubt.
    guess = GUESSES[1] if GUESSES[1] in guessed else (guessed[0] if guessed else "")
    return Split(headers, body, was_html, tuple(attachments), guess)
