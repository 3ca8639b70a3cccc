"""The directory's words, whole, so that a PostgreSQL search looks up words, not prefixes.

A search matches each word of the query as the start of a word of the entry ("infirm"
finds "infirmiere"). PostgreSQL's GIN index answers a prefix term by collecting every entry
of every word it covers before it intersects them with the other terms: "infirmier:*"
gathers its 100,000 entries even when "strasbourg" leaves 2,400 of them, 20 ms where the
same two whole words take 2. ``directory_lexeme`` lists every word that starts with a
letter in the entries' full-text vectors (``to_tsvector('simple', search_text)``), in
bytewise order: a search reads the few words a query word starts ("infirmier",
"infirmiere") and asks the index for those (see ``directory.search``).

For that to find every entry the prefix finds, the list must hold every such word of every
entry: statement-level triggers add the words of the rows each INSERT writes, and of those
each UPDATE gives another ``search_text`` (transition tables, one statement for a whole
import's batch; an UPDATE of a status alone reads no text). Words are added in order, so
that two writers adding the same new words wait for each other rather than lock each other
out. Words no entry holds any more stay listed, and find nothing. SQLite's FTS5 index reads
a prefix's entries in order without collecting them: nothing is needed there.

Revision ID: 0011
Revises: 0010
"""

from mss.migrations import ddl

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# The words of some entries' search_text ({rows}) that start with a letter: a query word
# that starts with a digit is left a prefix.
_ADD_WORDS = """
INSERT INTO directory_lexeme (word)
SELECT DISTINCT word FROM (
    SELECT unnest(tsvector_to_array(to_tsvector('simple', written.search_text))) COLLATE "C" AS word FROM {rows}
) AS words
WHERE word ~ '^[a-z]'
ORDER BY word
ON CONFLICT DO NOTHING
"""
# The rows an UPDATE wrote ("written") whose search_text it changed ("before": the same rows
# as they were).
_CHANGED = (
    "written LEFT JOIN before ON before.id = written.id "
    "WHERE before.search_text IS DISTINCT FROM written.search_text"
)


def _trigger_function(name: str, rows: str) -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        + _ADD_WORDS.format(rows=rows)
        + "; RETURN NULL; END $$"
    )


POSTGRESQL_UPGRADE = (
    'CREATE TABLE directory_lexeme (word TEXT COLLATE "C" NOT NULL PRIMARY KEY)',
    _trigger_function("directory_lexeme_inserted", "written"),
    _trigger_function("directory_lexeme_updated", _CHANGED),
    "CREATE TRIGGER directory_lexeme_after_insert AFTER INSERT ON directory_entry "
    "REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION directory_lexeme_inserted()",
    "CREATE TRIGGER directory_lexeme_after_update AFTER UPDATE ON directory_entry "
    "REFERENCING OLD TABLE AS before NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION directory_lexeme_updated()",
    # The entries already there.
    _ADD_WORDS.format(rows="directory_entry AS written"),
)
POSTGRESQL_DOWNGRADE = (
    "DROP TRIGGER IF EXISTS directory_lexeme_after_update ON directory_entry",
    "DROP TRIGGER IF EXISTS directory_lexeme_after_insert ON directory_entry",
    "DROP FUNCTION IF EXISTS directory_lexeme_updated()",
    "DROP FUNCTION IF EXISTS directory_lexeme_inserted()",
    "DROP TABLE IF EXISTS directory_lexeme",
)

STEPS = (
    ddl.PerDialect(
        "directory words for prefix look-ups",
        upgrade={"sqlite": (), "postgresql": POSTGRESQL_UPGRADE},
        downgrade={"sqlite": (), "postgresql": POSTGRESQL_DOWNGRADE},
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
