"""Other operators' certificates: the CAs we trust for them, their CRLs, their users'
S/MIME certificates (discovery and cache).

Trust anchors are the PEM certificates in ``MSS_PEER_CA_FILE`` (the health PKI chain in
production): they validate other operators' TLS certificates (``mss.relay.tls`` and the
outbound client) and their users' signatures and encryption certificates.

Revocation: a peer CA's CRL is fetched over HTTP from the distribution point named in the
certificate that needs it (RFC 5280 4.2.1.13), checked against that CA's key and kept in
``peer_crl`` until its nextUpdate. Signature checks of mail from other operators use these
cached lists and fail closed without one (``mss.crypto.verify``).

Discovery of a remote recipient's encryption certificate, in order:

1. the ``peer_certificate`` cache: certificates fetched before, or taken from a signature of
   that address that verified (a message or receipt received from it);
2. the peer operator's publication, when its route names one
   (``mss trust route DOMAIN HOST:PORT --certificates URL``): ``GET <URL><address>``
   answers the PEM certificates of that address (``mss.web.publication`` serves ours).

A certificate is used only when it chains to a trusted CA, is current, not revoked (its
CRL fetched), allows key encipherment for e-mail protection and names the address. The
answer, found or not, is kept ``MSS_CERT_CACHE`` before the peer is asked again. Fetching
is blocking network I/O: callers run it in worker threads, never inside a transaction.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from pyhanko_certvalidator import CertificateValidator, ValidationContext
from pyhanko_certvalidator.errors import PathBuildingError, ValidationError
from pyhanko_certvalidator.policy_decl import REQUIRE_REVINFO, CertRevTrustPolicy
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlmodel import Session, col

from directory import certificates
from mss import trust
from mss.crypto import pki
from mss.db import session_scope, utcnow
from mss.errors import ConfigError
from mss.models import PeerCertificate, PeerCrl, PeerLookup
from mss.settings import Settings

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("mss.peers")

PEER, SIGNATURE = "peer", "signature"
# A CRL is fetched again when it has less than this left before its nextUpdate.
CRL_REFRESH_MARGIN = timedelta(hours=1)
MAX_CRL = 10 * 1024 * 1024
# A known certificate's "seen" time is moved at most this often.
SEEN_REFRESH = timedelta(hours=1)
MAX_CERTIFICATES = 64 * 1024
PEM_CHAIN = "application/pem-certificate-chain"  # RFC 8555 9.1

# A URL that did not answer is not asked again for this long (per process).
RETRY_UNREACHABLE = 60.0

_roots_cache: dict[Path, tuple[float, tuple[x509.Certificate, ...]]] = {}
_unreachable: dict[str, float] = {}
_http: httpx.Client | None = None
_http_lock = threading.Lock()


def _client() -> httpx.Client:
    """One HTTP client per process: building one loads the system CA bundle (about 50 ms).
    httpx is imported here, at the first look-up at a peer's publication: a relay that
    never makes one does not hold it (about 6 MiB)."""
    global _http
    import httpx

    with _http_lock:
        if _http is None:
            _http = httpx.Client(follow_redirects=False, headers={"User-Agent": "mss"})
        return _http


def _get(url: str, timeout: float) -> httpx.Response | None:
    """GET ``url``, or None when it failed (and then for RETRY_UNREACHABLE seconds)."""
    failed_at = _unreachable.get(url)
    if failed_at is not None and time.monotonic() - failed_at < RETRY_UNREACHABLE:
        return None
    import httpx  # at the first fetch, as in _client

    try:
        response = _client().get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        log.warning("%s did not answer: %s", url, type(exc).__name__)
        _unreachable[url] = time.monotonic()
        return None
    _unreachable.pop(url, None)
    return response


# -- trust anchors ---------------------------------------------------------------------------


def peer_roots(settings: Settings) -> tuple[x509.Certificate, ...]:
    """The CA certificates of ``MSS_PEER_CA_FILE`` (re-read when the file changes).

    Raises ConfigError when the file is missing or holds no certificate.
    """
    path = settings.federation.peer_ca_file
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        raise ConfigError(f"MSS_PEER_CA_FILE {path} is missing: name the CAs of the other operators") from None
    cached = _roots_cache.get(path)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    try:
        roots = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except ValueError as exc:
        raise ConfigError(f"MSS_PEER_CA_FILE {path} holds no PEM certificate") from exc
    _roots_cache[path] = (mtime, roots)
    return roots


def all_roots(settings: Settings) -> list[x509.Certificate]:
    """This operator's CA followed by the peer CAs (without repeats)."""
    own = pki.load_ca_certificate(settings)
    return [own, *(root for root in peer_roots(settings) if root != own)]


@dataclass(frozen=True)
class Trust:
    """What signature checks trust: every CA, this operator's CRL and the cached peer CRLs."""

    roots: list[x509.Certificate]
    crls: list[bytes]


def trust_material(session: Session, settings: Settings) -> Trust:
    """The trust anchors and CRLs for checking any signature, ours or another operator's."""
    own = certificates.trust_material(session, settings)
    roots = list(own.roots)
    try:
        roots += [root for root in peer_roots(settings) if root not in roots]
    except ConfigError:
        pass  # no peer CAs configured: only this operator's signatures can be trusted
    crls = list(own.crls) + list(session.execute(select(col(PeerCrl.der))).scalars())
    return Trust(roots=roots, crls=crls)


# -- CRLs ----------------------------------------------------------------------------------


def _name_key(name: x509.Name) -> str:
    return hashlib.sha256(name.public_bytes()).hexdigest()


def _crl_urls(certificate: x509.Certificate) -> list[str]:
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    urls = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("http://"):
                urls.append(name.value)
    return urls


def ensure_crls(engine: Engine, settings: Settings, chain: Iterable[x509.Certificate]) -> None:
    """Fetch (or refresh) the CRL of each certificate's CA when it is another operator's.

    A CRL that cannot be fetched, or is not signed by a trusted CA, is left out: checks
    needing it then fail closed. Logs why; raises nothing.
    """
    own = pki.load_ca_certificate(settings)
    try:
        roots = peer_roots(settings)
    except ConfigError:
        return
    for certificate in chain:
        if certificate.issuer == own.subject:
            continue
        issuer = next((root for root in roots if root.subject == certificate.issuer), None)
        if issuer is None:
            continue
        for url in _crl_urls(certificate):
            with session_scope(engine, readonly=True) as session:
                row = session.get(PeerCrl, url)
                fresh = (
                    row is not None and row.next_update is not None and row.next_update > utcnow() + CRL_REFRESH_MARGIN
                )
            if fresh:
                break
            crl = _fetch_crl(url, issuer, settings.federation.certificate_fetch_timeout)
            if crl is None:
                continue
            der = crl.public_bytes(Encoding.DER)
            with session_scope(engine) as session:
                row = session.get(PeerCrl, url) or PeerCrl(url=url, issuer=_name_key(crl.issuer), der=der)
                row.der, row.next_update, row.fetched_at = der, crl.next_update_utc, utcnow()
                session.add(row)
            break


def _fetch_crl(url: str, issuer: x509.Certificate, timeout: float) -> x509.CertificateRevocationList | None:
    response = _get(url, timeout)
    if response is None:
        return None
    if response.status_code != 200 or len(response.content) > MAX_CRL:
        log.warning("CRL %s not fetched: HTTP %d", url, response.status_code)
        return None
    body = response.content
    try:
        crl = x509.load_pem_x509_crl(body) if body.lstrip().startswith(b"-----") else x509.load_der_x509_crl(body)
    except ValueError:
        log.warning("CRL %s is not a CRL", url)
        return None
    # CA keys are RSA or EC (the types a CRL can be signed with); the union names others
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        log.warning("CRL %s is not signed by %s", url, issuer.subject.rfc4514_string())
        return None
    return crl


def embedded_certificates(signed_der: bytes) -> list[x509.Certificate]:
    """The certificates a CMS SignedData carries (the signer's, and any chain)."""
    try:
        content = asn1_cms.ContentInfo.load(bytes(signed_der))["content"]
        found = content["certificates"]
        return [x509.load_der_x509_certificate(c.chosen.dump()) for c in (found or []) if c.name == "certificate"]
    except (ValueError, TypeError, KeyError):
        return []


def crls_for_signed(engine: Engine, settings: Settings, signed_der: bytes) -> list[bytes]:
    """The cached CRLs of the CAs that issued a SignedData's certificates, fetched first
    when missing or stale (another operator's CA). Raises nothing."""
    chain = embedded_certificates(signed_der)
    ensure_crls(engine, settings, chain)
    keys = {_name_key(certificate.issuer) for certificate in chain}
    if not keys:
        return []
    with session_scope(engine, readonly=True) as session:
        return list(session.execute(select(col(PeerCrl.der)).where(col(PeerCrl.issuer).in_(sorted(keys)))).scalars())


# -- certificate checks --------------------------------------------------------------------


def certificate_addresses(certificate: x509.Certificate) -> list[str]:
    """The rfc822Name values of a certificate's subjectAltName, lower-case."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [value.lower() for value in san.get_values_for_type(x509.RFC822Name)]


def encryption_problem(
    certificate: x509.Certificate, address: str, roots: Sequence[x509.Certificate], crls: Sequence[bytes]
) -> str | None:
    """Why ``certificate`` may not be used to encrypt to ``address``, or None when it may.

    Path validation to ``roots`` with revocation required (the CRLs given), key usage
    keyEncipherment, extended key usage emailProtection, and the address in its
    subjectAltName.
    """
    if address.lower() not in certificate_addresses(certificate):
        return f"the certificate does not name {address}"
    context = ValidationContext(
        trust_roots=[asn1_x509.Certificate.load(root.public_bytes(Encoding.DER)) for root in roots],
        crls=list(crls),
        allow_fetching=False,
        revinfo_policy=CertRevTrustPolicy(REQUIRE_REVINFO),
    )
    validator = CertificateValidator(
        asn1_x509.Certificate.load(certificate.public_bytes(Encoding.DER)), validation_context=context
    )
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(
            validator.async_validate_usage({"key_encipherment"}, extended_key_usage={"email_protection"})
        )
    except PathBuildingError:
        return "the certificate does not chain to a trusted CA"
    except ValidationError as exc:
        return f"the certificate is not usable: {str(exc)[:200]}"
    finally:
        loop.close()
    return None


# -- discovery -------------------------------------------------------------------------------


def remember(engine: Engine, address: str, certificate: x509.Certificate, *, source: str) -> None:
    """Keep ``certificate`` for ``address`` (a verified signer, or a fetched certificate)."""
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    with session_scope(engine, readonly=True) as session:
        seen = session.execute(
            select(col(PeerCertificate.seen_at)).where(col(PeerCertificate.fingerprint) == fingerprint)
        ).scalar_one_or_none()
    if seen is not None and seen > utcnow() - SEEN_REFRESH:
        return  # known and seen lately: no write for every message of a correspondent
    try:
        with session_scope(engine) as session:
            row = (
                session.execute(select(PeerCertificate).where(col(PeerCertificate.fingerprint) == fingerprint))
                .scalars()
                .first()
            )
            if row is None:
                session.add(
                    PeerCertificate(
                        address=address.lower(),
                        fingerprint=fingerprint,
                        der=certificate.public_bytes(Encoding.DER),
                        not_after=certificate.not_valid_after_utc,
                        source=source,
                    )
                )
            else:
                row.seen_at = utcnow()
                session.add(row)
    except IntegrityError:
        pass  # stored meanwhile by another session


def learn_signer(engine: Engine, address: str, certificate: x509.Certificate) -> None:
    """Keep the certificate of ``address``, a remote signer whose signature verified, to
    encrypt to them later, as a mail client does. What showed it (an arrival already
    stored, a message being read) goes on whatever happens here: a database that will not
    keep it is logged, and the certificate is learnt from a later message."""
    try:
        remember(engine, address, certificate, source=SIGNATURE)
    except SQLAlchemyError as exc:
        log.error(
            "a verified signer's certificate could not be kept (%s); it is learnt from a later message",
            type(exc).__name__,
        )


def remember_signer(engine: Engine, address: str, signed_der: bytes) -> None:
    """``learn_signer`` with the certificate naming ``address`` among those of a SignedData
    whose signature verified (the caller checked it)."""
    for certificate in embedded_certificates(signed_der):
        if address.lower() in certificate_addresses(certificate):
            learn_signer(engine, address, certificate)
            return


def _cached(engine: Engine, address: str) -> list[x509.Certificate]:
    with session_scope(engine, readonly=True) as session:
        rows = (
            session.execute(
                select(col(PeerCertificate.der))
                .where(col(PeerCertificate.address) == address, col(PeerCertificate.not_after) > utcnow())
                .order_by(col(PeerCertificate.seen_at).desc(), col(PeerCertificate.id).desc())
            )
            .scalars()
            .all()
        )
    return [x509.load_der_x509_certificate(der) for der in rows]


def _fetch_certificates(url: str, address: str, timeout: float) -> list[x509.Certificate] | None:
    """The certificates a peer publishes for ``address`` ([] when it has none), or None
    when its publication did not answer."""
    response = _get(url + quote(address, safe="@"), timeout)
    if response is None:
        return None
    if response.status_code == 404:
        return []
    if response.status_code != 200 or len(response.content) > MAX_CERTIFICATES:
        log.warning("certificate publication %s answered HTTP %d", url, response.status_code)
        return None
    try:
        return x509.load_pem_x509_certificates(response.content)
    except ValueError:
        log.warning("certificate publication %s answered no PEM certificate", url)
        return []


def _looked_up_recently(engine: Engine, settings: Settings, address: str) -> bool:
    with session_scope(engine, readonly=True) as session:
        row = session.get(PeerLookup, address)
    return row is not None and row.at > utcnow() - timedelta(seconds=settings.federation.certificate_cache)


def _record_lookup(engine: Engine, address: str, found: bool) -> None:
    try:
        with session_scope(engine) as session:
            row = session.get(PeerLookup, address) or PeerLookup(address=address)
            row.found, row.at = found, utcnow()
            session.add(row)
    except IntegrityError:
        pass


def encryption_certificate(engine: Engine, settings: Settings, address: str) -> x509.Certificate | None:
    """The certificate to encrypt to for another operator's ``address``, or None when none
    is known (the message then travels signed, inside mutual TLS). Never raises for a peer
    that does not answer."""
    address = address.strip().lower()
    try:
        roots = all_roots(settings)
    except ConfigError:
        return None
    found = _first_usable(engine, settings, address, _cached(engine, address), roots)
    if found is not None or _looked_up_recently(engine, settings, address):
        return found
    # Nothing cached, or nothing cached still usable (renewed, rekeyed): ask the peer.
    with session_scope(engine, readonly=True) as session:
        route = trust.route_for(session, trust.domain_of(address))
    if route is None or not route.certificates_url:
        return None
    fetched = _fetch_certificates(route.certificates_url, address, settings.federation.certificate_fetch_timeout)
    if fetched is None:
        return None
    found = _first_usable(engine, settings, address, [c for c in fetched if address in certificate_addresses(c)], roots)
    if found is not None:
        remember(engine, address, found, source=PEER)
    _record_lookup(engine, address, found is not None)
    return found


def _first_usable(
    engine: Engine, settings: Settings, address: str, candidates: list[x509.Certificate], roots: list[x509.Certificate]
) -> x509.Certificate | None:
    for certificate in candidates:
        ensure_crls(engine, settings, [certificate])
        with session_scope(engine, readonly=True) as session:
            crls = trust_material(session, settings).crls
        problem = encryption_problem(certificate, address, roots, crls)
        if problem is None:
            return certificate
        log.info("certificate %s of %s not used: %s", format(certificate.serial_number, "x"), address, problem)
    return None
