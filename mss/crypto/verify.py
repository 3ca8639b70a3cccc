"""Verification of CMS SignedData: integrity, path to a trusted CA, revocation, validity.

A SignedData embeds its content (``application/pkcs7-mime; smime-type=signed-data``) or
signs content kept beside it (the first part of a ``multipart/signed``, RFC 8551 3.5.3):
both are checked the same way, the digest of detached content being computed here. DER and
BER (indefinite lengths, chunked content, as NSS and gpgsm write) are both read.

cryptography cannot verify CMS, so this is pyHanko's generic CMS validation
(``async_validate_cms_signature``) with a pyhanko-certvalidator ``ValidationContext`` built
from the trust roots and CRLs the caller gives: real path validation, revocation required
(a CRL for the signer's issuer must be supplied and fresh), nothing fetched from the network.

The outcome is a :class:`SignatureReport` whose ``status`` is one of ``valid``, ``invalid``
(digest or signature mismatch: altered), ``untrusted`` (no path to a trust root, unusable
certificate, missing or stale revocation information), ``revoked`` or ``expired``. A
signature that does not hold is a report, not an exception; only input that is not a
verifiable SignedData at all raises SignatureError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NotRequired, TypedDict, Unpack

from asn1crypto import cms as asn1_cms
from asn1crypto import crl as asn1_crl
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from pyhanko.sign.ades.report import AdESIndeterminate
from pyhanko.sign.general import CMSExtractionError, extract_signer_info, get_pyca_cryptography_hash
from pyhanko.sign.validation.errors import SignatureValidationError
from pyhanko.sign.validation.generic_cms import (
    async_validate_cms_signature,
    extract_certs_for_validation,
    extract_self_reported_ts,
)
from pyhanko.sign.validation.settings import KeyUsageConstraints
from pyhanko.sign.validation.status import SignatureStatus
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy

from mss.crypto.envelope import PARSE_ERRORS, content_info
from mss.crypto.pki import serial_hex
from mss.errors import CryptoError, SignatureError

VALID = "valid"
INVALID = "invalid"
UNTRUSTED = "untrusted"
REVOKED = "revoked"
EXPIRED = "expired"
STATUSES = (VALID, INVALID, UNTRUSTED, REVOKED, EXPIRED)

# RFC 8550 4.4.2 and 4.4.4: a signing certificate asserts digitalSignature or
# nonRepudiation; if it has an extendedKeyUsage, emailProtection must be among them.
SMIME_SIGNER_USAGE = KeyUsageConstraints(
    key_usage={"digital_signature", "non_repudiation"},
    match_all_key_usages=False,
    extd_key_usage={"email_protection"},
    explicit_extd_key_usage_required=False,
)

_REASONS = {
    AdESIndeterminate.NO_CERTIFICATE_CHAIN_FOUND: "the signer's certificate does not chain to a trusted CA",
    AdESIndeterminate.CHAIN_CONSTRAINTS_FAILURE: "the signer's certificate is not valid for e-mail signatures",
    AdESIndeterminate.TRY_LATER: "the revocation list is out of date",
    AdESIndeterminate.CRYPTO_CONSTRAINTS_FAILURE: "the signature uses an algorithm that is no longer accepted",
    AdESIndeterminate.CRYPTO_CONSTRAINTS_FAILURE_NO_POE: "the signature uses an algorithm that is no longer accepted",
    AdESIndeterminate.REVOKED_CA_NO_POE: "the signer's CA certificate is revoked",
    AdESIndeterminate.REVOKED_NO_POE: "the signer's certificate is revoked",
    AdESIndeterminate.OUT_OF_BOUNDS_NO_POE: "the signer's certificate has expired",
    AdESIndeterminate.OUT_OF_BOUNDS_NOT_REVOKED: "the signer's certificate has expired",
    AdESIndeterminate.EXPIRED: "the signer's certificate has expired",
    AdESIndeterminate.NOT_YET_VALID: "the signer's certificate is not yet valid",
}
_EXPIRED = {
    AdESIndeterminate.OUT_OF_BOUNDS_NO_POE,
    AdESIndeterminate.OUT_OF_BOUNDS_NOT_REVOKED,
    AdESIndeterminate.EXPIRED,
}


@dataclass(frozen=True)
class SignatureReport:
    """What a signature check found, safe to show to the reader of the message."""

    status: str  # one of STATUSES
    reason: str  # one short sentence for people
    # The signed content, shown only with the status next to it. Left out of repr() so a
    # report that reaches a log line or a traceback never carries message content.
    content: bytes = field(repr=False)
    signer_address: str | None
    signer_common_name: str | None
    signer_serial: str  # hex
    signing_time: datetime | None  # as claimed by the signer (signingTime attribute)
    signer_certificate: x509.Certificate

    @property
    def trusted(self) -> bool:
        """True only for a valid signature by a trusted, unrevoked, current certificate."""
        return self.status == VALID


@dataclass(frozen=True)
class _Parsed:
    signed_data: asn1_cms.SignedData
    signer_info: asn1_cms.SignerInfo
    signer_cert: asn1_x509.Certificate
    content: bytes


def _parse(signed_der: bytes, detached: bytes | None = None) -> _Parsed:
    info, kind = content_info(signed_der, error=SignatureError, what="signed data")
    if kind != "signed_data":
        raise SignatureError(f"expected a CMS SignedData, got {kind}")
    try:
        signed_data = info["content"]
        content = signed_data["encap_content_info"]["content"].native
        signer_info = extract_signer_info(signed_data)
        certs = extract_certs_for_validation(signed_data)
    except CMSExtractionError as exc:
        raise SignatureError(f"the SignedData is malformed: {exc.failure_message}") from exc
    except SignatureValidationError as exc:
        raise SignatureError(f"the SignedData is unusable: {exc.failure_message}") from exc
    except PARSE_ERRORS as exc:
        raise SignatureError("the SignedData is malformed") from exc
    if detached is not None:
        if content is not None:
            raise SignatureError("a detached signature must not embed content")
        if not isinstance(detached, (bytes, bytearray)):
            raise SignatureError("the signed content must be bytes")
        content = bytes(detached)
    elif content is None:
        raise SignatureError("the SignedData does not embed its content (detached signature)")
    if not isinstance(content, bytes):
        raise SignatureError("the SignedData's content is not an OCTET STRING")
    return _Parsed(signed_data=signed_data, signer_info=signer_info, signer_cert=certs.signer_cert, content=content)


def _digest(parsed: _Parsed) -> bytes:
    """The digest of detached content, with the algorithm the signer declared."""
    name = parsed.signer_info["digest_algorithm"]["algorithm"].native
    try:
        algorithm = get_pyca_cryptography_hash(name)
    except (NotImplementedError, ValueError, KeyError) as exc:
        raise SignatureError(f"the digest algorithm {name} is not supported") from exc
    digest = hashes.Hash(algorithm)
    digest.update(parsed.content)
    return digest.finalize()


def _crl_der(item: bytes | x509.CertificateRevocationList) -> asn1_crl.CertificateList:
    if isinstance(item, x509.CertificateRevocationList):
        item = item.public_bytes(Encoding.DER)
    if not isinstance(item, (bytes, bytearray)):
        raise CryptoError("CRLs must be given as bytes (DER or PEM)")
    data = bytes(item)
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            data = x509.load_pem_x509_crl(data).public_bytes(Encoding.DER)
        except ValueError as exc:
            raise CryptoError("a CRL given for verification is not a PEM CRL") from exc
    try:
        parsed = asn1_crl.CertificateList.load(data, strict=True)
        # The outer fields only (a long list is parsed lazily, entry by entry, later):
        # a file that is not a CRL at all fails here, not deep inside path validation.
        parsed["tbs_cert_list"]["issuer"].native  # noqa: B018
        parsed["signature_algorithm"].native  # noqa: B018
    except (ValueError, TypeError) as exc:
        raise CryptoError("a CRL given for verification is not a DER CRL") from exc
    return parsed


def _validation_context(
    trust_roots: Sequence[x509.Certificate],
    crls: Sequence[bytes | x509.CertificateRevocationList],
    moment: datetime | None,
) -> ValidationContext:
    if not trust_roots:
        # Without roots pyhanko would fall back to the system's TLS trust store: never.
        raise CryptoError("signature verification needs at least one trust root")
    roots = [asn1_x509.Certificate.load(root.public_bytes(Encoding.DER)) for root in trust_roots]
    if moment is not None and moment.tzinfo is None:
        raise CryptoError("the verification moment must be timezone-aware")
    return ValidationContext(
        trust_roots=roots,
        crls=[_crl_der(item) for item in crls],
        moment=moment,
        allow_fetching=False,
        revinfo_policy=CertRevTrustPolicy(
            REQUIRE_REVINFO,
            # Checking a past moment (when a stored message was signed) with today's CRL:
            # a CRL that does not list the certificate, or lists it as revoked after that
            # moment, still answers the question for that moment.
            retroactive_revinfo=moment is not None,
        ),
    )


def _classify(
    status: SignatureStatus, signer: x509.Certificate, moment: datetime | None, crls_given: bool
) -> tuple[str, str]:
    if not status.intact:
        return INVALID, "the signed content was altered after signing"
    if not status.valid:
        return INVALID, "the signature does not match the signer's certificate"
    if status.trusted:
        return VALID, "signature valid, signer's certificate trusted and not revoked"
    if status.revoked:
        details = status.revocation_details
        if details is not None and details.ca_revoked:
            return REVOKED, "the signer's CA certificate is revoked"
        return REVOKED, "the signer's certificate is revoked"
    indication = status.trust_problem_indic
    if indication in _EXPIRED:
        return EXPIRED, _REASONS[indication]
    if indication in _REASONS:
        return UNTRUSTED, _REASONS[indication]
    # certvalidator reports several path problems as one general failure; name the
    # likely ones from what we can see ourselves.
    when = moment or datetime.now(signer.not_valid_before_utc.tzinfo)
    if signer.not_valid_before_utc > when:
        return UNTRUSTED, "the signer's certificate is not yet valid"
    if not crls_given:
        return UNTRUSTED, "no revocation list was available to check the signer's certificate"
    return (
        UNTRUSTED,
        "the signer's certificate failed path validation (revocation information missing or chain invalid)",
    )


def crl_problem(
    certificate: x509.Certificate,
    trust_roots: Sequence[x509.Certificate],
    crls: Sequence[bytes | x509.CertificateRevocationList],
    moment: datetime | None = None,
) -> str | None:
    """Why no usable CRL covers ``certificate``'s issuer at ``moment`` (default now), or None.

    A usable CRL is from the issuer, signed by the issuer's key among ``trust_roots``, and
    not past its nextUpdate. Without one, a signature cannot be shown as valid (fail closed).
    """
    issuer = next((root for root in trust_roots if root.subject == certificate.issuer), None)
    when = moment or datetime.now(UTC)
    found = bad_signature = stale = 0
    for item in crls:
        try:
            crl = item if isinstance(item, x509.CertificateRevocationList) else x509.load_der_x509_crl(bytes(item))
        except ValueError:
            bad_signature += 1
            continue
        if crl.issuer != certificate.issuer:
            continue
        found += 1
        # CA keys are RSA or EC (the types a CRL can be signed with); the union names others
        if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            bad_signature += 1
        elif crl.next_update_utc is None or crl.next_update_utc < when:
            stale += 1
        else:
            return None
    if not found and not bad_signature:
        return "no revocation list is available for the signer's CA: the signature cannot be trusted"
    if stale:
        return "the revocation list is out of date: the signature cannot be trusted until it is refreshed"
    return "the revocation list is not correctly signed by the signer's CA: the signature cannot be trusted"


def revocation_date(
    certificate: x509.Certificate, crls: Sequence[bytes | x509.CertificateRevocationList]
) -> datetime | None:
    """When a CRL of the certificate's issuer lists it as revoked, or None."""
    for item in crls:
        try:
            crl = item if isinstance(item, x509.CertificateRevocationList) else x509.load_der_x509_crl(bytes(item))
        except ValueError:
            continue
        if crl.issuer != certificate.issuer:
            continue
        entry = crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is not None:
            return entry.revocation_date_utc
    return None


def _certificate(certificate: asn1_x509.Certificate) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(certificate.dump())
    except (ValueError, *PARSE_ERRORS) as exc:
        raise SignatureError("the signer's certificate cannot be read") from exc


def certificate_addresses(certificate: x509.Certificate) -> tuple[str, ...]:
    """The mail addresses a certificate names, in its subjectAltName's rfc822Names and its
    subject's emailAddress (RFC 8550 3 has receiving agents recognise both), in that order."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        named = list(san.get_values_for_type(x509.RFC822Name))
    except x509.ExtensionNotFound:
        named = []
    named += [str(e.value) for e in certificate.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    return tuple(dict.fromkeys(named))


def _signer_address(certificate: x509.Certificate) -> str | None:
    addresses = certificate_addresses(certificate)
    return addresses[0] if addresses else None


def _common_name(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


async def async_verify_signed_data(
    signed_der: bytes,
    *,
    trust_roots: Sequence[x509.Certificate],
    crls: Sequence[bytes | x509.CertificateRevocationList],
    moment: datetime | None = None,
    detached_content: bytes | None = None,
) -> SignatureReport:
    """Check a SignedData against ``trust_roots`` and ``crls``.

    The content is the one embedded, or ``detached_content`` for a detached signature (the
    SignedData must then embed none). ``moment`` (timezone-aware) validates as of that time
    instead of now. Returns a :class:`SignatureReport`. Raises SignatureError when the
    input is not a SignedData with its content, exactly one signer and the signer's
    certificate; CryptoError for unusable trust roots or CRLs.
    """
    parsed = _parse(signed_der, detached_content)
    context = _validation_context(trust_roots, crls, moment)
    raw_digest = _digest(parsed) if detached_content is not None else None
    try:
        status = await async_validate_cms_signature(
            parsed.signed_data, raw_digest=raw_digest, validation_context=context, key_usage_settings=SMIME_SIGNER_USAGE
        )
    except SignatureValidationError as exc:
        # Inconsistent signed attributes (content type, algorithm protection, signing
        # certificate reference): the signed structure does not hold together.
        report_status, reason = INVALID, f"the signature's attributes are inconsistent: {exc.failure_message}"
        signer = _certificate(parsed.signer_cert)
    except (NotImplementedError, *PARSE_ERRORS) as exc:
        raise SignatureError("the SignedData could not be processed") from exc
    else:
        signer = _certificate(status.signing_cert)
        report_status, reason = _classify(status, signer, moment, bool(crls))
        if report_status == UNTRUSTED:
            # Fail closed, and say why when the revocation list is the cause.
            reason = crl_problem(signer, trust_roots, crls, moment) or reason
    try:
        signing_time = extract_self_reported_ts(parsed.signer_info)
    except PARSE_ERRORS:
        signing_time = None
    return SignatureReport(
        status=report_status,
        reason=reason,
        content=parsed.content,
        signer_address=_signer_address(signer),
        signer_common_name=_common_name(signer),
        signer_serial=serial_hex(signer.serial_number),
        signing_time=signing_time,
        signer_certificate=signer,
    )


class VerifyOptions(TypedDict):
    """The keyword arguments of :func:`async_verify_signed_data`, which its blocking form
    passes on as they are."""

    trust_roots: Sequence[x509.Certificate]
    crls: Sequence[bytes | x509.CertificateRevocationList]
    moment: NotRequired[datetime | None]
    detached_content: NotRequired[bytes | None]


def verify_signed_data(signed_der: bytes, **options: Unpack[VerifyOptions]) -> SignatureReport:
    """Blocking form of :func:`async_verify_signed_data` (same arguments), for worker threads.

    Runs the validation on a private event loop, so it works in a thread started by
    ``asyncio.to_thread`` while the service's loop runs elsewhere. Called on a thread whose
    loop is running it raises RuntimeError rather than block that loop; there, use
    ``await asyncio.to_thread(verify_signed_data, ...)`` (the digest of a large message is
    CPU work) or, for small content, ``await async_verify_signed_data(...)``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "verify_signed_data blocks: call it through asyncio.to_thread, or await async_verify_signed_data"
        )
    # A private loop rather than asyncio.run(): the latter also installs a SIGINT handler
    # when called on the main thread, which a short CPU-bound check does not need.
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(async_verify_signed_data(signed_der, **options))
    finally:
        loop.close()
