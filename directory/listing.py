"""Browsing the directory rather than searching it: the administrator's filtered listing
(``mss directory list``) and the mailboxes that belong together (one professional's, by
RPPS; one organisation's, by its identifier) for the web's directory page.

Text filters are folded like the search (unidecode, lower case): ``--city evreux`` finds
ÉVREUX, ``--profession "medecine gen"`` finds "Qualifié en Médecine Générale". The words are
first looked for in ``search_text`` by the database, then checked against the one column
they filter on, so a town's name in an organisation's does not count for ``--city``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from directory.models import ACTIVE, INACTIVE, REVOKED, DirectoryEntry
from directory.search import query_words
from mss.errors import DirectoryError, StorageError

KINDS = ("PER", "ORG")
STATUSES = (ACTIVE, REVOKED, INACTIVE, "all")
MAX_PER_PAGE = 500
MAX_FILTER_LENGTH = 200


@dataclass(frozen=True)
class ListFilters:
    """What a listing is narrowed to; empty fields do not filter."""

    kind: str = ""
    """PER (a person) or ORG (an organisation's mailbox)."""
    status: str = ACTIVE
    """active, revoked, inactive or all."""
    domain: str = ""
    """Mail domain of the address (its subdomains too)."""
    profession: str = ""
    """A profession code (10: médecin) or words of the profession or specialty label."""
    city: str = ""
    """Words of the town, or the beginning of a postal code (76, 27000)."""
    organisation: str = ""
    """Words of the organisation's name (or trade name)."""

    def check(self) -> ListFilters:
        """The filters, normalised. Raises DirectoryError for a value that means nothing."""
        kind = self.kind.strip().upper()
        if kind and kind not in KINDS:
            raise DirectoryError(f"unknown kind {self.kind!r}: use PER or ORG")
        status = (self.status or ACTIVE).strip().lower()
        if status not in STATUSES:
            raise DirectoryError(f"unknown status {self.status!r}: use {', '.join(STATUSES)}")
        for name in ("domain", "profession", "city", "organisation"):
            if len(getattr(self, name)) > MAX_FILTER_LENGTH:
                raise DirectoryError(f"the {name} filter is limited to {MAX_FILTER_LENGTH} characters")
        domain = self.domain.strip().lower().lstrip("@")
        if domain and not all(part and part.replace("-", "").isalnum() for part in domain.split(".")):
            raise DirectoryError(f"{self.domain!r} is not a mail domain")
        return replace(
            self,
            kind=kind,
            status=status,
            domain=domain,
            profession=self.profession.strip(),
            city=self.city.strip(),
            organisation=self.organisation.strip(),
        )


@dataclass(frozen=True)
class ListPage:
    """One page of a listing, in address order."""

    items: list[DirectoryEntry]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        """How many pages the listing fills."""
        return max(1, -(-self.total // self.per_page))


def _words_start(words: list[str], *values: str) -> bool:
    """True when every word starts a word of one of ``values`` (folded like the search)."""
    have = query_words(" ".join(values))
    return all(any(h.startswith(w) for h in have) for w in words)


def list_entries(session: Session, filters: ListFilters, *, page: int = 1, per_page: int = 50) -> ListPage:
    """One page of the entries that pass ``filters``, in address order.

    Raises DirectoryError for a bad filter, page or page size; StorageError when the
    database fails.
    """
    if page < 1:
        raise DirectoryError(f"page must be 1 or more, not {page}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise DirectoryError(f"per_page must be between 1 and {MAX_PER_PAGE}, not {per_page}")
    filters = filters.check()
    conditions = []
    if filters.kind:
        conditions.append(col(DirectoryEntry.kind) == filters.kind)
    if filters.status != "all":
        conditions.append(col(DirectoryEntry.status) == filters.status)
    if filters.domain:
        conditions.append(
            or_(
                col(DirectoryEntry.address).like(f"%@{filters.domain}"),
                col(DirectoryEntry.address).like(f"%.{filters.domain}"),
            )
        )
    checks: list[tuple[list[str], tuple[str, ...]]] = []
    profession = filters.profession
    if profession.isascii() and profession.isdigit():
        conditions.append(col(DirectoryEntry.profession_code) == profession)
    elif profession:
        checks.append((query_words(profession), ("profession_label", "skill_label", "profession_category_label")))
    city = filters.city
    if (city.isascii() and city.isdigit()) or city.upper() in {"2A", "2B"}:
        conditions.append(col(DirectoryEntry.postal_code).like(f"{city.upper()}%"))
    elif city:
        checks.append((query_words(city), ("city",)))
    if filters.organisation:
        checks.append((query_words(filters.organisation), ("org_name", "org_trade_name")))
    if any(not words for words, _columns in checks):
        raise DirectoryError("a text filter needs at least one letter or digit")
    # Each word must be somewhere in search_text (folded words): the database narrows, the
    # column check below decides.
    for words, _columns in checks:
        conditions += [col(DirectoryEntry.search_text).like(f"%{word}%") for word in words]
    where = and_(*conditions) if conditions else None
    try:
        if not checks:
            count = select(func.count()).select_from(DirectoryEntry)
            query = select(DirectoryEntry).order_by(col(DirectoryEntry.address))
            if where is not None:
                count, query = count.where(where), query.where(where)
            total = int(session.execute(count).scalar_one())
            items = list(session.execute(query.offset((page - 1) * per_page).limit(per_page)).scalars())
            return ListPage(items=items, page=page, per_page=per_page, total=total)
        query = select(DirectoryEntry).order_by(col(DirectoryEntry.address))
        if where is not None:
            query = query.where(where)
        kept = [
            entry
            for entry in session.execute(query).scalars()
            if all(_words_start(words, *(getattr(entry, c) for c in columns)) for words, columns in checks)
        ]
    except SQLAlchemyError as exc:
        raise StorageError(f"directory listing failed: {exc.__class__.__name__}") from exc
    start = (page - 1) * per_page
    return ListPage(items=kept[start : start + per_page], page=page, per_page=per_page, total=len(kept))


def mailboxes_of(session: Session, entry: DirectoryEntry) -> list[DirectoryEntry]:
    """The other active mailboxes of the same professional (same RPPS or ADELI number) or,
    for an organisation's mailbox, of the same organisation (same identifier), in address
    order; at most 50."""
    if entry.kind == "PER" and entry.rpps:
        same = and_(col(DirectoryEntry.kind) == "PER", col(DirectoryEntry.rpps) == entry.rpps)
    elif entry.kind == "ORG" and entry.org_id:
        same = and_(col(DirectoryEntry.kind) == "ORG", col(DirectoryEntry.org_id) == entry.org_id)
    else:
        return []
    try:
        rows = session.execute(
            select(DirectoryEntry)
            .where(same, col(DirectoryEntry.status) == ACTIVE, col(DirectoryEntry.address) != entry.address)
            .order_by(col(DirectoryEntry.address))
            .limit(50)
        ).scalars()
        return list(rows)
    except SQLAlchemyError as exc:
        raise StorageError(f"directory look-up failed: {exc.__class__.__name__}") from exc
