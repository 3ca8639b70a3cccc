"""Mail clients: Thunderbird-style autoconfiguration, and the account's IMAP mode.

``/.well-known/autoconfig/mail/config-v1.1.xml`` (and ``/mail/config-v1.1.xml``, where
clients look on the ``autoconfig.`` host) describe the IMAP and submission servers for an
address of a served domain, so a client sets itself up from the address alone. The
account page's form chooses how IMAP serves the account's messages (``mss.mailbox.served``).
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from litestar import Controller, Request, Response, get, post
from litestar.params import URLEncodedBody

from mss.mailbox import served
from mss.settings import Settings
from mss.web.auth import current_session
from mss.web.context import config, redirect, request_id, run

AUTOCONFIG_PATHS = ["/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"]


@dataclass
class ModeChoice:
    """The IMAP mode form."""

    mode: str = ""


def autoconfig_xml(settings: Settings, domain: str) -> str:
    """The Mozilla autoconfig document (config-v1.1) for addresses of ``domain``."""
    host = escape(settings.pki.hostnames[0] if settings.pki.hostnames else "localhost")
    domain = escape(domain)
    imap, smtp = settings.imap, settings.relay
    servers = []
    if imap.tls_port:
        servers.append(("imap", imap.tls_port, "SSL"))
    servers.append(("imap", imap.port, "STARTTLS"))
    incoming = "".join(
        f"""
    <incomingServer type="{kind}">
      <hostname>{host}</hostname>
      <port>{port}</port>
      <socketType>{socket}</socketType>
      <authentication>password-cleartext</authentication>
      <username>%EMAILADDRESS%</username>
    </incomingServer>"""
        for kind, port, socket in servers
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<clientConfig version="1.1">
  <emailProvider id="{domain}">
    <domain>{domain}</domain>
    <displayName>MSSanté ({domain})</displayName>
    <displayShortName>mss</displayShortName>{incoming}
    <outgoingServer type="smtp">
      <hostname>{host}</hostname>
      <port>{smtp.port}</port>
      <socketType>STARTTLS</socketType>
      <authentication>password-cleartext</authentication>
      <username>%EMAILADDRESS%</username>
    </outgoingServer>
  </emailProvider>
</clientConfig>
"""


class MailClientController(Controller):
    """Autoconfiguration for mail clients and the IMAP mode of the account page."""

    include_in_schema = False

    @get(AUTOCONFIG_PATHS)
    async def autoconfig(self, request: Request, emailaddress: str = "") -> Response:
        """Where a mail client finds IMAP and SMTP for an address (``?emailaddress=``)."""
        settings = config(request).rt.settings
        address = emailaddress.strip().lower()
        if address and ("@" not in address or not settings.serves(address)):
            return Response(
                content=f"{address} is not an address of a domain served here\n",
                media_type="text/plain; charset=utf-8",
                status_code=404,
            )
        domain = address.rpartition("@")[2] if address else settings.domains[0]
        return Response(content=autoconfig_xml(settings, domain), media_type="application/xml; charset=utf-8")

    @post("/account/imap-mode")
    async def imap_mode(self, request: Request, data: URLEncodedBody[ModeChoice]) -> Response:
        """Serve the account's messages to mail clients decrypted, or end to end."""
        live = await current_session(request)
        if data.mode not in served.MODES:
            return Response(content="unknown IMAP mode\n", media_type="text/plain; charset=utf-8", status_code=422)
        await run(
            served.set_mode,
            config(request).rt.engine,
            live.address,
            data.mode,
            actor=live.address,
            request_id=request_id(request),
        )
        return redirect("/account")
