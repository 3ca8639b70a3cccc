"""operator: the last login of each account and the mailbox life cycle

``account.last_login_at`` is written at each successful login (the audit trail is purged
after six months, a mailbox is closed after a year without login); ``inactivity_notice_at``
when the inactivity notice went out; ``closed_at`` when the account was closed and its keys
destroyed; ``is_admin`` grants the activity pages under ``/admin``.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa

from mss.migrations import ddl

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STEPS = (
    ddl.AddColumns(
        "account",
        ddl.timestamp("last_login_at", nullable=True),
        ddl.timestamp("inactivity_notice_at", nullable=True),
        ddl.timestamp("closed_at", nullable=True),
        ddl.boolean("is_admin", server_default=sa.false()),
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
