"""everyday: read receipts with consent, drafts

``account.read_receipts`` is the reader's RFC 8098 choice for requested read receipts (ask,
always, never); ``read_receipt_declined`` remembers a refusal so the question is not asked
again. ``draft`` keeps unsent messages, encrypted to their owner's certificate.

Revision ID: 0007
Revises: 0006
"""

from mss.migrations import ddl

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

STEPS = (
    ddl.AddColumns("account", ddl.string("read_receipts", 10, server_default="ask")),
    ddl.CreateTable(
        "read_receipt_declined",
        ddl.key(),
        ddl.integer("message_id"),
        ddl.address("recipient"),
        ddl.string("by", 10),
        ddl.timestamp("at"),
        ddl.foreign_key("message_id", "message.id"),
        ddl.unique("message_id", "recipient"),
        indexes=[ddl.index("message_id")],
    ),
    ddl.CreateTable(
        "draft",
        ddl.key(),
        ddl.string("draft_id", 40),
        ddl.address("owner"),
        ddl.binary("summary_cms"),
        ddl.binary("content_cms"),
        ddl.integer("size"),
        ddl.timestamp("created_at"),
        ddl.timestamp("updated_at"),
        indexes=[ddl.index("draft_id", unique=True), ddl.index("owner")],
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
