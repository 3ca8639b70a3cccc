"""Searching the directory: by name, RPPS, address, profession, organisation, city, postal code.

A query is folded like ``search_text`` (unidecode, lower case) and cut into words; every
word must match the start of a word of the entry (search as you type: ``"lef ev"`` finds
LEFÈBVRE in ÉVREUX). Words are reduced to ``[a-z0-9]+`` before they reach the full-text
syntax, so quotes, ``*``, ``NEAR``, ``-`` or parentheses in the input are plain separators
and never operators. Particles (de, des, du, le, la ...) are left out of a query that has
other words, and a query that is a whole directory address finds that entry directly.

Ranking, best first, by the names part of ``search_text`` (last then first names, or an
organisation mailbox's service and names):

0. the entry whose address, RPPS or national identifier is the query itself;
1. every word of the query is a whole word of the names ("marc simon": Marc SIMON);
2. every word starts a word of the names ("lef": LEFÈBVRE);
3. some word is a whole word of the names ("martin rouen": MARTIN in Rouen);
4. some word starts a word of the names;
5. the others (the words matched the profession, organisation, city ...).

So "martin" lists MARTIN before Martine ADAM, and "marc simon" lists Marc SIMON before
Hélène SIMON of the pharmacy "du Vieux-Marché".

Within a rank, entries come in alphabetical order of their folded names (last name, then
first name, accents and case ignored), then address, so pages are stable.

SQLite answers from the FTS5 table of migration 0002, PostgreSQL from its GIN index on
``to_tsvector('simple', search_text)`` with prefix ``to_tsquery`` terms. The cost grows with
the number of matching entries, which all have to be ranked: a name costs about a
millisecond, a whole town a hundred or more (see bench/README.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col
from unidecode import unidecode

from directory.extract import address_error
from directory.models import ACTIVE, DirectoryEntry, EntryCard
from mss.db import session_scope
from mss.errors import DirectoryError, StorageError

MAX_QUERY_LENGTH = 200
MAX_WORDS = 16  # an address alone can hold a dozen words
MAX_PER_PAGE = 200

_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class SearchPage:
    """One page of results, best first; ``has_next`` says whether another page follows."""

    items: list[DirectoryEntry]
    page: int
    per_page: int
    has_next: bool
    total: int | None = None
    """How many entries match in all (when asked for with ``with_total``)."""

    @property
    def pages(self) -> int | None:
        """How many pages the matches fill (when the total is known)."""
        return None if self.total is None else max(1, -(-self.total // self.per_page))


def query_words(query: str) -> list[str]:
    """The words of a query as the index holds them: ASCII, lower-case, ``[a-z0-9]+``."""
    folded = query.lower() if query.isascii() else unidecode(query).lower()
    return list(dict.fromkeys(_WORD.findall(folded)))


# Both statements compute the rank from the entry's own search_text (``names`` is its
# part before " | ", padded with spaces so " w" finds a word start and " w " a whole word),
# never with a second full-text lookup: that would expand every prefix term once more.
_EXACT = "address = :exact OR rpps = :exact OR national_id = :exact"

# CROSS JOIN keeps the full-text match as the outer loop: left to itself, SQLite's planner
# may walk every active entry and run the match once per row.
_SQLITE = """
SELECT id FROM (
    SELECT e.id, e.address, e.rpps, e.national_id,
           ' ' || substr(e.search_text, 1, instr(e.search_text, ' | ')) AS names
    FROM directory_fts AS f CROSS JOIN directory_entry AS e ON e.id = f.rowid
    WHERE directory_fts MATCH :match {filters}
)
ORDER BY {rank}, names, address
LIMIT :limit OFFSET :offset
"""
_SQLITE_COUNT = """
SELECT count(*) FROM directory_fts AS f CROSS JOIN directory_entry AS e ON e.id = f.rowid
WHERE directory_fts MATCH :match {filters}
"""

_POSTGRESQL = """
SELECT id FROM (
    SELECT e.id, e.address, e.rpps, e.national_id,
           ' ' || split_part(e.search_text, ' | ', 1) || ' ' AS names
    FROM directory_entry AS e
    WHERE to_tsvector('simple', e.search_text) @@ to_tsquery('simple', :match) {filters}
) AS matched
ORDER BY {rank}, names, address
LIMIT :limit OFFSET :offset
"""
_POSTGRESQL_COUNT = """
SELECT count(*) FROM directory_entry AS e
WHERE to_tsvector('simple', e.search_text) @@ to_tsquery('simple', :match) {filters}
"""

# Particles of French names and organisations: a query "centre hospitalier de rouen" or
# "le goff" is searched without them (they match a third of the directory), unless the
# query holds nothing else.
STOPWORDS = frozenset({"a", "au", "aux", "d", "de", "des", "du", "en", "et", "l", "la", "le", "les", "sur"})
# A prefix this short matches so many index terms that expanding it costs more than checking
# it on the entries the longer words already selected.
SHORT_WORD = 2


def _plan(words: list[str]) -> tuple[list[str], list[str]]:
    """Split the query words into those looked up in the index and those checked per entry."""
    kept = [w for w in words if w not in STOPWORDS] or words
    indexed = [w for w in kept if len(w) > SHORT_WORD] or kept
    checked = [w for w in kept if w not in indexed]
    return indexed, checked


def _statement(
    dialect: str, words: list[str], include_inactive: bool, *, count: bool = False
) -> tuple[str, dict[str, object]]:
    indexed, checked = _plan(words)
    params: dict[str, object] = {"active": ACTIVE}
    find = "instr" if dialect == "sqlite" else "strpos"
    for i, word in enumerate(indexed + checked):
        params[f"w{i}"] = " " + word  # a word start
        params[f"x{i}"] = " " + word + " "  # a whole word
    whole = [f"{find}(names, :x{i}) > 0" for i in range(len(indexed) + len(checked))]
    start = [f"{find}(names, :w{i}) > 0" for i in range(len(indexed) + len(checked))]
    ranks = [_EXACT]
    if len(whole) > 1:  # with one word, "every" and "some" are the same rank
        ranks += [" AND ".join(whole), " AND ".join(start)]
    ranks += [" OR ".join(whole), " OR ".join(start)]
    rank = "CASE " + " ".join(f"WHEN {test} THEN {n}" for n, test in enumerate(ranks)) + f" ELSE {len(ranks)} END"
    # "+e.status" keeps SQLite from using the status index to drive the join.
    status = "AND +e.status = :active" if dialect == "sqlite" else "AND e.status = :active"
    filters = [] if include_inactive else [status]
    filters += [f"AND {find}(' ' || e.search_text, :w{len(indexed) + i}) > 0" for i in range(len(checked))]
    if dialect == "sqlite":
        # Each word is [a-z0-9]+ and quoted anyway: "w"* is a prefix term, juxtaposition AND.
        params["match"] = " ".join(f'"{w}"*' for w in indexed)
        if count:
            return _SQLITE_COUNT.format(filters=" ".join(filters)), params
        return _SQLITE.format(filters=" ".join(filters), rank=rank), params
    if dialect == "postgresql":
        params["match"] = " & ".join(f"{w}:*" for w in indexed)
        if count:
            return _POSTGRESQL_COUNT.format(filters=" ".join(filters)), params
        return _POSTGRESQL.format(filters=" ".join(filters), rank=rank), params
    raise DirectoryError(f"directory search does not support the {dialect} database")


def search(
    session: Session,
    query: str,
    *,
    page: int = 1,
    per_page: int = 20,
    include_inactive: bool = False,
    with_total: bool = False,
) -> SearchPage:
    """One page of the entries matching every word of ``query``, best first.

    ``with_total`` also counts every match (one more query, as costly as the page's).
    Revoked and inactive entries are left out unless ``include_inactive``. A query with no
    word (empty, punctuation only) gives an empty page. Raises DirectoryError for a query
    longer than 200 characters or of more than 16 words, a page below 1, or ``per_page``
    outside 1..200; StorageError when the database fails.
    """
    if page < 1:
        raise DirectoryError(f"page must be 1 or more, not {page}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise DirectoryError(f"per_page must be between 1 and {MAX_PER_PAGE}, not {per_page}")
    if len(query) > MAX_QUERY_LENGTH:
        raise DirectoryError(f"search query is longer than {MAX_QUERY_LENGTH} characters")
    words = query_words(query)
    if len(words) > MAX_WORDS:
        raise DirectoryError(f"search query has more than {MAX_WORDS} words")
    if not words:
        return SearchPage(items=[], page=page, per_page=per_page, has_next=False, total=0 if with_total else None)

    # The whole query, for the exact address / RPPS rank; a query with control characters
    # cannot be one (and PostgreSQL refuses NUL in a parameter).
    exact = query.strip().lower() if query.isprintable() else None
    try:
        if exact is not None and address_error(exact) is None:
            # A whole address: the one entry, found by the unique index (a full-text lookup
            # would expand words such as the domain's, present in every entry).
            statement = select(DirectoryEntry).where(col(DirectoryEntry.address) == exact)
            if not include_inactive:
                statement = statement.where(col(DirectoryEntry.status) == ACTIVE)
            entry = session.execute(statement).scalars().first()
            if entry is not None:
                return SearchPage(
                    items=[entry] if page == 1 else [],
                    page=page,
                    per_page=per_page,
                    has_next=False,
                    total=1 if with_total else None,
                )
        dialect = session.get_bind().dialect.name
        sql, params = _statement(dialect, words, include_inactive)
        ids = (
            session.execute(
                text(sql), {**params, "exact": exact, "limit": per_page + 1, "offset": (page - 1) * per_page}
            )
            .scalars()
            .all()
        )
        has_next = len(ids) > per_page
        ids = ids[:per_page]
        total = None
        if with_total:
            if page == 1 and not has_next:
                total = len(ids)  # the page holds every match: no need to count them again
            else:
                count_sql, count_params = _statement(dialect, words, include_inactive, count=True)
                total = int(session.execute(text(count_sql), {**count_params, "exact": exact}).scalar_one())
        found = (
            {
                entry.id: entry
                for entry in session.execute(select(DirectoryEntry).where(col(DirectoryEntry.id).in_(ids))).scalars()
            }
            if ids
            else {}
        )
    except SQLAlchemyError as exc:
        raise StorageError(f"directory search failed: {exc.__class__.__name__}") from exc
    return SearchPage(
        items=[found[i] for i in ids if i in found], page=page, per_page=per_page, has_next=has_next, total=total
    )


# -- recipients, as a sender looks them up ------------------------------------------------


@dataclass(frozen=True)
class Matches:
    """A page of recipients, best first, and how many match in all."""

    items: list[EntryCard]
    page: int
    has_next: bool
    total: int


NO_MATCHES = Matches(items=[], page=1, has_next=False, total=0)


def find_recipients(engine: Engine, query: str, *, page: int = 1, per_page: int = 10) -> Matches:
    """Active entries matching ``query`` (name, RPPS, organisation, city ...), in a read-only
    transaction; raises DirectoryError for a query :func:`search` refuses."""
    with session_scope(engine, readonly=True) as session:
        found = search(session, query, page=page, per_page=per_page, with_total=True)
        return Matches(
            items=[EntryCard.of(entry) for entry in found.items],
            page=found.page,
            has_next=found.has_next,
            total=found.total or 0,
        )
