"""Server-side sessions for the web inbox and the JSON API.

A session token is 64 random bytes: a 32-byte session id and a 32-byte session key. The
client holds the token (the ``__Host-mss`` cookie, or an API bearer token); the database
holds only ``SHA-256(session id)`` and the account's private key sealed with the session key
(NaCl SecretBox). A database dump therefore opens no private key, and a stolen cookie stops
working once the row is deleted (logout, expiry, password change).

A login goes through stages: ``totp`` (password checked, second factor pending), ``enrol``
(password checked, authenticator not yet enrolled) and ``active``. Each step issues a new
token and deletes the old row, so an id seen before login is worthless after it (session
fixation). Sessions end after ``idle`` without a request and at ``absolute`` after login,
whatever the activity; a pending second-factor step lasts ``pending`` at most.

The CSRF token of a form is an HMAC of a fixed label under the client's secret (the session
key, or the pre-login cookie): only the holder of the cookie can compute it, the server
stores nothing for it, and a new session means a new token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import nacl.exceptions
import nacl.secret
from cryptography import x509
from litestar.di import NamedDependency
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from directory.models import Certificate
from mss import standing
from mss.accounts import UnlockedAccount
from mss.crypto import keys
from mss.db import rowcount, session_scope, utcnow
from mss.errors import AuthError, StandingError
from mss.models import Account, WebSession
from mss.settings import Settings

TOTP, ENROL, ACTIVE = "totp", "enrol", "active"
STAGES = (TOTP, ENROL, ACTIVE)
WEB, API = "web", "api"

ID_BYTES = 32
KEY_BYTES = nacl.secret.SecretBox.KEY_SIZE
_CSRF_LABEL = b"mss web csrf v1"


class SessionInvalid(AuthError):
    """No live session for this cookie or token (missing, malformed, ended or expired)."""

    def __init__(
        self,
        reason: str = "no session",
        message: str = "your session has ended; please log in again",
        *,
        standing: bool = False,
    ) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason
        self.standing = standing  # ended because the account no longer stands (mss.standing)


@dataclass(frozen=True)
class SessionPolicy:
    """How long sessions live."""

    idle: timedelta = timedelta(minutes=15)
    absolute: timedelta = timedelta(hours=12)
    pending: timedelta = timedelta(minutes=10)
    touch_every: timedelta = timedelta(seconds=30)
    """``last_seen_at`` is written at most this often: a page view is not a database write."""


@dataclass(frozen=True)
class SessionToken:
    """What the client holds: the session id and the key that opens the sealed private key."""

    session_id: bytes
    key: bytes

    @classmethod
    def new(cls) -> SessionToken:
        """A fresh random token."""
        return cls(secrets.token_bytes(ID_BYTES), secrets.token_bytes(KEY_BYTES))

    def encode(self) -> str:
        """The token as cookie- and header-safe text (base64url, no padding)."""
        return base64.urlsafe_b64encode(self.session_id + self.key).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str | None) -> SessionToken | None:
        """The token in ``text``, or None when it is not one (never raises)."""
        if not text or len(text) != 86:
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "==")
        except (binascii.Error, ValueError):
            return None
        if len(raw) != ID_BYTES + KEY_BYTES:
            return None
        return cls(raw[:ID_BYTES], raw[ID_BYTES:])

    @property
    def token_hash(self) -> str:
        """What the database keeps of the token: SHA-256 of the session id, hex."""
        return hashlib.sha256(self.session_id).hexdigest()

    @property
    def csrf_token(self) -> str:
        """The CSRF token of this session's forms."""
        return csrf_token_for(self.key)


def csrf_token_for(secret: bytes) -> str:
    """The CSRF token that goes with a client secret (session key or pre-login cookie)."""
    return hmac.new(secret, _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_matches(secret: bytes, presented: str | None) -> bool:
    """True when ``presented`` is the CSRF token of ``secret`` (constant time)."""
    if not presented:
        return False
    return hmac.compare_digest(csrf_token_for(secret), presented.strip())


@dataclass(frozen=True)
class LiveSession:
    """A session that passed its checks, with the private key opened for this request."""

    token: SessionToken
    address: str
    channel: str
    stage: str
    created_at: datetime
    expires_at: datetime
    private_key_der: bytes = field(repr=False)
    certificate_der: bytes
    past_keys_der: tuple[bytes, ...] = field(default=(), repr=False)

    def account(self) -> UnlockedAccount:
        """The session's account with its certificate and opened private keys."""
        return UnlockedAccount(
            address=self.address,
            private_key_der=self.private_key_der,
            certificate=x509.load_der_x509_certificate(self.certificate_der),
            past_keys_der=self.past_keys_der,
        )

    @property
    def certificate_not_after(self) -> datetime:
        """When the session's signing certificate ends."""
        return x509.load_der_x509_certificate(self.certificate_der).not_valid_after_utc


def _seal(token: SessionToken, private_key_der: bytes) -> bytes:
    return bytes(nacl.secret.SecretBox(token.key).encrypt(private_key_der))


def _seal_past(token: SessionToken, past_keys_der: tuple[bytes, ...]) -> bytes:
    return _seal(token, keys.pack_keys(past_keys_der)) if past_keys_der else b""


def _unseal(token: SessionToken, sealed: bytes) -> bytes:
    try:
        return nacl.secret.SecretBox(token.key).decrypt(sealed)
    except nacl.exceptions.CryptoError as exc:
        # Only a forged token whose id hash collides, or an altered row, gets here.
        raise SessionInvalid("sealed key does not open") from exc


def _new_row(
    address: str, channel: str, stage: str, key_der: bytes, past_keys_der: tuple[bytes, ...], policy: SessionPolicy
) -> tuple[SessionToken, WebSession]:
    """A fresh token and the session row it opens (the keys sealed under the token's key)."""
    token = SessionToken.new()
    now = utcnow()
    lifetime = policy.absolute if stage == ACTIVE else policy.pending
    row = WebSession(
        token_hash=token.token_hash,
        address=address,
        channel=channel,
        stage=stage,
        key_sealed=_seal(token, key_der),
        past_keys_sealed=_seal_past(token, past_keys_der),
        created_at=now,
        last_seen_at=now,
        expires_at=now + lifetime,
    )
    return token, row


def open_session(
    engine: Engine, *, account: UnlockedAccount, channel: str, stage: str, policy: SessionPolicy
) -> SessionToken:
    """Store a new session of ``account`` (its keys sealed under the new token's key) and
    return its token (shown to the client once)."""
    with session_scope(engine) as session:
        return open_session_in(session, account=account, channel=channel, stage=stage, policy=policy)


def open_session_in(
    session: Session, *, account: UnlockedAccount, channel: str, stage: str, policy: SessionPolicy
) -> SessionToken:
    """``open_session`` in the caller's transaction (the one that accepts a second factor)."""
    if channel not in {WEB, API} or stage not in STAGES:
        raise ValueError(f"bad session channel {channel!r} or stage {stage!r}")
    token, row = _new_row(account.address, channel, stage, account.private_key_der, account.past_keys_der, policy)
    session.add(row)
    return token


def known(engine: Engine, token: SessionToken) -> bool:
    """Whether the database holds a session of ``token`` (in any state): a cookie of the
    right form alone proves nothing, anyone can make one."""
    with session_scope(engine, readonly=True) as session:
        found = session.execute(
            select(col(WebSession.token_hash)).where(col(WebSession.token_hash) == token.token_hash)
        )
        return found.first() is not None


def load_session(
    engine: Engine, token: SessionToken | None, *, policy: SessionPolicy, channel: str, settings: Settings
) -> LiveSession:
    """The live session of ``token``, its private keys opened. Raises SessionInvalid.

    An idle or expired session, or one whose account no longer stands (``mss.standing``:
    disabled, directory entry revoked, certificate revoked or expired), is deleted on the
    way; the SessionInvalid then carries the standing's reason code and message.
    """
    if token is None:
        raise SessionInvalid("no session")
    now = utcnow()
    with session_scope(engine) as session:
        found = session.execute(
            select(WebSession, col(Account.disabled), col(Certificate.der))
            .join(Account, col(Account.address) == col(WebSession.address), isouter=True)
            .join(Certificate, col(Certificate.id) == col(Account.certificate_id), isouter=True)
            .where(col(WebSession.token_hash) == token.token_hash)
        ).first()
        if found is None or found[0].channel != channel:
            raise SessionInvalid("unknown session")
        row, disabled, certificate_der = found
        idle_limit = policy.idle if row.stage == ACTIVE else policy.pending
        expired = None
        if now >= row.expires_at:
            expired = "expired"
        elif now - row.last_seen_at >= idle_limit:
            expired = "idle"
        elif disabled is None or disabled or certificate_der is None:
            expired = "account disabled"
        message, by_standing = "your session has ended; please log in again", False
        if expired is None:
            try:
                standing.check(session, settings, row.address)
            except StandingError as exc:
                expired, message, by_standing = exc.code, f"your session has ended: {exc.message}", True
        if expired is not None:
            session.delete(row)
        elif now - row.last_seen_at >= policy.touch_every:
            row.last_seen_at = now
            session.add(row)
        snapshot = (
            row.address,
            row.channel,
            row.stage,
            row.created_at,
            row.expires_at,
            row.key_sealed,
            row.past_keys_sealed,
        )
    if expired is not None:
        raise SessionInvalid(expired, message, standing=by_standing)
    address, channel_, stage, created_at, expires_at, sealed, past_sealed = snapshot
    return LiveSession(
        token=token,
        address=address,
        channel=channel_,
        stage=stage,
        created_at=created_at,
        expires_at=expires_at,
        private_key_der=_unseal(token, sealed),
        certificate_der=bytes(certificate_der),
        past_keys_der=keys.unpack_keys(_unseal(token, past_sealed)) if past_sealed else (),
    )


def advance(engine: Engine, live: LiveSession, *, stage: str, policy: SessionPolicy) -> SessionToken:
    """Replace the session by a new one at ``stage`` (new id, new key); return its token.

    The old row is deleted in the same transaction: the old cookie is dead at once.
    """
    with session_scope(engine) as session:
        return advance_in(session, live, stage=stage, policy=policy)


def advance_in(session: Session, live: LiveSession, *, stage: str, policy: SessionPolicy) -> SessionToken:
    """``advance`` in the caller's transaction (with the change that calls for it). Raises
    SessionInvalid when the session ended meanwhile."""
    token, row = _new_row(live.address, live.channel, stage, live.private_key_der, live.past_keys_der, policy)
    gone = rowcount(session.execute(delete(WebSession).where(col(WebSession.token_hash) == live.token.token_hash)))
    if not gone:
        raise SessionInvalid("session ended meanwhile")
    session.add(row)
    return token


def end_session(engine: Engine, token: SessionToken | None) -> bool:
    """Delete the session of ``token``; True when there was one."""
    if token is None:
        return False
    with session_scope(engine) as session:
        return bool(rowcount(session.execute(delete(WebSession).where(col(WebSession.token_hash) == token.token_hash))))


def end_other_sessions(session: Session, address: str, keep: SessionToken | None = None) -> int:
    """Delete every session of ``address`` except ``keep``'s, in the caller's transaction
    (with the change of password or second factor that ends them); return how many ended."""
    query = delete(WebSession).where(col(WebSession.address) == address)
    if keep is not None:
        query = query.where(col(WebSession.token_hash) != keep.token_hash)
    return rowcount(session.execute(query))


def purge_expired(engine: Engine, *, policy: SessionPolicy) -> int:
    """Delete sessions past their absolute end or idle limit; return how many."""
    now = utcnow()
    with session_scope(engine) as session:
        query = delete(WebSession).where(
            (col(WebSession.expires_at) <= now)
            | (col(WebSession.last_seen_at) <= now - max(policy.idle, policy.pending))
        )
        return rowcount(session.execute(query))


# The logged-in session, as controllers are given it (``dependencies={"live": ...}``).
Live = NamedDependency[LiveSession]
