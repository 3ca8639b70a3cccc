"""CMS for S/MIME (RFC 5652, RFC 8551): sign, encrypt, decrypt, inspect, and the export form.

Messages are stored and moved as DER: an EnvelopedData (AES-256-CBC, one RSA key-transport
RecipientInfo per recipient) whose content is a SignedData (SHA-256, content embedded, the
signer's certificate included) over the canonical (CRLF) MIME entity. The S/MIME text form
(base64 inside a MIME message) is built only when a mail client needs it: for a 1 MiB
envelope the text form alone costs about 7 ms, four times the encryption itself.

cryptography (``pkcs7``) signs, encrypts and decrypts; it cannot verify a SignedData, which
is :mod:`mss.crypto.verify`'s job. Its envelope takes RSA recipients only and AES-128/256-CBC
only. Structures are inspected with asn1crypto, so a malformed input is reported as such
instead of as a failed decryption.

Everything here is pure: bytes and certificate objects in, bytes out.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.message
import email.policy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7

from mss.errors import CryptoError, DecryptionError, SignatureError

SIGNED_DATA = "signed_data"
ENVELOPED_DATA = "enveloped_data"
SMIME_ENVELOPED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
SMIME_SIGNED_CONTENT_TYPE = "application/pkcs7-mime; smime-type=signed-data; name=smime.p7m"
_PKCS7_MIME_TYPES = {"application/pkcs7-mime", "application/x-pkcs7-mime"}
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
        if self.subject_key_identifier is not None:
            return _subject_key_identifier(certificate) == self.subject_key_identifier
        if self.issuer_der is None or self.serial != certificate.serial_number:
            return False
        # Names compare after RFC 5280 7.1 normalisation (case, spaces, string types), not
        # byte for byte: another implementation may re-encode the issuer it copied.
        return asn1_x509.Name.load(self.issuer_der) == asn1_x509.Name.load(certificate.issuer.public_bytes())


def _subject_key_identifier(certificate: x509.Certificate) -> bytes:
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        # RFC 5280 4.2.1.2 method 1, what a sender computes when the extension is absent.
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


# -- inspection --------------------------------------------------------------------------


def _content_info(data: bytes) -> asn1_cms.ContentInfo:
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise CryptoError("no CMS data given")
    try:
        info = asn1_cms.ContentInfo.load(bytes(data), strict=True)
        info["content_type"].native  # noqa: B018  (forces the parse of the outer structure)
    except (ValueError, TypeError, KeyError) as exc:
        raise CryptoError("the data is not a CMS (PKCS #7) structure") from exc
    return info


def content_type(data: bytes) -> str:
    """The CMS content type name (``signed_data``, ``enveloped_data`` ...).

    Raises CryptoError when ``data`` is not a CMS ContentInfo.
    """
    return str(_content_info(data)["content_type"].native)


def is_enveloped(data: bytes) -> bool:
    """True for a CMS EnvelopedData; raises CryptoError when ``data`` is not CMS at all."""
    return content_type(data) == ENVELOPED_DATA


def is_signed(data: bytes) -> bool:
    """True for a CMS SignedData; raises CryptoError when ``data`` is not CMS at all."""
    return content_type(data) == SIGNED_DATA


def _enveloped(data: bytes) -> asn1_cms.EnvelopedData:
    info = _content_info(data)
    if info["content_type"].native != ENVELOPED_DATA:
        raise CryptoError(f"expected a CMS EnvelopedData, got {info['content_type'].native}")
    try:
        envelope = info["content"]
        envelope["recipient_infos"].native  # noqa: B018
        envelope["encrypted_content_info"]["content_encryption_algorithm"].native  # noqa: B018
    except (ValueError, TypeError, KeyError) as exc:
        raise CryptoError("the CMS EnvelopedData is malformed") from exc
    return envelope


def envelope_recipients(envelope_der: bytes) -> list[RecipientId]:
    """Who can open the envelope, as named in its RecipientInfos (key transport and key
    agreement; password and pre-shared-key recipients name no certificate and are left out).

    Raises CryptoError when ``envelope_der`` is not an EnvelopedData.
    """
    envelope = _enveloped(envelope_der)
    found: list[RecipientId] = []
    for info in envelope["recipient_infos"]:
        if info.name == "ktri":
            found.append(_recipient_id(info.chosen["rid"]))
        elif info.name == "kari":
            for encrypted_key in info.chosen["recipient_encrypted_keys"]:
                found.append(_recipient_id(encrypted_key["rid"]))
    return found


def _recipient_id(rid: asn1_cms.RecipientIdentifier | asn1_cms.KeyAgreementRecipientIdentifier) -> RecipientId:
    chosen = rid.chosen
    if rid.name == "issuer_and_serial_number":
        return RecipientId(issuer_der=chosen["issuer"].dump(), serial=chosen["serial_number"].native, subject_key_identifier=None)
    if rid.name == "subject_key_identifier":
        return RecipientId(issuer_der=None, serial=None, subject_key_identifier=chosen.native)
    # r_key_id (key agreement): a RecipientKeyIdentifier holding the subject key identifier.
    return RecipientId(issuer_der=None, serial=None, subject_key_identifier=chosen["subject_key_identifier"].native)


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
    try:
        info = _content_info(signed_der)
    except CryptoError as exc:
        raise SignatureError(exc.message) from exc
    if info["content_type"].native != SIGNED_DATA:
        raise SignatureError(f"expected a CMS SignedData, got {info['content_type'].native}")
    try:
        content = info["content"]["encap_content_info"]["content"]
    except (ValueError, TypeError, KeyError) as exc:
        raise SignatureError("the CMS SignedData is malformed") from exc
    if content.native is None:
        raise SignatureError("the SignedData does not embed its content (detached signature)")
    try:
        return bytes(content.native)
    except (ValueError, TypeError) as exc:
        raise SignatureError("the SignedData's content is not an OCTET STRING") from exc


# -- sign, encrypt, decrypt --------------------------------------------------------------


def _check_canonical(entity: bytes) -> None:
    # RFC 8551 3.1.1: what is signed is the canonical form, lines ending in CRLF. A bare LF
    # would be signed as is by us but rewritten by a receiving MTA, breaking the signature.
    crlf = entity.count(b"\r\n")
    if entity.count(b"\n") != crlf or entity.count(b"\r") != crlf:
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
) -> bytes:
    """A DER SignedData embedding ``mime_entity`` byte for byte (SHA-256, signer certificate
    and ``extra_certs`` included, signed attributes with signing time).

    Raises CryptoError for an empty or non-canonical entity or a key that is not the
    certificate's.
    """
    if not isinstance(mime_entity, (bytes, bytearray)) or not mime_entity:
        raise CryptoError("there is no MIME entity to sign")
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
    mime_entity: bytes,
    certificate: x509.Certificate,
    private_key: PrivateKey,
    recipients: Sequence[x509.Certificate],
) -> bytes:
    """The stored form of a message: :func:`encrypt` of :func:`sign` (DER)."""
    return encrypt(sign(mime_entity, certificate, private_key), recipients)


def _name_recipient_by_issuer_and_serial(envelope_der: bytes, certificate: x509.Certificate) -> bytes:
    """The envelope with the RecipientInfo for ``certificate`` naming it by issuer and
    serial number.

    cryptography only finds recipients named that way; RFC 5652 6.2.1 also allows the
    subject key identifier (``openssl cms -keyid``, some clients). The identifier is a
    lookup hint, not authenticated data, so restating it changes nothing else.
    """
    info = asn1_cms.ContentInfo.load(bytes(envelope_der))
    for recipient in info["content"]["recipient_infos"]:
        if recipient.name != "ktri":
            continue
        if _recipient_id(recipient.chosen["rid"]).matches(certificate):
            recipient.chosen["rid"] = asn1_cms.RecipientIdentifier(
                name="issuer_and_serial_number",
                value=asn1_cms.IssuerAndSerialNumber(
                    {
                        "issuer": asn1_x509.Name.load(certificate.issuer.public_bytes()),
                        "serial_number": certificate.serial_number,
                    }
                ),
            )
    return info.dump(force=True)


def decrypt(envelope_der: bytes, certificate: x509.Certificate, private_key: PrivateKey) -> bytes:
    """The content of an EnvelopedData, opened with ``certificate``'s private key.

    Raises DecryptionError when the data is not an envelope, the certificate is not one of
    its recipients, the key is not the certificate's, or the ciphertext was altered.
    """
    try:
        rids = [rid for rid in envelope_recipients(envelope_der) if rid.matches(certificate)]
        if not rids:
            raise DecryptionError(
                f"the message is not encrypted for {certificate.subject.rfc4514_string()}",
                reason="not_a_recipient",
            )
        _check_key_pair(certificate, private_key)
        data = bytes(envelope_der)
        if all(rid.subject_key_identifier is not None for rid in rids):
            data = _name_recipient_by_issuer_and_serial(data, certificate)
    except DecryptionError:
        raise
    except CryptoError as exc:
        raise DecryptionError(exc.message, reason="malformed") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise DecryptionError("the CMS EnvelopedData is malformed", reason="malformed") from exc
    try:
        return pkcs7.pkcs7_decrypt_der(data, certificate, private_key, [])
    except (ValueError, TypeError) as exc:
        # Padding or structure errors: altered ciphertext or an unsupported algorithm.
        raise DecryptionError("the envelope cannot be decrypted (altered or unsupported)", reason="failed") from exc


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
    head = email.message.EmailMessage(policy=email.policy.SMTP)
    try:
        for name, value in headers.items():
            head[name] = value  # the policy encodes non-ASCII text (RFC 2047) and folds
        caller_headers = head.as_bytes(policy=email.policy.SMTP)[: -len(b"\r\n")] if headers else b""
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
    body = base64.encodebytes(der).replace(b"\n", b"\r\n")  # 76-character lines
    return caller_headers + b"\r\n".join(lines) + b"\r\n" + body


def to_smime_message(envelope_der: bytes, headers: Mapping[str, str]) -> bytes:
    """An RFC 8551 ``application/pkcs7-mime; smime-type=enveloped-data`` message (CRLF,
    base64 body) with ``headers`` (From, To, Subject ...) on top.

    A mail client expects the envelope's content to be a MIME entity: see
    :func:`export_for_mail_client`. Raises CryptoError when ``envelope_der`` is not an
    EnvelopedData or a header is malformed or reserved.
    """
    if not is_enveloped(envelope_der):
        raise CryptoError("only a CMS EnvelopedData can be exported as an S/MIME message")
    return _pkcs7_mime(bytes(envelope_der), SMIME_ENVELOPED_CONTENT_TYPE, headers)


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
    envelope_der: bytes,
    certificate: x509.Certificate,
    private_key: PrivateKey,
    headers: Mapping[str, str],
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
    parsed = email.message_from_bytes(bytes(message), policy=email.policy.default)
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
        der = parsed.get_payload(decode=True) or b""
    else:
        raise CryptoError(f"unsupported transfer encoding {encoding!r} for a CMS body")
    content_type(der)  # raises CryptoError on garbage
    return der
