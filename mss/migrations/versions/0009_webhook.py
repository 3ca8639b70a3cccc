"""webhook: the outbox of events for MSS_WEBHOOK_URL

``webhook_event`` holds one row per final status (delivered, processed, failed) of one
recipient of a sent message, written in the transaction that records the status, until the
integrator's endpoint accepts it or the sender gives it up: the body (metadata only), its
``webhook-id``, attempts and a lease per sending process.

Revision ID: 0009
Revises: 0008
"""

from mss.migrations import ddl

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

STEPS = (
    ddl.CreateTable(
        "webhook_event",
        ddl.key(),
        ddl.string("event_id", 40),
        ddl.string("queue_id", 40),
        ddl.address("recipient"),
        ddl.string("status", 20),
        ddl.text("payload"),
        ddl.string("state", 10),
        ddl.integer("attempts"),
        ddl.timestamp("created_at"),
        ddl.timestamp("next_attempt_at"),
        ddl.string("lease_owner", 80),
        ddl.timestamp("lease_until", nullable=True),
        ddl.string("last_error", 200),
        ddl.timestamp("updated_at"),
        ddl.unique("event_id"),
        ddl.unique("queue_id", "recipient", "status"),
        indexes=[ddl.index("state", "next_attempt_at", name="ix_webhook_event_due")],
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
