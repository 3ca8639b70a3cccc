"""The reversible steps the Alembic revisions in ``versions/`` are made of, and their columns.

A revision lists its steps (create a table with its indexes, add columns to a table, create
indexes on a table); its ``upgrade`` applies them in order and its ``downgrade`` undoes them
in the opposite order, so a downgrade cannot drift from its upgrade. What is written per
dialect (full-text indexes, views, triggers) is a ``PerDialect`` step, its statements and
their undoing side by side (revision 0002, older, writes its own with ``op``).

Every revision is built from this module: changing what a name here builds changes the schema
that old revisions create on a new database and what they undo on an old one. So this module
only grows; a new need is a new name. For the same reason it imports no application model
(models change with the code, revisions must not), only column types.

Columns and constraints are given as builders (functions of no argument), not as SQLAlchemy
objects: a ``Column`` belongs to the one table it was made for, and one process may migrate
several databases (the tests do), so each run builds its own.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations
from sqlalchemy.types import TypeEngine
from sqlmodel.sql.sqltypes import AutoString

from mss.db import UTCDateTime

Item = Callable[[], sa.schema.SchemaItem]
ColumnItem = Callable[[], "sa.Column[Any]"]
ServerDefault = str | sa.TextClause | sa.ColumnElement[Any] | None

# The longest address SMTP carries (RFC 5321 4.5.3.1.3: a path of 256 octets with its brackets).
ADDRESS_LENGTH = 254


# -- columns, as the SQLModel models declared them: NOT NULL unless told ---------------------


def column(
    name: str, type_: Callable[[], TypeEngine[Any]], *, nullable: bool = False, server_default: ServerDefault = None
) -> ColumnItem:
    """A builder of the column ``name`` of the type ``type_()``."""
    return lambda: sa.Column(name, type_(), nullable=nullable, server_default=server_default)


def key() -> ColumnItem:
    """The surrogate key ``id``, an integer the database numbers (SERIAL on PostgreSQL)."""
    return lambda: sa.Column("id", sa.Integer(), primary_key=True, nullable=False)


def string(name: str, length: int | None = None, **options: Any) -> ColumnItem:
    """A ``VARCHAR(length)``, unbounded without a length, as SQLModel types a ``str``."""
    return column(name, lambda: AutoString(length=length), **options)


def address(name: str, **options: Any) -> ColumnItem:
    """A column for one e-mail address."""
    return string(name, ADDRESS_LENGTH, **options)


def integer(name: str, **options: Any) -> ColumnItem:
    """An ``INTEGER``."""
    return column(name, sa.Integer, **options)


def boolean(name: str, **options: Any) -> ColumnItem:
    """A ``BOOLEAN``."""
    return column(name, sa.Boolean, **options)


def binary(name: str, **options: Any) -> ColumnItem:
    """A ``BLOB`` on SQLite, ``BYTEA`` on PostgreSQL."""
    return column(name, sa.LargeBinary, **options)


def text(name: str, **options: Any) -> ColumnItem:
    """A ``TEXT``."""
    return column(name, sa.Text, **options)


def timestamp(name: str, **options: Any) -> ColumnItem:
    """A UTC timestamp (``mss.db.UTCDateTime``)."""
    return column(name, UTCDateTime, **options)


# -- table constraints and indexes -------------------------------------------------------------


def primary_key(*columns: str) -> Item:
    """The primary key of a table not keyed by ``key()``."""
    return lambda: sa.PrimaryKeyConstraint(*columns)


def unique(*columns: str) -> Item:
    """A unique constraint over ``columns`` together."""
    return lambda: sa.UniqueConstraint(*columns)


def foreign_key(column: str, target: str, *, ondelete: str | None = None) -> Item:
    """``column`` references ``target`` (``"table.column"``)."""
    return lambda: sa.ForeignKeyConstraint([column], [target], ondelete=ondelete)


@dataclass(frozen=True)
class Index:
    columns: tuple[str, ...]
    unique: bool
    name: str | None

    def name_on(self, table: str) -> str:
        return self.name or op.f(f"ix_{table}_{self.columns[0]}")


def index(*columns: str, unique: bool = False, name: str | None = None) -> Index:
    """An index on ``columns``; unnamed, it is ``ix_<table>_<first column>`` as SQLModel names it."""
    return Index(columns, unique, name)


# -- steps -------------------------------------------------------------------------------------


class Step(Protocol):
    """One change to the schema and how to undo it."""

    def apply(self) -> None: ...

    def revert(self) -> None: ...


Part = TypeVar("Part")


class _Batch(abc.ABC, Generic[Part]):
    """Changes to one existing table made in one batch (on SQLite, one copy of the table when a
    change needs it), each undone in the opposite order."""

    def __init__(self, table: str, *parts: Part) -> None:
        self.table = table
        self.parts = parts

    def apply(self) -> None:
        with op.batch_alter_table(self.table, schema=None) as batch_op:
            for part in self.parts:
                self._apply(batch_op, part)

    def revert(self) -> None:
        with op.batch_alter_table(self.table, schema=None) as batch_op:
            for part in reversed(self.parts):
                self._revert(batch_op, part)

    @abc.abstractmethod
    def _apply(self, batch_op: BatchOperations, part: Part) -> None:
        """Make the change ``part`` in the batch."""

    @abc.abstractmethod
    def _revert(self, batch_op: BatchOperations, part: Part) -> None:
        """Undo the change ``part`` in the batch."""


class CreateIndexes(_Batch[Index]):
    """Indexes on a table."""

    def _apply(self, batch_op: BatchOperations, part: Index) -> None:
        batch_op.create_index(part.name_on(self.table), list(part.columns), unique=part.unique)

    def _revert(self, batch_op: BatchOperations, part: Index) -> None:
        batch_op.drop_index(part.name_on(self.table))


class AddColumns(_Batch[ColumnItem]):
    """Columns added to a table."""

    def _apply(self, batch_op: BatchOperations, part: ColumnItem) -> None:
        batch_op.add_column(part())

    def _revert(self, batch_op: BatchOperations, part: ColumnItem) -> None:
        batch_op.drop_column(part().name)


class CreateTable:
    """A table of the given columns and constraints, in that order, then its indexes."""

    def __init__(self, name: str, *items: Item, indexes: Sequence[Index] = ()) -> None:
        self.name = name
        self.items = items
        self.indexes = CreateIndexes(name, *indexes)

    def apply(self) -> None:
        op.create_table(self.name, *(item() for item in self.items))
        if self.indexes.parts:
            self.indexes.apply()

    def revert(self) -> None:
        if self.indexes.parts:
            self.indexes.revert()
        op.drop_table(self.name)


@dataclass(frozen=True)
class PerDialect:
    """Statements written for each database (a full-text index, a view, triggers), and the
    statements that undo them; ``what`` names them in the error for another database."""

    what: str
    upgrade: dict[str, Sequence[str]]
    downgrade: dict[str, Sequence[str]]

    def _run(self, statements: dict[str, Sequence[str]]) -> None:
        dialect = op.get_bind().dialect.name
        if dialect not in statements:
            raise RuntimeError(f"mss supports SQLite and PostgreSQL, not {dialect}: no {self.what} for it")
        for statement in statements[dialect]:
            op.execute(statement)

    def apply(self) -> None:
        self._run(self.upgrade)

    def revert(self) -> None:
        self._run(self.downgrade)


def apply(steps: Sequence[Step]) -> None:
    """Upgrade: each step in order."""
    for step in steps:
        step.apply()


def revert(steps: Sequence[Step]) -> None:
    """Downgrade: each step undone, the last first."""
    for step in reversed(steps):
        step.revert()
