"""The service's tables (the directory's own live in ``directory.models``).

Nothing here holds a secret or message content in clear: keys are wrapped, TOTP seeds and
message metadata are sealed with the master key, bodies are CMS ciphertext.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from directory.models import Certificate, DirectoryEntry  # noqa: F401  (one metadata)
from mss.db import UTCDateTime, utcnow


class SealedSecret(SQLModel, table=True):
    """A server-side secret (the operator's receipt key, the audit checkpoint key ...), sealed."""

    __tablename__ = "sealed_secret"

    name: str = Field(primary_key=True, max_length=100)
    value: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Account(SQLModel, table=True):
    """A login for a directory address, with its wrapped private key and second factor."""

    __tablename__ = "account"

    id: Optional[int] = Field(default=None, primary_key=True)
    address: str = Field(max_length=254, unique=True, index=True)
    password_hash: str = Field(max_length=255)  # argon2id, libsodium's encoded form
    # The S/MIME private key (PKCS#8 DER) in a SecretBox under argon2id(password, key_salt).
    key_salt: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    key_opslimit: int
    key_memlimit: int
    wrapped_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # The same private key sealed to the offline recovery public key (X25519 SealedBox).
    recovery_sealed_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # Earlier private keys (after a rekey), so mail encrypted to an older certificate stays
    # readable: packed, in a SecretBox under the same argon2id key as ``wrapped_key``, and
    # sealed to the recovery key like the current one. Empty when there is none.
    past_keys_wrapped: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False, default=b""))
    past_keys_recovery_sealed: bytes = Field(
        default=b"", sa_column=Column(LargeBinary, nullable=False, default=b"")
    )
    certificate_id: Optional[int] = Field(default=None, foreign_key="certificate.id")
    totp_secret_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    totp_confirmed: bool = False  # becomes true with the first accepted code
    totp_last_step: int = 0  # replay guard: the last accepted 30-second step
    recovery_codes: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    failed_logins: int = 0  # wrong passwords from every client address, in the current window
    factor_failures: int = 0  # wrong TOTP or recovery codes since the last complete login
    last_failure_at: Optional[datetime] = Field(default=None, sa_type=UTCDateTime)
    locked_until: Optional[datetime] = Field(default=None, sa_type=UTCDateTime)
    disabled: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # The mailbox life cycle (mss.lifecycle): last successful login at any door, when the
    # inactivity notice went out, when the account was closed (its keys destroyed).
    last_login_at: Optional[datetime] = Field(default=None, sa_type=UTCDateTime)
    inactivity_notice_at: Optional[datetime] = Field(default=None, sa_type=UTCDateTime)
    closed_at: Optional[datetime] = Field(default=None, sa_type=UTCDateTime)
    is_admin: bool = False  # may open the activity pages under /admin (mss account admin)


class LoginThrottle(SQLModel, table=True):
    """Failed logins counted for one client address (``client:ADDR``) or for one account
    from one client address (``pair:ACCOUNT|ADDR``): the throttle that keeps an attacker
    from locking a professional out of their own mail."""

    __tablename__ = "login_throttle"

    scope: str = Field(primary_key=True, max_length=400)
    failures: int = 0
    last_failure_at: datetime = Field(sa_type=UTCDateTime)
    blocked_until: Optional[datetime] = Field(default=None, sa_type=UTCDateTime)


class AuditEvent(SQLModel, table=True):
    """One link of the append-only audit chain: who did what, when, with what outcome."""

    __tablename__ = "audit_event"

    id: Optional[int] = Field(default=None, primary_key=True)
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

    id: Optional[int] = Field(default=None, primary_key=True)
    through_seq: int
    head_hash: str = Field(max_length=64)
    at: datetime = Field(sa_type=UTCDateTime)
    signature: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Message(SQLModel, table=True):
    """A message as stored: one CMS object, readable only by its recipients and sender."""

    __tablename__ = "message"

    id: Optional[int] = Field(default=None, primary_key=True)
    queue_id: str = Field(max_length=40, unique=True, index=True)
    message_id: str = Field(max_length=998, index=True)  # the RFC 5322 Message-ID
    sender: str = Field(max_length=254, index=True)
    kind: str = Field(max_length=20)  # "signed" (we signed + encrypted), "client" (passed through), "receipt"
    size: int
    cms: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # DER EnvelopedData
    cms_sha256: str = Field(max_length=64)
    meta_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))  # subject, documents ...
    submitted_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class Delivery(SQLModel, table=True):
    """The fate of a message for one recipient."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("message_id", "recipient"),)

    id: Optional[int] = Field(default=None, primary_key=True)
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

    id: Optional[int] = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    owner: str = Field(max_length=254)
    folder: str = Field(max_length=20)  # inbox | sent | archive
    unread: bool = True
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Receipt(SQLModel, table=True):
    """A delivery (RFC 3464) or disposition (RFC 8098) notification, linked to its message."""

    __tablename__ = "receipt"

    id: Optional[int] = Field(default=None, primary_key=True)
    message_id: int = Field(foreign_key="message.id", index=True)
    recipient: str = Field(max_length=254)
    kind: str = Field(max_length=3)  # dsn | mdn
    status: str = Field(max_length=20)  # delivered | relayed | failed | processed | displayed
    reason: str = Field(default="", max_length=500)
    notification_id: Optional[int] = Field(default=None, foreign_key="message.id")
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class WebSession(SQLModel, table=True):
    """A web or API login: who, how far through the two factors, and the private key sealed
    under a key that only the client holds (the second half of its cookie or bearer token)."""

    __tablename__ = "web_session"

    id: Optional[int] = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True, index=True)  # SHA-256 of the session id
    address: str = Field(max_length=254, index=True)
    channel: str = Field(max_length=10)  # web | api
    stage: str = Field(max_length=10)  # totp | enrol | active
    # The account's PKCS#8 private key in a SecretBox under the client-held session key.
    key_sealed: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # Its earlier keys (``Account.past_keys_wrapped``), packed, under the same session key.
    past_keys_sealed: bytes = Field(default=b"", sa_column=Column(LargeBinary, nullable=False, default=b""))
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

    id: Optional[int] = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="mailbox_item.id", index=True, ondelete="CASCADE")
    owner: str = Field(max_length=254)
    token: str = Field(max_length=32)


# The inbox's unread count on every page reads this index alone.
Index("ix_mailbox_owner_folder_unread", MailboxItem.owner, MailboxItem.folder, MailboxItem.unread)
