"""webhook: the outbox of events for MSS_WEBHOOK_URL

``webhook_event`` holds one row per final status (delivered, processed, failed) of one
recipient of a sent message, written in the transaction that records the status, until the
integrator's endpoint accepts it or the sender gives it up: the body (metadata only), its
``webhook-id``, attempts and a lease per sending process.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mss.db

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("queue_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("recipient", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("lease_until", mss.db.UTCDateTime(), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("updated_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
        sa.UniqueConstraint("queue_id", "recipient", "status"),
    )
    op.create_index("ix_webhook_event_due", "webhook_event", ["state", "next_attempt_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_webhook_event_due", table_name="webhook_event")
    op.drop_table("webhook_event")
