"""Database engine, sessions and schema migrations.

SQLite (the default) runs in WAL mode with ``synchronous=FULL`` and foreign keys on, so a
commit that returned is on disk. PostgreSQL is selected by ``MSS_DATABASE_URL``. The schema
is always created and upgraded by Alembic (``mss/migrations``), so a fresh database and a
migrated one are the same.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from sqlalchemy import Column, DateTime, LargeBinary, Table, event, inspect, text
from sqlalchemy.engine import URL, Connection, CursorResult, Engine, Result, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, SQLModel, create_engine

from mss.errors import StorageError
from mss.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The schema revision this code is written for: the head of ``mss/migrations/versions``
# (tests/test_settings_db.py checks that they agree). A database already stamped with it
# is not handed to Alembic, so a service that starts on it never imports Alembic and its
# templates (about 10 MiB it would hold for as long as it runs).
SCHEMA_REVISION: Final = "0013"
READONLY_OPTION = "mss_readonly"
# A database error's text names its statement's values (addresses, password hashes, audit
# details) unless the engine hides them: a logged error then shows the statement alone.
HIDE_PARAMETERS = True


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC and always returned timezone-aware.

    SQLite keeps no time zone, PostgreSQL's ``timestamp`` neither: storing naive UTC on both
    keeps one representation, and comparisons in Python never mix naive and aware values.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use mss.db.utcnow()")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# What a binary column holds at rest, in its ``Column.info`` under AT_REST: CIPHERTEXT (CMS
# encrypted, sealed with the master key, or wrapped under a password, the recovery key or a
# session's key) or PUBLIC (certificates, CRLs, signatures, salts). Every binary column says
# which (tests/test_at_rest.py), so "where is ciphertext" is answered by the models.
AT_REST: Final = "at_rest"
CIPHERTEXT: Final = "ciphertext"
PUBLIC: Final = "public"


def binary(at_rest: str, **options: Any) -> Column[bytes]:
    """A NOT NULL binary column marked with what it holds at rest (CIPHERTEXT or PUBLIC)."""
    if at_rest not in (CIPHERTEXT, PUBLIC):
        raise ValueError(f"a binary column holds {CIPHERTEXT} or {PUBLIC}, not {at_rest!r}")
    return Column(LargeBinary, nullable=False, info={AT_REST: at_rest}, **options)


def make_private_dir(path: Path) -> None:
    """Create ``path`` readable by its owner only, or narrow it to that (the data folder
    holds the database, the master key and the audit trail)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def _private_database_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it would use the umask, 0644), or
    narrow an existing one. SQLite gives its ``-wal`` and ``-shm`` files the database
    file's permissions."""
    make_private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if name.exists() and name.stat().st_mode & 0o077:
                name.chmod(0o600)


# The longest a store of a message waits for its turn: SQLite's own busy timeout.
TURN_TIMEOUT = 30.0


class WriteTurns:
    """Turns at SQLite's one write lock for the transactions that store a message.

    SQLite has one write lock, and a transaction that finds it taken sleeps in steps of up
    to 100 ms (its busy handler) rather than queue: with a dozen sessions storing at once,
    the lock then sits idle while they sleep. So they queue here instead: this process's
    threads on a thread lock, and processes (several on the submission port, the CLI) on
    an ``flock`` of a file beside the database (``<name>-writes``), looked at again every
    2 ms at most while another process holds it, and let go of by the kernel when its
    holder ends, however it ends. A turn not had within TURN_TIMEOUT (a holder stopped,
    not ended) is a StorageError: the message is refused for now (``451``), not kept
    waiting for ever. Other writes (login failures, housekeeping) still meet the busy
    handler. ``database`` None (a database in memory): the thread lock alone.

    ``observe(phase, seconds)``, when given, hears of each turn once it is let go (nothing
    it does can keep the turn held): ``wait``, from asking to having it, then ``hold``, from
    having it to letting it go (``mss.metrics``).
    """

    def __init__(self, database: Path | None, *, observe: Callable[[str, float], None] | None = None) -> None:
        self._threads = threading.Lock()
        self._path = database.with_name(database.name + "-writes") if database is not None else None
        self._fd: int | None = None
        self._observe = observe
        # Set and read by the thread that holds the turn.
        self._taken_at = 0.0
        self._waited = 0.0

    def __enter__(self) -> None:
        asked_at = time.perf_counter()
        deadline = time.monotonic() + TURN_TIMEOUT
        if not self._threads.acquire(timeout=TURN_TIMEOUT):
            raise StorageError(f"no turn to write to the database within {TURN_TIMEOUT:g} s")
        try:
            if self._path is not None:
                if self._fd is None:
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._take(self._fd, deadline)
        except OSError as exc:
            self._threads.release()
            raise StorageError(f"cannot take the write turn on {self._path}: {exc.strerror}") from exc
        except BaseException:
            self._threads.release()
            raise
        self._taken_at = time.perf_counter()
        self._waited = self._taken_at - asked_at

    @staticmethod
    def _take(fd: int, deadline: float) -> None:
        pause = 0.0002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"another process has held the database's write turn for {TURN_TIMEOUT:g} s"
                    ) from None
            time.sleep(pause)
            pause = min(2 * pause, 0.002)

    def __exit__(self, *_exc: object) -> None:
        waited, held = self._waited, time.perf_counter() - self._taken_at
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()
        if self._observe is not None:
            self._observe("wait", waited)
            self._observe("hold", held)

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _file_of(url: URL) -> Path | None:
    """The file a SQLite URL names (None for another database or one in memory)."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def sqlite_file(engine: Engine) -> Path | None:
    """The file of a SQLite database (None in memory)."""
    return _file_of(engine.url)


def sqlite_path(url: str) -> Path | None:
    """The file a SQLite URL names (None for another database, one in memory, or a URL that
    is not one: ``make_engine`` says why)."""
    try:
        return _file_of(make_url(url))
    except SQLAlchemyError:
        return None


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(settings: Settings, *, create: bool = True) -> Engine:
    """An engine for the configured database; creates the SQLite file (and its folder) if
    needed, unless ``create`` is false: then a SQLite file that is not there is a
    StorageError (a checker creates nothing where a mistyped URL points)."""
    url = settings.storage.database_url
    try:
        parsed = make_url(url)
    except SQLAlchemyError as exc:
        raise StorageError(f"MSS_DATABASE_URL is not a database URL: {exc}") from exc
    if parsed.get_backend_name() == "sqlite":
        file = _file_of(parsed)
        if file is not None:
            if create:
                _private_database_file(file)
            elif not file.is_file():
                raise StorageError(f"no database at {file} (MSS_DATABASE_URL)")
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=HIDE_PARAMETERS
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # Durability first: a message is acknowledged only after a commit that survives
            # a crash, so WAL with synchronous=FULL (NORMAL may lose the last commits).
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            # Reads through the page cache of the OS instead of copies: directory searches
            # on the national extract are 10-15 % faster at p95.
            cursor.execute("PRAGMA mmap_size=1073741824")
            cursor.close()
            # Let SQLAlchemy, not the driver, open transactions (see _sqlite_begin).
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Writers take the write lock when they start, not at their first write: two
            # deferred transactions that both read then write (the audit chain's head, an
            # upsert) would otherwise fail with "database is locked" instead of waiting.
            # Read-only scopes (session_scope(readonly=True)) read a WAL snapshot unlocked.
            readonly = conn.get_execution_options().get(READONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # psycopg 3 is the driver we ship; SQLAlchemy's bare "postgresql" means psycopg2.
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=HIDE_PARAMETERS)


def alembic_config(engine: Engine):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def stamped_revision(engine: Engine) -> str | None:
    """The schema revision stamped in the database; None on an empty one."""
    with engine.connect().execution_options(**{READONLY_OPTION: True}) as connection, connection.begin():
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest revision (creates it on an empty database); refuse a
    database at a revision this code does not know (StorageError)."""
    try:
        stamped = stamped_revision(engine)
        if stamped == SCHEMA_REVISION:
            return
        from alembic import command
        from alembic.script import ScriptDirectory

        config = alembic_config(engine)
        if stamped is not None and stamped not in {
            r.revision for r in ScriptDirectory.from_config(config).walk_revisions()
        }:
            # Written by a newer mss (a rollback after an upgrade), or the stamp was edited.
            raise StorageError(
                f"the database's schema is at revision {stamped}, which this version of mss does not know"
                f" (its latest is {SCHEMA_REVISION}): run the version that wrote it, or restore a backup"
                " made with this one"
            )
        command.upgrade(config, "head")
    except SQLAlchemyError as exc:
        raise StorageError(f"database migration failed: {exc.__class__.__name__}") from exc


@contextmanager
def session_scope(engine: Engine, *, readonly: bool = False) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception.

    ``readonly=True`` promises no writes: on SQLite it then does not queue behind writers
    for the write lock (lookups at RCPT, page views).
    """
    with Session(engine, expire_on_commit=False) as session:
        if readonly:
            session.connection(execution_options={READONLY_OPTION: True})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# What a check that reads columns with Core statements reads through: a session, or the
# connection of a ``read_scope``.
Reader = Session | Connection


@contextmanager
def read_scope(engine: Engine) -> Iterator[Connection]:
    """A connection in a read-only transaction, as ``session_scope(readonly=True)`` gives
    but without an ORM session around it (about 90 us a scope on SQLite here: the checks
    at each MAIL, RCPT and DATA of the relay read through one of these)."""
    with engine.connect().execution_options(**{READONLY_OPTION: True}) as connection, connection.begin():
        yield connection


def connection_of(reader: Reader) -> Connection:
    """The connection a Core statement runs on: a session's, or ``reader`` itself."""
    return reader.connection() if isinstance(reader, Session) else reader


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a SQLModel table class, for set-based statements."""
    table = getattr(model, "__table__", None)
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table")
    return table


def rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE changed (its result is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount


def key_of(row: SQLModel) -> int:
    """The primary key of a row that was flushed (an integer ``id``)."""
    key = getattr(row, "id", None)
    if not isinstance(key, int):
        raise StorageError(f"a {type(row).__name__} row has no key before it is flushed")
    return key
