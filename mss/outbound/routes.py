"""Where mail for another operator's domain goes: its route, or its DNS MX in production.

A route set with ``mss trust route DOMAIN HOST:PORT`` wins. Without one, production looks
up the domain's MX records (dnspython), lowest preference first, on ``MSS_PEER_SMTP_PORT``;
a domain without MX records is its own mail host (RFC 5321 5.1), and a "null MX" (RFC
7505) or a domain that does not exist refuses mail for good. Development never asks the
DNS: a domain without a route waits (temporary failure) until one is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from mss.settings import Settings
from mss.trust import Route


@dataclass(frozen=True)
class Hop:
    """A host and port to try, in order."""

    host: str
    port: int


class RouteFailure(Exception):
    """No host to deliver to: ``permanent`` says whether waiting can help; ``status`` is the
    RFC 3463 code and ``text`` the reason for the DSN."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    @property
    def permanent(self) -> bool:
        return self.status.startswith("5")


async def resolve(settings: Settings, domain: str, route: Route | None) -> list[Hop]:
    """The hosts to try for ``domain``. Raises RouteFailure."""
    if route is not None:
        return [Hop(route.host, route.port)]
    if not settings.is_production:
        raise RouteFailure("4.4.4", f"no route for {domain}: set one with `mss trust route {domain} HOST:PORT`")
    port = settings.federation.peer_smtp_port
    try:
        answer = await dns.asyncresolver.resolve(domain, "MX", lifetime=settings.federation.delivery_timeout)
    except dns.resolver.NXDOMAIN:
        raise RouteFailure("5.1.2", f"the domain {domain} does not exist") from None
    except dns.resolver.NoAnswer:
        return [Hop(domain, port)]  # RFC 5321 5.1: the implicit MX
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise RouteFailure("4.4.3", f"the MX of {domain} could not be looked up ({type(exc).__name__})") from None
    records = sorted(answer, key=lambda record: record.preference)
    hosts = [str(record.exchange).rstrip(".") for record in records]
    if hosts == [""]:
        raise RouteFailure("5.1.10", f"{domain} accepts no mail (null MX, RFC 7505)")
    return [Hop(host, port) for host in hosts if host]
