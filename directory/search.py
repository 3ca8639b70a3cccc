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
``to_tsvector('simple', search_text)``. Three things keep the cost of a search near what
its page needs (migrations 0010 and 0011; figures in bench/README.md):

- the index narrows on the rarest words of the query only (``directory_word`` counts the
  common ones); the others ("pharmacie", "cabinet") are checked on the entries it found;
- a query that matches thousands of entries ("paris", "jean", "qua" as typed) is not
  ranked whole: its first ranks come from an index of the names alone, and the others are
  read in name order until the page is full, from the first name a word starts when many
  names start with it (:func:`_walk`);
- on PostgreSQL, a query word is asked of the index as the few whole words it starts
  ("infirmier" | "infirmiere", from ``directory_lexeme``) rather than as a prefix, which
  the index answers by collecting every entry of every word it covers (:func:`_lexemes`).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

from sqlalchemy import bindparam, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col
from unidecode import unidecode

from directory.extract import address_error
from directory.models import ACTIVE, INACTIVE, REVOKED, DirectoryEntry, EntryCard
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
# The query as typed and upper-cased: identifiers are stored as the extract has them ("2A..."
# for a Corsican ADELI number), addresses lower-case.
_EXACT = "address = :exact OR rpps IN (:exact, :exact_id) OR national_id IN (:exact, :exact_id)"

# CROSS JOIN keeps the full-text match as the outer loop: left to itself, SQLite's planner
# may walk every active entry and run the match once per row.
_SQLITE = """
SELECT id{total} FROM (
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
SELECT id{total} FROM (
    SELECT e.id, e.address, e.rpps, e.national_id,
           ' ' || split_part(e.search_text, ' | ', 1) || ' ' AS names
    FROM directory_entry AS e
    WHERE to_tsvector('simple', e.search_text) @@ {tsquery} {filters}
) AS matched
ORDER BY {rank}, names COLLATE "C", address COLLATE "C"
LIMIT :limit OFFSET :offset
"""
_POSTGRESQL_COUNT = """
SELECT count(*) FROM directory_entry AS e
WHERE to_tsvector('simple', e.search_text) @@ {tsquery} {filters}
"""

# Particles of French names and organisations: a query "centre hospitalier de rouen" or
# "le goff" is searched without them (they match a third of the directory), unless the
# query holds nothing else.
STOPWORDS = frozenset({"a", "au", "aux", "d", "de", "des", "du", "en", "et", "l", "la", "le", "les", "sur"})
# A prefix this short matches so many index terms that expanding it costs more than checking
# it on the entries the longer words already selected.
SHORT_WORD = 2
# directory_word (migration 0010) counts the words held by at least this many entries; a
# word it does not list is taken to be held by this many.
COMMON_WORD = 200
# What reading one entry of a word's list in the index costs, against what each entry found
# costs after that: reading its row, checking words on it, ranking it (measured on 535,000
# entries, SQLite: about 0.05 µs against 1.6 µs).
_INDEX_COST, _FOUND_COST = 1, 30


def count_words(conn: Connection) -> None:
    """Count again, in ``directory_word``, the entries that hold each common word (after an
    import: the counts plan searches, see :func:`_plan`).

    SQLite reads them from the full-text index (``directory_fts_vocab``). PostgreSQL reads
    the statistics ``ANALYZE`` keeps on the search index's lexemes (a sample of the
    entries: counts within a few percent), as counting every word of every entry again
    would take longer than the import.
    """
    conn.execute(text("DELETE FROM directory_word"))
    if conn.dialect.name == "sqlite":
        fill = "SELECT term, doc FROM directory_fts_vocab WHERE doc >= :common"
    else:
        conn.execute(text("ANALYZE directory_entry"))
        fill = _POSTGRESQL_WORDS
    conn.execute(text(f"INSERT INTO directory_word (word, entries) {fill}"), {"common": COMMON_WORD})


# The lexemes ANALYZE found most common in the search index, with their share of the rows
# (most_common_elem_freqs ends with three more numbers: unnest pairs them with NULL).
_POSTGRESQL_WORDS = """
SELECT word, round(share * entry.reltuples) FROM pg_stats AS stats
CROSS JOIN LATERAL unnest(stats.most_common_elems::text::text[], stats.most_common_elem_freqs) AS lexeme(word, share)
CROSS JOIN pg_class AS entry
WHERE stats.schemaname = current_schema() AND stats.tablename = 'ix_directory_entry_search'
  AND entry.oid = 'directory_entry'::regclass
  AND word IS NOT NULL AND share * entry.reltuples >= :common
"""


@dataclass(frozen=True)
class _Plan:
    indexed: list[str]
    """Words the full-text index narrows on."""
    checked: list[str]
    """Words checked on each entry the index found."""
    found: float
    """How many entries the query is expected to match."""
    entries: int
    """How many entries the directory holds, about (the highest id)."""
    common: frozenset[str] = frozenset()
    """The words that start a common word (``directory_word``): long lists in the index."""


_COMPOUND = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+")


def _plan(session: Session, query: str, words: list[str]) -> _Plan:
    """Split the query words into those looked up in the index and those checked per entry.

    Particles and short prefixes are checked. Of the others, the index narrows on the
    rarest, then on each next one only while reading its list costs less than checking it
    on the entries found so far (counts from ``directory_word``, entries assumed to hold
    words independently): "pharmacie gambetta beziers" reads the lists of the street and
    the town, a few thousand entries, and checks "pharmacie" on the 58 they have in common
    rather than read the 170,000 entries of its list. How many entries the query matches
    is expected the same way, except that the words of a compound ("sage-femme",
    "clermont-ferrand") come together: such a group matches as many as its rarest word.
    """
    kept = [w for w in words if w not in STOPWORDS] or words
    candidates = [w for w in kept if len(w) > SHORT_WORD] or kept
    ranges = " OR ".join(f"(word >= :p{i} AND word < :q{i})" for i in range(len(candidates)))
    params = {f"p{i}": w for i, w in enumerate(candidates)}
    params |= {f"q{i}": w + "{" for i, w in enumerate(candidates)}  # "{" sorts after [a-z0-9]
    counted = session.execute(text(f"SELECT word, entries FROM directory_word WHERE {ranges}"), params).all()
    entries = session.execute(text("SELECT max(id) FROM directory_entry")).scalar() or 1

    def held_by(word: str) -> int:
        return sum(n for counted_word, n in counted if counted_word.startswith(word)) or min(COMMON_WORD, entries)

    held = {w: held_by(w) for w in candidates}
    # The words of a compound come together: the group's share is its rarest word's.
    group_of = {w: {w} for w in held}
    folded = query.lower() if query.isascii() else unidecode(query).lower()
    for compound in _COMPOUND.findall(folded):
        merged = set().union(*(group_of[w] for w in _WORD.findall(compound) if w in group_of))
        group_of |= dict.fromkeys(merged, merged)
    share = {w: held[w] / entries for w in held}
    rarest_first = sorted(candidates, key=held.__getitem__)
    indexed, found = rarest_first[:1], float(held[rarest_first[0]])
    narrowed = {id(group_of[indexed[0]]): share[indexed[0]]}  # each group's share so far
    for word in rarest_first[1:] if len(rarest_first[0]) > SHORT_WORD else ():
        group = id(group_of[word])
        before = narrowed.get(group, 1.0)
        still_found = found * min(before, share[word]) / before
        if held[word] * _INDEX_COST < (found - still_found) * _FOUND_COST:
            indexed.append(word)
            found = still_found
            narrowed[group] = min(before, share[word])
    groups = {id(group): group for group in group_of.values()}.values()
    matched = entries * math.prod(min(share[w] for w in group) for group in groups)
    common = frozenset(w for w in candidates if any(counted_word.startswith(w) for counted_word, _ in counted))
    checked = [w for w in kept if w not in indexed]
    return _Plan(indexed=indexed, checked=checked, found=matched, entries=entries, common=common)


def _words(
    find: str, words: list[str], names: str = "names"
) -> tuple[dict[str, object], list[str], list[str], list[str]]:
    """Parameters ``w<i>`` (a word start) and ``x<i>`` (a whole word) for each word, and its
    tests on the ``names`` expression: whole word, word start, and word start anywhere in
    the entry's ``search_text``."""
    params: dict[str, object] = {}
    for i, word in enumerate(words):
        params[f"w{i}"] = " " + word
        params[f"x{i}"] = " " + word + " "
    whole = [f"{find}({names}, :x{i}) > 0" for i in range(len(words))]
    start = [f"{find}({names}, :w{i}) > 0" for i in range(len(words))]
    anywhere = [f"{find}(' ' || e.search_text, :w{i}) > 0" for i in range(len(words))]
    return params, whole, start, anywhere


def _rank(whole: list[str], start: list[str]) -> str:
    """The rank of an entry, as the module's docstring lists them."""
    ranks = [_EXACT]
    if len(whole) > 1:  # with one word, "every" and "some" are the same rank
        ranks += [" AND ".join(whole), " AND ".join(start)]
    ranks += [" OR ".join(whole), " OR ".join(start)]
    return "CASE " + " ".join(f"WHEN {test} THEN {n}" for n, test in enumerate(ranks)) + f" ELSE {len(ranks)} END"


# PostgreSQL: a query word that starts more whole words than this is asked of the index as
# a prefix (a short prefix as typed, "lou", starts thousands).
LEXEMES_AT_MOST = 16
_LEXEMES = """
SELECT prefix.low, lexeme.word
FROM unnest(CAST(:lows AS text[]), CAST(:highs AS text[])) AS prefix(low, high)
CROSS JOIN LATERAL (
    SELECT word FROM directory_lexeme
    WHERE word >= prefix.low COLLATE "C" AND word < prefix.high COLLATE "C"
    ORDER BY word LIMIT :most
) AS lexeme
"""


def _lexemes(session: Session, plan: _Plan) -> dict[str, list[str]]:
    """PostgreSQL: for each word the index narrows on that starts with a letter and a common
    word, the whole words of the entries that it starts (``directory_lexeme``, migration
    0011), when there are at most LEXEMES_AT_MOST; the others are left out (and asked as
    prefixes: a rare word's lists are short).

    GIN answers a prefix term by gathering the entries of every word it covers into one
    bitmap before intersecting it with the other terms; whole words it intersects as it
    reads them, skipping through the longer lists: "infirmier strasbourg" reads 2,400
    entries' worth of two lists instead of 100,000 of one. A word the index narrows on
    alone is left a prefix: its entries are read whole either way, and a list of words
    costs more to plan and to read than the prefix ("bernard" starts "bernard10" ...).
    """
    if len(plan.indexed) < 2:
        return {}
    wanted = [w for w in plan.indexed if w in plan.common and w[:1].isalpha()]
    if not wanted:
        return {}
    # The words that start with w: from w up to w with its last letter moved one further
    # (bytewise, "infirmier" to "infirmies").
    highs = [w[:-1] + chr(ord(w[-1]) + 1) for w in wanted]
    rows = session.execute(text(_LEXEMES), {"lows": wanted, "highs": highs, "most": LEXEMES_AT_MOST + 1}).all()
    found: dict[str, list[str]] = {w: [] for w in wanted}
    for low, word in rows:
        found[low].append(word)
    return {w: lexemes for w, lexemes in found.items() if 0 < len(lexemes) <= LEXEMES_AT_MOST}


def _whole_words(lexemes: list[str]) -> str:
    """The words ``lexemes`` as one term of a PostgreSQL ``tsquery`` in its input syntax,
    taken as they are (a word of the index may hold "-", ".", "'" ...: quoted)."""
    quoted = ["'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes]
    return quoted[0] if len(quoted) == 1 else "(" + " | ".join(quoted) + ")"


def _postgresql_match(indexed: list[str], lexemes: dict[str, list[str]], params: dict[str, object]) -> str:
    """The ``tsquery`` of ``indexed``: the words with whole words from ``lexemes`` asked
    as those, the others as prefixes read by ``to_tsquery`` as before (which parses
    "12e5x" as two words, as the entries' vectors hold it)."""
    prefixes = [f"{w}:*" for w in indexed if w not in lexemes]
    wholes = [_whole_words(lexemes[w]) for w in indexed if w in lexemes]
    terms = []
    if prefixes:
        params["match"] = " & ".join(prefixes)
        terms.append("to_tsquery('simple', :match)")
    if wholes:
        params["whole"] = " & ".join(wholes)
        terms.append("CAST(:whole AS tsquery)")
    return "(" + " && ".join(terms) + ")"


def _statement(
    dialect: str,
    indexed: list[str],
    checked: list[str],
    include_inactive: bool,
    *,
    count: bool = False,
    total: bool = False,
    lexemes: dict[str, list[str]] | None = None,
) -> tuple[str, dict[str, object]]:
    """The statement that ranks every match and returns a page of their ids (with ``total``,
    each with the count of every match beside it, from the rows the ranking reads anyway),
    or with ``count`` the one that counts them."""
    find = "instr" if dialect == "sqlite" else "strpos"
    total_column = ", count(*) OVER () AS total" if total else ""
    params, whole, start, anywhere = _words(find, indexed + checked)
    params["active"] = ACTIVE
    # "+e.status" keeps SQLite from using the status index to drive the join.
    status = "AND +e.status = :active" if dialect == "sqlite" else "AND e.status = :active"
    filters = [] if include_inactive else [status]
    filters += [f"AND {test}" for test in anywhere[len(indexed) :]]
    if dialect == "sqlite":
        # Each word is [a-z0-9]+ and quoted anyway: "w"* is a prefix term, juxtaposition AND.
        params["match"] = " ".join(f'"{w}"*' for w in indexed)
        if count:
            return _SQLITE_COUNT.format(filters=" ".join(filters)), params
        return _SQLITE.format(total=total_column, filters=" ".join(filters), rank=_rank(whole, start)), params
    if dialect == "postgresql":
        tsquery = _postgresql_match(indexed, lexemes or {}, params)
        if count:
            return _POSTGRESQL_COUNT.format(tsquery=tsquery, filters=" ".join(filters)), params
        ranking = _POSTGRESQL.format(
            total=total_column, tsquery=tsquery, filters=" ".join(filters), rank=_rank(whole, start)
        )
        return ranking, params
    raise DirectoryError(f"directory search does not support the {dialect} database")


# -- a broad query: one page read in name order ----------------------------------------

# A query expected to match this many entries is answered by _walk, when the walk is
# expected to read fewer entries than ranking every match ranks.
BROAD = 2000
# A rank whose entries the index of names finds fewer than this many of is listed whole;
# past it, the rank is walked in name order.
LISTED_AT_MOST = 3000
# A walk gives up (and the query is ranked whole) past this many times the entries it
# expected to read.
WALK_SLACK = 4
# A page that ends past this many entries of a rank is not read around its blocks of names
# (each block gives up to that many, all listed by id): the query is ranked whole.
AROUND_AT_MOST = 1000


@dataclass(frozen=True)
class _Walking:
    """How :func:`_walk` says it to one database (the indexes of migration 0010)."""

    find: str
    """The function that finds a string in another."""
    names: str
    """An entry's names padded with spaces, as the ranks read them."""
    names_order: str
    """The order of entries by ``names`` then address, as the whole ranking has it."""
    key: str
    """The first column of ix_directory_entry_names: the names, in the same order."""
    key_start: str
    """What ``key`` starts with before the first word of the names."""
    address: str
    """The entry's address, in the order of ix_directory_entry_names."""
    source: str
    """The entries, read through ix_directory_entry_names."""
    named: str
    """The entries whose names match :named in the index of names ..."""
    is_named: str
    """... an entry ``e`` among them (read with the entry's row, where the index allows) ..."""
    whole: str
    """... a query where this is a whole word, ..."""
    start: str
    """... this a word start, ..."""
    every: str
    """... this joins terms that must all match, ..."""
    some: str
    """... and this terms of which one must."""
    false: str
    outside: str
    """The entries the index of names finds, less those whose names start with a word of
    a block (``{blocks}``: ``outside_block`` for each) ..."""
    outside_block: str
    """... from ``:first<i>`` up to ``:after<i>``."""


_SQLITE_NAMED = "SELECT rowid FROM directory_names_fts WHERE directory_names_fts MATCH :named"
_SQLITE_KEY = "substr(e.search_text, 1, instr(e.search_text, ' | '))"
_POSTGRESQL_NAMES = "' ' || split_part(e.search_text, ' | ', 1) || ' '"
_WALKING = {
    "sqlite": _Walking(
        find="instr",
        names=f"' ' || {_SQLITE_KEY}",
        names_order="names, address",
        key=_SQLITE_KEY,
        key_start="",
        address="e.address",
        source="directory_entry AS e INDEXED BY ix_directory_entry_names",
        named=_SQLITE_NAMED,
        is_named=f"e.id IN ({_SQLITE_NAMED})",
        whole='"{}"',
        start='"{}"*',
        every=" AND ",
        some=" OR ",
        false="0",
        # Both lists read from their indexes alone, the difference taken by SQLite.
        outside=_SQLITE_NAMED + "{blocks}",
        outside_block=f" EXCEPT SELECT e.id FROM directory_entry AS e INDEXED BY ix_directory_entry_names "
        f"WHERE {_SQLITE_KEY} >= :first{{i}} AND {_SQLITE_KEY} < :after{{i}}",
    ),
    "postgresql": _Walking(
        find="strpos",
        names=_POSTGRESQL_NAMES,
        names_order='names COLLATE "C", address COLLATE "C"',
        key=f'({_POSTGRESQL_NAMES}) COLLATE "C"',
        key_start=" ",
        address='e.address COLLATE "C"',
        source="directory_entry AS e",
        named="SELECT id FROM directory_entry "
        "WHERE to_tsvector('simple', split_part(search_text, ' | ', 1)) @@ to_tsquery('simple', :named)",
        # The entries' rows found by the index directly, not looked up one by one by id
        # after it (a rank of 2,300 entries: 4 ms instead of 20).
        is_named="to_tsvector('simple', split_part(e.search_text, ' | ', 1)) @@ to_tsquery('simple', :named)",
        whole="{}",
        start="{}:*",
        every=" & ",
        some=" | ",
        false="false",
        # The rows the index of names finds are read anyway: each is checked as it comes.
        outside="SELECT e.id FROM directory_entry AS e "
        "WHERE to_tsvector('simple', split_part(e.search_text, ' | ', 1)) @@ to_tsquery('simple', :named){blocks}",
        outside_block=f' AND NOT (({_POSTGRESQL_NAMES}) COLLATE "C" >= :first{{i}} '
        f'AND ({_POSTGRESQL_NAMES}) COLLATE "C" < :after{{i}})',
    ),
}
_NAMED_COUNT = "SELECT count(*) FROM ({named} LIMIT :at_most) AS named"
# How many entries have names that start with a word (walking in name order, they come
# together: a walk for them reads every name before theirs).
_BLOCK = """
SELECT count(*) FROM (SELECT 1 FROM {source} WHERE {key} >= :first AND {key} < :after LIMIT :at_most) AS block
"""
# The matches of ranks :first to :last among the entries that meet {among}, by rank, then
# in name order.
_RANK = """
SELECT id FROM (
    SELECT e.id, e.address, e.rpps, e.national_id, {names} AS names
    FROM directory_entry AS e
    WHERE {among} {filters}
) AS ranked
WHERE {rank} BETWEEN :first AND :last
ORDER BY {rank}, {names_order}
"""
# The first :need matches of the rank among the first ``budget`` entries in name order (the
# rank is worked out for matches only). The database stops reading at the :need-th match:
# the LIMITed subquery is read as an ordered stream (SQLite: a co-routine; PostgreSQL: a scan
# of ix_directory_entry_names), which an ORDER BY outside would turn into a sort of the whole
# budget. tests/test_directory_search.py compares the pages with the whole ranking's.
_WALK = """
SELECT id FROM (
    SELECT e.id, CASE WHEN {filters} THEN {rank} = :rank ELSE {false} END AS is_match
    FROM {source}
    {within}
    ORDER BY {key}, {address}
    LIMIT :budget
) AS walked
WHERE is_match
LIMIT :need
"""
# How many entries a walk that found fewer than :need matches read: the budget, or all.
_WALKED = "SELECT count(*) FROM (SELECT 1 FROM {source} {within} LIMIT :budget) AS walked"
# The entries whose names start with one word: a block in name order.
_WITHIN = "WHERE {key} >= :first AND {key} < :after"
_AMONG_EXACT = f"e.id IN (SELECT id FROM directory_entry WHERE {_EXACT})"
_SQLITE_MATCHED = "SELECT count(*) FROM directory_fts WHERE directory_fts MATCH :match"
_SQLITE_NOT_ACTIVE = "SELECT count(*) FROM directory_entry AS e WHERE e.status IN :not_active AND {anywhere}"


def _worth_walking(plan: _Plan, end: int, matches: float | None = None) -> bool:
    """Whether the query is broad enough for :func:`_walk`, and its page near enough: a walk
    for ``end`` of ``matches`` (the query's: ``found``) reads about ``end * entries /
    matches`` entries, ranking every match ``found``."""
    if matches is None:
        if plan.found < BROAD:
            return False
        matches = plan.found
    return end * plan.entries <= matches * plan.found


def _named(words: list[str], say: _Walking) -> list[str]:
    """For each rank after the exact match's and before the last, the query of the index of
    names that finds the entries it may hold."""
    whole = [say.whole.format(w) for w in words]
    start = [say.start.format(w) for w in words]
    named = [say.every.join(whole), say.every.join(start)] if len(words) > 1 else []
    return [*named, say.some.join(whole), say.some.join(start)]


def _walk(
    session: Session, plan: _Plan, exact: str | None, include_inactive: bool, *, offset: int, limit: int
) -> list[int] | None:
    """Rows ``offset`` to ``offset + limit`` of a broad query's ranking, reading about as
    many entries as the page needs rather than ranking every match; None when it would read
    many more, to rank the query whole.

    The ranks are taken in order. The exact match and each rank the index of names finds
    few entries for ("paris" names a few thousand organisations among the 83,000 entries in
    Paris) are listed whole: their matches, in name order. A rank with more ("jean" names
    40,000 people), and the last rank (the entries whose names hold none of the words), are
    walked: every entry in name order, keeping the rank's matches, until the page is full.
    A walk gives up past WALK_SLACK times the entries it expected to read. A rank whose
    entries come together in name order ("martin": the MARTIN family sits after every name
    before it; "qua" as typed, QUARTIER and QUATREFAGES) is not walked from the start but
    read around those blocks (``around_blocks``): each block from its first name on, and the
    entries outside them listed whole when few (Quang NGUYEN), walked when many.
    """
    say = _WALKING[session.get_bind().dialect.name]
    words = plan.indexed + plan.checked
    params, whole, start, anywhere = _words(say.find, words)
    params |= {"exact": exact, "exact_id": exact and exact.upper(), "active": ACTIVE, "at_most": LISTED_AT_MOST}
    matches = ([] if include_inactive else ["e.status = :active"]) + anywhere
    rank = _rank(whole, start)
    filters = "".join(f" AND {m}" for m in matches)
    _, walk_whole, walk_start, _ = _words(say.find, words, say.names)
    walk_rank_of = _rank(walk_whole, walk_start)

    def walked(within: str, values: dict[str, object]) -> list[int] | None:
        """The first ``values["need"]`` matches of the walk of the entries ``within`` holds;
        None if it met fewer among the ``values["budget"]`` entries it could read, and did
        not read them all."""
        walk = _WALK.format(
            filters=" AND ".join(matches),
            rank=walk_rank_of,
            false=say.false,
            source=say.source,
            within=within,
            key=say.key,
            address=say.address,
        )
        found = list(session.execute(text(walk), values).scalars().all())
        if len(found) == values["need"]:
            return found
        read = session.execute(text(_WALKED.format(source=say.source, within=within)), values).scalar_one()
        return found if read < values["budget"] else None

    end = offset + limit
    ranked: list[int] = []

    def listed(among: str, first: int, last: int) -> None:
        statement = _RANK.format(names=say.names, among=among, filters=filters, rank=rank, names_order=say.names_order)
        ranked.extend(session.execute(text(statement), params | {"first": first, "last": last}).scalars())

    def walk_rank(expected: float) -> bool:
        """Add the rank's matches met in name order until the page is full; False if that
        took more than WALK_SLACK times the entries expected to read."""
        need = end - len(ranked)
        budget = int(WALK_SLACK * need * plan.entries / expected) + 1000
        found = walked("", params | {"need": need, "budget": budget})
        if found is None:
            return False
        ranked.extend(found)
        return True

    def around_blocks(blocks: list[str]) -> bool:
        """Add the rank's matches in name order when many names start with a word of
        ``blocks`` ("qua": QUARTIER, QUATREFAGES ... come together), False if that would
        read too many entries.

        The matches whose names start with such a word are read block by block in name
        order, as many as the page needs. The others ("Quang NGUYEN") are scattered: few,
        they are listed whole (the index of names less the blocks' entries); many, they
        come often enough for a walk in name order to fill the page.
        """
        need = end - len(ranked)
        if need > AROUND_AT_MOST:
            return False  # a page this deep: ranking the query whole costs less
        # The scattered entries, when walked, are LISTED_AT_MOST or more.
        worth_walking = _worth_walking(plan, need, LISTED_AT_MOST)
        if worth_walking and any(len(word) <= SHORT_WORD for word in blocks) and walk_rank(LISTED_AT_MOST):
            return True  # a word of one or two letters starts many names besides its block's
        bounds = [_bounds(say, word) for word in blocks]
        ranges: dict[str, object] = {}
        for i, (first, after) in enumerate(bounds):
            ranges |= {f"first{i}": first, f"after{i}": after}
        less = "".join(say.outside_block.format(i=i) for i in range(len(blocks)))
        outside = text(say.outside.format(blocks=less) + " LIMIT :at_most")
        candidates = list(session.execute(outside, params | ranges).scalars().all())
        if len(candidates) >= LISTED_AT_MOST:
            return worth_walking and walk_rank(LISTED_AT_MOST)
        within = _WITHIN.format(key=say.key)
        for first, after in bounds:
            block = {"first": first, "after": after, "need": need, "budget": LISTED_AT_MOST + need}
            found = walked(within, params | block)
            if found is None:
                return False  # the block's matches are too far apart in it
            candidates += found
        if candidates:
            statement = _RANK.format(
                names=say.names, among="e.id IN :ids", filters=filters, rank=rank, names_order=say.names_order
            )
            page = text(statement + "LIMIT :need").bindparams(bindparam("ids", expanding=True))
            values = params | {"ids": candidates, "first": params["rank"], "last": params["rank"], "need": need}
            ranked.extend(session.execute(page, values).scalars())
        return True

    if exact is not None:
        listed(_AMONG_EXACT, 0, 0)
    named_ranks = _named(words, say)
    count_named = text(_NAMED_COUNT.format(named=say.named))
    params["named"] = named_ranks[-1]  # some word starts a word of the names: every rank of names
    # A word of one or two letters starts the names of tens of thousands ("ch": 42,000), and
    # counting them costs what the index spends gathering them all (16 ms on PostgreSQL):
    # the ranks are then taken one by one, the first ones, few, listed at once.
    short = any(len(word) <= SHORT_WORD for word in words)
    together = functools.cache(lambda: _together(session, say, words))  # the same for every rank
    named_count = None if short else session.execute(count_named, params).scalar_one()
    if named_count is not None and named_count < LISTED_AT_MOST // 2:
        listed(say.is_named, 1, len(named_ranks))  # all together, in one reading of the index
    else:
        for n, named in enumerate(named_ranks, 1):
            if len(ranked) >= end:
                return ranked[offset:end]
            params |= {"rank": n, "named": named}
            # The last rank's names were counted above, unless a word is short.
            if n == len(named_ranks) and named_count is not None:
                count = named_count
            else:
                count = session.execute(count_named, params).scalar_one()
            # A rank of a few hundred entries is listed whole. A larger one whose names come
            # together in blocks is read around them (ranking 2,000 entries takes 15 ms); the
            # others are listed whole up to LISTED_AT_MOST entries, and walked past it.
            if count < LISTED_AT_MOST // 2:
                listed(say.is_named, n, n)
            elif blocks := together():
                if not around_blocks(blocks):
                    return None
            elif count < LISTED_AT_MOST:
                listed(say.is_named, n, n)
            elif not walk_rank(LISTED_AT_MOST):
                return None
    if len(ranked) < end:
        params["rank"] = len(named_ranks) + 1
        if not walk_rank(plan.found):
            return None
    return ranked[offset:end]


def _count_walked(session: Session, plan: _Plan, include_inactive: bool) -> int:
    """How many entries match a query _walk answered, when the index decides every word
    (SQLite): the index's count (a few milliseconds for 83,000 entries, where counting them
    through their rows takes fifty), less the entries not active among them (few, found by
    their status)."""
    params, _, _, anywhere = _words("instr", plan.indexed)
    params |= {"match": " ".join(f'"{w}"*' for w in plan.indexed), "not_active": [REVOKED, INACTIVE]}
    matched = session.execute(text(_SQLITE_MATCHED), params).scalar_one()
    if not include_inactive:
        not_active = text(_SQLITE_NOT_ACTIVE.format(anywhere=" AND ".join(anywhere)))
        matched -= session.execute(not_active.bindparams(bindparam("not_active", expanding=True)), params).scalar_one()
    return int(matched)


def _bounds(say: _Walking, word: str) -> tuple[str, str]:
    """The range of ix_directory_entry_names that the names starting with ``word`` fill
    ("{" sorts after [a-z0-9])."""
    first = say.key_start + word
    return first, first + "{"


def _together(session: Session, say: _Walking, words: list[str]) -> list[str]:
    """The words of ``words`` that start the names of many entries."""
    block = text(_BLOCK.format(source=say.source, key=say.key))
    together = []
    for word in words:
        first, after = _bounds(say, word)
        params = {"first": first, "after": after, "at_most": LISTED_AT_MOST // 2}
        if session.execute(block, params).scalar_one() >= LISTED_AT_MOST // 2:
            together.append(word)
    return together


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

    ``with_total`` also counts every match: in the ranking's own statement for a query
    ranked whole, by one more query (as costly as the page's) for a walked one.
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
    exacts = {"exact": exact, "exact_id": exact and exact.upper()}
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
        plan = _plan(session, query, words)
        indexed, checked = plan.indexed, plan.checked
        offset, limit = (page - 1) * per_page, per_page + 1
        walked = None
        # Read once, and only when a ranking or a count needs them.
        lexemes = functools.cache(lambda: _lexemes(session, plan) if dialect == "postgresql" else {})

        if _worth_walking(plan, offset + limit):
            walked = _walk(session, plan, exact, include_inactive, offset=offset, limit=limit)
        counted = None
        if walked is not None:
            ids = walked
        else:
            sql, params = _statement(dialect, indexed, checked, include_inactive, total=with_total, lexemes=lexemes())
            rows = session.execute(text(sql), {**params, **exacts, "limit": limit, "offset": offset}).all()
            ids = [row[0] for row in rows]
            if with_total and rows:
                counted = int(rows[0][1])  # counted by the ranking (a page past the end has no row)
        has_next = len(ids) > per_page
        ids = ids[:per_page]
        total = None
        if with_total:
            if page == 1 and not has_next:
                total = len(ids)  # the page holds every match: no need to count them again
            elif counted is not None:
                total = counted
            elif walked is not None and not checked and dialect == "sqlite":
                total = _count_walked(session, plan, include_inactive)
            else:
                count_sql, count_params = _statement(
                    dialect, indexed, checked, include_inactive, count=True, lexemes=lexemes()
                )
                total = int(session.execute(text(count_sql), {**count_params, **exacts}).scalar_one())
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
    """A page of recipients, best first, and how many match in all (None when not asked)."""

    items: list[EntryCard]
    page: int
    has_next: bool
    total: int | None


NO_MATCHES = Matches(items=[], page=1, has_next=False, total=0)


def find_recipients(
    engine: Engine, query: str, *, page: int = 1, per_page: int = 10, with_total: bool = True
) -> Matches:
    """Active entries matching ``query`` (name, RPPS, organisation, city ...), in a read-only
    transaction, and how many match unless ``with_total`` is false (a count can cost as much
    as the page: a list of recipients to pick from needs none). Raises DirectoryError for a
    query :func:`search` refuses."""
    with session_scope(engine, readonly=True) as session:
        found = search(session, query, page=page, per_page=per_page, with_total=with_total)
        return Matches(
            items=[EntryCard.of(entry) for entry in found.items],
            page=found.page,
            has_next=found.has_next,
            total=(found.total or 0) if with_total else None,
        )
