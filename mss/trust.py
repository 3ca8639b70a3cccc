"""The trust list: which other operators' domains this operator exchanges mail with, and how
mail for each domain is routed.

The list is the MSSanté "liste blanche", published as XML (namespace
``https://listeblanche.mssante.fr/schema``, one ``Domaine`` element per domain with its
``Nom``); ``import_list`` reads it, ``add``/``remove`` keep it by hand. Entries of the
national directory whose domain is on the list are reachable from here; any other domain
that is not served here is refused (never an open relay). A domain we serve is never on
the list: mail for it is ours.

A route (``mss trust route DOMAIN HOST:PORT``) sends a domain's mail to a given host
instead of its DNS MX, and may name where that operator publishes its users' S/MIME
certificates. Every change writes its audit event in the caller's transaction.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from lxml import etree
from sqlalchemy import delete, select
from sqlmodel import Session, col

from mss import audit
from mss.db import Reader, rowcount, utcnow
from mss.documents import DocumentLimits, parse_xml
from mss.errors import DocumentError, TrustListError
from mss.models import PeerRoute, TrustedDomain
from mss.settings import Settings

NAMESPACE = "https://listeblanche.mssante.fr/schema"
LIST, MANUAL = "list", "manual"
MAX_FILE = 20 * 1024 * 1024  # the published list is a few hundred kilobytes
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class ListFile:
    """The domains of a published list and the entries that could not be read."""

    domains: tuple[str, ...]
    rejected: tuple[tuple[int, str], ...]  # (line in the file, why)
    lines: tuple[int, ...] = ()  # the line of each domain's first Nom, in the order of ``domains``


@dataclass(frozen=True)
class Imported:
    """What an import changed."""

    added: tuple[str, ...]
    kept: int
    removed: tuple[str, ...]
    rejected: tuple[tuple[int, str], ...] = field(default=())
    served: tuple[tuple[int, str], ...] = field(default=())
    """The domains served here the list names (it names every operator's), with their line:
    skipped, not defects."""


@dataclass(frozen=True)
class Route:
    """Where mail for a domain goes, and where its operator publishes certificates."""

    domain: str
    host: str
    port: int
    certificates_url: str = ""


@dataclass(frozen=True)
class Listed:
    """A domain of the trust list with its route, if it has one."""

    domain: str
    source: str
    added_at: object
    route: Route | None


def normalise_domain(text: str) -> str:
    """A domain name as stored: lower-case, A-labels, no trailing dot.

    Raises TrustListError when ``text`` is not a domain name with at least two labels.
    """
    if not isinstance(text, str):
        raise TrustListError(f"{text!r} is not a domain name")
    value = text.strip().rstrip(".")
    try:
        value = value.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise TrustListError(f"{text.strip()[:100]!r} is not a domain name") from None
    labels = value.split(".")
    if len(value) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise TrustListError(f"{text.strip()[:100]!r} is not a domain name")
    return value


def domain_of(address: str) -> str:
    """The domain of a mail address, lower-case."""
    return address.strip().strip("<>").rpartition("@")[2].lower().rstrip(".")


# -- the published list --------------------------------------------------------------------


def parse_list(data: bytes) -> ListFile:
    """The domains of a "liste blanche" document (each ``Domaine/Nom`` in its namespace).

    Entries that are not domain names are reported with their line; duplicates count once.
    Raises TrustListError when the document is not XML, declares a DOCTYPE, or is not a list
    in the MSSanté namespace.
    """
    if len(data) > MAX_FILE:
        raise TrustListError(f"the trust list is larger than {MAX_FILE // (1024 * 1024)} MB")
    try:
        root = parse_xml(data, filename="trust list", limits=DocumentLimits(max_xml_depth=20))
    except DocumentError as exc:
        raise TrustListError(exc.message) from exc
    if etree.QName(root).namespace != NAMESPACE:
        raise TrustListError(f"the trust list is not in the MSSanté namespace {NAMESPACE}")
    found: dict[str, int] = {}  # domain -> the line it is first named on
    rejected: list[tuple[int, str]] = []
    entries = root.iter(f"{{{NAMESPACE}}}Domaine")
    for entry in entries:
        names = entry.findall(f"{{{NAMESPACE}}}Nom")
        line = entry.sourceline or 0
        if len(names) != 1:
            rejected.append((line, "a Domaine entry must have exactly one Nom"))
            continue
        try:
            found.setdefault(normalise_domain(names[0].text or ""), names[0].sourceline or line)
        except TrustListError as exc:
            rejected.append((names[0].sourceline or line, exc.message))
    if not found and not rejected:
        raise TrustListError("the trust list names no domain (no Domaine/Nom element)")
    return ListFile(domains=tuple(found), rejected=tuple(rejected), lines=tuple(found.values()))


def import_list(
    session: Session, settings: Settings, source: Path | bytes, *, prune: bool = False, actor: str
) -> Imported:
    """Put every domain of a published list on the trust list.

    Domains already listed are kept (a manual entry becomes a listed one); with ``prune``,
    domains that came from an earlier import and are no longer published leave the list
    (manual entries stay). Domains served here (the national list names every operator's,
    this one's too) are skipped and returned apart from the defects. Records one
    ``trust.import`` event and one ``trust.add`` / ``trust.remove`` per change. Raises
    TrustListError when the file cannot be read at all.
    """
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise TrustListError(f"cannot read {source}: {exc.strerror}") from exc
    else:
        data = source
    parsed = parse_list(data)
    rejected = list(parsed.rejected)
    wanted, served = [], []
    for domain, line in zip(parsed.domains, parsed.lines, strict=True):
        if _served(settings, domain):
            served.append((line, domain))
        else:
            wanted.append(domain)
    existing = {row.domain: row for row in session.execute(select(TrustedDomain)).scalars()}
    now = utcnow()
    added = []
    for domain in wanted:
        row = existing.get(domain)
        if row is None:
            session.add(TrustedDomain(domain=domain, source=LIST, added_at=now, updated_at=now))
            added.append(domain)
            audit.record(session, actor=actor, action="trust.add", object=domain, source=LIST)
        elif row.source != LIST:
            row.source, row.updated_at = LIST, now
            session.add(row)
    removed = []
    if prune:
        published = set(wanted)
        for domain, row in existing.items():
            if row.source == LIST and domain not in published:
                session.delete(row)
                removed.append(domain)
                audit.record(session, actor=actor, action="trust.remove", object=domain, source=LIST)
    session.flush()
    audit.record(
        session,
        actor=actor,
        action="trust.import",
        object="trust-list",
        added=len(added),
        removed=len(removed),
        rejected=len(rejected),
        served=len(served),
        listed=len(wanted),
    )
    return Imported(
        added=tuple(added),
        kept=len(wanted) - len(added),
        removed=tuple(removed),
        rejected=tuple(rejected),
        served=tuple(served),
    )


# -- by hand ---------------------------------------------------------------------------------


def _served(settings: Settings, domain: str) -> bool:
    return settings.serves(f"postmaster@{domain}")


def add(session: Session, settings: Settings, domain: str, *, actor: str) -> str:
    """Put ``domain`` on the trust list by hand; return it normalised.

    Raises TrustListError for a malformed domain, one served here, or one already listed.
    """
    domain = normalise_domain(domain)
    if _served(settings, domain):
        raise TrustListError(f"{domain} is served here: mail for it is never sent to another operator")
    if session.get(TrustedDomain, domain) is not None:
        raise TrustListError(f"{domain} is already on the trust list")
    now = utcnow()
    session.add(TrustedDomain(domain=domain, source=MANUAL, added_at=now, updated_at=now))
    session.flush()
    audit.record(session, actor=actor, action="trust.add", object=domain, source=MANUAL)
    return domain


def remove(session: Session, domain: str, *, actor: str) -> str:
    """Take ``domain`` off the trust list (its route stays, unused). Raises TrustListError
    when it is not listed."""
    domain = normalise_domain(domain)
    row = session.get(TrustedDomain, domain)
    if row is None:
        raise TrustListError(f"{domain} is not on the trust list")
    session.delete(row)
    session.flush()
    audit.record(session, actor=actor, action="trust.remove", object=domain, source=row.source)
    return domain


def listed(session: Session) -> list[Listed]:
    """Every domain of the trust list with its route, in name order."""
    routes = {row.domain: row for row in session.execute(select(PeerRoute)).scalars()}
    out = []
    for row in session.execute(select(TrustedDomain).order_by(col(TrustedDomain.domain))).scalars():
        route = routes.get(row.domain)
        out.append(Listed(row.domain, row.source, row.added_at, _route(route) if route else None))
    return out


def is_trusted(session: Session, domain: str) -> bool:
    """True when ``domain`` (exactly, not a subdomain) is on the trust list."""
    return session.get(TrustedDomain, domain.strip().lower().rstrip(".")) is not None


def trusted_among(session: Reader, domains: Iterable[str]) -> set[str]:
    """The domains among ``domains`` that are on the trust list."""
    wanted = {d.strip().lower().rstrip(".") for d in domains}
    if not wanted:
        return set()
    return set(
        session.execute(
            select(col(TrustedDomain.domain)).where(col(TrustedDomain.domain).in_(sorted(wanted)))
        ).scalars()
    )


# -- routes -----------------------------------------------------------------------------------


def _route(row: PeerRoute) -> Route:
    return Route(domain=row.domain, host=row.host, port=row.port, certificates_url=row.certificates_url)


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` split and checked. Raises TrustListError."""
    value = text.strip()
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", value)
    if match is None:
        raise TrustListError(f"{value[:100]!r} is not HOST:PORT")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise TrustListError(f"port {port} is not between 1 and 65535")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = normalise_domain(host) if "." in host else _single_label(host)
    return host, port


def _single_label(host: str) -> str:
    value = host.lower()
    if not _LABEL.match(value):
        raise TrustListError(f"{host[:100]!r} is not a host name")
    return value


def _check_url(url: str) -> str:
    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc or not url.isprintable() or " " in url:
        raise TrustListError(f"{url[:100]!r} is not an http:// or https:// URL")
    if "@" in parts.netloc:
        # A publication is public, and the URL reaches the audit trail and the log.
        raise TrustListError("a certificate publication URL carries no user name or password")
    return url.rstrip("/") + "/"


def set_route(
    session: Session, settings: Settings, domain: str, host_port: str, *, certificates_url: str = "", actor: str
) -> Route:
    """Route ``domain`` to ``host_port`` (and name its certificate publication); replaces
    an earlier route. Raises TrustListError for a malformed value or a domain served here."""
    domain = normalise_domain(domain)
    if _served(settings, domain):
        raise TrustListError(f"{domain} is served here: it has no route to another operator")
    host, port = parse_host_port(host_port)
    url = _check_url(certificates_url)
    row = session.get(PeerRoute, domain)
    if row is None:
        row = PeerRoute(domain=domain, host=host, port=port, certificates_url=url)
    else:
        row.host, row.port, row.certificates_url, row.updated_at = host, port, url, utcnow()
    session.add(row)
    session.flush()
    audit.record(session, actor=actor, action="trust.route", object=domain, host=host, port=port, certificates_url=url)
    return _route(row)


def remove_route(session: Session, domain: str, *, actor: str) -> None:
    """Forget the route of ``domain`` (its DNS MX applies again). Raises TrustListError
    when it has none."""
    domain = normalise_domain(domain)
    if rowcount(session.execute(delete(PeerRoute).where(col(PeerRoute.domain) == domain))) == 0:
        raise TrustListError(f"{domain} has no route")
    audit.record(session, actor=actor, action="trust.unroute", object=domain)


def route_for(session: Session, domain: str) -> Route | None:
    """The route of ``domain`` set with ``mss trust route``, or None."""
    row = session.get(PeerRoute, domain.strip().lower())
    return None if row is None else _route(row)
