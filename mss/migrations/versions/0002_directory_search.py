"""directory search: full-text index over directory_entry.search_text

``search_text`` holds lower-case, accent-free words, ``<names> | <other words>`` (see
``directory.importer.search_text``); the search ranks name matches from the first part.

SQLite: an FTS5 table over ``directory_entry.search_text`` (external content, rowid = entry
id, tokenizer ``unicode61 remove_diacritics 2``), kept in sync by triggers, so every writer
(importer, service, any later code) keeps the index right without knowing it exists.
``detail=column`` and ``columnsize=0``: searches use prefix terms only (no phrases, no
bm25), so positions and lengths would be dead weight. No ``prefix=`` indexes: measured on
535,000 entries they made the import 10 % slower and searches no faster (what costs is the
number of matching entries, not the expansion of the prefix). ``detail=none`` was measured
too: four times slower on prefix terms.

PostgreSQL: a GIN index on ``to_tsvector('simple', search_text)``; prefix ``to_tsquery``
terms (``lef:*``) use it. PostgreSQL maintains it by itself.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SQLITE_UPGRADE = (
    "CREATE VIRTUAL TABLE directory_fts USING fts5(search_text, content='directory_entry', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2', detail=column, columnsize=0)",
    # Pending terms are flushed to a new segment when this much is buffered (default 1 MiB):
    # a bulk import's batch then makes one segment instead of dozens to merge.
    "INSERT INTO directory_fts(directory_fts, rank) VALUES ('hashsize', 33554432)",
    """CREATE TRIGGER directory_fts_after_insert AFTER INSERT ON directory_entry BEGIN
        INSERT INTO directory_fts(rowid, search_text) VALUES (new.id, new.search_text);
    END""",
    # An external-content FTS5 table forgets a row only when given the values it indexed.
    """CREATE TRIGGER directory_fts_after_delete AFTER DELETE ON directory_entry BEGIN
        INSERT INTO directory_fts(directory_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text);
    END""",
    """CREATE TRIGGER directory_fts_after_update AFTER UPDATE OF search_text ON directory_entry
    WHEN old.search_text IS NOT new.search_text BEGIN
        INSERT INTO directory_fts(directory_fts, rowid, search_text) VALUES ('delete', old.id, old.search_text);
        INSERT INTO directory_fts(rowid, search_text) VALUES (new.id, new.search_text);
    END""",
    "INSERT INTO directory_fts(directory_fts) VALUES ('rebuild')",
)

SQLITE_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS directory_fts_after_update",
    "DROP TRIGGER IF EXISTS directory_fts_after_delete",
    "DROP TRIGGER IF EXISTS directory_fts_after_insert",
    "DROP TABLE IF EXISTS directory_fts",
)

POSTGRESQL_UPGRADE = (
    "CREATE INDEX ix_directory_entry_search ON directory_entry USING gin (to_tsvector('simple', search_text))",
)

POSTGRESQL_DOWNGRADE = ("DROP INDEX IF EXISTS ix_directory_entry_search",)


UPGRADE = {"sqlite": SQLITE_UPGRADE, "postgresql": POSTGRESQL_UPGRADE}
DOWNGRADE = {"sqlite": SQLITE_DOWNGRADE, "postgresql": POSTGRESQL_DOWNGRADE}


def _run(statements_by_dialect: dict[str, tuple[str, ...]]) -> None:
    dialect = op.get_bind().dialect.name
    if dialect not in statements_by_dialect:
        raise RuntimeError(f"mss supports SQLite and PostgreSQL, not {dialect}: no directory search index for it")
    for statement in statements_by_dialect[dialect]:
        op.execute(statement)


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
