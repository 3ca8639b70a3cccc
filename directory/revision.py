"""The directory's revision: one number that changes with every write to who may receive.

Triggers (migration 0012) add one to ``directory_revision.value`` in the transaction of
every INSERT, UPDATE and DELETE of the directory's entries, its certificates and the trust
list, whoever writes them. A verdict read at revision N (this address may receive, with
this certificate) is still the verdict while the revision reads N, except for what time
alone changes (a certificate's validity): see ``mss.pipeline``'s recipient checks.

Read the revision *before* what depends on it, in the same transaction: on PostgreSQL each
statement of a read-committed transaction sees the commits made before it started, so a
write between the two reads leaves a newer verdict under an older revision, which the next
read of the revision then declines. The other order would keep an older verdict under a
newer revision.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import text

from mss.db import Reader, connection_of
from mss.errors import StorageError

_CURRENT: Final = text("SELECT value FROM directory_revision")


def current(reader: Reader) -> int:
    """The directory's revision now. Raises StorageError when the schema has no revision row."""
    value = connection_of(reader).execute(_CURRENT).scalar()
    if value is None:
        raise StorageError("the directory has no revision: migrate the database")
    return int(value)
