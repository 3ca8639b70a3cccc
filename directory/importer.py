"""Importing the public MSSanté extract into the directory: an idempotent upsert by address.

One file, one transaction. Either every good line of the file is in the directory, with the
audit event that says so, or (on a bad header, a database or disk error, an interruption)
nothing changed at all. Batches committed one by one could resume after a failure, but in
between the relay would check recipients against a directory that is half the old extract
and half the new one, and ``--prune`` would have no consistent picture to compare against.
The price is one write transaction for the length of the import (about 25 seconds for the
national file on SQLite, on two cores). Readers keep seeing the previous directory until
the commit (PostgreSQL, and SQLite's ``session_scope(readonly=True)``); on SQLite other
writers wait for the commit within their busy timeout.

Memory stays flat whatever the file's size, besides one map of address to digest. A worker
thread reads, checks and classifies the lines (``_Reader``) while the calling thread writes
the previous batch; rows are staged in a temporary table (driver ``executemany`` on SQLite,
``COPY`` on PostgreSQL) and moved with one ``INSERT ... SELECT`` and one ``UPDATE ... FROM``
per batch.

What a line does:

- a new address is added, active;
- a known address whose 31 columns changed (``source_hash``) is updated; an entry an
  administrator revoked stays revoked (its data is refreshed); an entry made inactive by an
  earlier ``--prune`` is reactivated;
- a line whose columns did not change is counted unchanged and not written;
- a line that fails validation is rejected with its line number and reason, and not written;
- an address seen earlier in the same file: an identical line is unchanged, a different one is
  rejected (the first wins).

With ``prune=True`` the active entries absent from the file become ``inactive`` (an entry
whose line was rejected for a defect is not: it is still in the extract).

``search_text`` is ``<names> | <other words>``, lower-case ASCII words (unidecode), see
``search_text``. The search index (migration 0002) is kept in step by the database itself.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO, cast

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    case,
    delete,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session
from unidecode import unidecode

from directory.extract import FIELDS, ParsedLine, check_header, echo, parse_line
from directory.models import ACTIVE, INACTIVE, DirectoryEntry
from directory.search import count_words
from mss import audit
from mss.db import UTCDateTime, session_scope, table_of, utcnow
from mss.errors import ImportFileError, StorageError

Progress = Callable[[int, int, int], None]
"""Called as ``progress(lines_done, bytes_done, bytes_total)`` while a file is imported."""

BATCH_ROWS = 20_000  # rows per staged batch: few FTS5 segments, a few tens of MB at most
CHUNK_LINES = 10_000  # lines the reader hands over at a time (and progress granularity)
IMPORT_CACHE_KIB = 65_536  # SQLite page cache / PostgreSQL work_mem while importing
IMPORT_GIN_PENDING_KIB = 65_536  # PostgreSQL GIN pending list while importing (default 4 MiB)
PRUNE_REASON = "absent from the directory extract"

_TABLE = table_of(DirectoryEntry)
_DATA_COLUMNS = (*FIELDS, "city", "search_text", "source_hash")
_WORD = re.compile(r"[a-z0-9]+")


@dataclass
class ImportSummary:
    """What an import did: one count per outcome, and the rejected lines with their reasons."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    reactivated: int = 0
    rejected: int = 0
    deactivated: int = 0
    lines: int = 0
    file_sha256: str = ""
    errors: list[tuple[int, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "lines": self.lines,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "reactivated": self.reactivated,
            "rejected": self.rejected,
            "deactivated": self.deactivated,
        }


# -- derived columns ---------------------------------------------------------------------


# The columns search_text reads, fetched in one call (it runs once per line of the file).
_SEARCHED = itemgetter(
    *(
        FIELDS.index(name)
        for name in (
            "kind",
            "address",
            "rpps",
            "national_id",
            "service",
            "last_name",
            "first_name",
            "profession_label",
            "skill_label",
            "org_name",
            "org_trade_name",
            "postal_code",
        )
    )
)


@lru_cache(maxsize=1 << 16)
def _fold(*values: str) -> str:
    """The lower-case ASCII words of ``values``, space-separated.

    Cached: professions, organisations, towns and first names repeat across hundreds of
    thousands of lines, so unidecode runs once per distinct value or group of values.
    """
    words = []
    for value in values:
        if value:
            words += _WORD.findall(value.lower() if value.isascii() else unidecode(value).lower())
    return " ".join(words)


def _fold_name(value: str) -> str:
    # Most surnames are ASCII and nearly unique: folding them is cheaper than a cache miss.
    return " ".join(_WORD.findall(value.lower())) if value.isascii() else _fold(value)


def search_text(values: Sequence[str], city: str) -> str:
    """The ``search_text`` of an entry from its 31 column values and city.

    ``<names> | <other words>``: the names are the last then first name of a person, the
    service and organisation names of an organisation's mailbox; the other words are the
    RPPS and national identifiers, the address, the profession, skill and service, the
    organisation, city and postal code. A word may appear in both parts: the index keeps
    one entry per word and row whatever its count.
    """
    (kind, address, rpps, national_id, service, last_name, first_name,
     profession, skill, org_name, org_trade_name, postal_code) = _SEARCHED(values)  # fmt: skip
    if kind == "PER":
        names = _fold_name(last_name) + " " + _fold_name(first_name)
    else:
        names = _fold(service, org_name, org_trade_name)
    others = (
        # Identifiers as words like the others: a Corsican ADELI number is "2A..." (the
        # full-text index folds case; a search's own checks on search_text do not).
        " ".join(_WORD.findall(rpps.lower())),
        " ".join(_WORD.findall(national_id.lower())),
        # Addresses are unique to the entry: not worth a cache slot.
        " ".join(_WORD.findall(address)),
        _fold(profession, skill, service),
        _fold(org_name, org_trade_name, city, postal_code),
    )
    return names + " | " + " ".join(part for part in others if part)


def source_digest(values: Sequence[str]) -> bytes:
    """SHA-256 of the 31 normalised extract columns: equal digests, equal lines."""
    return hashlib.sha256("\x1f".join(values).encode("utf-8")).digest()


def entry_row(values: Sequence[str], city: str, digest: bytes | None = None) -> dict[str, str]:
    """The data columns of an entry (31 columns, city, search_text, source_hash)."""
    row = dict(zip(FIELDS, values, strict=True))
    row["city"] = city
    row["search_text"] = search_text(values, city)
    row["source_hash"] = (digest or source_digest(values)).hex()
    return row


# -- the import --------------------------------------------------------------------------


class _Known:
    """Every address of the directory and of the file, mapped to compact bytes.

    The value is the 32-byte SHA-256 of the entry's columns in the database; once the
    address has been read in this file, it is the digest of that line followed by the line
    number (4 bytes), so a later duplicate can be compared and pointed back to it.
    """

    _LINE = 4

    def __init__(self) -> None:
        self.map: dict[str, bytes] = {}

    def load(self, digest_hex: str, address: str) -> None:
        self.map[address] = bytes.fromhex(digest_hex) if digest_hex else b"\0" * 32

    def get(self, address: str) -> bytes | None:
        return self.map.get(address)

    @staticmethod
    def seen(value: bytes) -> bool:
        return len(value) == 32 + _Known._LINE

    @staticmethod
    def line_of(value: bytes) -> int:
        return int.from_bytes(value[32:], "big")

    def mark(self, address: str, digest: bytes, line: int) -> None:
        self.map[address] = digest + line.to_bytes(self._LINE, "big")

    def unseen(self) -> list[str]:
        return [address for address, value in self.map.items() if not self.seen(value)]


_ADD, _UPDATE, _REACTIVATE = "add", "update", "reactivate"
_DONE = object()  # the reader's last chunk

# Lines are staged in a temporary table and moved with one INSERT ... SELECT and one
# UPDATE ... FROM per batch. Set-based statements matter on SQLite: its FTS5 index flushes
# at every statement, so row-by-row writes through the index triggers cost ten times more.
_STAGING = Table(
    "directory_import_staging",
    MetaData(),
    Column("op", String(10), nullable=False),
    Column("line", Integer, nullable=False),
    *(Column(name, _TABLE.c[name].type, nullable=False) for name in _DATA_COLUMNS),
    prefixes=["TEMPORARY"],
)


class _Writer:
    """Batches the import's writes and sends each batch as a few set-based statements."""

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn = conn
        self.rows: list[tuple[object, ...]] = []
        stage, table = _STAGING.c, _TABLE.c
        when = bindparam("now", now, type_=UTCDateTime)
        self.move_added = insert(_TABLE).from_select(
            [*_DATA_COLUMNS, "status", "status_reason", "created_at", "updated_at"],
            select(*(stage[name] for name in _DATA_COLUMNS), literal(ACTIVE), literal(""), when, when).where(
                stage.op == _ADD
            ),
        )
        reactivate = stage.op == _REACTIVATE
        self.move_changed = (
            update(_TABLE)
            .where(table.address == stage.address, stage.op != _ADD)
            .values(
                {name: stage[name] for name in _DATA_COLUMNS if name != "address"}
                | {
                    "updated_at": when,
                    # An entry pruned earlier comes back; a revoked one stays revoked.
                    "status": case((reactivate, literal(ACTIVE)), else_=table.status),
                    "status_reason": case((reactivate, literal("")), else_=table.status_reason),
                    "status_changed_at": case((reactivate, when), else_=table.status_changed_at),
                }
            )
        )
        self.deactivate_stmt = (
            update(_TABLE)
            .where(table.address == bindparam("key"), table.status == ACTIVE)
            .values(status=INACTIVE, status_reason=PRUNE_REASON, status_changed_at=when, updated_at=when)
        )
        _STAGING.create(conn)
        # Staging is the one step run per line, so it bypasses SQLAlchemy's per-row
        # parameter processing (most of the import's time otherwise): plain tuples to the
        # driver's executemany on SQLite, COPY on PostgreSQL (its bulk path, ten times
        # faster than executemany there). Names here are constants, never input.
        columns = ", ".join(c.name for c in _STAGING.c)
        if conn.dialect.name == "postgresql":
            self.stage_sql = f"COPY {_STAGING.name} ({columns}) FROM STDIN"
        else:
            marker = "?" if conn.dialect.paramstyle == "qmark" else "%s"
            self.stage_sql = f"INSERT INTO {_STAGING.name} ({columns}) VALUES ({', '.join([marker] * len(_STAGING.c))})"

    def write(self, rows: list[tuple[object, ...]], quiet: Callable[[], AbstractContextManager[None]]) -> None:
        """Queue staged rows ``(op, line, *31 values, city, search_text, source_hash)``.

        ``quiet`` is held while the driver binds them (see ``_Reader``).
        """
        self.rows.extend(rows)
        if len(self.rows) >= BATCH_ROWS:
            self.flush(quiet)

    def flush(self, quiet: Callable[[], AbstractContextManager[None]] = nullcontext) -> None:
        if not self.rows:
            return
        added = sum(1 for row in self.rows if row[0] == _ADD)
        with quiet():
            if self.conn.dialect.name == "postgresql":
                # The same connection and transaction, through the driver's COPY protocol.
                with self.conn.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
                    with cursor.copy(self.stage_sql) as copy:
                        for row in self.rows:
                            copy.write_row(row)
            else:
                self.conn.exec_driver_sql(self.stage_sql, self.rows)
        if added:
            self.conn.execute(self.move_added)
        if added < len(self.rows):
            if self.conn.dialect.name == "postgresql":
                # A temporary table has no statistics: without them the planner may walk
                # the whole directory for each staged row instead of using its address index.
                self.conn.exec_driver_sql(f"ANALYZE {_STAGING.name}")
            self.conn.execute(self.move_changed)
        self.conn.execute(delete(_STAGING))
        self.rows.clear()

    def deactivate(self, addresses: list[str]) -> None:
        for start in range(0, len(addresses), BATCH_ROWS):
            self.conn.execute(self.deactivate_stmt, [{"key": a} for a in addresses[start : start + BATCH_ROWS]])

    def close(self) -> None:
        self.flush()
        _STAGING.drop(self.conn)


class _Reader(threading.Thread):
    """Reads, checks and classifies the file's lines on a worker thread.

    The calling thread meanwhile moves the previous batch into the directory: that SQL
    (SQLite's insert with its index triggers, or the PostgreSQL round trips) runs without
    the GIL, so on two cores parsing and writing overlap. The one write step that needs
    the GIL row by row, the driver binding the staged rows, asks the reader to ``pause``:
    two threads contending for the GIL there made it six times slower.

    It hands over ``(rows, lines_done, bytes_done)`` chunks, then ``_DONE``, or the
    exception that stopped it; the calling thread stops it early through ``stop``.
    """

    def __init__(self, handle: BinaryIO, header_length: int, known: _Known, not_active: dict[str, str]) -> None:
        super().__init__(name="directory-import-reader", daemon=True)
        self.handle = handle
        self.known = known
        self.not_active = not_active
        self.summary = ImportSummary()
        self.kept: set[str] = set()  # known addresses on rejected lines: never pruned
        self.digest = hashlib.sha256()
        self.bytes_done = header_length
        self.chunks: queue.Queue[object] = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.running = threading.Event()  # cleared while the writer binds rows
        self.running.set()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the reader (at its next few lines) for the length of the block."""
        self.running.clear()
        try:
            yield
        finally:
            self.running.set()

    def run(self) -> None:
        try:
            self._read()
            self._hand_over(_DONE)
        except BaseException as exc:  # handed to the calling thread, which re-raises it
            self._hand_over(exc)

    def _hand_over(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _read(self) -> None:
        summary, rows = self.summary, []
        number = 1
        running = self.running
        for number, raw in enumerate(self.handle, start=2):
            if not number & 255:
                running.wait()
            self.bytes_done += len(raw)
            self.digest.update(raw)
            item = parse_line(number, raw)
            if isinstance(item, ParsedLine):
                row = self._classify(item)
                if row is not None:
                    rows.append(row)
            else:
                summary.rejected += 1
                summary.errors.append((item.line, item.reason))
                if item.address:
                    self.kept.add(item.address)
            if number % CHUNK_LINES == 0:
                self._hand_over((rows, number - 1, self.bytes_done))
                if self.stop.is_set():
                    return
                rows = []
        summary.lines = number - 1
        self._hand_over((rows, summary.lines, self.bytes_done))

    def _classify(self, item: ParsedLine) -> tuple[object, ...] | None:
        """Decide what one valid line does; return the row to stage, or None."""
        summary, address = self.summary, item.address
        line_digest = source_digest(item.values)
        previous = self.known.get(address)
        if previous is not None and _Known.seen(previous):
            if previous[:32] == line_digest:
                summary.unchanged += 1
            else:
                summary.rejected += 1
                summary.errors.append(
                    (
                        item.line,
                        f"duplicate address {echo(address)} with different data "
                        f"(first seen on line {_Known.line_of(previous)})",
                    )
                )
            return None
        self.known.mark(address, line_digest, item.line)
        inactive = self.not_active.get(address) == INACTIVE
        if previous is None:
            op = _ADD
            summary.added += 1
        elif inactive:
            op = _REACTIVATE
            summary.reactivated += 1
        elif previous == line_digest:
            summary.unchanged += 1
            return None
        else:
            # An administrator's revocation outlives the extract: only the data is refreshed.
            op = _UPDATE
            summary.updated += 1
        return (op, item.line, *item.values, item.city, search_text(item.values, item.city), line_digest.hex())


def _open(path: Path) -> tuple[BinaryIO, int]:
    try:
        handle = open(path, "rb")
        size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise ImportFileError(f"cannot open {path}: {exc.strerror}") from exc
    return handle, size


@contextmanager
def _bulk_settings(conn: Connection) -> Iterator[None]:
    """Settings for a bulk write, for the length of the import only.

    SQLite: a larger page cache (the indexes stay in memory), restored after. PostgreSQL: a
    larger GIN pending list, so that the search index merges its new entries a few times
    instead of every few thousand rows (``SET LOCAL``: it ends with the transaction).
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SET LOCAL gin_pending_list_limit = {IMPORT_GIN_PENDING_KIB}")
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{IMPORT_CACHE_KIB}kB'")
    if conn.dialect.name != "sqlite":
        yield
        return
    previous = conn.exec_driver_sql("PRAGMA cache_size").scalar()
    conn.exec_driver_sql(f"PRAGMA cache_size = {-IMPORT_CACHE_KIB}")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"PRAGMA cache_size = {int(previous or 0)}")


def _load_known(conn: Connection) -> tuple[_Known, dict[str, str]]:
    known, not_active = _Known(), {}
    # Streamed (a server-side cursor on PostgreSQL): the table may hold 535,000 entries.
    rows = conn.execute(
        select(_TABLE.c.address, _TABLE.c.source_hash, _TABLE.c.status).execution_options(yield_per=20_000)
    )
    for address, digest_hex, status in rows:
        known.load(digest_hex, address)
        if status != ACTIVE:
            not_active[address] = status
    return known, not_active


def import_extract(
    engine: Engine, path: str | Path, *, prune: bool = False, actor: str = "cli", progress: Progress | None = None
) -> ImportSummary:
    """Upsert the extract at ``path`` into the directory, in one transaction.

    Returns the ImportSummary. Raises ImportFileError when the file cannot be read or its
    header is not the extract's, or when ``prune`` is asked with a file holding no valid
    line (that would deactivate the whole directory); StorageError when the database refuses.
    Either way nothing is changed.
    """
    path = Path(path)
    handle, size = _open(path)
    try:
        with handle, session_scope(engine) as session:
            first = handle.readline()
            check_header(first)
            conn = session.connection()
            with _bulk_settings(conn):
                summary = _import_lines(conn, handle, first, size, prune, progress, path.name)
            _record(
                session, actor, path, audit.SUCCESS, prune=prune, file_sha256=summary.file_sha256, **summary.counts()
            )
    except ImportFileError as exc:
        _record_failure(engine, actor, path, exc)
        raise
    except OSError as exc:
        # A read error part-way (disk, network share): the transaction was rolled back.
        error = ImportFileError(f"cannot read {path}: {exc.strerror or exc}")
        _record_failure(engine, actor, path, error)
        raise error from exc
    except SQLAlchemyError as exc:
        raise StorageError(f"directory import failed in the database: {exc.__class__.__name__}") from exc
    if progress is not None:
        progress(summary.lines, size, size)
    return summary


def _import_lines(
    conn: Connection, handle: BinaryIO, header: bytes, size: int, prune: bool, progress: Progress | None, name: str
) -> ImportSummary:
    """Stream the lines after the header into the database; return the summary."""
    known, not_active = _load_known(conn)
    writer = _Writer(conn, utcnow())
    reader = _Reader(handle, len(header), known, not_active)
    reader.digest.update(header)
    reader.start()
    try:
        while True:
            chunk = reader.chunks.get()
            if chunk is _DONE:
                break
            if isinstance(chunk, BaseException):
                raise chunk
            rows, lines_done, bytes_done = cast(tuple[list[tuple[object, ...]], int, int], chunk)
            writer.write(rows, reader.paused)
            if progress is not None:
                progress(lines_done, bytes_done, size)
    finally:
        reader.stop.set()
        reader.join()
    writer.close()
    summary = reader.summary
    summary.file_sha256 = reader.digest.hexdigest()
    if prune:
        if summary.added + summary.updated + summary.unchanged + summary.reactivated == 0:
            raise ImportFileError(f"{name} holds no valid line: refusing to prune the whole directory")
        absent = [a for a in known.unseen() if a not in not_active and a not in reader.kept]
        writer.deactivate(absent)
        summary.deactivated = len(absent)
    if conn.dialect.name == "postgresql" and summary.added + summary.updated + summary.reactivated:
        # Searches scan the GIN pending list entry by entry: merge it into the index now
        # rather than leave the import's rows there. count_words gives the planner fresh
        # statistics (ANALYZE).
        for index in ("ix_directory_entry_search", "ix_directory_entry_names_search"):
            conn.exec_driver_sql(f"SELECT gin_clean_pending_list('{index}'::regclass)")
    if summary.added + summary.updated + summary.reactivated + summary.deactivated:
        count_words(conn)
    return summary


def _record(session: Session, actor: str, path: Path, outcome: str, /, **detail: object) -> None:
    """Record the ``directory.import`` event of the file at ``path`` with its ``detail``
    (the file's digest and the summary's counts, or the reason of a refusal)."""
    # None of the detail fields is named like one of record's own parameters.
    audit.record(session, actor=actor, action="directory.import", object=path.name, outcome=outcome, **detail)  # type: ignore[arg-type]


def _record_failure(engine: Engine, actor: str, path: Path, exc: ImportFileError) -> None:
    """Leave a trace of a refused file, in its own transaction (the import's rolled back)."""
    try:
        with session_scope(engine) as session:
            _record(session, actor, path, audit.FAILURE, reason=exc.message)
    except SQLAlchemyError as db_exc:
        raise StorageError(f"could not record the failed import: {db_exc.__class__.__name__}") from db_exc
