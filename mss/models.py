"""The service's tables (the directory's own live in ``directory.models``).

Nothing here holds a secret or message content in clear: keys are wrapped, TOTP seeds and
message metadata are sealed with the master key, bodies are CMS ciphertext. Each binary
column says which it holds, ciphertext or public material (``mss.db.binary``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel, col

from directory.models import Certificate, DirectoryEntry  # noqa: F401  (one metadata)
from mss.db import CIPHERTEXT, PUBLIC, UTCDateTime, binary, utcnow


class SealedSecret(SQLModel, table=True):
    """A server-side secret (the operator's receipt key, the audit checkpoint key ...), sealed."""

    __tablename__ = "sealed_secret"

    name: str = Field(primary_key=True, max_length=100)
    value: bytes = Field(sa_column=binary(CIPHERTEXT))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Account(SQLModel, table=True):
    """A login for a directory address, with its wrapped private key and second factor."""

    __tablename__ = "account"

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=254, unique=True, index=True)
    password_hash: str = Field(max_length=255)  # argon2id, libsodium's encoded form
    # The S/MIME private key (PKCS#8 DER) in a SecretBox under argon2id(password, key_salt).
    key_salt: bytes = Field(sa_column=binary(PUBLIC))
    key_opslimit: int
    key_memlimit: int
    wrapped_key: bytes = Field(sa_column=binary(CIPHERTEXT))
    # The same private key sealed to the offline recovery public key (X25519 SealedBox).
    recovery_sealed_key: bytes = Field(sa_column=binary(CIPHERTEXT))
    # Earlier private keys (after a rekey), so mail encrypted to an older certificate stays
    # readable: packed, in a SecretBox under the same argon2id key as ``wrapped_key``, and
    # sealed to the recovery key like the current one. Empty when there is none.
    past_keys_wrapped: bytes = Field(default=b"", sa_column=binary(CIPHERTEXT, default=b""))
    past_keys_recovery_sealed: bytes = Field(default=b"", sa_column=binary(CIPHERTEXT, default=b""))
    certificate_id: int | None = Field(default=None, foreign_key="certificate.id")
    totp_secret_sealed: bytes = Field(sa_column=binary(CIPHERTEXT))
    totp_confirmed: bool = False  # becomes true with the first accepted code
    totp_last_step: int = 0  # replay guard: the last accepted 30-second step
    recovery_codes: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    failed_logins: int = 0  # wrong passwords from every client address, in the current window
    factor_failures: int = 0  # wrong TOTP or recovery codes since the last complete login
    last_failure_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    locked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    disabled: bool = False
    # RFC 8098 2.1: a read receipt goes out only with the reader's consent: ask each time
    # (default), always, or never (mss.accounts.preferences).
    read_receipts: str = Field(default="ask", max_length=10)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The mailbox life cycle (mss.lifecycle): last successful login at any door, when the
    # inactivity notice went out, when the account was closed (its keys destroyed).
    last_login_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    inactivity_notice_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    is_admin: bool = False  # may open the activity pages under /admin (mss account admin)


class LoginThrottle(SQLModel, table=True):
    """Failed logins counted for one client address (``client:ADDR``) or for one account
    from one client address (``pair:ACCOUNT|ADDR``): the throttle that keeps an attacker
    from locking a professional out of their own mail."""

    __tablename__ = "login_throttle"

    scope: str = Field(primary_key=True, max_length=400)
    failures: int = 0
    last_failure_at: datetime = Field(sa_type=UTCDateTime)
    blocked_until: datetime | None = Field(default=None, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    """One link of the append-only audit chain: who did what, when, with what outcome."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(unique=True, index=True)  # 1, 2, 3 ... with no gap
    at: datetime = Field(sa_type=UTCDateTime, index=True)
    actor: str = Field(max_length=254)
    action: str = Field(max_length=64, index=True)
    object: str = Field(default="", max_length=500, index=True)
    outcome: str = Field(max_length=32)
    request_id: str = Field(default="", max_length=64)
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64, unique=True)


class AuditCheckpoint(SQLModel, table=True):
    """A signed record of the chain's head at a purge: verification starts from it."""

    __tablename__ = "audit_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    through_seq: int
    head_hash: str = Field(max_length=64)
    at: datetime = Field(sa_type=UTCDateTime)
    signature: bytes = Field(sa_column=binary(PUBLIC))


class Message(SQLModel, table=True):
    """A message as stored: one CMS object, readable only by its recipients and sender."""

    __tablename__ = "message"

    id: int | None = Field(default=None, primary_key=True)
    queue_id: str = Field(max_length=40, unique=True, index=True)
    message_id: str = Field(max_length=998, index=True)  # the RFC 5322 Message-ID
    sender: str = Field(max_length=254, index=True)
    kind: str = Field(max_length=20)  # "signed" (we signed + encrypted), "client" (passed through), "receipt"
    size: int
    cms: bytes = Field(sa_column=binary(CIPHERTEXT))  # DER EnvelopedData
    cms_sha256: str = Field(max_length=64)
    meta_sealed: bytes = Field(sa_column=binary(CIPHERTEXT))  # subject, documents ...
    submitted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class Delivery(SQLModel, table=True):
    """The fate of a message for one recipient."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("message_id", "recipient"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    recipient: str = Field(max_length=254, index=True)
    status: str = Field(max_length=20)  # delivered | failed
    reason: str = Field(default="", max_length=500)
    notify: str = Field(default="DELAY,FAILURE", max_length=40)  # RFC 3461 NOTIFY words, sorted
    mdn_requested: bool = False
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class MailboxItem(SQLModel, table=True):
    """A message as it appears in one person's folder."""

    __tablename__ = "mailbox_item"
    __table_args__ = (Index("ix_mailbox_owner_folder_time", "owner", "folder", "created_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    owner: str = Field(max_length=254)
    folder: str = Field(max_length=20)  # inbox | sent | archive
    unread: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Receipt(SQLModel, table=True):
    """A delivery (RFC 3464) or disposition (RFC 8098) notification, linked to its message."""

    __tablename__ = "receipt"

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    recipient: str = Field(max_length=254)
    kind: str = Field(max_length=3)  # dsn | mdn
    status: str = Field(max_length=20)  # delivered | relayed | failed | processed | displayed
    reason: str = Field(default="", max_length=500)
    notification_id: int | None = Field(default=None, foreign_key="message.id")
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ReadReceiptDeclined(SQLModel, table=True):
    """A recipient's refusal to send the read receipt a message asked for (RFC 8098 2.1),
    by their own choice or their setting: the question is not asked again."""

    __tablename__ = "read_receipt_declined"
    __table_args__ = (UniqueConstraint("message_id", "recipient"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    recipient: str = Field(max_length=254)
    by: str = Field(max_length=10)  # reader | setting
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Draft(SQLModel, table=True):
    """A message being written, kept until it is sent or discarded. Both parts are CMS
    envelopes encrypted to the owner's own certificate: only their private key (held by
    their session) opens them; the master key does not."""

    __tablename__ = "draft"

    id: int | None = Field(default=None, primary_key=True)
    draft_id: str = Field(max_length=40, unique=True, index=True)  # random, shown in URLs
    owner: str = Field(max_length=254, index=True)
    summary_cms: bytes = Field(sa_column=binary(CIPHERTEXT))  # what the folder lists
    content_cms: bytes = Field(sa_column=binary(CIPHERTEXT))  # text, options, files
    size: int
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebSession(SQLModel, table=True):
    """A web or API login: who, how far through the two factors, and the private key sealed
    under a key that only the client holds (the second half of its cookie or bearer token)."""

    __tablename__ = "web_session"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)  # SHA-256 of the session id
    address: str = Field(max_length=254, index=True)
    channel: str = Field(max_length=10)  # web | api
    stage: str = Field(max_length=10)  # totp | enrol | active
    # The account's PKCS#8 private key in a SecretBox under the client-held session key.
    key_sealed: bytes = Field(sa_column=binary(CIPHERTEXT))
    # Its earlier keys (``Account.past_keys_wrapped``), packed, under the same session key.
    past_keys_sealed: bytes = Field(default=b"", sa_column=binary(CIPHERTEXT, default=b""))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)  # absolute end


class MailboxIndexed(SQLModel, table=True):
    """A mailbox row whose search tokens are written (``level`` 1: metadata, 2: content too)."""

    __tablename__ = "mailbox_indexed"

    item_id: int = Field(primary_key=True, foreign_key="mailbox_item.id", ondelete="CASCADE")
    level: int = 1


class MailboxToken(SQLModel, table=True):
    """A keyed hash, private to one mailbox owner, of one searchable value of a message
    (a subject word, a document type, a patient INS): no clear text is stored."""

    __tablename__ = "mailbox_token"
    __table_args__ = (Index("ix_mailbox_token_owner_token", "owner", "token"),)

    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="mailbox_item.id", index=True, ondelete="CASCADE")
    owner: str = Field(max_length=254)
    token: str = Field(max_length=32)


# The inbox's unread count on every page reads this index alone.
Index("ix_mailbox_owner_folder_unread", col(MailboxItem.owner), col(MailboxItem.folder), col(MailboxItem.unread))


class MailClientSetting(SQLModel, table=True):
    """How an account's mail clients receive its messages over IMAP (``mss.mailbox.served``)."""

    __tablename__ = "mail_client_setting"

    address: str = Field(primary_key=True, max_length=254)
    imap_mode: str = Field(default="decrypted", max_length=20)  # decrypted | end-to-end
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class ClientFolder(SQLModel, table=True):
    """One folder of one owner as mail clients see it: its UIDVALIDITY and next UID.

    The row is locked while UIDs are given out, so processes sharing a database never hand
    out the same UID twice; ``changes`` counts flag changes and expunges made by clients.
    """

    __tablename__ = "client_folder"

    owner: str = Field(primary_key=True, max_length=254)
    folder: str = Field(primary_key=True, max_length=20)
    uid_validity: int
    uid_next: int = 1
    changes: int = 0


class ClientItem(SQLModel, table=True):
    """A mailbox row's UID in its folder and the flags only mail clients set (``\\Seen`` is
    ``mailbox_item.unread``, shared with the web). A row whose ``folder`` differs from its
    mailbox row's has moved since: it gets a new UID in its new folder."""

    __tablename__ = "client_item"
    __table_args__ = (UniqueConstraint("owner", "folder", "uid"),)

    item_id: int = Field(primary_key=True, foreign_key="mailbox_item.id", ondelete="CASCADE")
    owner: str = Field(max_length=254)
    folder: str = Field(max_length=20)
    uid: int
    flagged: bool = False
    answered: bool = False
    deleted: bool = False


class EntityShape(SQLModel, table=True):
    """What a mail client's listing needs of a message's decrypted entity (header, sizes,
    structure, the signature check), sealed with the master key: computed once, at the
    first opening, for messages whose metadata predates it or was not written by the
    pipeline (receipts, messages a client encrypted itself)."""

    __tablename__ = "entity_shape"

    message_id: int = Field(primary_key=True, foreign_key="message.id", ondelete="CASCADE")
    sealed: bytes = Field(sa_column=binary(CIPHERTEXT))


# -- other operators: trust list, routes, outbound queue, peers' certificates ---------------


class TrustedDomain(SQLModel, table=True):
    """A mail domain of another operator on the trust list (the MSSanté "liste blanche")."""

    __tablename__ = "trusted_domain"

    domain: str = Field(primary_key=True, max_length=253)  # lower-case, A-labels
    source: str = Field(max_length=10)  # list (imported) | manual
    added_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PeerRoute(SQLModel, table=True):
    """Where mail for a domain goes instead of its DNS MX (``mss trust route``), and where its
    operator publishes certificates."""

    __tablename__ = "peer_route"

    domain: str = Field(primary_key=True, max_length=253)
    host: str = Field(max_length=253)
    port: int
    certificates_url: str = Field(default="", max_length=500)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Outbound(SQLModel, table=True):
    """One message waiting for (or done with) delivery to one domain of another operator.

    The payload (the message as it goes on the wire) is sealed with the master key. A worker
    takes an entry by writing a lease (``lease_owner``, ``lease_until``); on PostgreSQL it
    finds entries with ``FOR UPDATE SKIP LOCKED``.
    """

    __tablename__ = "outbound"
    __table_args__ = (Index("ix_outbound_due", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    queue_id: str = Field(max_length=40, unique=True, index=True)
    message_id: int | None = Field(default=None, foreign_key="message.id", index=True)
    kind: str = Field(max_length=10)  # message (a local sender's) | receipt (for a remote sender)
    domain: str = Field(max_length=253)
    protection: str = Field(max_length=10)  # encrypted | signed | receipt
    mail_from: str = Field(default="", max_length=254)  # "" is the null sender <>
    envelope_id: str | None = Field(default=None, max_length=100)  # RFC 3461 ENVID
    ret: str | None = Field(default=None, max_length=4)  # RFC 3461 RET
    payload_sealed: bytes = Field(sa_column=binary(CIPHERTEXT))
    size: int
    state: str = Field(default="queued", max_length=10)  # queued | done | failed | bounced
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    expires_at: datetime = Field(sa_type=UTCDateTime)
    delay_warned: bool = False
    lease_owner: str = Field(default="", max_length=80)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_attempt_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str = Field(default="", max_length=500)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OutboundRecipient(SQLModel, table=True):
    """A recipient of an outbound entry and how far it got."""

    __tablename__ = "outbound_recipient"
    __table_args__ = (UniqueConstraint("outbound_id", "address"),)

    id: int | None = Field(default=None, primary_key=True)
    outbound_id: int = Field(foreign_key="outbound.id", index=True)
    address: str = Field(max_length=254)
    notify: str = Field(default="FAILURE", max_length=40)  # RFC 3461 NOTIFY as the sender asked
    orcpt: str | None = Field(default=None, max_length=500)
    state: str = Field(default="pending", max_length=10)  # pending | relayed | failed
    reply: str = Field(default="", max_length=500)  # the peer's last reply for this recipient
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PeerCertificate(SQLModel, table=True):
    """An S/MIME certificate of another operator's user: fetched from that operator's
    publication or taken from a signature that verified. Public material, not a secret."""

    __tablename__ = "peer_certificate"

    id: int | None = Field(default=None, primary_key=True)
    address: str = Field(max_length=254, index=True)
    fingerprint: str = Field(max_length=64, unique=True)
    der: bytes = Field(sa_column=binary(PUBLIC))
    not_after: datetime = Field(sa_type=UTCDateTime)
    source: str = Field(max_length=10)  # peer | signature
    seen_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PeerLookup(SQLModel, table=True):
    """When a peer's publication was last asked for an address, and whether it had one."""

    __tablename__ = "peer_lookup"

    address: str = Field(primary_key=True, max_length=254)
    found: bool = False
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class PeerCrl(SQLModel, table=True):
    """The CRL of another operator's CA, fetched from its distribution point."""

    __tablename__ = "peer_crl"

    url: str = Field(primary_key=True, max_length=500)
    issuer: str = Field(max_length=64, index=True)  # SHA-256 of the issuer name (DER), hex
    der: bytes = Field(sa_column=binary(PUBLIC))
    next_update: datetime | None = Field(default=None, sa_type=UTCDateTime)
    fetched_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class InboundDelivery(SQLModel, table=True):
    """A message from another operator stored for one recipient: a delivery attempt repeated
    after a lost ``250`` finds its row and stores nothing twice."""

    __tablename__ = "inbound_delivery"
    __table_args__ = (UniqueConstraint("sender", "message_ident", "recipient"),)

    id: int | None = Field(default=None, primary_key=True)
    sender: str = Field(max_length=254)  # the envelope sender, or the From: of a null-sender receipt
    message_ident: str = Field(max_length=64)  # SHA-256 of the RFC 5322 Message-ID, hex
    recipient: str = Field(max_length=254)
    message_id: int = Field(foreign_key="message.id", index=True)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebhookEvent(SQLModel, table=True):
    """One final status of one recipient of a sent message, to POST to ``MSS_WEBHOOK_URL``:
    the outbox of ``mss.webhooks``. Written in the transaction that records the status;
    ``event_id`` is the ``webhook-id`` of every attempt. Metadata only, never content.

    A sender takes a row by writing a lease (``lease_owner``, ``lease_until``); on
    PostgreSQL it finds rows with ``FOR UPDATE SKIP LOCKED``.
    """

    __tablename__ = "webhook_event"
    __table_args__ = (
        UniqueConstraint("queue_id", "recipient", "status"),
        Index("ix_webhook_event_due", "state", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=40, unique=True)
    # The message's queue id, not a foreign key: the event outlives a message the mailbox
    # life cycle deletes, and tells what happened to it.
    queue_id: str = Field(max_length=40)
    recipient: str = Field(max_length=254)
    status: str = Field(max_length=20)  # delivered | processed | failed
    payload: str = Field(sa_column=Column(Text, nullable=False))  # the JSON body, signed at each attempt
    state: str = Field(default="pending", max_length=10)  # pending | delivered | abandoned
    attempts: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    lease_owner: str = Field(default="", max_length=80)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str = Field(default="", max_length=200)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
