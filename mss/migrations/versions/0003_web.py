"""web: server-side sessions and the per-owner mailbox search index

``web_session`` holds a login (web cookie or API bearer token) by the SHA-256 of its id, and
the account's private key sealed under a key only the client holds. ``mailbox_indexed`` and
``mailbox_token`` are the search index of ``mss.mailbox.index``: keyed hashes, private to
each mailbox owner, of subject words, document types and patient INS (no clear text).
``ix_mailbox_owner_folder_unread`` lets the unread count read an index alone.

Revision ID: 0003
Revises: 0002
"""

from mss.migrations import ddl

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STEPS = (
    ddl.CreateIndexes("mailbox_item", ddl.index("owner", "folder", "unread", name="ix_mailbox_owner_folder_unread")),
    ddl.CreateTable(
        "web_session",
        ddl.key(),
        ddl.string("token_hash", 64),
        ddl.address("address"),
        ddl.string("channel", 10),
        ddl.string("stage", 10),
        ddl.binary("key_sealed"),
        ddl.timestamp("created_at"),
        ddl.timestamp("last_seen_at"),
        ddl.timestamp("expires_at"),
        indexes=[ddl.index("token_hash", unique=True), ddl.index("address"), ddl.index("expires_at")],
    ),
    ddl.CreateTable(
        "mailbox_indexed",
        ddl.integer("item_id"),
        ddl.integer("level"),
        ddl.foreign_key("item_id", "mailbox_item.id", ondelete="CASCADE"),
        ddl.primary_key("item_id"),
    ),
    ddl.CreateTable(
        "mailbox_token",
        ddl.key(),
        ddl.integer("item_id"),
        ddl.address("owner"),
        ddl.string("token", 32),
        ddl.foreign_key("item_id", "mailbox_item.id", ondelete="CASCADE"),
        indexes=[ddl.index("item_id"), ddl.index("owner", "token", name="ix_mailbox_token_owner_token")],
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
