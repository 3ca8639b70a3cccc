"""Every IMAP reply text of ours in one place, with its RFC 5530 response code.

pymap writes the protocol's own replies (BAD for a malformed command, NO for an unknown
mailbox); these are the ones that say what mss decided. None names software, versions or
internals.
"""

from __future__ import annotations

from typing import Final

from pymap.exceptions import ResponseError
from pymap.parsing.response import ResponseBye, ResponseCode, ResponseNo

GREETING: Final = b"mss IMAP ready"

# NO to LOGIN or AUTHENTICATE (``LoginRefused``).
STARTTLS_FIRST: Final = b"[PRIVACYREQUIRED] STARTTLS first: no login travels in clear"
LOGIN_FAILED: Final = b"[AUTHENTICATIONFAILED] Wrong address or password"
TOO_MANY_ATTEMPTS: Final = b"[UNAVAILABLE] Too many failed logins from this address: try again later"
ACCOUNT_LOCKED: Final = b"[UNAVAILABLE] This account is locked for a while after failed logins"

# NO [BADCHARSET] to a SEARCH whose CHARSET no reader here knows (RFC 3501 6.4.4).
BAD_CHARSET: Final = b"Search with CHARSET UTF-8 or US-ASCII"

# NO [CANNOT]: what the mailbox rules do not allow (``Cannot``).
FOLDERS_FIXED: Final = "The folders are INBOX, Sent and Archive: they cannot be created, renamed or deleted"
APPEND_ONLY_SENT: Final = "Messages arrive through the relay only: send it by SMTP submission"
APPEND_NOT_SENT: Final = "Only a copy of a message already sent through the relay can be added to Sent"
EXPUNGED: Final = "The message was removed meanwhile"

# BYE: the connection ends (``Bye``, or written before the connection closes).
TOO_MANY_SESSIONS: Final = b"[UNAVAILABLE] Too many connections: try again later"
TOO_MANY_FROM_CLIENT: Final = b"[UNAVAILABLE] Too many connections from your address: close some, or try again later"
IDLE_TIMEOUT: Final = b"[UNAVAILABLE] Autologout: idle for too long"
LOGIN_TIMEOUT: Final = b"[UNAVAILABLE] Not logged in in time"
SESSION_EXPIRED: Final = b"[EXPIRED] This login is too old: log in again"
LINE_TOO_LONG: Final = b"[TOOBIG] Command line too long"
LITERAL_TOO_BIG: Final = b"[TOOBIG] Literal larger than the server accepts"
SHUTDOWN: Final = b"[UNAVAILABLE] Server shutting down"


class Cannot(ResponseError):
    """NO [CANNOT]: what the mailbox rules do not allow."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def get_response(self, tag: bytes) -> ResponseNo:
        return ResponseNo(tag, self.message.encode("utf-8", "replace"), ResponseCode.of(b"CANNOT"))


class LoginRefused(ResponseError):
    """NO to LOGIN or AUTHENTICATE, with the reason the client may know."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text)
        self.text = text

    def get_response(self, tag: bytes) -> ResponseNo:
        return ResponseNo(tag, self.text)


class Bye(ResponseError):
    """An untagged BYE that ends the connection (standing lost, timeouts)."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text)
        self.text = text

    def get_response(self, tag: bytes) -> ResponseBye:
        return ResponseBye(self.text)


def standing_text(reason: str) -> bytes:
    """The NO or BYE text for an account that may not log in (disabled, revoked ...)."""
    return b"[AUTHORIZATIONFAILED] " + reason.encode("utf-8", "replace")[:300]
