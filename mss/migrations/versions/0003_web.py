"""web: server-side sessions and the per-owner mailbox search index

``web_session`` holds a login (web cookie or API bearer token) by the SHA-256 of its id, and
the account's private key sealed under a key only the client holds. ``mailbox_indexed`` and
``mailbox_token`` are the search index of ``mss.mailbox.index``: keyed hashes, private to
each mailbox owner, of subject words, document types and patient INS (no clear text).
``ix_mailbox_owner_folder_unread`` lets the unread count read an index alone.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mss.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox_item", schema=None) as batch_op:
        batch_op.create_index("ix_mailbox_owner_folder_unread", ["owner", "folder", "unread"], unique=False)

    op.create_table(
        "web_session",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("channel", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("key_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_session_token_hash"), ["token_hash"], unique=True)
        batch_op.create_index(batch_op.f("ix_web_session_address"), ["address"], unique=False)
        batch_op.create_index(batch_op.f("ix_web_session_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "mailbox_indexed",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["mailbox_item.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("item_id"),
    )
    op.create_table(
        "mailbox_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("token", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["mailbox_item.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mailbox_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mailbox_token_item_id"), ["item_id"], unique=False)
        batch_op.create_index("ix_mailbox_token_owner_token", ["owner", "token"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("mailbox_token", schema=None) as batch_op:
        batch_op.drop_index("ix_mailbox_token_owner_token")
        batch_op.drop_index(batch_op.f("ix_mailbox_token_item_id"))
    op.drop_table("mailbox_token")
    op.drop_table("mailbox_indexed")
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_session_expires_at"))
        batch_op.drop_index(batch_op.f("ix_web_session_address"))
        batch_op.drop_index(batch_op.f("ix_web_session_token_hash"))
    op.drop_table("web_session")
    with op.batch_alter_table("mailbox_item", schema=None) as batch_op:
        batch_op.drop_index("ix_mailbox_owner_folder_unread")
