"""directory words: how many entries hold each common word; names in order, to walk

Two aids to searching a large directory (see ``directory.search``).

``directory_word`` holds the words of ``search_text`` found in at least 200 entries, with
that count. A search looks its words up there to choose which of them the full-text index
narrows on and which are checked on the entries it found (see ``directory.search``): the
counts steer the cost of a search, never its results. The import refreshes them; an entry
added or changed one at a time leaves them as they are, which moves a count by one.

SQLite: the counts come from an ``fts5vocab`` table over ``directory_fts`` (its ``doc``
column: entries per term, read from the index without touching the entries). PostgreSQL:
from the statistics ``ANALYZE`` keeps on the search index's lexemes (``pg_stats``
``most_common_elems``: a sample, so counts within a few percent).

Both also get what lets a search that matches thousands of entries read one page of them
instead of ranking them all: an index of the entries in the order of their names
(``ix_directory_entry_names``, on the expression the search orders by; on PostgreSQL in
bytewise order, as on SQLite), a full-text index of the names alone that finds the
entries ranked above the others (SQLite: ``directory_names_fts``, external content: the
view ``directory_entry_names``, kept in step by triggers as ``directory_fts`` is;
PostgreSQL: a GIN index ``ix_directory_entry_names_search``), and an index on
``national_id`` for the exact match.

An import before this revision copied identifiers into ``search_text`` as the extract writes
them ("2A..." for a Corsican ADELI number): this revision lower-cases them, as every other
word there is.

Revision ID: 0010
Revises: 0009
"""

from mss.migrations import ddl

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Identifiers were copied into search_text as the extract writes them ("2A..." for a
# Corsican ADELI number): every word of it is lower-case now, as searches check them.
LOWER_CASE = "UPDATE directory_entry SET search_text = lower(search_text) WHERE search_text <> lower(search_text)"

SQLITE_UPGRADE = (
    LOWER_CASE,
    "CREATE VIRTUAL TABLE directory_fts_vocab USING fts5vocab(directory_fts, 'row')",
    "CREATE TABLE directory_word (word VARCHAR(200) NOT NULL PRIMARY KEY, entries INTEGER NOT NULL) WITHOUT ROWID",
    # A directory imported before this revision gets its counts now; imports refresh them.
    "INSERT INTO directory_word (word, entries) SELECT term, doc FROM directory_fts_vocab WHERE doc >= 200",
    "CREATE INDEX ix_directory_entry_names ON directory_entry (substr(search_text, 1, instr(search_text, ' | ')), address)",
    "CREATE INDEX ix_directory_entry_national_id ON directory_entry (national_id)",
    "CREATE VIEW directory_entry_names AS "
    "SELECT id, substr(search_text, 1, instr(search_text, ' | ') - 1) AS names FROM directory_entry",
    "CREATE VIRTUAL TABLE directory_names_fts USING fts5(names, content='directory_entry_names', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2', detail=column, columnsize=0)",
    "INSERT INTO directory_names_fts(directory_names_fts, rank) VALUES ('hashsize', 33554432)",
    """CREATE TRIGGER directory_names_fts_after_insert AFTER INSERT ON directory_entry BEGIN
        INSERT INTO directory_names_fts(rowid, names)
        VALUES (new.id, substr(new.search_text, 1, instr(new.search_text, ' | ') - 1));
    END""",
    """CREATE TRIGGER directory_names_fts_after_delete AFTER DELETE ON directory_entry BEGIN
        INSERT INTO directory_names_fts(directory_names_fts, rowid, names)
        VALUES ('delete', old.id, substr(old.search_text, 1, instr(old.search_text, ' | ') - 1));
    END""",
    """CREATE TRIGGER directory_names_fts_after_update AFTER UPDATE OF search_text ON directory_entry
    WHEN old.search_text IS NOT new.search_text BEGIN
        INSERT INTO directory_names_fts(directory_names_fts, rowid, names)
        VALUES ('delete', old.id, substr(old.search_text, 1, instr(old.search_text, ' | ') - 1));
        INSERT INTO directory_names_fts(rowid, names)
        VALUES (new.id, substr(new.search_text, 1, instr(new.search_text, ' | ') - 1));
    END""",
    "INSERT INTO directory_names_fts(directory_names_fts) VALUES ('rebuild')",
)
SQLITE_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS directory_names_fts_after_update",
    "DROP TRIGGER IF EXISTS directory_names_fts_after_delete",
    "DROP TRIGGER IF EXISTS directory_names_fts_after_insert",
    "DROP TABLE IF EXISTS directory_names_fts",
    "DROP VIEW IF EXISTS directory_entry_names",
    "DROP INDEX IF EXISTS ix_directory_entry_national_id",
    "DROP INDEX IF EXISTS ix_directory_entry_names",
    "DROP TABLE IF EXISTS directory_word",
    "DROP TABLE IF EXISTS directory_fts_vocab",
)

POSTGRESQL_UPGRADE = (
    LOWER_CASE,
    # Bytewise order ("C"), whatever the database's: searches read the words from w to w + "{".
    'CREATE TABLE directory_word (word VARCHAR(200) COLLATE "C" NOT NULL PRIMARY KEY, entries INTEGER NOT NULL)',
    "ANALYZE directory_entry",
    "INSERT INTO directory_word (word, entries) SELECT word, round(share * entry.reltuples) FROM pg_stats AS stats "
    "CROSS JOIN LATERAL unnest(stats.most_common_elems::text::text[], stats.most_common_elem_freqs) "
    "AS lexeme(word, share) CROSS JOIN pg_class AS entry "
    "WHERE stats.schemaname = current_schema() AND stats.tablename = 'ix_directory_entry_search' "
    "AND entry.oid = 'directory_entry'::regclass AND word IS NOT NULL AND share * entry.reltuples >= 200",
    # The order the search ranks names in, bytewise as SQLite's.
    "CREATE INDEX ix_directory_entry_names ON directory_entry "
    "((' ' || split_part(search_text, ' | ', 1) || ' ') COLLATE \"C\", address COLLATE \"C\")",
    "CREATE INDEX ix_directory_entry_names_search ON directory_entry "
    "USING gin (to_tsvector('simple', split_part(search_text, ' | ', 1)))",
    "CREATE INDEX ix_directory_entry_national_id ON directory_entry (national_id)",
)
POSTGRESQL_DOWNGRADE = (
    "DROP INDEX IF EXISTS ix_directory_entry_national_id",
    "DROP INDEX IF EXISTS ix_directory_entry_names_search",
    "DROP INDEX IF EXISTS ix_directory_entry_names",
    "DROP TABLE IF EXISTS directory_word",
)

STEPS = (
    ddl.PerDialect(
        "directory word counts",
        upgrade={"sqlite": SQLITE_UPGRADE, "postgresql": POSTGRESQL_UPGRADE},
        downgrade={"sqlite": SQLITE_DOWNGRADE, "postgresql": POSTGRESQL_DOWNGRADE},
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
