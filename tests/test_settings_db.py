"""Settings parsing, the database engine's guarantees and schema migrations."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text
from sqlmodel import SQLModel

import mss.models  # noqa: F401  (registers every table on SQLModel.metadata)
from mss import db
from mss.crypto.master import MasterKey
from mss.db import alembic_config, make_engine, migrate, session_scope, sqlite_file
from mss.errors import ConfigError, CryptoError, StorageError
from mss.models import Message
from mss.settings import Settings

from conftest import drop_pg_database, new_pg_database
from metrics_support import counted
from web_support import GP, doctor, gp, submit  # noqa: F401  (fixtures)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# SQLAlchemy does not reflect an index on an expression (the directory's index in name
# order): _schema reads those from the database's catalogue instead.
pytestmark = pytest.mark.filterwarnings("ignore:Skipped unsupported reflection of expression-based index")


def test_defaults_and_overrides(tmp_path):
    settings = Settings.from_env({"MSS_DATA_DIR": str(tmp_path), "MSS_DOMAINS": "Chu-Demo.fr, mss.test"})
    assert settings.relay.port == 2587 and settings.web.port == 8443
    assert settings.relay.max_message_size == 20_000_000
    assert settings.storage.database_url == f"sqlite:///{tmp_path / 'mss.db'}"
    assert settings.serves("a@chu-demo.fr") and settings.serves("b@medecin.mss.test")
    assert not settings.serves("c@mss.test.evil.example") and not settings.serves("d@gmail.com")


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("MSS_SMTP_PORT", "twenty", "whole number"),
        ("MSS_ENV", "staging", "development or production"),
        ("MSS_DSN_ON_SUCCESS", "maybe", "true or false"),
        ("MSS_USER_KEY_BITS", "1024", "at least 2048"),
        ("MSS_OPERATOR_KEY", "ed25519", "ec-p256 or rsa"),
        ("MSS_SMTP_PROCESSES", "0", "MSS_SMTP_PROCESSES must be 1 to 32"),
        ("MSS_SMTP_PROCESSES", "33", "MSS_SMTP_PROCESSES must be 1 to 32"),
        ("MSS_SMTP_PROCESSES", "11", "MSS_MAX_SESSIONS_PER_CLIENT (10) must be at least MSS_SMTP_PROCESSES (11)"),
    ],
)
def test_bad_settings_are_named(tmp_path, name, value, words):
    with pytest.raises(ConfigError) as error:
        Settings.from_env({"MSS_DATA_DIR": str(tmp_path), name: value})
    assert words in str(error.value)


def test_migrated_schema_matches_the_models(engine):
    migrate(engine)  # a second run is a no-op
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    # Search indexes created by migrations for one dialect are not in the models: ignore
    # added/removed objects that the models do not describe.
    relevant = [d for d in diffs if not (isinstance(d, tuple) and d[0] in {"remove_table", "remove_index"})]
    assert relevant == []
    tables = set(inspect(engine).get_table_names())
    assert {"directory_entry", "certificate", "account", "audit_event", "message", "mailbox_item", "receipt"} <= tables


def test_the_code_s_schema_revision_is_the_migrations_head(engine):
    assert ScriptDirectory.from_config(alembic_config(engine)).get_current_head() == db.SCHEMA_REVISION
    assert db.stamped_revision(engine) == db.SCHEMA_REVISION


_MIGRATE = """
import sys
from mss.db import make_engine, migrate, stamped_revision
from mss.settings import Settings
engine = make_engine(Settings.from_env())
before = stamped_revision(engine)
migrate(engine)
print(before, stamped_revision(engine), "alembic" in sys.modules)
"""


def test_a_database_at_the_code_s_revision_is_not_handed_to_alembic(env):
    # A service opens the database through migrate() as it starts: an empty database is
    # created by Alembic; one already at the code's revision is not, and the process then
    # holds none of Alembic's modules.
    def migrate_in_a_process() -> list[str]:
        run = subprocess.run(
            [sys.executable, "-c", _MIGRATE], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    assert migrate_in_a_process() == ["None", db.SCHEMA_REVISION, "True"]
    assert migrate_in_a_process() == [db.SCHEMA_REVISION, db.SCHEMA_REVISION, "False"]


def test_a_database_from_a_newer_version_is_refused_with_its_revision(engine):
    # A rollback after an upgrade: the schema is at a revision this code does not know.
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
    with pytest.raises(StorageError) as refused:
        migrate(engine)
    assert "revision 9001, which this version of mss does not know" in refused.value.message
    assert f"its latest is {db.SCHEMA_REVISION}" in refused.value.message
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9001"


@pytest.mark.sqlite_only  # it makes a PostgreSQL database of its own: once is enough
def test_postgresql_stores_ciphertext_as_it_is(tmp_path):
    # A CMS envelope's first kilobyte repeats (its recipients' issuers), so PostgreSQL's
    # compressor, tried on every wide value by default, reads on through the ciphertext before
    # it gives up (35 ms of the server's CPU for a 1 MB message): the encrypted columns are
    # stored out of line without that attempt; the others keep the default.
    url = new_pg_database()
    engine = make_engine(Settings.from_env({"MSS_DATA_DIR": str(tmp_path), "MSS_DATABASE_URL": url}))
    try:
        migrate(engine)
        catalogue = _schema(engine)["catalogue"]
    finally:
        engine.dispose()
        drop_pg_database(url)
    # The catalogue lists the columns whose storage is not their type's default (bytea: x).
    assert {name: storage for kind, name, storage in catalogue if kind == "storage"} == {
        "message.cms": "e",
        "draft.content_cms": "e",
    }


_HOLD_THE_TURN = """
import sys, time
from pathlib import Path
from mss.db import WriteTurns
WriteTurns(Path(sys.argv[1])).__enter__()
print("held", flush=True)
time.sleep(600)
"""


@pytest.mark.sqlite_only
def test_stores_of_messages_take_turns_across_processes(rt, doctor, gp, monkeypatch):
    """Processes on one SQLite database queue for its write lock in the kernel (an flock
    beside the database), not in SQLite's busy handler: while another process holds the
    turn, a message submitted here waits; once that process dies, however it dies, it is
    stored. The metrics count that wait as the turn's ``wait``."""
    database = sqlite_file(rt.engine)
    assert database is not None
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_THE_TURN, str(database)], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        # Not had within the timeout (a holder stopped, not ended): refused for now, and
        # nothing of the message stored.
        monkeypatch.setattr(db, "TURN_TIMEOUT", 0.5)
        with pytest.raises(StorageError, match="held the database's write turn"):
            submit(rt, doctor, [GP], "Suivi", "Bonjour")
        monkeypatch.undo()
        with session_scope(rt.engine) as session:
            assert session.execute(select(func.count()).select_from(Message)).scalar_one() == 0

        def waits() -> tuple[float, float]:
            """The turns' waits counted so far in this process: how many, and their seconds."""
            return (
                counted("mss_sqlite_write_turn_seconds_count", phase="wait"),
                counted("mss_sqlite_write_turn_seconds_sum", phase="wait"),
            )

        waited = waits()
        stored = threading.Event()
        waiter = threading.Thread(target=lambda: (submit(rt, doctor, [GP], "Suivi", "Bonjour"), stored.set()))
        waiter.start()
        assert not stored.wait(1.0)  # the other process holds the turn
        holder.kill()
        assert stored.wait(30)
        waiter.join()
        count, seconds = (after - before for after, before in zip(waits(), waited, strict=True))
        # One turn had (the one refused for now above never was), after most of the second
        # the other process held it (the message is checked and signed before it asks).
        assert count == 1 and seconds >= 0.5
    finally:
        holder.kill()
        holder.wait()
    assert stat.S_IMODE((database.parent / (database.name + "-writes")).stat().st_mode) == 0o600


def test_a_failing_observer_of_the_write_turn_never_keeps_it(tmp_path, monkeypatch):
    """The turn's observer (the metrics) hears of a turn once it is let go: should it fail,
    the next store, here or in another process, still has its turn at once."""
    heard: list[str] = []

    def observe(phase: str, seconds: float) -> None:
        heard.append(phase)
        assert seconds >= 0
        raise OSError("no room left for the metrics")

    monkeypatch.setattr(db, "TURN_TIMEOUT", 2.0)  # a turn kept would be a StorageError here
    database = tmp_path / "mss.db"
    turns = db.WriteTurns(database, observe=observe)
    other = db.WriteTurns(database)  # another process's, as far as the flock goes
    for _ in range(2):
        with pytest.raises(OSError, match="no room left"), turns:
            pass
        assert heard[-1:] == ["wait"]
        with other:
            pass
    # Not in a finally: closing waits for the turn, which a failure above may have kept.
    turns.close()
    other.close()


@pytest.mark.sqlite_only
def test_sqlite_is_durable(settings):
    engine = make_engine(settings)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_master_key_is_private_and_checked(settings, tmp_path):
    key = MasterKey.load(settings)
    path = settings.storage.master_key_file
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    sealed = key.seal(b"totp seed")
    assert b"totp seed" not in sealed and MasterKey.load(settings).open(sealed) == b"totp seed"
    with pytest.raises(CryptoError):
        key.open(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    path.chmod(0o644)
    with pytest.raises(ConfigError):
        MasterKey.load(settings)
    production = Settings.from_env({"MSS_DATA_DIR": str(tmp_path / "prod"), "MSS_ENV": "production"})
    with pytest.raises(ConfigError):
        MasterKey.load(production)


CATALOGUE = {
    "sqlite": "SELECT type, name, sql FROM sqlite_master WHERE type != 'table' AND sql IS NOT NULL",
    "postgresql": """
        SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()
        UNION ALL SELECT 'view', viewname, definition FROM pg_views WHERE schemaname = current_schema()
        UNION ALL SELECT 'trigger', tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal
        UNION ALL SELECT 'storage', c.relname || '.' || a.attname, a.attstorage::text
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
            WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND a.attnum > 0
            AND NOT a.attisdropped AND a.attstorage != t.typstorage
    """,
}


def _schema(engine) -> dict[str, object]:
    """Every table's columns, key, indexes and foreign keys, as the database reports them,
    and every index, view and trigger as the catalogue holds it (on PostgreSQL, the columns
    not stored as their type's default too)."""
    inspector = inspect(engine)
    with engine.connect() as conn:
        created = sorted(
            tuple(row) for row in conn.execute(text(CATALOGUE[engine.dialect.name])) if "alembic" not in row[1]
        )
    schema: dict[str, object] = {
        table: (
            [(c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in inspector.get_columns(table)],
            inspector.get_pk_constraint(table)["constrained_columns"],
            sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)),
            sorted(
                (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                for f in inspector.get_foreign_keys(table)
            ),
        )
        for table in sorted(inspector.get_table_names())
        if table != "alembic_version"
    }
    if created:
        schema["catalogue"] = created
    return schema


def test_each_revision_is_undone_by_its_downgrade(engine):
    # Going down one revision at a time gives back, at each revision, the schema that going
    # up had made there; at the bottom nothing is left; going up again gives the same head.
    config = alembic_config(engine)
    revisions = [r.revision for r in reversed(list(ScriptDirectory.from_config(config).walk_revisions()))]
    command.downgrade(config, "base")
    assert _schema(engine) == {}
    going_up = {}
    for revision in revisions:
        command.upgrade(config, revision)
        going_up[revision] = _schema(engine)
    for revision in reversed(revisions):
        assert _schema(engine) == going_up[revision], revision
        command.downgrade(config, "-1")
    assert _schema(engine) == {}
    migrate(engine)
    assert _schema(engine) == going_up[revisions[-1]]
