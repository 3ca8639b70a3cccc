"""directory revision: a number that changes with every write to who may receive

``directory_revision`` holds one row, one number. Triggers add one to it in the same
transaction as every INSERT, UPDATE or DELETE of ``directory_entry``, ``certificate`` and
``trusted_domain``, whoever writes them (the relay, the web, the command line, an import, a
statement typed by hand): what a recipient check reads (``mss.pipeline``) lives in those
three tables alone. A process that found a recipient reachable at revision N may rely on
that verdict for as long as the revision still reads N (``directory.revision``).

SQLite: a trigger for each table and kind of write, run for each row. PostgreSQL: one
statement-level trigger per table (TRUNCATE included), one update however many rows the
statement wrote.

Revision ID: 0012
Revises: 0011
"""

from mss.migrations import ddl

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_TABLES = ("directory_entry", "certificate", "trusted_domain")
_WRITES = ("INSERT", "UPDATE", "DELETE")
_BUMP = "UPDATE directory_revision SET value = value + 1"
_CREATE = (
    "CREATE TABLE directory_revision (value BIGINT NOT NULL)",
    "INSERT INTO directory_revision (value) VALUES (0)",
)

SQLITE_UPGRADE = (
    *_CREATE,
    *(
        f"CREATE TRIGGER directory_revision_{table}_{write.lower()} AFTER {write} ON {table} BEGIN {_BUMP}; END"
        for table in _TABLES
        for write in _WRITES
    ),
)
SQLITE_DOWNGRADE = (
    *(f"DROP TRIGGER IF EXISTS directory_revision_{table}_{write.lower()}" for table in _TABLES for write in _WRITES),
    "DROP TABLE IF EXISTS directory_revision",
)

POSTGRESQL_UPGRADE = (
    *_CREATE,
    "CREATE FUNCTION directory_revision_bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    + _BUMP
    + "; RETURN NULL; END $$",
    *(
        f"CREATE TRIGGER directory_revision_after_write AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
        "FOR EACH STATEMENT EXECUTE FUNCTION directory_revision_bump()"
        for table in _TABLES
    ),
)
POSTGRESQL_DOWNGRADE = (
    *(f"DROP TRIGGER IF EXISTS directory_revision_after_write ON {table}" for table in _TABLES),
    "DROP FUNCTION IF EXISTS directory_revision_bump()",
    "DROP TABLE IF EXISTS directory_revision",
)

STEPS = (
    ddl.PerDialect(
        "the directory's revision",
        upgrade={"sqlite": SQLITE_UPGRADE, "postgresql": POSTGRESQL_UPGRADE},
        downgrade={"sqlite": SQLITE_DOWNGRADE, "postgresql": POSTGRESQL_DOWNGRADE},
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
