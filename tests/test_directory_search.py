"""Directory search: accents and case, prefixes, ranking, pagination, hostile input, status."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

import directory.search as search_module
from directory import service
from directory.importer import import_extract
from directory.search import COMMON_WORD, SearchPage, search
from mss.db import session_scope
from mss.errors import DirectoryError

SAMPLE = "annuaire/Extraction_Correspondance_MSSante_sample.txt"
LEFEBVRES = [
    "chloe.lefebvre@pharmacie.mss.test",
    "jean-baptiste.lefebvre@chu-demo.mss.test",
    "matheo.lefebvre@infirmier.mss.test",
]


@pytest.fixture
def directory(engine: Engine, samples: Path) -> Engine:
    import_extract(engine, samples / SAMPLE)
    return engine


def find(engine: Engine, query: str, **options: object) -> list[str]:
    with session_scope(engine) as session:
        return [e.address for e in search(session, query, **options).items]


def page(engine: Engine, query: str, **options: object) -> SearchPage:
    with session_scope(engine) as session:
        return search(session, query, **options)


def test_accents_and_case_do_not_matter(directory: Engine) -> None:
    for query in ("lefebvre", "LEFEBVRE", "LEFÈBVRE", "Lefèbvre", "lefèbvre"):
        assert find(directory, query) == LEFEBVRES, query
    evreux = find(directory, "evreux")
    assert len(evreux) == 10 and "eloise.bernard@medecin.mss.test" in evreux
    assert find(directory, "ÉVREUX") == evreux == find(directory, "Évreux")
    assert find(directory, "eloise") == find(directory, "ÉLOÏSE")


def test_every_word_must_match_as_a_prefix(directory: Engine) -> None:
    assert find(directory, "lef") == LEFEBVRES
    assert find(directory, "lef roue") == LEFEBVRES[:2]  # Rouen, not Le Havre
    assert find(directory, "lefebvre havre") == ["matheo.lefebvre@infirmier.mss.test"]
    assert find(directory, "lefebvre evreux") == []
    assert find(directory, "pedia cardio") == ["lea.richard@chu-demo.mss.test"]
    assert find(directory, "pedia havre") == []
    # One- and two-letter words still narrow the result (checked on each entry).
    assert find(directory, "chloe n") == ["chloe.ndiaye@pharmacie.mss.test"]
    assert (
        find(directory, "n'diaye")
        == find(directory, "n diaye")
        == ["chloe.ndiaye@pharmacie.mss.test", "eloise.ndiaye@pharmacie.mss.test", "matheo.ndiaye@medecin.mss.test"]
    )


def test_searchable_fields(directory: Engine) -> None:
    assert find(directory, "10000584928") == ["chloe.lefebvre@pharmacie.mss.test"]  # RPPS
    assert find(directory, "810000584928") == ["chloe.lefebvre@pharmacie.mss.test"]  # national id
    assert find(directory, "Chloe.Lefebvre@Pharmacie.MSS.test ") == ["chloe.lefebvre@pharmacie.mss.test"]
    assert find(directory, "chloe.lefebvre@pharm") == ["chloe.lefebvre@pharmacie.mss.test"]
    assert len(find(directory, "sage-femme")) == 3  # profession
    assert len(find(directory, "cardiologie vasculaires")) == 4  # skill
    assert len(find(directory, "seine-aval", per_page=50)) == 10  # organisation
    assert find(directory, "urgences pediatriques")[0] == "urgences.pediatriques@chu-demo.mss.test"  # service
    assert len(find(directory, "76600", per_page=50)) == 10  # postal code
    assert find(directory, "76600", per_page=50) == find(directory, "le havre", per_page=50)  # city


def test_particles_are_ignored_when_other_words_remain(directory: Engine) -> None:
    assert (
        find(directory, "le goff")
        == find(directory, "goff")
        == ["lea.le-goff@pharmacie.mss.test", "noel.le-goff@infirmier.mss.test"]
    )
    assert find(directory, "centre hospitalier de démo", per_page=50) == find(
        directory, "centre hospitalier demo", per_page=50
    )


def test_ranking_exact_match_then_names_then_the_rest(directory: Engine) -> None:
    with session_scope(directory) as session:
        service.add_entry(
            session,
            actor="admin@mss.test",
            kind="PER",
            address="martine.adam@medecin.mss.test",
            rpps="10009999991",
            last_name="ADAM",
            first_name="Martine",
            postal_code="27000",
            city="Évreux",
        )
    # A whole name word before a name that merely starts with the query.
    assert find(directory, "martin") == ["francois.martin@pharmacie.mss.test", "martine.adam@medecin.mss.test"]
    # Both words in the names (Marc SIMON, in name order then address) before one word in
    # the names and the other elsewhere (Hélène SIMON of the pharmacy "du Vieux-Marché").
    assert find(directory, "marc simon") == [
        "marc.simon22@chu-demo.mss.test",
        "marc.simon30@chu-demo.mss.test",
        "marc.simon@chu-demo.mss.test",
        "marc.simon@pharmacie.mss.test",
        "helene.simon@pharmacie.mss.test",
    ]
    # Names in alphabetical order, accents ignored: LEROY Anaïs, Cédric, Zoé.
    assert find(directory, "leroy") == [
        "anais.leroy@chu-demo.mss.test",
        "cedric.leroy@medecin.mss.test",
        "zoe.leroy@infirmier.mss.test",
    ]
    # The exact address (or RPPS) comes first although "marc.simon22" sorts before it.
    assert find(directory, "marc.simon@chu-demo.mss.test") == ["marc.simon@chu-demo.mss.test"]
    assert find(directory, "10000266340") == ["marc.simon@chu-demo.mss.test"]
    # "ma": names starting with "ma" first (MARTIN, Marc, Mathéo, Maëlys ...), then people
    # matched only through the pharmacy "du Vieux-Marché".
    results = find(directory, "ma", per_page=200)
    with session_scope(directory) as session:
        names = [service.get_entry(session, a).search_text.split(" | ")[0] for a in results]
    by_name = [any(w.startswith("ma") for w in n.split()) for n in names]
    assert by_name.index(False) == by_name.count(True) > 0 and not any(by_name[by_name.index(False) :])
    assert names[: by_name.count(True)] == sorted(names[: by_name.count(True)])


def test_pages_are_stable_and_complete(directory: Engine) -> None:
    everything = find(directory, "pharmacie", per_page=200)
    assert len(everything) == 30
    pages, number = [], 1
    while True:
        result = page(directory, "pharmacie", page=number, per_page=5)
        assert (result.page, result.per_page) == (number, 5)
        pages += [e.address for e in result.items]
        if not result.has_next:
            break
        number += 1
    assert number == 6 and pages == everything
    assert page(directory, "pharmacie", page=7, per_page=5).items == []


HOSTILE_QUERIES = [
    '"',
    '""',
    "*",
    "lefebvre*",
    "lef*ebvre",
    "NEAR(lefebvre chloe)",
    "lefebvre NOT chloe",
    "lefebvre -chloe",
    "(lefebvre",
    "lefebvre)",
    "lefebvre OR simon",
    "lefebvre AND chloe",
    "last_name:lefebvre",
    "{search_text}: lefebvre",
    "^lefebvre",
    "lefebvre' OR '1'='1",
    "'; DROP TABLE directory_entry; --",
    "lef:* | sim:*",
    "!lefebvre",
    "lefebvre & !chloe",
    "lefebvre\x00",
    "% _ \\",
]


def test_query_syntax_is_never_interpreted(directory: Engine) -> None:
    for query in HOSTILE_QUERIES:
        # Operators are plain separators: a query means the same as its words.
        words = "".join(c if c.isalnum() else " " for c in query.lower()).split()
        assert find(directory, query) == (find(directory, " ".join(words)) if words else []), query
    assert len(find(directory, "lefebvre")) == 3  # and the table is still there


def test_operator_words_are_just_words(directory: Engine) -> None:
    assert find(directory, "lefebvre OR simon") == []  # nobody has the word "or"
    assert find(directory, "NEAR") == []
    assert find(directory, "lefebvre -chloe") == ["chloe.lefebvre@pharmacie.mss.test"]


def test_revoked_and_inactive_are_hidden_unless_asked(directory: Engine) -> None:
    with session_scope(directory) as session:
        service.revoke_entry(session, "chloe.lefebvre@pharmacie.mss.test", reason="struck off", actor="admin@mss.test")
    assert find(directory, "lefebvre") == LEFEBVRES[1:]
    assert find(directory, "chloe.lefebvre@pharmacie.mss.test") == []
    assert find(directory, "lefebvre", include_inactive=True) == LEFEBVRES
    assert find(directory, "chloe.lefebvre@pharmacie.mss.test", include_inactive=True) == LEFEBVRES[:1]


def test_a_corsican_adeli_number_is_found_as_typed(directory: Engine) -> None:
    # ADELI numbers of Corsica start with the department, 2A or 2B: typed in any case, the
    # whole number is the exact match, and a prefix of it narrows like any word.
    with session_scope(directory) as session:
        service.add_entry(
            session,
            actor="admin@mss.test",
            kind="PER",
            address="ange.santoni@infirmier.mss.test",
            rpps="2A1234567",
            last_name="SANTONI",
            first_name="Ange",
            postal_code="20000",
            city="Ajaccio",
        )
    for query in ("2a1234567", "2A1234567", "02a1234567", "2a12", "santoni 2a", "ange 2A"):
        assert find(directory, query) == ["ange.santoni@infirmier.mss.test"], query


def test_empty_queries_and_limits(directory: Engine) -> None:
    assert page(directory, "") == SearchPage(items=[], page=1, per_page=20, has_next=False)
    assert find(directory, "  -*- ") == []
    for options, message in (
        ({"page": 0}, "page must be 1 or more"),
        ({"per_page": 0}, "per_page must be between 1 and 200"),
        ({"per_page": 201}, "per_page must be between 1 and 200"),
    ):
        with pytest.raises(DirectoryError, match=message):
            page(directory, "lefebvre", **options)
    with pytest.raises(DirectoryError, match="longer than 200 characters"):
        page(directory, "a" * 201)
    with pytest.raises(DirectoryError, match="more than 16 words"):
        page(directory, " ".join(f"w{n}" for n in range(17)))


# -- a broad query, read in name order ---------------------------------------------------

GENERATOR = Path(__file__).resolve().parents[1] / "bench" / "gen_extract.py"


def generated_extract(tmp_path: Path, rows: int) -> Path:
    """A synthetic extract in the national format (bench/gen_extract.py), ``rows`` lines."""
    spec = importlib.util.spec_from_file_location("gen_extract", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "extract.txt"
    module.generate(rows, path)
    return path


def test_word_counts_follow_the_imports(engine: Engine, tmp_path: Path) -> None:
    import_extract(engine, generated_extract(tmp_path, 1500))
    with session_scope(engine) as session:
        counted = {word: n for word, n in session.execute(text("SELECT word, entries FROM directory_word"))}
        texts = session.execute(text("SELECT search_text FROM directory_entry")).scalars().all()
    held: Counter[str] = Counter()
    for search_text in texts:
        held.update(set(search_text.replace("|", " ").split()))
    assert counted and counted == {word: n for word, n in held.items() if n >= COMMON_WORD}


@pytest.mark.parametrize("listed_at_most", [3000, 6])
def test_a_walk_in_name_order_gives_the_ranking_s_pages(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listed_at_most: int
) -> None:
    # Every page a walk answers is the page that ranking every match gives, and so is the
    # count of matches: for names, towns, professions, prefixes as typed, compounds, exact
    # RPPS, with inactive entries left out or not. With listed_at_most=6 the ranks of names
    # are walked too, or read around the blocks of names a word starts ("lou" as typed:
    # LOUBET, LOUIS ... in a row, Louise ADAM elsewhere).
    import_extract(engine, generated_extract(tmp_path, 4000))
    with session_scope(engine) as session:
        session.execute(text("UPDATE directory_entry SET status = 'inactive' WHERE id % 17 = 0"))
        rows = session.execute(
            text("SELECT last_name, first_name, city, profession_label, org_name, rpps FROM directory_entry")
        ).all()
    rng = random.Random(3)
    queries = ["paris", "jean", "martin", "ch paris", "pharmacien paris", "sage-femme", "la ve", "lyon", "marie"]
    for last, first, city, profession, org, rpps in rng.sample(rows, 8):
        queries += [last, first, city, f"{profession} {city}", f"{last[:3]} {city[:2]}", f"{org} {city}", rpps]
        # Blocks within blocks ("mar mart"), and a word of one or two letters.
        queries += [last[:3], last[:2], f"{last[:3]} {last[:4]}", f"{last[:4]} {last[:3]}"]
    queries = [q for q in dict.fromkeys(queries) if q.strip()]

    def pages(query: str) -> list[list[str]]:
        found = []
        for number, per_page in ((1, 7), (4, 7)):
            for include_inactive in (False, True):
                found.append(find(engine, query, page=number, per_page=per_page, include_inactive=include_inactive))
        for include_inactive in (False, True):
            counted = page(engine, query, page=2, per_page=7, include_inactive=include_inactive, with_total=True)
            found.append([str(counted.total)])
        return found

    ranked = {query: pages(query) for query in queries}
    walked = []
    real_walk = search_module._walk

    def counted_walk(*args: object, **options: object) -> list[int] | None:
        answer = real_walk(*args, **options)  # type: ignore[arg-type]
        walked.append(answer is not None)
        return answer

    monkeypatch.setattr(search_module, "_worth_walking", lambda plan, end, matches=None: True)
    monkeypatch.setattr(search_module, "LISTED_AT_MOST", listed_at_most)
    monkeypatch.setattr(search_module, "_walk", counted_walk)
    for query in queries:
        assert pages(query) == ranked[query], query
    assert sum(walked) > len(walked) / 3, f"only {sum(walked)} of {len(walked)} pages were walked"
    assert any(page for pages_of in ranked.values() for page in pages_of)


# -- every word a prefix, whatever the index is asked ------------------------------------

_PREFIXES = {
    # The full-text index's own prefix query: every word the start of a word of the entry.
    "sqlite": "SELECT e.id FROM directory_fts AS f JOIN directory_entry AS e ON e.id = f.rowid "
    "WHERE directory_fts MATCH :fts AND e.status = 'active'",
    "postgresql": "SELECT id FROM directory_entry "
    "WHERE to_tsvector('simple', search_text) @@ to_tsquery('simple', :tsquery) AND status = 'active'",
}
# What a statement-level trigger must have added (PostgreSQL, migration 0011): every word of
# every entry that starts with a letter.
_ENTRY_WORDS = (
    "SELECT DISTINCT word FROM directory_entry, unnest(tsvector_to_array(to_tsvector('simple', search_text))) AS word "
    "WHERE word ~ '^[a-z]'"
)


def test_a_search_finds_every_entry_its_words_start_words_of_also_after_changes(engine: Engine, tmp_path: Path) -> None:
    # On PostgreSQL common words are asked of the index as the whole words they start
    # (directory_lexeme), not as prefixes: the entries found must be the same, also for
    # words that entries added or changed one at a time bring.
    import_extract(engine, generated_extract(tmp_path, 4000))
    with session_scope(engine) as session:
        # New words, written row by row and by one statement, as the web and the CLI do.
        session.execute(
            text("UPDATE directory_entry SET search_text = search_text || ' infirmierzz' WHERE id % 29 = 0")
        )
        session.execute(text("UPDATE directory_entry SET search_text = search_text || ' parisqu' WHERE id = 7"))
        rows = session.execute(text("SELECT profession_label, city FROM directory_entry WHERE id % 13 = 0")).all()
    dialect = engine.dialect.name
    queries = ["infirmier paris", "infirm lyon", "pharmacien marseille", "paris", "parisqu", "infirmierzz"]
    queries += [f"{profession} {city}" for profession, city in random.Random(5).sample(rows, 12)]
    sent: list[str] = []

    def note(conn: object, cursor: object, statement: str, parameters: object, *rest: object) -> None:
        if isinstance(parameters, dict) and "whole" in parameters:
            sent.append(str(parameters["whole"]))

    event.listen(engine, "before_cursor_execute", note)
    try:
        for query in dict.fromkeys(queries):
            words = [w for w in search_module.query_words(query) if w not in search_module.STOPWORDS]
            with session_scope(engine) as session:
                expected = set(
                    session.execute(
                        text(_PREFIXES[dialect]),
                        {"fts": " ".join(f'"{w}"*' for w in words), "tsquery": " & ".join(f"{w}:*" for w in words)},
                    ).scalars()
                )
                found: set[int] = set()
                for number in range(1, 100):
                    result = search(session, query, page=number, per_page=200, with_total=True)
                    found |= {entry.id for entry in result.items}
                    if not result.has_next:
                        break
            assert found == expected and result.total == len(expected), query
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert any(page_of for page_of in (find(engine, "infirmierzz"), find(engine, "infirmier paris")))
    if dialect == "postgresql":
        # Common words went to the index whole; the words of the changed entries are listed.
        assert any("'infirmier'" in whole and "'infirmierzz'" in whole for whole in sent), sent
        with session_scope(engine) as session:
            listed = set(session.execute(text("SELECT word FROM directory_lexeme")).scalars())
            held = set(session.execute(text(_ENTRY_WORDS)).scalars())
        assert held and held <= listed and {"infirmierzz", "parisqu"} <= listed
