"""Opening CMS envelopes as mail clients write them: EnvelopedData (RFC 5652 6) and
AuthEnvelopedData (RFC 5083), in DER or in BER with indefinite lengths.

cryptography's ``pkcs7_decrypt_der`` reads DER only, RSA PKCS #1 v1.5 key transport only and
AES-128/256-CBC only: NSS (hence Thunderbird) and gpgsm write BER, Outlook and OpenSSL may use
RSA-OAEP, and older clients 3DES. So the structure is parsed here with asn1crypto, and each
step uses one of cryptography's primitives, never a cipher of our own:

- key transport (RFC 5652 6.2.1): RSAES-PKCS1-v1_5, or RSAES-OAEP (RFC 3560, RFC 4055) with
  SHA-1, SHA-224, SHA-256, SHA-384 or SHA-512 and MGF1;
- content encryption: AES-128/192/256-CBC (RFC 3565), AES-128/192/256-GCM in an
  AuthEnvelopedData (RFC 5084), and 3DES-CBC (RFC 3370 5.1, for reading only: we never
  write it).

Key agreement (ECDH, ``kari``), key-encryption-key and password recipients are named but not
opened: ``check_openable`` reports them, so the relay can refuse at submission what could
never be read afterwards. A key transport that fails is not reported as such: as RFC 3218
2.3.2 advises against Bleichenbacher's attack, a random content key is used instead, and the
failure shows as altered content, the same as any other.

Everything here is pure: bytes and key objects in, bytes out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric import padding as asymmetric_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mss.errors import CryptoError, DecryptionError, UnsupportedCms

ENVELOPED_DATA = "enveloped_data"
AUTH_ENVELOPED_DATA = "authenticated_enveloped_data"
ENVELOPE_TYPES = (ENVELOPED_DATA, AUTH_ENVELOPED_DATA)
# What asn1crypto may raise on malformed or hostile input, parsed lazily field by field
# (RecursionError: constructed strings nested thousands deep).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError)


class GcmParameters(asn1_core.Sequence):
    """RFC 5084 3.2: ``GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING, aes-ICVlen
    INTEGER DEFAULT 12 }`` (asn1crypto leaves these parameters unparsed)."""

    _fields = [("nonce", asn1_core.OctetString), ("icv_len", asn1_core.Integer, {"default": 12})]


@dataclass(frozen=True)
class _Cbc:
    name: str
    algorithm: type
    key_size: int
    block_size: int


@dataclass(frozen=True)
class _Gcm:
    name: str
    key_size: int


_CBC = {
    "aes128_cbc": _Cbc("AES-128-CBC", algorithms.AES, 16, 16),
    "aes192_cbc": _Cbc("AES-192-CBC", algorithms.AES, 24, 16),
    "aes256_cbc": _Cbc("AES-256-CBC", algorithms.AES, 32, 16),
    "tripledes_3key": _Cbc("3DES-CBC", TripleDES, 24, 8),
}
_GCM = {
    "aes128_gcm": _Gcm("AES-128-GCM", 16),
    "aes192_gcm": _Gcm("AES-192-GCM", 24),
    "aes256_gcm": _Gcm("AES-256-GCM", 32),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# Names people know, for algorithms seen in the wild that we do not open.
_KNOWN_NAMES = {
    "1.2.840.113549.3.2": "RC2-CBC",
    "1.3.14.3.2.7": "DES-CBC",
    "1.2.392.200011.61.1.1.1.2": "Camellia-128-CBC",
    "1.2.392.200011.61.1.1.1.3": "Camellia-192-CBC",
    "1.2.392.200011.61.1.1.1.4": "Camellia-256-CBC",
    "2.16.840.1.101.3.4.1.7": "AES-128-CCM",
    "2.16.840.1.101.3.4.1.27": "AES-192-CCM",
    "2.16.840.1.101.3.4.1.47": "AES-256-CCM",
    "1.2.840.113549.1.9.16.3.18": "ChaCha20-Poly1305",
}
_RECIPIENT_KINDS = {
    "kari": "key agreement (ECDH or DH)",
    "kekri": "a pre-shared key-encryption key",
    "pwri": "a password",
    "ori": "another recipient type",
}


def _algorithm_name(algorithm: asn1_core.Sequence) -> str:
    oid = algorithm["algorithm"]
    return _KNOWN_NAMES.get(oid.dotted, oid.native if oid.native != oid.dotted else oid.dotted)


# -- structure ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A parsed EnvelopedData or AuthEnvelopedData."""

    info: asn1_cms.ContentInfo

    @property
    def kind(self) -> str:
        """``enveloped_data`` or ``authenticated_enveloped_data``."""
        return str(self.info["content_type"].native)

    @property
    def authenticated(self) -> bool:
        """True for an AuthEnvelopedData (AES-GCM)."""
        return self.kind == AUTH_ENVELOPED_DATA

    @property
    def content(self) -> asn1_core.Sequence:
        """The EnvelopedData or AuthEnvelopedData itself."""
        return self.info["content"]

    @property
    def encrypted_content_info(self) -> asn1_cms.EncryptedContentInfo:
        """Its EncryptedContentInfo (``authEncryptedContentInfo`` in an AuthEnvelopedData)."""
        field = "auth_encrypted_content_info" if self.authenticated else "encrypted_content_info"
        return self.content[field]

    @property
    def recipient_infos(self) -> asn1_cms.RecipientInfos:
        """Its RecipientInfos."""
        return self.content["recipient_infos"]


def content_info(
    data: bytes, *, error: type[CryptoError] = CryptoError, what: str = "CMS data"
) -> tuple[asn1_cms.ContentInfo, str]:
    """``data`` parsed as a CMS ContentInfo (RFC 5652 3), with its content type's name
    (``signed_data``, ``enveloped_data`` ...). The content itself is parsed lazily.

    Raises ``error`` when ``data`` is empty (the message names ``what``) or is not a
    ContentInfo.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or not data:
        raise error(f"no {what} given")
    try:
        info = asn1_cms.ContentInfo.load(bytes(data), strict=True)
        kind = str(info["content_type"].native)
    except PARSE_ERRORS as exc:
        raise error("the data is not a CMS (PKCS #7) structure") from exc
    return info, kind


def load(data: bytes) -> Envelope:
    """``data`` parsed as a CMS envelope (DER or BER).

    Every field is parsed here, so that truncated or altered input fails now, with
    CryptoError, rather than half-way through a later step.
    """
    info, kind = content_info(data)
    if kind not in ENVELOPE_TYPES:
        raise CryptoError(f"expected a CMS EnvelopedData, got {kind}")
    envelope = Envelope(info)
    try:
        envelope.content.native  # noqa: B018  (parses every field, the ciphertext included)
    except PARSE_ERRORS as exc:
        raise CryptoError("the CMS envelope is malformed or truncated") from exc
    return envelope


def to_der(data: bytes) -> bytes:
    """The envelope in DER: BER indefinite lengths and chunked strings (what NSS and gpgsm
    write) re-encoded. Nothing in an envelope is signed over its encoding, so the result
    opens exactly like the input. Raises CryptoError when ``data`` is not an envelope."""
    envelope = load(data)
    try:
        return envelope.info.dump(force=True)
    except PARSE_ERRORS as exc:
        raise CryptoError("the CMS envelope cannot be re-encoded") from exc


# -- what can be opened ------------------------------------------------------------------


def _key_transport_padding(algorithm: asn1_cms.KeyEncryptionAlgorithm) -> asymmetric_padding.AsymmetricPadding:
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return asymmetric_padding.PKCS1v15()
    if name == "rsaes_oaep":
        params = algorithm["parameters"]
        digest = params["hash_algorithm"]["algorithm"].native
        mask = params["mask_gen_algorithm"]
        if mask["algorithm"].native != "mgf1":
            raise UnsupportedCms(f"RSA-OAEP with mask generation {mask['algorithm'].dotted} is not supported here")
        mask_digest = mask["parameters"]["algorithm"].native
        if digest not in _HASHES or mask_digest not in _HASHES:
            raise UnsupportedCms(f"RSA-OAEP with {digest} and MGF1 {mask_digest} is not supported here")
        label = params["p_source_algorithm"]["parameters"].native or None
        return asymmetric_padding.OAEP(
            mgf=asymmetric_padding.MGF1(_HASHES[mask_digest]()), algorithm=_HASHES[digest](), label=label
        )
    raise UnsupportedCms(f"key transport {_algorithm_name(algorithm)} is not supported here (RSA or RSA-OAEP)")


def _content_cipher(envelope: Envelope) -> _Cbc | _Gcm:
    algorithm = envelope.encrypted_content_info["content_encryption_algorithm"]
    name = algorithm["algorithm"].native
    if envelope.authenticated:
        if name not in _GCM:
            raise UnsupportedCms(
                f"authenticated encryption {_algorithm_name(algorithm)} is not supported here (AES-GCM)"
            )
        return _GCM[name]
    if name not in _CBC:
        raise UnsupportedCms(
            f"content encryption {_algorithm_name(algorithm)} is not supported here (AES-CBC, AES-GCM or 3DES)"
        )
    return _CBC[name]


@dataclass(frozen=True)
class _Sealed:
    """What the content cipher needs besides the key."""

    cipher: _Cbc | _Gcm
    iv: bytes
    ciphertext: bytes
    tag: bytes = b""
    aad: bytes = b""


def _sealed(envelope: Envelope) -> _Sealed:
    """The ciphertext and its parameters, checked for shape. Raises UnsupportedCms, CryptoError."""
    cipher = _content_cipher(envelope)
    info = envelope.encrypted_content_info
    ciphertext = info["encrypted_content"].native
    if ciphertext is None:
        raise CryptoError("the envelope does not hold its encrypted content (detached content is not accepted)")
    parameters = info["content_encryption_algorithm"]["parameters"]
    if isinstance(cipher, _Cbc):
        iv = parameters.native if isinstance(parameters, asn1_core.OctetString) else None
        if not isinstance(iv, bytes) or len(iv) != cipher.block_size:
            raise CryptoError(f"the envelope's {cipher.name} initialisation vector is malformed")
        if not ciphertext or len(ciphertext) % cipher.block_size:
            raise CryptoError("the envelope's ciphertext is truncated")
        return _Sealed(cipher=cipher, iv=iv, ciphertext=ciphertext)
    gcm = GcmParameters.load(parameters.dump(), strict=True)
    nonce, icv_len = gcm["nonce"].native, gcm["icv_len"].native
    # RFC 5084 3.2: a 12-octet nonce is recommended; cryptography accepts 8 to 128 octets.
    if not 8 <= len(nonce) <= 128 or not 12 <= icv_len <= 16:
        raise CryptoError(f"the envelope's {cipher.name} parameters are malformed")
    tag = envelope.content["mac"].native
    if len(tag) != icv_len:
        raise CryptoError(f"the envelope's {cipher.name} authentication tag is malformed")
    auth_attrs = envelope.content["auth_attrs"]
    # RFC 5083 2.1: the authenticated attributes are protected in their DER form, SET OF tag.
    aad = b"" if isinstance(auth_attrs, asn1_core.Void) else auth_attrs.untag().dump(force=True)
    return _Sealed(cipher=cipher, iv=nonce, ciphertext=ciphertext, tag=tag, aad=aad)


def _rid(rid: asn1_core.Choice) -> tuple[bytes | None, int | None, bytes | None]:
    chosen = rid.chosen
    if rid.name == "issuer_and_serial_number":
        return chosen["issuer"].dump(), chosen["serial_number"].native, None
    if rid.name == "subject_key_identifier":
        return None, None, chosen.native
    # r_key_id (key agreement): a RecipientKeyIdentifier holding the subject key identifier.
    return None, None, chosen["subject_key_identifier"].native


def subject_key_identifier(certificate: x509.Certificate) -> bytes:
    """The certificate's subject key identifier, or the one RFC 5280 4.2.1.2 method 1 gives
    (what a sender computes when the extension is absent)."""
    try:
        return certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def rid_matches(rid: tuple[bytes | None, int | None, bytes | None], certificate: x509.Certificate) -> bool:
    """True when a recipient identifier (issuer DER, serial, key identifier) designates
    ``certificate``."""
    issuer_der, serial, key_id = rid
    if key_id is not None:
        return subject_key_identifier(certificate) == key_id
    if issuer_der is None or serial != certificate.serial_number:
        return False
    issuer = certificate.issuer.public_bytes()
    # Names compare after RFC 5280 7.1 normalisation (case, spaces, string types), not
    # byte for byte: another implementation may re-encode the issuer it copied.
    return issuer_der == issuer or asn1_x509.Name.load(issuer_der) == asn1_x509.Name.load(issuer)


def recipient_ids(envelope: Envelope) -> list[tuple[str, tuple[bytes | None, int | None, bytes | None]]]:
    """Each recipient the envelope names: (``ktri`` or ``kari``, identifier). Key-encryption
    -key, password and other recipients name no certificate and are left out."""
    found = []
    for info in envelope.recipient_infos:
        if info.name == "ktri":
            found.append(("ktri", _rid(info.chosen["rid"])))
        elif info.name == "kari":
            for encrypted_key in info.chosen["recipient_encrypted_keys"]:
                found.append(("kari", _rid(encrypted_key["rid"])))
    return found


def _key_transport_for(
    envelope: Envelope, certificate: x509.Certificate
) -> tuple[asn1_cms.KeyTransRecipientInfo, asymmetric_padding.AsymmetricPadding]:
    """The RecipientInfo that opens ``envelope`` for ``certificate``, and its padding.

    Raises DecryptionError (``not_a_recipient``), UnsupportedCms.
    """
    transports = [
        info.chosen
        for info in envelope.recipient_infos
        if info.name == "ktri" and rid_matches(_rid(info.chosen["rid"]), certificate)
    ]
    if not transports:
        for info in envelope.recipient_infos:
            if info.name == "kari" and any(
                rid_matches(_rid(k["rid"]), certificate) for k in info.chosen["recipient_encrypted_keys"]
            ):
                kind = f"{_RECIPIENT_KINDS['kari']}, {_algorithm_name(info.chosen['key_encryption_algorithm'])}"
                raise UnsupportedCms(f"recipients by {kind} cannot be opened here (RSA key transport only)")
        raise DecryptionError(
            f"the message is not encrypted for {certificate.subject.rfc4514_string()}", reason="not_a_recipient"
        )
    if not isinstance(certificate.public_key(), rsa.RSAPublicKey):
        raise UnsupportedCms("key transport to a key that is not RSA is not supported here")
    transport = transports[0]
    return transport, _key_transport_padding(transport["key_encryption_algorithm"])


def check_openable(envelope: Envelope, certificate: x509.Certificate) -> None:
    """Checks that the holder of ``certificate``'s private key can open ``envelope`` here.

    Raises DecryptionError (``reason="not_a_recipient"``) when no RecipientInfo names the
    certificate, UnsupportedCms for a recipient kind, key transport or content encryption
    we do not do, CryptoError for a malformed envelope.
    """
    try:
        _sealed(envelope)  # the content's algorithm and shape
        _key_transport_for(envelope, certificate)
    except PARSE_ERRORS as exc:
        raise CryptoError("the CMS envelope is malformed") from exc


# -- opening -----------------------------------------------------------------------------


def _content_key(
    transport: asn1_cms.KeyTransRecipientInfo,
    padding_: asymmetric_padding.AsymmetricPadding,
    private_key: rsa.RSAPrivateKey,
    key_size: int,
) -> bytes:
    """The content-encryption key, or a random one when the key transport does not yield a
    key of the right size (RFC 3218 2.3.2: no padding oracle)."""
    try:
        key = private_key.decrypt(transport["encrypted_key"].native, padding_)
    except ValueError:
        key = b""
    return key if len(key) == key_size else os.urandom(key_size)


def _decrypt_content(sealed: _Sealed, key: bytes) -> bytes:
    cipher = sealed.cipher
    if isinstance(cipher, _Gcm):
        decryptor = Cipher(algorithms.AES(key), modes.GCM(sealed.iv, sealed.tag, min_tag_length=12)).decryptor()
        if sealed.aad:
            decryptor.authenticate_additional_data(sealed.aad)
        try:
            return decryptor.update(sealed.ciphertext) + decryptor.finalize()
        except InvalidTag as exc:
            raise DecryptionError(
                "the envelope cannot be decrypted (altered, or not for this key)", reason="failed"
            ) from exc
    cbc = Cipher(cipher.algorithm(key), modes.CBC(sealed.iv)).decryptor()
    padded = cbc.update(sealed.ciphertext) + cbc.finalize()
    unpadder = padding.PKCS7(cipher.block_size * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError as exc:
        raise DecryptionError(
            "the envelope cannot be decrypted (altered, or not for this key)", reason="failed"
        ) from exc


def open_envelope(data: bytes, certificate: x509.Certificate, private_key: rsa.RSAPrivateKey) -> bytes:
    """The content of an EnvelopedData or AuthEnvelopedData, opened with the private key of
    ``certificate`` (the caller checked they belong together).

    Raises DecryptionError with ``reason``: ``malformed`` (not an envelope, truncated),
    ``not_a_recipient``, ``unsupported`` (algorithm or recipient kind) or ``failed``
    (altered, or encrypted to another key).
    """
    try:
        envelope = load(data)
        sealed = _sealed(envelope)
        transport, padding_ = _key_transport_for(envelope, certificate)
    except DecryptionError:
        raise
    except UnsupportedCms as exc:
        raise DecryptionError(exc.message, reason="unsupported") from exc
    except CryptoError as exc:
        raise DecryptionError(exc.message, reason="malformed") from exc
    except PARSE_ERRORS as exc:
        raise DecryptionError("the CMS envelope is malformed", reason="malformed") from exc
    key = _content_key(transport, padding_, private_key, sealed.cipher.key_size)
    return _decrypt_content(sealed, key)
