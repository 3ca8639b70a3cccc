"""The directory's published certificates in the web inbox: an entry's current S/MIME
certificate shown (subject, issuer, validity, fingerprint) and served in PEM and DER, so that
a professional can load a colleague's certificate into a mail client and encrypt to them end
to end. Behind the login, like the rest of the directory."""

from __future__ import annotations

from litestar import Controller, Request, Response, get
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import Response as RawResponse

from directory.publication import PublishedCertificate, certificate_for
from mss.errors import DirectoryError, RecipientHasNoCertificate
from mss.runtime import Runtime
from mss.web.auth import active_session
from mss.web.context import Rt, render, run
from mss.web.pages import content_disposition
from mss.web.security import ATTACHMENT_CSP
from mss.web.sessions import Live

PEM_TYPE = "application/pem-certificate-chain"  # RFC 8555 9.1
DER_TYPE = "application/pkix-cert"  # RFC 2585 4.1


async def published(rt: Runtime, address: str) -> PublishedCertificate:
    """The entry's current certificate. Raises NotFoundException (no such entry, entry not
    active, no valid certificate: the same answer for each)."""
    try:
        return await run(certificate_for, rt.engine, address)
    except (DirectoryError, RecipientHasNoCertificate) as exc:
        raise NotFoundException() from exc


def download(data: bytes, media_type: str, filename: str) -> Response:
    """A certificate file as a download."""
    headers = {
        "content-security-policy": ATTACHMENT_CSP,
        "content-disposition": content_disposition("attachment", filename),
    }
    return RawResponse(content=data, media_type=media_type, headers=headers)


class CertificateController(Controller):
    """An entry's certificate: its page and its files."""

    include_in_schema = False
    path = "/directory/{address:str}"
    dependencies = {"live": Provide(active_session)}

    @get("/certificate")
    async def page(self, request: Request, live: Live, rt: Rt, address: FromPath[str]) -> Response:
        """The certificate shown, with its downloads."""
        found = await published(rt, address)
        return render(request, "certificate.html", user=live.address, published=found)

    @get("/certificate.pem")
    async def pem(self, live: Live, rt: Rt, address: FromPath[str]) -> Response:
        """The certificate in PEM."""
        found = await published(rt, address)
        return download(found.pem.encode("ascii"), PEM_TYPE, f"{found.address}.pem")

    @get("/certificate.der")
    async def der(self, live: Live, rt: Rt, address: FromPath[str]) -> Response:
        """The certificate in DER (what ``.cer`` files hold)."""
        found = await published(rt, address)
        return download(found.der, DER_TYPE, f"{found.address}.cer")
