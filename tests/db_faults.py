"""A database that refuses one kind of write to one table, for as long as a test needs:
a trigger of the database itself, SQLite's or PostgreSQL's, so that what fails is the real
statement of the real code, on the real connection.

The refusal reads as an outage, not as a constraint: on SQLite the trigger computes an
integer overflow (an OperationalError, as a full disk or a lost file would give), since
``RAISE()`` there reports a constraint failure (an IntegrityError), which code that
inserts may rightly take for another session's insert of the same row."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Engine

from mss.db import session_scope


@contextmanager
def refused(engine: Engine, table: str, operation: str) -> Iterator[None]:
    """Every ``operation`` (INSERT, UPDATE or DELETE) on ``table`` fails until the block ends."""
    assert operation in ("INSERT", "UPDATE", "DELETE") and table.isidentifier()
    name = f"refuse_{operation.lower()}_{table}"
    with session_scope(engine) as session:
        if engine.dialect.name == "sqlite":
            session.execute(
                text(
                    f"CREATE TRIGGER {name} BEFORE {operation} ON {table}"
                    " BEGIN SELECT abs(-9223372036854775807 - 1); END"
                )
            )
        else:
            session.execute(
                text(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$"
                )
            )
            session.execute(
                text(f"CREATE TRIGGER {name} BEFORE {operation} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
            )
    try:
        yield
    finally:
        with session_scope(engine) as session:
            if engine.dialect.name == "sqlite":
                session.execute(text(f"DROP TRIGGER {name}"))
            else:
                # The DROP waits for the table's lock: not for ever.
                session.execute(text("SET LOCAL lock_timeout = '30s'"))
                session.execute(text(f"DROP TRIGGER {name} ON {table}"))
                session.execute(text(f"DROP FUNCTION {name}()"))
