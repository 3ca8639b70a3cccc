"""federation: the trust list, routes, the outbound queue, peers' certificates and CRLs

``trusted_domain`` is the trust list (the MSSanté "liste blanche", imported or kept by hand);
``peer_route`` sends a domain to a host and port instead of its DNS MX. ``outbound`` and
``outbound_recipient`` are the durable queue of messages for other operators (the payload
sealed with the master key, a lease per worker). ``peer_certificate``, ``peer_lookup`` and
``peer_crl`` cache other operators' S/MIME certificates and CRLs. ``inbound_delivery``
remembers what arrived from other operators, so a repeated delivery is stored once.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

import mss.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "peer_certificate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("not_after", mss.db.UTCDateTime(), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("seen_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    with op.batch_alter_table("peer_certificate", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_peer_certificate_address"), ["address"], unique=False)

    op.create_table(
        "peer_crl",
        sa.Column("url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("issuer", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("next_update", mss.db.UTCDateTime(), nullable=True),
        sa.Column("fetched_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("url"),
    )
    with op.batch_alter_table("peer_crl", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_peer_crl_issuer"), ["issuer"], unique=False)

    op.create_table(
        "peer_lookup",
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("found", sa.Boolean(), nullable=False),
        sa.Column("at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("address"),
    )
    op.create_table(
        "peer_route",
        sa.Column("domain", sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
        sa.Column("host", sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("certificates_url", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("updated_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )
    op.create_table(
        "trusted_domain",
        sa.Column("domain", sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("added_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", mss.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("domain"),
    )
    op.create_table(
        "inbound_delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("message_ident", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("recipient", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("at", mss.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sender", "message_ident", "recipient"),
    )
    with op.batch_alter_table("inbound_delivery", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_inbound_delivery_message_id"), ["message_id"], unique=False)

    op.create_table(
        "outbound",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("domain", sqlmodel.sql.sqltypes.AutoString(length=253), nullable=False),
        sa.Column("protection", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("mail_from", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("envelope_id", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True),
        sa.Column("ret", sqlmodel.sql.sqltypes.AutoString(length=4), nullable=True),
        sa.Column("payload_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("next_attempt_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", mss.db.UTCDateTime(), nullable=False),
        sa.Column("delay_warned", sa.Boolean(), nullable=False),
        sa.Column("lease_owner", sqlmodel.sql.sqltypes.AutoString(length=80), nullable=False),
        sa.Column("lease_until", mss.db.UTCDateTime(), nullable=True),
        sa.Column("last_attempt_at", mss.db.UTCDateTime(), nullable=True),
        sa.Column("last_error", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("updated_at", mss.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["message.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("outbound", schema=None) as batch_op:
        batch_op.create_index("ix_outbound_due", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbound_message_id"), ["message_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_outbound_queue_id"), ["queue_id"], unique=True)

    op.create_table(
        "outbound_recipient",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("outbound_id", sa.Integer(), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=254), nullable=False),
        sa.Column("notify", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("orcpt", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("reply", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("updated_at", mss.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["outbound_id"], ["outbound.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("outbound_id", "address"),
    )
    with op.batch_alter_table("outbound_recipient", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_outbound_recipient_outbound_id"), ["outbound_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("outbound_recipient", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbound_recipient_outbound_id"))

    op.drop_table("outbound_recipient")
    with op.batch_alter_table("outbound", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbound_queue_id"))
        batch_op.drop_index(batch_op.f("ix_outbound_message_id"))
        batch_op.drop_index("ix_outbound_due")

    op.drop_table("outbound")
    with op.batch_alter_table("inbound_delivery", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbound_delivery_message_id"))

    op.drop_table("inbound_delivery")
    op.drop_table("trusted_domain")
    op.drop_table("peer_route")
    op.drop_table("peer_lookup")
    with op.batch_alter_table("peer_crl", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_peer_crl_issuer"))

    op.drop_table("peer_crl")
    with op.batch_alter_table("peer_certificate", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_peer_certificate_address"))

    op.drop_table("peer_certificate")
