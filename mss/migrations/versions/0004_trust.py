"""trust: past keys kept after a rekey, second-factor failures, login throttle by client

``account.past_keys_wrapped`` and ``past_keys_recovery_sealed`` keep an account's earlier
private keys (wrapped like the current one) so mail encrypted to an older certificate stays
readable; ``web_session.past_keys_sealed`` carries them for a session. ``factor_failures``
counts wrong TOTP and recovery codes apart from wrong passwords, so a right password never
clears them. ``login_throttle`` counts failures by client address and by account and client
address together.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

from mss.migrations import ddl

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def past_keys(name: str) -> ddl.ColumnItem:
    """A column of past keys; existing rows get an empty byte string (no past key yet),
    written as each backend spells it."""

    def build() -> sa.Column:
        empty = sa.text("X''") if op.get_bind().dialect.name == "sqlite" else sa.text("''::bytea")
        return sa.Column(name, sa.LargeBinary(), nullable=False, server_default=empty)

    return build


STEPS = (
    ddl.AddColumns(
        "account",
        past_keys("past_keys_wrapped"),
        past_keys("past_keys_recovery_sealed"),
        ddl.integer("factor_failures", server_default="0"),
        ddl.timestamp("last_failure_at", nullable=True),
    ),
    ddl.AddColumns("web_session", past_keys("past_keys_sealed")),
    ddl.CreateTable(
        "login_throttle",
        ddl.string("scope", 400),
        ddl.integer("failures"),
        ddl.timestamp("last_failure_at"),
        ddl.timestamp("blocked_until", nullable=True),
        ddl.primary_key("scope"),
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
