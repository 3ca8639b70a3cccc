"""CMS for S/MIME (RFC 5652, RFC 8551): sign, encrypt, decrypt, inspect, and the export form.

Messages are stored and moved as DER: an EnvelopedData (AES-256-CBC, one RSA key-transport
RecipientInfo per recipient) whose content is a SignedData (SHA-256, content embedded, the
signer's certificate included) over the canonical (CRLF) MIME entity. The S/MIME text form
(base64 inside a MIME message) is built only when a mail client needs it: for a 1 MiB
envelope the text form alone costs about 7 ms, four times the encryption itself.

cryptography (``pkcs7``) signs and encrypts; it cannot verify a SignedData, which is
:mod:`mss.crypto.verify`'s job, and its decryption reads only part of what mail clients write,
so envelopes are opened by :mod:`mss.crypto.envelope`. Structures are inspected with
asn1crypto, so a malformed input is reported as such instead of as a failed decryption.

What clients send comes in layers (RFC 8551 3.5, 3.6): a detached signature
(``multipart/signed``), an opaque one (``application/pkcs7-mime; smime-type=signed-data``) and
an envelope, in any order and any depth. :func:`peel` names the outermost layer of an entity
and hands over what is inside, so that callers walk them up to :data:`MAX_LAYERS`.

Everything here is pure: bytes and certificate objects in, bytes out.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import email.utils
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from mss.crypto import envelope as cms_envelope
from mss.errors import CryptoError, DecryptionError, SignatureError
from mss.mime import POLICY, SMTP_POLICY, base64_lines, decoded_payload, has_bare_cr, subparts

SIGNED_DATA = "signed_data"
ENVELOPED_DATA = cms_envelope.ENVELOPED_DATA
AUTH_ENVELOPED_DATA = cms_envelope.AUTH_ENVELOPED_DATA
SMIME_ENVELOPED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
SMIME_AUTH_ENVELOPED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=authEnveloped-data; name=smime.p7m"
SMIME_SIGNED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"
PKCS7_MIME_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
PKCS7_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_PKCS7_MIME_TYPES = PKCS7_MIME_TYPES
# S/MIME layers one message may hold: a triple-wrapped one (RFC 2634 1.1) has three. Deeper
# nesting serves no sender and is refused, or shown unread, rather than walked.
MAX_LAYERS = 8
# Header field names (RFC 5322 3.6.8): printable ASCII except the colon.
_FIELD_NAME = re.compile(r"^[!-9;-~]+$")
# We write these ourselves; a caller's copy would contradict the body we produce.
_RESERVED_HEADERS = {"mime-version", "content-type", "content-transfer-encoding", "content-disposition"}

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class RecipientId:
    """How an EnvelopedData names one recipient: issuer and serial number, or key identifier."""

    issuer_der: bytes | None
    serial: int | None
    subject_key_identifier: bytes | None

    @property
    def issuer(self) -> str:
        """The issuer's name for people, or "" when the recipient is named by key identifier."""
        if self.issuer_der is None:
            return ""
        return asn1_x509.Name.load(self.issuer_der).human_friendly

    def matches(self, certificate: x509.Certificate) -> bool:
        """True when this identifier designates ``certificate``."""
        return cms_envelope.rid_matches((self.issuer_der, self.serial, self.subject_key_identifier), certificate)


# -- inspection --------------------------------------------------------------------------


def content_type(data: bytes) -> str:
    """The CMS content type name (``signed_data``, ``enveloped_data``,
    ``authenticated_enveloped_data`` ...).

    Raises CryptoError when ``data`` is not a CMS ContentInfo.
    """
    return cms_envelope.content_info(data)[1]


def is_enveloped(data: bytes) -> bool:
    """True for a CMS EnvelopedData or AuthEnvelopedData; raises CryptoError when ``data``
    is not CMS at all."""
    return content_type(data) in cms_envelope.ENVELOPE_TYPES


def is_signed(data: bytes) -> bool:
    """True for a CMS SignedData; raises CryptoError when ``data`` is not CMS at all."""
    return content_type(data) == SIGNED_DATA


def envelope_recipients(envelope_der: bytes) -> list[RecipientId]:
    """Who can open the envelope, as named in its RecipientInfos (key transport and key
    agreement; password and pre-shared-key recipients name no certificate and are left out).

    Raises CryptoError when ``envelope_der`` is not an EnvelopedData or AuthEnvelopedData.
    """
    parsed = cms_envelope.load(envelope_der)
    return [
        RecipientId(issuer_der=issuer, serial=serial, subject_key_identifier=key_id)
        for _kind, (issuer, serial, key_id) in cms_envelope.recipient_ids(parsed)
    ]


def can_decrypt_for(envelope_der: bytes, certificate: x509.Certificate) -> bool:
    """True when the envelope holds a RecipientInfo for ``certificate``.

    Raises CryptoError when ``envelope_der`` is not an EnvelopedData.
    """
    return any(rid.matches(certificate) for rid in envelope_recipients(envelope_der))


def missing_recipients(envelope_der: bytes, certificates: Iterable[x509.Certificate]) -> list[x509.Certificate]:
    """The certificates among ``certificates`` the envelope was not encrypted to."""
    rids = envelope_recipients(envelope_der)
    return [cert for cert in certificates if not any(rid.matches(cert) for rid in rids)]


def signed_content(signed_der: bytes) -> bytes:
    """The content embedded in a SignedData (not verified: see :mod:`mss.crypto.verify`).

    Raises SignatureError when ``signed_der`` is not a SignedData or its content is detached.
    """
    info, kind = cms_envelope.content_info(signed_der, error=SignatureError)
    if kind != SIGNED_DATA:
        raise SignatureError(f"expected a CMS SignedData, got {kind}")
    try:
        content = info["content"]["encap_content_info"]["content"]
        native = content.native
    except cms_envelope.PARSE_ERRORS as exc:
        raise SignatureError("the CMS SignedData is malformed") from exc
    if native is None:
        raise SignatureError("the SignedData does not embed its content (detached signature)")
    if not isinstance(native, bytes):
        raise SignatureError("the SignedData's content is not an OCTET STRING")
    return native


# -- sign, encrypt, decrypt --------------------------------------------------------------


def _check_canonical(entity: bytes) -> None:
    # RFC 8551 3.1.1: what is signed is the canonical form, lines ending in CRLF. A bare LF
    # would be signed as is by us but rewritten by a receiving MTA, breaking the signature.
    # No CR alone, and as many LF as CR: every CR starts a CRLF and every LF ends one.
    if entity.count(b"\r") != entity.count(b"\n") or has_bare_cr(entity):
        raise CryptoError("the MIME entity must use CRLF line endings (RFC 8551 canonical form)")


def _check_key_pair(certificate: x509.Certificate, private_key: PrivateKey) -> None:
    if not isinstance(certificate, x509.Certificate):
        raise CryptoError("a certificate object is required")
    if not isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise CryptoError("only RSA and EC private keys are supported")
    if private_key.public_key() != certificate.public_key():
        raise CryptoError("the private key does not belong to the certificate")


def sign(
    mime_entity: bytes,
    certificate: x509.Certificate,
    private_key: PrivateKey,
    *,
    extra_certs: Sequence[x509.Certificate] = (),
    known_canonical: bool = False,
) -> bytes:
    """A DER SignedData embedding ``mime_entity`` byte for byte (SHA-256, signer certificate
    and ``extra_certs`` included, signed attributes with signing time).

    Raises CryptoError for an empty or non-canonical entity or a key that is not the
    certificate's. ``known_canonical``: the caller made the entity canonical itself and
    checked it (``mss.pipeline``), so it is not read once more for that (1.4 ms a MB).
    """
    if not isinstance(mime_entity, (bytes, bytearray)) or not mime_entity:
        raise CryptoError("there is no MIME entity to sign")
    if not known_canonical:
        _check_canonical(bytes(mime_entity))
    _check_key_pair(certificate, private_key)
    builder = pkcs7.PKCS7SignatureBuilder().set_data(bytes(mime_entity))
    builder = builder.add_signer(certificate, private_key, hashes.SHA256())
    for extra in extra_certs:
        builder = builder.add_certificate(extra)
    try:
        # Binary: the entity is already canonical; without it cryptography would rewrite
        # line endings and the signed bytes would differ from the ones we were given.
        return builder.sign(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"signing failed: {exc}") from exc


def encrypt(data: bytes, recipients: Sequence[x509.Certificate]) -> bytes:
    """A DER EnvelopedData of ``data`` for every certificate in ``recipients``.

    AES-256-CBC content encryption (RFC 8551 2.7 lists it as a SHOULD+), one RSA
    key-transport RecipientInfo per distinct certificate. Raises CryptoError when there is
    no recipient or a recipient's key is not RSA.
    """
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise CryptoError("there is no content to encrypt")
    if not recipients:
        raise CryptoError("an envelope needs at least one recipient")
    builder = pkcs7.PKCS7EnvelopeBuilder().set_data(bytes(data))
    builder = builder.set_content_encryption_algorithm(algorithms.AES256)
    seen: set[bytes] = set()
    for certificate in recipients:
        if not isinstance(certificate, x509.Certificate):
            raise CryptoError("recipients must be certificate objects")
        if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
            raise CryptoError(f"cannot encrypt to {certificate.subject.rfc4514_string()}: only RSA keys are supported")
        fingerprint = certificate.fingerprint(hashes.SHA256())
        if fingerprint in seen:
            continue  # the sender may also be a recipient: one RecipientInfo is enough
        seen.add(fingerprint)
        builder = builder.add_recipient(certificate)
    try:
        # Binary: the content is DER (a SignedData); text mode would rewrite its LF bytes.
        return builder.encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"encryption failed: {exc}") from exc


def sign_and_encrypt(
    mime_entity: bytes, certificate: x509.Certificate, private_key: PrivateKey, recipients: Sequence[x509.Certificate]
) -> bytes:
    """The stored form of a message: :func:`encrypt` of :func:`sign` (DER)."""
    return encrypt(sign(mime_entity, certificate, private_key), recipients)


def decrypt(envelope_der: bytes, certificate: x509.Certificate, private_key: PrivateKey) -> bytes:
    """The content of an EnvelopedData or AuthEnvelopedData (DER or BER), opened with
    ``certificate``'s private key (:func:`mss.crypto.envelope.open_envelope`).

    Raises DecryptionError with ``reason``: ``malformed`` (also for a key that is not the
    certificate's), ``not_a_recipient``, ``unsupported`` (an algorithm or recipient kind not
    done here), ``failed`` (altered, or encrypted to another key).
    """
    try:
        _check_key_pair(certificate, private_key)
    except CryptoError as exc:
        raise DecryptionError(exc.message, reason="malformed") from exc
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise DecryptionError("only RSA keys open envelopes here", reason="unsupported")
    return cms_envelope.open_envelope(envelope_der, certificate, private_key)


# -- S/MIME text form (export to mail clients) -------------------------------------------


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not _FIELD_NAME.match(name):
            raise CryptoError(f"{name!r} is not a header field name")
        if name.lower() in _RESERVED_HEADERS:
            raise CryptoError(f"the {name} header is set by the S/MIME encoding itself")
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise CryptoError(f"the {name} header value must be one line of text")


def _pkcs7_mime(der: bytes, content_type_value: str, headers: Mapping[str, str]) -> bytes:
    _check_headers(headers)
    head = email.message.EmailMessage(policy=SMTP_POLICY)
    try:
        for name, value in headers.items():
            head[name] = value  # the policy encodes non-ASCII text (RFC 2047) and folds
        caller_headers = head.as_bytes(policy=SMTP_POLICY)[: -len(b"\r\n")] if headers else b""
    except (ValueError, TypeError, IndexError) as exc:
        raise CryptoError(f"a header cannot be encoded: {exc}") from exc
    # The MIME headers are written literally, in the exact form of RFC 8551's examples
    # (the email package would quote smime-type, which some clients mishandle).
    lines = [b"MIME-Version: 1.0"] if headers else []
    lines += [
        # Folded before the name parameter to stay within 78 characters (RFC 5322 2.1.1).
        b"Content-Type: " + content_type_value.replace("; name=", ";\r\n name=").encode("ascii"),
        b"Content-Transfer-Encoding: base64",
        b'Content-Disposition: attachment; filename="smime.p7m"',
        b"",
    ]
    body = base64_lines(der)
    return caller_headers + b"\r\n".join(lines) + b"\r\n" + body


def to_smime_message(envelope_der: bytes, headers: Mapping[str, str]) -> bytes:
    """An RFC 8551 ``application/pkcs7-mime; smime-type=enveloped-data`` message (CRLF,
    base64 body) with ``headers`` (From, To, Subject ...) on top.

    A mail client expects the envelope's content to be a MIME entity: see
    :func:`export_for_mail_client`. Raises CryptoError when ``envelope_der`` is not an
    EnvelopedData or a header is malformed or reserved.
    """
    kind = content_type(envelope_der)
    if kind not in cms_envelope.ENVELOPE_TYPES:
        raise CryptoError("only a CMS EnvelopedData can be exported as an S/MIME message")
    smime_type = SMIME_AUTH_ENVELOPED_CONTENT_TYPE if kind == AUTH_ENVELOPED_DATA else SMIME_ENVELOPED_CONTENT_TYPE
    return _pkcs7_mime(bytes(envelope_der), smime_type, headers)


def to_signed_smime_message(signed_der: bytes, headers: Mapping[str, str]) -> bytes:
    """An RFC 8551 ``application/pkcs7-mime; smime-type=signed-data`` message (signed, not
    encrypted) with ``headers`` on top: what travels to another operator when no
    certificate of the recipient is known.

    Raises CryptoError when ``signed_der`` is not a SignedData or a header is malformed.
    """
    if not is_signed(signed_der):
        raise CryptoError("expected a CMS SignedData")
    return _pkcs7_mime(bytes(signed_der), SMIME_SIGNED_CONTENT_TYPE, headers)


def signed_entity(signed_der: bytes) -> bytes:
    """A SignedData as a MIME entity (``application/pkcs7-mime; smime-type=signed-data``,
    RFC 8551 3.5.2), the form a mail client expects inside an envelope.

    Raises CryptoError when ``signed_der`` is not a SignedData.
    """
    if not is_signed(signed_der):
        raise CryptoError("expected a CMS SignedData")
    return _pkcs7_mime(bytes(signed_der), SMIME_SIGNED_CONTENT_TYPE, {})


def export_for_mail_client(
    envelope_der: bytes, certificate: x509.Certificate, private_key: PrivateKey, headers: Mapping[str, str]
) -> bytes:
    """A stored message re-packed for the holder's own mail client.

    The stored envelope holds a bare DER SignedData; RFC 8551 clients expect a MIME entity
    there. This opens the envelope, wraps the (untouched) SignedData as
    ``smime-type=signed-data``, encrypts it again to ``certificate`` only, and returns the
    S/MIME message. Raises DecryptionError or CryptoError.
    """
    inner = decrypt(envelope_der, certificate, private_key)
    if not is_signed(inner):
        raise CryptoError("the envelope does not hold a CMS SignedData")
    return to_smime_message(encrypt(signed_entity(inner), [certificate]), headers)


def smime_payload(message: bytes) -> bytes:
    """The DER CMS object inside an ``application/pkcs7-mime`` message or entity (what a
    client that signs and encrypts itself submits).

    Raises CryptoError when the message is not of that type or its body is not base64 CMS.
    """
    if not isinstance(message, (bytes, bytearray)) or not message:
        raise CryptoError("no message given")
    parsed = email.message_from_bytes(bytes(message), policy=POLICY)
    if parsed.get_content_type() not in _PKCS7_MIME_TYPES:
        raise CryptoError(f"expected application/pkcs7-mime, got {parsed.get_content_type()}")
    encoding = str(parsed.get("Content-Transfer-Encoding", "7bit")).strip().lower()
    raw = parsed.get_payload(decode=False)
    if not isinstance(raw, str):
        raise CryptoError("an application/pkcs7-mime body cannot be multipart")
    if encoding == "base64":
        try:
            der = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CryptoError("the application/pkcs7-mime body is not valid base64") from exc
    elif encoding == "binary":
        der = decoded_payload(parsed)
    else:
        raise CryptoError(f"unsupported transfer encoding {encoding!r} for a CMS body")
    content_type(der)  # raises CryptoError on garbage
    return der


# -- layers of what clients send (RFC 8551 3.5, 3.6) ------------------------------------------

SIGNED = "signed"  # application/pkcs7-mime; smime-type=signed-data, or a bare SignedData
DETACHED = "detached"  # multipart/signed with an application/pkcs7-signature part
ENVELOPED = "enveloped"  # application/pkcs7-mime; smime-type=(auth)enveloped-data, or bare
PLAIN = "plain"  # anything else: the MIME entity itself


@dataclass(frozen=True)
class Layer:
    """The outermost S/MIME layer of an entity.

    ``cms`` is the CMS object as received (DER or BER): the SignedData or the envelope, or
    for a detached signature the SignedData of its signature part. ``content`` is what the
    layer carries: the embedded content of a SignedData, or the first part of a
    ``multipart/signed`` exactly as signed (canonical CRLF form). An envelope's content is
    only known once it is opened.
    """

    kind: str  # SIGNED | DETACHED | ENVELOPED | PLAIN
    cms: bytes = field(default=b"", repr=False)
    content: bytes = field(default=b"", repr=False)


def canonical(entity: bytes) -> bytes:
    """``entity`` with every line ending in CRLF (RFC 8551 3.1.1): bare LF become CRLF.

    A bare CR is left alone, and shows as a signature that does not verify.
    """
    if b"\n" not in entity.replace(b"\r\n", b""):
        return entity
    return entity.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _bare_cms(data: bytes) -> str | None:
    """The content type of ``data`` when it is a bare CMS object (not a MIME entity)."""
    if data[:1] != b"\x30":
        return None  # a MIME entity starts with a header name, never with a SEQUENCE tag
    try:
        return content_type(data)
    except CryptoError:
        return None


def _signed_layer(der: bytes) -> Layer:
    try:
        info, _kind = cms_envelope.content_info(der)
        signed = info["content"]
        signers = len(signed["signer_infos"])
        content = signed["encap_content_info"]["content"].native
    except cms_envelope.PARSE_ERRORS as exc:
        raise CryptoError("the CMS SignedData is malformed") from exc
    except CryptoError:
        raise
    if not signers:
        return Layer(PLAIN)  # certs-only (RFC 8551 3.6): certificates, no signature
    if content is None:
        raise CryptoError("the signed-data S/MIME entity does not hold its content")
    if not isinstance(content, bytes):
        raise CryptoError("the SignedData's content is not an OCTET STRING")
    return Layer(SIGNED, cms=der, content=content)


def _cms_layer(der: bytes) -> Layer:
    kind = content_type(der)
    if kind == SIGNED_DATA:
        return _signed_layer(der)
    if kind in cms_envelope.ENVELOPE_TYPES:
        cms_envelope.load(der)  # parsed through: a truncated envelope fails here
        return Layer(ENVELOPED, cms=der)
    raise CryptoError(f"an S/MIME entity of CMS type {kind} is not accepted")


def _header_end(entity: bytes) -> int:
    """Where the body of ``entity`` starts (after the empty line), or -1."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        found = entity.find(separator)
        if found >= 0:
            return found + len(separator)
    return -1


def _first_part(entity: bytes, boundary: str) -> bytes:
    """The first body part of a multipart ``entity`` exactly as it was sent: from after the
    first delimiter line to before the CRLF that starts the next one (RFC 2046 5.1.1)."""
    start = _header_end(entity)
    if start < 0:
        raise CryptoError("the multipart/signed entity has no body")
    body = entity[start:]
    delimiter = b"--" + boundary.encode("ascii", errors="strict")
    position = 0
    while True:
        found = body.find(delimiter, position)
        if found < 0:
            raise CryptoError("the multipart/signed entity has no first part")
        line_end = body.find(b"\n", found)
        at_line_start = found == 0 or body[found - 1 : found] == b"\n"
        if at_line_start and line_end >= 0 and not body[found + len(delimiter) : line_end].strip():
            break
        position = found + 1
    content_start = line_end + 1
    position = content_start
    while True:
        found = body.find(b"\n" + delimiter, position)
        if found < 0:
            raise CryptoError("the multipart/signed entity is not closed")
        after = body[found + 1 + len(delimiter) : found + 3 + len(delimiter)]
        if after[:1] in (b"\r", b"\n", b"-", b" ", b"\t", b""):
            break
        position = found + 1
    end = found - 1 if body[found - 1 : found] == b"\r" else found
    return canonical(body[content_start:end])


def _detached_layer(entity: bytes, parsed: email.message.Message) -> Layer:
    boundary = parsed.get_boundary()
    parts = subparts(parsed)
    if not boundary or len(parts) != 2:
        raise CryptoError("a multipart/signed entity must hold exactly two parts")
    signature_part = parts[1]
    if signature_part.get_content_type() not in PKCS7_SIGNATURE_TYPES:
        raise CryptoError(f"the signature of a multipart/signed entity is {signature_part.get_content_type()}")
    try:
        signature = decoded_payload(signature_part)
    except (ValueError, TypeError, LookupError) as exc:
        raise CryptoError("the signature part cannot be decoded") from exc
    if content_type(signature) != SIGNED_DATA:
        raise CryptoError("the signature part is not a CMS SignedData")
    try:
        content = _first_part(entity, boundary)
    except UnicodeError as exc:
        raise CryptoError("the multipart/signed boundary is not ASCII") from exc
    return Layer(DETACHED, cms=signature, content=content)


def peel(entity: bytes) -> Layer:
    """The outermost S/MIME layer of ``entity`` (a MIME entity, or a bare CMS object as
    found inside an envelope).

    Classified by the CMS content type, not by the ``smime-type`` parameter, which is only a
    hint (RFC 8551 3.2.2). Raises CryptoError for an S/MIME layer that is malformed:
    garbage in ``application/pkcs7-mime``, a truncated envelope, a signature part that is
    not a SignedData, a ``multipart/signed`` whose parts cannot be told apart.
    """
    if not isinstance(entity, (bytes, bytearray)) or not entity:
        raise CryptoError("there is no content")
    entity = bytes(entity)
    if _bare_cms(entity) is not None:
        return _cms_layer(entity)
    try:
        parsed = email.message_from_bytes(entity, policy=email.policy.compat32)
        kind = parsed.get_content_type()
    except (ValueError, TypeError, LookupError, IndexError) as exc:
        raise CryptoError("the entity is not parseable MIME") from exc
    if kind in PKCS7_MIME_TYPES:
        return _cms_layer(smime_payload(entity))
    if kind == "multipart/signed":
        # An RFC 2231 parameter comes as a tuple: collapsed to its text like a plain one.
        protocol = email.utils.collapse_rfc2231_value(parsed.get_param("protocol") or "").lower()
        if protocol in PKCS7_SIGNATURE_TYPES:
            return _detached_layer(entity, parsed)
    return Layer(PLAIN)
