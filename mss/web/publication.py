"""What the operator's CA publishes over plain HTTP: its CRL, its certificate, and the S/MIME
certificate of each address it serves (for other operators to encrypt to, ``mss.peers``).

Issued certificates name ``MSS_CRL_URL`` as their CRL distribution point (RFC 5280
4.2.1.13), so OpenSSL, Thunderbird and Outlook check revocation by themselves. The list is
signed by the CA, which is why plain HTTP is right here (an https URL would need a
revocation check of its own). The file is the one every revocation rewrites
(``directory.certificates``); one near its nextUpdate is rebuilt before it is served when
the CA key is held here.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding
from litestar import Litestar, Request, Response, get
from litestar.datastructures import State
from litestar.params import FromPath

from directory import certificates, service
from directory.models import ACTIVE
from mss.crypto import pki
from mss.db import session_scope
from mss.errors import PkiError
from mss.runtime import Runtime
from mss.web.context import run

CRL_PATH = "/pki/ca.crl"
CA_PATH = "/pki/ca.crt"
CERTIFICATES_PATH = "/pki/certificates"
MAX_AGE = 300  # seconds a relying party may keep the list before asking again


def _crl_der(rt: Runtime) -> bytes:
    with session_scope(rt.engine) as session:
        trust = certificates.trust_material(session, rt.settings)
    if not trust.crls:
        raise PkiError("no CRL is available")
    return trust.crls[0]


@get(CRL_PATH, include_in_schema=False)
async def crl(request: Request) -> Response[bytes]:
    """The CA's current CRL, DER (``application/pkix-crl``, RFC 2585)."""
    rt: Runtime = request.app.state.rt
    try:
        body = await run(_crl_der, rt)
    except PkiError:
        return Response(b"no revocation list is available\n", status_code=503, media_type="text/plain")
    return Response(body, media_type="application/pkix-crl", headers={"Cache-Control": f"public, max-age={MAX_AGE}"})


@get(CA_PATH, include_in_schema=False)
async def ca_certificate(request: Request) -> Response[bytes]:
    """The CA certificate, DER (``application/pkix-cert``, RFC 2585)."""
    rt: Runtime = request.app.state.rt
    certificate = await run(pki.load_ca_certificate, rt.settings)
    return Response(
        certificate.public_bytes(Encoding.DER),
        media_type="application/pkix-cert",
        headers={"Cache-Control": f"public, max-age={MAX_AGE}"},
    )


def _published_certificate(rt: Runtime, address: str) -> bytes | None:
    address = address.strip().lower()
    if not address.isprintable() or len(address) > 254 or not rt.settings.serves(address):
        return None
    with session_scope(rt.engine, readonly=True) as session:
        entry = service.get_entry(session, address)
        if entry is None or entry.status != ACTIVE:
            return None
        certificate = certificates.current_certificate(session, address)
    return None if certificate is None else certificate.public_bytes(Encoding.PEM)


@get(CERTIFICATES_PATH + "/{address:str}", include_in_schema=False)
async def smime_certificate(request: Request, address: FromPath[str]) -> Response[bytes]:
    """The current S/MIME certificate of an active address served here, PEM
    (``application/pem-certificate-chain``); 404 when there is none. Certificates are
    public: anybody may encrypt to a professional of the directory."""
    rt: Runtime = request.app.state.rt
    body = await run(_published_certificate, rt, address)
    if body is None:
        return Response(b"no certificate is published for this address\n", status_code=404, media_type="text/plain")
    return Response(
        body, media_type="application/pem-certificate-chain", headers={"Cache-Control": f"public, max-age={MAX_AGE}"}
    )


def create_publication_app(rt: Runtime) -> Litestar:
    """The plain-HTTP publication app: the CRL, the CA certificate and the S/MIME
    certificates of the addresses served here, nothing else."""
    return Litestar(
        route_handlers=[crl, ca_certificate, smime_certificate],
        state=State({"rt": rt}),
        logging_config=None,
        openapi_config=None,
    )
