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

from mss.migrations import ddl

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

STEPS = (
    ddl.CreateTable(
        "peer_certificate",
        ddl.key(),
        ddl.address("address"),
        ddl.string("fingerprint", 64),
        ddl.binary("der"),
        ddl.timestamp("not_after"),
        ddl.string("source", 10),
        ddl.timestamp("seen_at"),
        ddl.unique("fingerprint"),
        indexes=[ddl.index("address")],
    ),
    ddl.CreateTable(
        "peer_crl",
        ddl.string("url", 500),
        ddl.string("issuer", 64),
        ddl.binary("der"),
        ddl.timestamp("next_update", nullable=True),
        ddl.timestamp("fetched_at"),
        ddl.primary_key("url"),
        indexes=[ddl.index("issuer")],
    ),
    ddl.CreateTable(
        "peer_lookup", ddl.address("address"), ddl.boolean("found"), ddl.timestamp("at"), ddl.primary_key("address")
    ),
    ddl.CreateTable(
        "peer_route",
        ddl.string("domain", 253),
        ddl.string("host", 253),
        ddl.integer("port"),
        ddl.string("certificates_url", 500),
        ddl.timestamp("updated_at"),
        ddl.primary_key("domain"),
    ),
    ddl.CreateTable(
        "trusted_domain",
        ddl.string("domain", 253),
        ddl.string("source", 10),
        ddl.timestamp("added_at"),
        ddl.timestamp("updated_at"),
        ddl.primary_key("domain"),
    ),
    ddl.CreateTable(
        "inbound_delivery",
        ddl.key(),
        ddl.address("sender"),
        ddl.string("message_ident", 64),
        ddl.address("recipient"),
        ddl.integer("message_id"),
        ddl.timestamp("at"),
        ddl.foreign_key("message_id", "message.id"),
        ddl.unique("sender", "message_ident", "recipient"),
        indexes=[ddl.index("message_id")],
    ),
    ddl.CreateTable(
        "outbound",
        ddl.key(),
        ddl.string("queue_id", 40),
        ddl.integer("message_id", nullable=True),
        ddl.string("kind", 10),
        ddl.string("domain", 253),
        ddl.string("protection", 10),
        ddl.address("mail_from"),
        ddl.string("envelope_id", 100, nullable=True),
        ddl.string("ret", 4, nullable=True),
        ddl.binary("payload_sealed"),
        ddl.integer("size"),
        ddl.string("state", 10),
        ddl.integer("attempts"),
        ddl.timestamp("created_at"),
        ddl.timestamp("next_attempt_at"),
        ddl.timestamp("expires_at"),
        ddl.boolean("delay_warned"),
        ddl.string("lease_owner", 80),
        ddl.timestamp("lease_until", nullable=True),
        ddl.timestamp("last_attempt_at", nullable=True),
        ddl.string("last_error", 500),
        ddl.timestamp("updated_at"),
        ddl.foreign_key("message_id", "message.id"),
        indexes=[
            ddl.index("state", "next_attempt_at", name="ix_outbound_due"),
            ddl.index("message_id"),
            ddl.index("queue_id", unique=True),
        ],
    ),
    ddl.CreateTable(
        "outbound_recipient",
        ddl.key(),
        ddl.integer("outbound_id"),
        ddl.address("address"),
        ddl.string("notify", 40),
        ddl.string("orcpt", 500, nullable=True),
        ddl.string("state", 10),
        ddl.string("reply", 500),
        ddl.timestamp("updated_at"),
        ddl.foreign_key("outbound_id", "outbound.id"),
        ddl.unique("outbound_id", "address"),
        indexes=[ddl.index("outbound_id")],
    ),
)


def upgrade() -> None:
    ddl.apply(STEPS)


def downgrade() -> None:
    ddl.revert(STEPS)
