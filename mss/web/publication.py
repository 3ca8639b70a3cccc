"""What the operator's CA publishes over plain HTTP: its CRL and its certificate.

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

from directory import certificates
from mss.crypto import pki
from mss.db import session_scope
from mss.errors import PkiError
from mss.runtime import Runtime
from mss.web.context import run

CRL_PATH = "/pki/ca.crl"
CA_PATH = "/pki/ca.crt"
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
    return Response(
        body, media_type="application/pkix-crl", headers={"Cache-Control": f"public, max-age={MAX_AGE}"}
    )


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


def create_publication_app(rt: Runtime) -> Litestar:
    """The plain-HTTP publication app: the CRL and the CA certificate, nothing else."""
    return Litestar(route_handlers=[crl, ca_certificate], state=State({"rt": rt}), logging_config=None, openapi_config=None)
