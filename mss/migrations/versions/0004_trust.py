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
import sqlmodel
from alembic import op

import mss.db

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing rows get an empty byte string (no past key yet), written as each backend spells it.
    empty = sa.text("X''") if op.get_bind().dialect.name == "sqlite" else sa.text("''::bytea")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.add_column(sa.Column("past_keys_wrapped", sa.LargeBinary(), nullable=False, server_default=empty))
        batch_op.add_column(
            sa.Column("past_keys_recovery_sealed", sa.LargeBinary(), nullable=False, server_default=empty)
        )
        batch_op.add_column(sa.Column("factor_failures", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("last_failure_at", mss.db.UTCDateTime(), nullable=True))
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.add_column(sa.Column("past_keys_sealed", sa.LargeBinary(), nullable=False, server_default=empty))
    op.create_table(
        "login_throttle",
        sa.Column("scope", sqlmodel.sql.sqltypes.AutoString(length=400), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("blocked_until", mss.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("scope"),
    )


def downgrade() -> None:
    op.drop_table("login_throttle")
    with op.batch_alter_table("web_session", schema=None) as batch_op:
        batch_op.drop_column("past_keys_sealed")
    with op.batch_alter_table("account", schema=None) as batch_op:
        batch_op.drop_column("last_failure_at")
        batch_op.drop_column("factor_failures")
        batch_op.drop_column("past_keys_recovery_sealed")
        batch_op.drop_column("past_keys_wrapped")
