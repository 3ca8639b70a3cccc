"""The operator's PKI: the development CA, certificate issuance and the revocation list.

Certificate profiles (RFC 5280, S/MIME per RFC 8550):

- the development CA: RSA 3072, self-signed, basicConstraints CA:true (critical), keyUsage
  keyCertSign + cRLSign (critical), subject key identifier;
- S/MIME certificates: RSA (cryptography's CMS envelope only encrypts to RSA keys),
  subject C=FR, O, CN and the national identifier (RPPS) as ``serialNumber`` (2.5.4.5),
  subjectAltName rfc822Name, extendedKeyUsage emailProtection, keyUsage digitalSignature +
  keyEncipherment (critical), basicConstraints CA:false, SKI/AKI, a random 159-bit serial;
- the operator's receipt-signing certificate: for a postmaster address, with an ECDSA P-256
  key that only signs (keyUsage digitalSignature; nothing is encrypted to the operator), or
  with ``MSS_OPERATOR_KEY=rsa`` the S/MIME profile above;
- the TLS server certificate: ECDSA P-256, serverAuth, SAN dNSName / iPAddress.

Files in ``MSS_CERTS_DIR`` (see :class:`PkiPaths`): ``ca.pem``, ``ca.key``, ``ca.crl.pem``,
``server.pem`` (the TLS certificate followed by the CA's: the chain a server sends) and
``server.key``; in ``MSS_DATA_DIR``: ``recovery.key`` (the offline recovery
X25519 private key, base64 text, 0600) next to ``recovery.pub`` (``MSS_RECOVERY_PUBLIC_KEY``).
Private keys are created with mode 0600 and renamed into place, never chmod-ed afterwards.

Everything except the few ``write_*``/``init_dev_pki``/``load_*`` functions is pure:
objects in, objects out.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mss.crypto import keys
from mss.errors import ConfigError, CryptoError, PkiError
from mss.files import write_file
from mss.settings import OPERATOR_KEY_EC, OPERATOR_KEY_RSA, Settings

CA_KEY_BITS = 3072
CA_DAYS = 3650
TLS_DAYS = 397  # the CA/Browser Forum ceiling for server certificates
DEV_CRL_DAYS = 30
MAX_CERTIFICATE_DAYS = 3650
# Issued certificates start a few minutes in the past so a peer whose clock runs slightly
# behind does not see them as "not yet valid".
BACKDATE = timedelta(minutes=5)
# The TLS certificate serves STARTTLS and is the client certificate towards other operators.
TLS_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
# X.520 upper bound for commonName and organizationName (ub-common-name, ub-organization-name).
NAME_MAX = 64

# RFC 5280 5.3.1 reason codes, by their ASN.1 names and the snake_case spelling.
# RFC 5280 5.3.1's reasons that do not revoke for good: removeFromCRL (a delta CRL's way to
# lift a hold: a verifier takes a certificate listed with it as good) and certificateHold (a
# hold is meant to be lifted; a revocation here is final). Neither is accepted, and a row
# that holds one is listed as unspecified.
NOT_FINAL_REASONS: frozenset[x509.ReasonFlags] = frozenset(
    {x509.ReasonFlags.remove_from_crl, x509.ReasonFlags.certificate_hold}
)
_ANY_REASON: dict[str, x509.ReasonFlags] = {}
for _flag in x509.ReasonFlags:
    _ANY_REASON[_flag.value] = _flag
    _ANY_REASON[_flag.name] = _flag
del _flag
REVOCATION_REASONS: dict[str, x509.ReasonFlags] = {
    name: flag for name, flag in _ANY_REASON.items() if flag not in NOT_FINAL_REASONS
}

_PRINTABLE = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 '()+,-./:=?")

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its signing key."""

    certificate: x509.Certificate
    private_key: PrivateKey


@dataclass(frozen=True)
class PkiPaths:
    """Where the PKI material lives for a given settings object."""

    ca_certificate: Path
    ca_key: Path
    crl: Path
    tls_certificate: Path
    tls_key: Path
    recovery_private_key: Path
    recovery_public_key: Path
    lock: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> PkiPaths:
        certs = Path(settings.pki.certs_dir)
        return cls(
            ca_certificate=certs / "ca.pem",
            ca_key=certs / "ca.key",
            crl=certs / "ca.crl.pem",
            tls_certificate=certs / "server.pem",
            tls_key=certs / "server.key",
            # Written by `mss pki init` away from the data folder, to be moved offline.
            recovery_private_key=Path(settings.pki.recovery_private_key_out),
            recovery_public_key=Path(settings.pki.recovery_public_key),
            lock=certs / ".pki.lock",
        )


@dataclass(frozen=True)
class DevPki:
    """The development PKI as it is on disk after :func:`init_dev_pki`."""

    paths: PkiPaths
    ca: CertificateAuthority
    tls_certificate: x509.Certificate
    recovery_public_key: bytes
    generated: tuple[str, ...]  # what this call created: "ca", "crl", "tls", "recovery"


# -- small helpers -----------------------------------------------------------------------


def serial_hex(serial: int) -> str:
    """A certificate serial as stored and shown: lower-case hex, no leading zeros."""
    if not isinstance(serial, int) or serial < 0:
        raise PkiError(f"{serial!r} is not a certificate serial number")
    return format(serial, "x")


def _now() -> datetime:
    return datetime.now(UTC)


def _check_address(address: str) -> str:
    if not isinstance(address, str) or len(address) > 254 or address.count("@") != 1:
        raise PkiError(f"{address!r} is not a mail address")
    local, _, domain = address.partition("@")
    if not local or not domain or "." not in domain or any(ch.isspace() for ch in address):
        raise PkiError(f"{address!r} is not a mail address")
    if not address.isascii():
        # rfc822Name is an IA5String (RFC 5280 4.2.1.6); internationalised addresses
        # need the SmtpUTF8Mailbox form of RFC 9598, which the trust space does not use.
        raise PkiError(f"{address!r} is not an ASCII mail address")
    return address


def _check_printable(value: str, what: str) -> str:
    if not value or any(ch not in _PRINTABLE for ch in value) or len(value) > NAME_MAX:
        raise PkiError(f"{what} {value!r} must be 1-{NAME_MAX} letters, digits or simple punctuation")
    return value


def _clip(value: str) -> str:
    # Directory names can exceed the X.520 bound; the certificate carries a clipped copy
    # (the rfc822Name and the serialNumber, not the display name, identify the holder).
    return value.strip()[:NAME_MAX].strip()


def _check_key_bits(key_bits: int) -> int:
    if not isinstance(key_bits, int) or not 2048 <= key_bits <= 8192 or key_bits % 256:
        raise PkiError(f"RSA key size {key_bits!r} must be a multiple of 256 between 2048 and 8192")
    return key_bits


def _check_days(days: int) -> int:
    if not isinstance(days, int) or not 1 <= days <= MAX_CERTIFICATE_DAYS:
        raise PkiError(f"certificate validity {days!r} must be between 1 and {MAX_CERTIFICATE_DAYS} days")
    return days


def _authority_key_identifier(ca: CertificateAuthority) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.private_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _validity(ca: CertificateAuthority, days: int) -> tuple[datetime, datetime]:
    now = _now()
    not_after = now + timedelta(days=days)
    # A certificate must not outlive its issuer (RFC 5280 6.1.3 would reject it anyway).
    ca_end = ca.certificate.not_valid_after_utc
    if ca_end <= now:
        raise PkiError("the CA certificate has expired; renew it before issuing")
    return now - BACKDATE, min(not_after, ca_end)


def _issue(
    ca: CertificateAuthority,
    subject: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    days: int,
    extensions: list[tuple[x509.ExtensionType, bool]],
) -> x509.Certificate:
    not_before, not_after = _validity(ca, days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        # 159 random bits: positive, at most 20 octets (RFC 5280 4.1.2.2), unguessable.
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca), critical=False)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(ca.private_key, hashes.SHA256())


# The KeyUsage bits in RFC 5280 4.2.1.3 order (contentCommitment was nonRepudiation).
_KEY_USAGE_BITS = (
    "digital_signature content_commitment key_encipherment data_encipherment key_agreement key_cert_sign crl_sign"
    " encipher_only decipher_only"
).split()


def _key_usage(**usages: bool) -> x509.KeyUsage:
    """The KeyUsage extension with the ``usages`` given and every other bit off."""
    return x509.KeyUsage(**(dict.fromkeys(_KEY_USAGE_BITS, False) | usages))


def _end_entity_extensions(
    *,
    key_encipherment: bool,
    usage: x509.ObjectIdentifier | tuple[x509.ObjectIdentifier, ...],
    names: list[x509.GeneralName],
) -> list[tuple[x509.ExtensionType, bool]]:
    """The profile shared by every end-entity certificate: not a CA, a signing key (that
    also unwraps content keys for S/MIME), its extended usages, its names."""
    usages = [usage] if isinstance(usage, x509.ObjectIdentifier) else list(usage)
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(digital_signature=True, key_encipherment=key_encipherment), True),
        (x509.ExtendedKeyUsage(usages), False),
        (x509.SubjectAlternativeName(names), False),
    ]


def _issue_smime(
    ca: CertificateAuthority,
    address: str,
    subject: x509.Name,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    key_encipherment: bool,
    days: int,
    crl_url: str | None,
) -> x509.Certificate:
    """The S/MIME profile (emailProtection, ``address`` as rfc822Name, the CRL distribution
    point when given) for ``public_key``; raises PkiError when it cannot be built."""
    extensions = _end_entity_extensions(
        key_encipherment=key_encipherment, usage=ExtendedKeyUsageOID.EMAIL_PROTECTION, names=[x509.RFC822Name(address)]
    )
    if crl_url:
        extensions.append((_crl_distribution_point(crl_url), False))
    try:
        return _issue(ca, subject, public_key, days=days, extensions=extensions)
    except ValueError as exc:
        raise PkiError(f"the certificate for {address} cannot be built: {exc}") from exc


# -- issuance (pure) ---------------------------------------------------------------------


def new_certificate_authority(*, common_name: str, organisation: str, days: int = CA_DAYS) -> CertificateAuthority:
    """A fresh self-signed RSA 3072 CA (the development CA's profile)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=CA_KEY_BITS)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _clip(organisation)),
            x509.NameAttribute(NameOID.COMMON_NAME, _clip(common_name)),
        ]
    )
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=_check_days(days)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=certificate, private_key=key)


def issue_smime_certificate(
    ca: CertificateAuthority,
    *,
    address: str,
    rpps_national_id: str | None,
    common_name: str,
    organisation: str | None = None,
    key_bits: int = 3072,
    days: int = 1095,
    crl_url: str | None = None,
    public_key: rsa.RSAPublicKey | None = None,
) -> tuple[rsa.RSAPrivateKey | None, x509.Certificate]:
    """An S/MIME certificate for ``address``, signed by ``ca``, with a new RSA key.

    With ``public_key`` the certificate is for that key instead (a renewal, which keeps the
    key pair) and the returned private key is None. ``rpps_national_id`` goes into the
    subject's serialNumber (for an organisation's mailbox, its structure identifier, or
    None). ``crl_url`` is written as the CRL distribution point (RFC 5280 4.2.1.13), so
    relying parties check revocation on their own. Raises PkiError on a malformed argument.
    """
    _check_address(address)
    _check_days(days)
    subject = _smime_subject(common_name, organisation, rpps_national_id)
    key: rsa.RSAPrivateKey | None = None
    if public_key is None:
        _check_key_bits(key_bits)
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        public_key = key.public_key()
    elif not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < 2048:
        raise PkiError("an S/MIME key must be RSA of at least 2048 bits")
    certificate = _issue_smime(ca, address, subject, public_key, key_encipherment=True, days=days, crl_url=crl_url)
    return key, certificate


def _smime_subject(common_name: str, organisation: str | None, national_id: str | None) -> x509.Name:
    """C=FR, O, CN and the national identifier as serialNumber; raises PkiError without a
    common name or on an identifier that is not printable."""
    cn = _clip(common_name or "")
    if not cn:
        raise PkiError("a certificate needs a common name")
    attributes = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR")]
    if organisation and _clip(organisation):
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, _clip(organisation)))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    if national_id:
        attributes.append(
            x509.NameAttribute(NameOID.SERIAL_NUMBER, _check_printable(national_id, "national identifier"))
        )
    return x509.Name(attributes)


def _crl_distribution_point(url: str) -> x509.CRLDistributionPoints:
    if not url.startswith("http://") or not url.isprintable() or " " in url:
        raise PkiError(f"the CRL distribution point must be an http:// URL, not {url!r}")
    return x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None, crl_issuer=None
            )
        ]
    )


def issue_operator_certificate(
    ca: CertificateAuthority,
    *,
    address: str,
    key_type: str = OPERATOR_KEY_EC,
    key_bits: int = 3072,
    days: int = 1095,
    crl_url: str | None = None,
) -> tuple[PrivateKey, x509.Certificate]:
    """The operator's own S/MIME signing key and certificate (it signs DSN and MDN receipts).

    ``key_type`` ``ec-p256``: a new ECDSA P-256 key that only signs (keyUsage
    digitalSignature alone: nothing is ever encrypted to the operator); a receipt's
    signature then costs about 0.1 ms against 2 ms with RSA 3072. ``rsa``: an RSA key of
    ``key_bits`` with a user's S/MIME profile, for a trust space that accepts only RSA.
    Raises PkiError on a malformed argument.
    """
    _check_address(address)
    _check_days(days)
    organisation_names = ca.certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    organisation = str(organisation_names[0].value) if organisation_names else None
    common_name = f"Operator receipts {address.partition('@')[2]}"
    if key_type == OPERATOR_KEY_RSA:
        rsa_key, certificate = issue_smime_certificate(
            ca,
            address=address,
            rpps_national_id=None,
            common_name=common_name,
            organisation=organisation,
            key_bits=key_bits,
            days=days,
            crl_url=crl_url,
        )
        assert rsa_key is not None  # a new key was asked for
        return rsa_key, certificate
    if key_type != OPERATOR_KEY_EC:
        raise PkiError(f"the operator's key must be {OPERATOR_KEY_EC} or {OPERATOR_KEY_RSA}, not {key_type!r}")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _smime_subject(common_name, organisation, None)
    certificate = _issue_smime(
        ca, address, subject, key.public_key(), key_encipherment=False, days=days, crl_url=crl_url
    )
    return key, certificate


def issue_tls_certificate(
    ca: CertificateAuthority, hostnames: Iterable[str], *, days: int = TLS_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """An ECDSA P-256 TLS certificate for ``hostnames`` (names and IP addresses).

    It carries serverAuth and clientAuth, like the health PKI's server certificates: the
    same certificate answers STARTTLS and authenticates this operator to other operators'
    MX (mutual TLS). Raises ConfigError when there is no usable host name.
    """
    names: list[x509.GeneralName] = []
    for host in hostnames:
        host = host.strip()
        if not host:
            continue
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
            continue
        except ValueError:
            pass
        try:
            names.append(x509.DNSName(host.encode("idna").decode("ascii").lower()))
        except UnicodeError as exc:
            raise ConfigError(f"MSS_HOSTNAMES: {host!r} is not a host name") from exc
    if not names:
        raise ConfigError("MSS_HOSTNAMES names no host for the TLS certificate")
    first = names[0].value
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _clip(str(first)))])
    certificate = _issue(
        ca,
        subject,
        key.public_key(),
        days=days,
        extensions=_end_entity_extensions(key_encipherment=False, usage=TLS_USAGES, names=names),
    )
    return key, certificate


def has_tls_usages(certificate: x509.Certificate) -> bool:
    """True when the certificate may both serve TLS and authenticate as a TLS client."""
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True  # no extended key usage: any usage (RFC 5280 4.2.1.12)
    return all(usage in usages for usage in TLS_USAGES)


def revocation_reason(reason: str) -> x509.ReasonFlags:
    """The RFC 5280 reason for a name such as ``keyCompromise`` or ``key_compromise``.

    Raises PkiError for any other text.
    """
    flag = REVOCATION_REASONS.get(reason)
    if flag is None:
        known = ", ".join(sorted({f.value for f in REVOCATION_REASONS.values()}))
        if reason in _ANY_REASON:
            raise PkiError(f"{reason} does not revoke a certificate for good; use one of: {known}")
        raise PkiError(f"unknown revocation reason {reason!r}; use one of: {known}")
    return flag


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[tuple[int, datetime, str]],
    *,
    next_update_days: int = 7,
    crl_number: int | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``(serial, revoked_at, reason)`` entries.

    It carries the authority key identifier and a CRL number (both required by RFC 5280
    5.2); the number defaults to the current time in microseconds, so CRLs built later
    sort later. Raises PkiError on a malformed entry or reason.
    """
    if not 1 <= next_update_days <= 366:
        raise PkiError("a CRL's next update must be 1 to 366 days ahead")
    now = _now()
    number = crl_number if crl_number is not None else time.time_ns() // 1000
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - BACKDATE)
        .next_update(now + timedelta(days=next_update_days))
        .add_extension(_authority_key_identifier(ca), critical=False)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    seen: set[int] = set()
    for serial, revoked_at, reason in revoked:
        if not isinstance(serial, int) or serial <= 0:
            raise PkiError(f"revoked serial {serial!r} is not a positive number")
        if revoked_at.tzinfo is None:
            raise PkiError("revocation times must be timezone-aware")
        if serial in seen:
            continue
        seen.add(serial)
        flag = _ANY_REASON.get(reason)
        if flag is None:
            raise PkiError(f"unknown revocation reason {reason!r}")
        if flag in NOT_FINAL_REASONS:
            flag = x509.ReasonFlags.unspecified  # revoked here for good, whatever the row says
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        # RFC 5280 5.3.1: the reasonCode extension is omitted rather than "unspecified".
        if flag is not x509.ReasonFlags.unspecified:
            entry = entry.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(ca.private_key, hashes.SHA256())


def certificate_covers(certificate: x509.Certificate, hostnames: Iterable[str]) -> bool:
    """True when the certificate's SAN names every host in ``hostnames``."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    ips = set(san.get_values_for_type(x509.IPAddress))
    for host in hostnames:
        host = host.strip()
        if not host:
            continue
        try:
            if ipaddress.ip_address(host) not in ips:
                return False
        except ValueError:
            if host.encode("idna").decode("ascii").lower() not in dns:
                return False
    return True


def issued_by(certificate: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    """True when ``ca_certificate``'s key signed ``certificate``."""
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        # A different issuer name (ValueError), key type (TypeError) or signature: all of
        # them mean "not issued by this CA".
        return False
    return True


# -- files -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(paths: PkiPaths) -> Iterator[None]:
    # Serialises writers of the PKI folder across processes (two services starting at
    # once, a revocation while the CRL is refreshed): they would otherwise interleave a
    # CA certificate from one run with a key from another.
    paths.lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _read_certificate(path: Path, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"{what} {path} not found: run `mss pki init`") from None
    except ValueError as exc:
        raise PkiError(f"{what} {path} is not a PEM certificate") from exc


def _read_private_key(path: Path, what: str) -> PrivateKey:
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} {path} not found: run `mss pki init`") from None
    if mode & 0o077:
        raise PkiError(f"{path} must not be readable by group or others (chmod 600)")
    try:
        return keys.private_key_from_pem(data)
    except CryptoError as exc:
        raise PkiError(f"{what} {path} is not a readable private key") from exc


def load_ca_certificate(settings: Settings) -> x509.Certificate:
    """The CA certificate (the trust root). Raises PkiError when missing or malformed."""
    return _read_certificate(PkiPaths.from_settings(settings).ca_certificate, "CA certificate")


def load_ca(settings: Settings) -> CertificateAuthority:
    """The CA certificate and its key. Raises PkiError when missing, malformed or mismatched."""
    paths = PkiPaths.from_settings(settings)
    if not paths.ca_certificate.exists() or not paths.ca_key.exists():
        raise PkiError(f"no CA in {paths.ca_certificate.parent}: run `mss pki init`")
    certificate = _read_certificate(paths.ca_certificate, "CA certificate")
    key = _read_private_key(paths.ca_key, "CA key")
    if not keys.key_matches_certificate(key, certificate):
        raise PkiError(f"{paths.ca_key} is not the key of {paths.ca_certificate}")
    return CertificateAuthority(certificate=certificate, private_key=key)


def load_crl(settings: Settings) -> x509.CertificateRevocationList | None:
    """The CA's current CRL, or None when there is none yet. Raises PkiError when malformed."""
    path = PkiPaths.from_settings(settings).crl
    try:
        return x509.load_pem_x509_crl(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM CRL") from exc


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return -1


def write_crl(settings: Settings, crl: x509.CertificateRevocationList) -> bool:
    """Install ``crl`` as ``ca.crl.pem`` unless the file already holds a newer one.

    Two writers may finish out of order; comparing CRL numbers under a lock keeps the
    newest list. Returns True when the file was replaced.
    """
    paths = PkiPaths.from_settings(settings)
    with _locked(paths):
        return _write_crl_locked(paths, crl)


def _write_crl_locked(paths: PkiPaths, crl: x509.CertificateRevocationList, *, replace_any: bool = False) -> bool:
    if not replace_any and paths.crl.exists():
        try:
            current = x509.load_pem_x509_crl(paths.crl.read_bytes())
        except ValueError:
            current = None  # a damaged file is replaced
        if current is not None and _crl_number(current) >= _crl_number(crl):
            return False
    write_file(paths.crl, crl.public_bytes(serialization.Encoding.PEM), private=False)
    return True


def init_dev_pki(settings: Settings, *, force: bool = False) -> DevPki:
    """Create the development PKI where it is missing and return it.

    Existing material is kept (the call is idempotent), except that the TLS certificate is
    re-issued when it no longer covers ``MSS_HOSTNAMES``, lacks the client usage (mutual TLS
    with other operators) or was issued by another CA.
    ``force`` regenerates everything: the CA (every certificate it issued stops being
    trusted) and the recovery key pair (keys escrowed to the old one can only be recovered
    with the old private key). Raises ConfigError in production, where this material comes
    from the operator's PKI, and PkiError when existing material is inconsistent.
    """
    if settings.is_production:
        raise ConfigError("the development PKI is never created in production; install the operator's CA")
    paths = PkiPaths.from_settings(settings)
    generated: list[str] = []
    with _locked(paths):
        ca_files = (paths.ca_certificate.exists(), paths.ca_key.exists())
        if force or ca_files == (False, False):
            ca = new_certificate_authority(
                common_name=f"mss development CA {secrets.token_hex(3)}", organisation="mss development"
            )
            # Key first: a certificate on disk always has its key next to it.
            write_file(paths.ca_key, keys.private_key_to_pem(ca.private_key), private=True)
            write_file(paths.ca_certificate, _pem(ca.certificate), private=False)
            generated.append("ca")
        elif ca_files != (True, True):
            missing = paths.ca_key if ca_files[0] else paths.ca_certificate
            raise PkiError(f"{missing} is missing while its pair exists; run `mss pki init --force`")
        else:
            ca = load_ca(settings)

        crl = None if "ca" in generated else _load_crl_file(paths)
        if crl is None or not crl.is_signature_valid(ca.private_key.public_key()):
            _write_crl_locked(paths, build_crl(ca, [], next_update_days=DEV_CRL_DAYS), replace_any=True)
            generated.append("crl")

        tls_certificate = None
        if "ca" not in generated and paths.tls_certificate.exists() and paths.tls_key.exists():
            tls_certificate = _read_certificate(paths.tls_certificate, "TLS certificate")
            tls_key = _read_private_key(paths.tls_key, "TLS key")
            usable = (
                keys.key_matches_certificate(tls_key, tls_certificate)
                and issued_by(tls_certificate, ca.certificate)
                and certificate_covers(tls_certificate, settings.pki.hostnames)
                and has_tls_usages(tls_certificate)
                and tls_certificate.not_valid_after_utc > _now() + timedelta(days=1)
            )
            if not usable:
                tls_certificate = None
        if tls_certificate is None:
            tls_key, tls_certificate = issue_tls_certificate(ca, settings.pki.hostnames)
            write_file(paths.tls_key, keys.private_key_to_pem(tls_key), private=True)
            write_file(paths.tls_certificate, _pem(tls_certificate) + _pem(ca.certificate), private=False)
            generated.append("tls")

        if not force and _public_key_of_the_private(paths):
            generated.append("recovery-public")
        elif force or not paths.recovery_public_key.exists():
            keys.generate_recovery_keypair(paths.recovery_private_key, paths.recovery_public_key)
            generated.append("recovery")
        recovery_public = keys.load_recovery_public_key(paths.recovery_public_key)

    return DevPki(
        paths=paths,
        ca=ca,
        tls_certificate=tls_certificate,
        recovery_public_key=recovery_public,
        generated=tuple(generated),
    )


def _public_key_of_the_private(paths: PkiPaths) -> bool:
    """Write the recovery public key of the private key beside it when only the private one is
    there (an earlier run stopped between the two files: never a new pair over a private key
    that may hold escrows); True when written."""
    if paths.recovery_public_key.exists() or not paths.recovery_private_key.exists():
        return False
    public = keys.recovery_public_key_of(keys.load_recovery_private_key(paths.recovery_private_key))
    keys.write_recovery_key(paths.recovery_public_key, public, private=False)
    return True


def complete_recovery_public_key(settings: Settings) -> bool:
    """``init_dev_pki``'s completion of a recovery public key left unwritten, alone (for a PKI
    that exists, which nothing else of the development one touches); True when written.
    Raises CryptoError when the private key is unreadable."""
    paths = PkiPaths.from_settings(settings)
    with _locked(paths):
        return _public_key_of_the_private(paths)


def _load_crl_file(paths: PkiPaths) -> x509.CertificateRevocationList | None:
    try:
        return x509.load_pem_x509_crl(paths.crl.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
