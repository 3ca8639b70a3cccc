"""ciphertext stored as it is: PostgreSQL no longer tries to compress a CMS envelope

PostgreSQL tries to compress every value of a row longer than about 2 KB before it stores it
out of line (TOAST, ``STORAGE EXTENDED``, the default). Its compressor gives up early only
when the first kilobyte holds no repeat; a CMS EnvelopedData begins with its recipients'
issuer names and serial numbers, which repeat, so it reads on through the ciphertext, which
cannot be compressed, and gives up only past three quarters of it: about 35 ms of the
server's CPU for a 1.4 MB envelope (a 1 MB message), seven times the cost of storing it.
``STORAGE EXTERNAL`` keeps the value out of line and uncompressed. It applies to the values
written from then on; those already stored were stored uncompressed anyway, the compression
having failed. Only encrypted columns are set so: a message's envelope and a draft's.

SQLite stores a value as it is given: nothing to do there.

Revision ID: 0013
Revises: 0012
"""

from mss.migrations import ddl

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_CIPHERTEXT = (("message", "cms"), ("draft", "content_cms"))


def _stored(storage: str) -> tuple[str, ...]:
    return tuple(f"ALTER TABLE {table} ALTER COLUMN {column} SET STORAGE {storage}" for table, column in _CIPHERTEXT)


STEPS = (
    ddl.PerDialect(
        "uncompressed storage of ciphertext",
        upgrade={"sqlite": (), "postgresql": _stored("EXTERNAL")},
        downgrade={"sqlite": (), "postgresql": _stored("EXTENDED")},
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
