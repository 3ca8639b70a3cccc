"""operator: the last login of each account and the mailbox life cycle

``account.last_login_at`` is written at each successful login (the audit trail is purged
after six months, a mailbox is closed after a year without login); ``inactivity_notice_at``
when the inactivity notice went out; ``closed_at`` when the account was closed and its keys
destroyed; ``is_admin`` grants the activity pages under ``/admin``.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

import mss.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_login_at", mss.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("inactivity_notice_at", mss.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("closed_at", mss.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("is_admin")
        batch_op.drop_column("closed_at")
        batch_op.drop_column("inactivity_notice_at")
        batch_op.drop_column("last_login_at")
