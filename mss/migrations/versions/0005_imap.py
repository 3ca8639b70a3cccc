"""imap: mail client settings, UIDs and flags per folder, cached entity shapes

``mail_client_setting`` holds an account's IMAP mode (decrypted or end to end);
``client_folder`` each folder's UIDVALIDITY and next UID (locked while UIDs are given out);
``client_item`` a mailbox row's UID and the flags only mail clients set; ``entity_shape``
what a listing needs of a message the metadata does not describe, sealed.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mss.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mail_client_setting",
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("imap_mode", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("updated_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address"),
    )
    op.create_table(
        "client_folder",
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("folder", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("uid_validity", sa.Integer(), nullable=False),
        sa.Column("uid_next", sa.Integer(), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("owner", "folder"),
    )
    op.create_table(
        "client_item",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("folder", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("uid", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("answered", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["mailbox_item.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("item_id"),
        sa.UniqueConstraint("owner", "folder", "uid"),
    )
    op.create_table(
        "entity_shape",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id"),
    )


def downgrade() -> None:
    op.drop_table("entity_shape")
    op.drop_table("client_item")
    op.drop_table("client_folder")
    op.drop_table("mail_client_setting")
