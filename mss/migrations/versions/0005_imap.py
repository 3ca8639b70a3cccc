"""imap: mail client settings, UIDs and flags per folder, cached entity shapes

``mail_client_setting`` holds an account's IMAP mode (decrypted or end to end);
``client_folder`` each folder's UIDVALIDITY and next UID (locked while UIDs are given out);
``client_item`` a mailbox row's UID and the flags only mail clients set; ``entity_shape``
what a listing needs of a message the metadata does not describe, sealed.

Revision ID: 0005
Revises: 0004
"""

from mss.migrations import ddl

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STEPS = (
    ddl.CreateTable(
        "mail_client_setting",
        ddl.address("address"),
        ddl.string("imap_mode", 20),
        ddl.timestamp("updated_at"),
        ddl.primary_key("address"),
    ),
    ddl.CreateTable(
        "client_folder",
        ddl.address("owner"),
        ddl.string("folder", 20),
        ddl.integer("uid_validity"),
        ddl.integer("uid_next"),
        ddl.integer("changes"),
        ddl.primary_key("owner", "folder"),
    ),
    ddl.CreateTable(
        "client_item",
        ddl.integer("item_id"),
        ddl.address("owner"),
        ddl.string("folder", 20),
        ddl.integer("uid"),
        ddl.boolean("flagged"),
        ddl.boolean("answered"),
        ddl.boolean("deleted"),
        ddl.foreign_key("item_id", "mailbox_item.id", ondelete="CASCADE"),
        ddl.primary_key("item_id"),
        ddl.unique("owner", "folder", "uid"),
    ),
    ddl.CreateTable(
        "entity_shape",
        ddl.integer("message_id"),
        ddl.binary("sealed"),
        ddl.foreign_key("message_id", "message.id", ondelete="CASCADE"),
        ddl.primary_key("message_id"),
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
