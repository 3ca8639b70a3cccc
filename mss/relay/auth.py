"""SMTP AUTH PLAIN (RFC 4616) and LOGIN against ``mss.accounts``, off the event loop.

aiosmtpd finds the mechanisms by their ``auth_<NAME>`` method names and offers them only
after STARTTLS (``auth_require_tls``). The password check is argon2id work and opens the
account's private key: it runs in a worker thread, and the ``UnlockedAccount`` it returns
stays on the session (``session.auth_data``) and nowhere else.

What the client is told: ``235`` on success; ``535 5.7.8`` for a wrong address or password
(nothing more to learn); ``454 4.7.0`` while the account is locked for this client, or the
client's address has failed too often (temporary); and, only after a right password, a
``535 5.7.8`` that names why the account may not log in (disabled, directory entry revoked,
certificate revoked or expired). Failures are audited and counted by ``mss.accounts``.
"""

from __future__ import annotations

import asyncio
import binascii
from base64 import b64decode
from typing import TYPE_CHECKING, Final

from aiosmtpd.smtp import MISSING, AuthResult

from mss import accounts
from mss.errors import (
    AccountDisabled,
    AccountLocked,
    AddressNotServed,
    BadCredentials,
    CertificateExpired,
    CertificateRevoked,
    EntryRevoked,
    StandingError,
    TooManyAttempts,
)
from mss.relay import replies

if TYPE_CHECKING:
    from mss.runtime import Runtime

# After a right password: why the account may not log in.
STANDING_REPLIES: Final = (
    (AccountDisabled, replies.AUTH_ACCOUNT_DISABLED),
    (EntryRevoked, replies.AUTH_ENTRY_REVOKED),
    (CertificateRevoked, replies.AUTH_CERTIFICATE_REVOKED),
    (CertificateExpired, replies.AUTH_CERTIFICATE_EXPIRED),
    (AddressNotServed, replies.AUTH_NOT_SERVED),
)


def _failed(reply: str = replies.AUTH_FAILED) -> AuthResult:
    return AuthResult(success=False, handled=False, message=reply)


class PasswordMechanisms:
    """The AUTH mechanisms of ``RelaySMTP`` (a mixin over aiosmtpd's ``SMTP``)."""

    rt: Runtime
    correlation_id: str

    async def _initial_or_challenge(self, args: list[str], challenge: str) -> bytes | None:
        """The client's base64-decoded response: the initial one, or after a ``334``.

        None when aiosmtpd already answered (``*`` abort, bad base64 in a challenge reply).
        """
        if len(args) == 1:
            # aiosmtpd's SMTP, which this mixin is mixed into, provides it
            blob = await self.challenge_auth(challenge)  # type: ignore[attr-defined]
            return None if blob is MISSING else blob
        if args[1] == "=":  # RFC 4954 4: "=" is an empty initial response
            return b""
        try:
            return b64decode(args[1].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            # aiosmtpd's SMTP, which this mixin is mixed into, provides it
            await self.push(replies.AUTH_BAD_BASE64)  # type: ignore[attr-defined]
            return None

    async def auth_PLAIN(self, _: object, args: list[str]) -> AuthResult:
        """RFC 4616: ``authzid NUL authcid NUL passwd``; authzid empty or the same account."""
        blob = await self._initial_or_challenge(args, "")
        if blob is None:
            return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            # aiosmtpd's SMTP, which this mixin is mixed into, provides it
            await self.push(replies.AUTH_BAD_RESPONSE)  # type: ignore[attr-defined]
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid.lower() != login.lower():
            # Nobody submits on behalf of another account.
            return _failed()
        return await self.check_password(login, password)

    async def auth_LOGIN(self, _: object, args: list[str]) -> AuthResult:
        """The LOGIN mechanism: user name, then password, each in answer to a ``334``."""
        login = await self._initial_or_challenge(args, replies.LOGIN_USERNAME_CHALLENGE)
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self._initial_or_challenge([args[0]], replies.LOGIN_PASSWORD_CHALLENGE)
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self.check_password(login, password)

    async def check_password(self, login: bytes, password: bytes) -> AuthResult:
        """Authenticate in a worker thread; the AuthResult carries the UnlockedAccount."""
        try:
            address = login.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            return _failed()
        origin = accounts.Origin(
            "smtp",
            # aiosmtpd's SMTP, which this mixin is mixed into, provides it
            client=self.session.peer[0] if self.session.peer else "",  # type: ignore[attr-defined]
            request_id=self.correlation_id,
        )
        rt = self.rt
        try:
            account = await asyncio.to_thread(accounts.authenticate, rt.engine, rt.settings, address, secret, origin)
        except TooManyAttempts:
            return _failed(replies.AUTH_TOO_MANY_ATTEMPTS)
        except AccountLocked:
            return _failed(replies.AUTH_TEMPORARY_FAILURE)
        except BadCredentials:
            return _failed()
        except StandingError as error:
            return _failed(next((r for cls, r in STANDING_REPLIES if isinstance(error, cls)), replies.AUTH_FAILED))
        return AuthResult(success=True, auth_data=account, message=replies.AUTH_SUCCESSFUL)
