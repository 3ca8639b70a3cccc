"""everyday: read receipts with consent, drafts

``account.read_receipts`` is the reader's RFC 8098 choice for requested read receipts (ask,
always, never); ``read_receipt_declined`` remembers a refusal so the question is not asked
again. ``draft`` keeps unsent messages, encrypted to their owner's certificate.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mss.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("read_receipts", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False, server_default="ask")
        )
    op.create_table(
        "read_receipt_declined",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("recipient", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("by", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("at", mss.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id", "recipient"),
    )
    with op.batch_alter_table("read_receipt_declined", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_read_receipt_declined_message_id"), ["message_id"], unique=False)
    op.create_table(
        "draft",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("draft_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("summary_cms", sa.LargeBinary(), nullable=False),
        sa.Column("content_cms", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("draft", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_draft_draft_id"), ["draft_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_draft_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("draft", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_draft_owner"))
        batch_op.drop_index(batch_op.f("ix_draft_draft_id"))
    op.drop_table("draft")
    with op.batch_alter_table("read_receipt_declined", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_read_receipt_declined_message_id"))
    op.drop_table("read_receipt_declined")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("read_receipts")
