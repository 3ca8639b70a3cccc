"""Every SMTP reply the relay sends, named, with its RFC 3463 enhanced status code.

The relay's own code sends only these constants. aiosmtpd also sends a few fixed replies of
its own (``250 OK``, ``503 Error: send HELO first`` ...) without enhanced status codes;
``translate`` swaps them for ours on the way out, so that what we advertise with
``ENHANCEDSTATUSCODES`` (RFC 2034) holds for every line.

Templates (``QUEUED``, ``DOCUMENT_REFUSED``) are filled only through the builders below,
which keep a reply on one line: a file name or an error text can never split or forge one.
"""

from __future__ import annotations

import re
from typing import Final

# -- connection --------------------------------------------------------------------------

# RFC 3463 X.3.2 "System not accepting network messages": the cap on sessions is reached.
SERVICE_BUSY: Final = "421 4.3.2 Too many sessions, try again later"
# X.7.0: one client address holds its share of the sessions already (MSS_MAX_SESSIONS_PER_CLIENT,
# MSS_MX_MAX_SESSIONS_PER_CLIENT at the MX port).
CLIENT_BUSY: Final = "421 4.7.0 Too many sessions from your address, try again later"
# RFC 5321 4.5.3.2: a server that times a client out should say so (X.4.2 "Bad connection").
IDLE_TIMEOUT: Final = "421 4.4.2 Idle too long, closing connection"
# A session that has not authenticated within MSS_SMTP_LOGIN_TIMEOUT, whatever it sent.
LOGIN_TIMEOUT: Final = "421 4.7.0 Not authenticated in time, closing connection"
# aiosmtpd's cut-offs (its own replies, then it closes the connection): RFC 5321 3.8 wants a
# 421 before a server closes on its own.
TOO_MANY_UNRECOGNIZED: Final = "421 4.7.0 Too many unrecognized commands, closing connection"
COMMAND_LIMIT: Final = "421 4.7.0 Too many commands of one kind, closing connection"
SHUTTING_DOWN: Final = "421 4.3.2 Service shutting down, try again later"
# Any unexpected failure: temporary, so a well-behaved client retries; never the details.
LOCAL_ERROR: Final = "451 4.3.0 Local error in processing, try again later"
BYE: Final = "221 2.0.0 Bye"
OK: Final = "250 2.0.0 OK"

# -- ESMTP extensions advertised in the EHLO reply (continuation lines) ---------------------

EXTENSION_DSN: Final = "250-DSN"  # RFC 3461
EXTENSION_ENHANCED_STATUS_CODES: Final = "250-ENHANCEDSTATUSCODES"  # RFC 2034
# aiosmtpd closes its EHLO reply with this keyword line; it is not a status and gets no code.
EHLO_LAST: Final = "250 HELP"

# -- command syntax ------------------------------------------------------------------------

BAD_SYNTAX: Final = "500 5.5.2 Syntax error"
COMMAND_NOT_RECOGNIZED: Final = "500 5.5.1 Command not recognized"
COMMAND_TOO_LONG: Final = "500 5.5.2 Command line too long"
# RFC 5321 2.3.8: CR and LF only ever come together, as CRLF, which ends every command line.
BARE_LINE_END: Final = "500 5.5.2 Command lines end with CRLF, and hold no other CR or LF (RFC 5321 section 2.3.8)"
NON_ASCII: Final = "500 5.5.2 Non-ASCII characters are not allowed here"
BAD_SEQUENCE_HELO: Final = "503 5.5.1 Send EHLO first"
NOT_IMPLEMENTED: Final = "502 5.5.1 Command not implemented"
HELO_SYNTAX: Final = "501 5.5.4 Syntax: EHLO hostname"
NO_ARGUMENTS: Final = "501 5.5.4 This command takes no arguments"
CANNOT_VRFY: Final = "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"

# -- STARTTLS (RFC 3207) -------------------------------------------------------------------

READY_FOR_TLS: Final = "220 2.0.0 Ready to start TLS"
STARTTLS_REQUIRED: Final = "530 5.7.0 Must issue a STARTTLS command first"
TLS_ALREADY_ACTIVE: Final = "503 5.5.1 TLS already active"
TLS_REQUIRED_FOR_COMMAND: Final = "554 5.7.0 Command refused due to lack of security"

# -- AUTH (RFC 4954) -----------------------------------------------------------------------

AUTH_SUCCESSFUL: Final = "235 2.7.0 Authentication successful"
AUTH_FAILED: Final = "535 5.7.8 Authentication credentials invalid"
# A locked account is temporary (RFC 4954 "454 4.7.0 Temporary authentication failure"),
# and says nothing more than that: no lock duration, no count of failures.
AUTH_TEMPORARY_FAILURE: Final = "454 4.7.0 Temporary authentication failure, try again later"
# Too many failed logins from the client's address: it must wait (no password was checked).
AUTH_TOO_MANY_ATTEMPTS: Final = "454 4.7.0 Too many failed logins from your address, try again later"
# After a right password: the account may not log in (X.7.8 "authentication credentials
# invalid" with the reason, so the professional learns what to ask their administrator).
AUTH_ACCOUNT_DISABLED: Final = "535 5.7.8 Account disabled: contact your administrator"
AUTH_ENTRY_REVOKED: Final = "535 5.7.8 Directory entry revoked: this address may no longer send or receive"
AUTH_CERTIFICATE_REVOKED: Final = "535 5.7.8 Signing certificate revoked: a new key is needed (rekey)"
AUTH_CERTIFICATE_EXPIRED: Final = "535 5.7.8 Signing certificate expired: it must be renewed"
AUTH_NOT_SERVED: Final = "535 5.7.8 Address not in a domain served here"
AUTH_REQUIRED: Final = "530 5.7.0 Authentication required"
AUTH_ENCRYPTION_REQUIRED: Final = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_ALREADY: Final = "503 5.5.1 Already authenticated"
AUTH_SYNTAX: Final = "501 5.5.4 Syntax: AUTH mechanism [initial-response]"
AUTH_MECHANISM_UNKNOWN: Final = "504 5.5.4 Unrecognized authentication type"
AUTH_ABORTED: Final = "501 5.7.0 Authentication aborted"
AUTH_BAD_BASE64: Final = "501 5.5.2 Cannot decode base64"
AUTH_BAD_RESPONSE: Final = "501 5.5.2 Cannot split authentication response"
# The texts of the LOGIN mechanism's two 334 challenges (sent base64-encoded).
LOGIN_USERNAME_CHALLENGE: Final = "Username:"
LOGIN_PASSWORD_CHALLENGE: Final = "Password:"

# -- MAIL FROM -----------------------------------------------------------------------------

SENDER_OK: Final = "250 2.1.0 Sender OK"
MAIL_SYNTAX: Final = "501 5.5.4 Syntax: MAIL FROM:<address> [parameters]"
SENDER_SYNTAX: Final = "501 5.1.7 Bad sender address syntax"
NESTED_MAIL: Final = "503 5.5.1 Sender already given"
# X.7.1 "Delivery not authorized": the envelope sender must be the authenticated account.
SENDER_NOT_AUTHENTICATED_ACCOUNT: Final = "553 5.7.1 Sender address is not the authenticated account"
# An authenticated session whose account stopped standing since AUTH (X.7.1 "Delivery not
# authorized"): permanent for this message; the client must log in again, if it still can.
SENDER_DISABLED: Final = "550 5.7.1 Account disabled since login: message refused"
SENDER_REVOKED: Final = "550 5.7.1 Directory entry revoked since login: message refused"
SENDER_CERTIFICATE_REVOKED: Final = "550 5.7.1 Signing certificate revoked or replaced since login: message refused"
# RFC 4954 4: what a command answers when the server wants an authentication first.
SENDER_PASSWORD_CHANGED: Final = "530 5.7.0 Password changed since login: log in again"
SENDER_CERTIFICATE_EXPIRED: Final = "550 5.7.1 Signing certificate expired: message refused"
SENDER_NOT_SERVED: Final = "550 5.7.1 Sender address not in a domain served here"
# X.3.4 "Message too big for system" (RFC 1870 SIZE, and the DATA that overruns it).
MESSAGE_TOO_LARGE: Final = "552 5.3.4 Message size exceeds fixed maximum message size"

# -- parameters (RFC 1869, RFC 1870, RFC 3461) --------------------------------------------

PARAMETER_SYNTAX: Final = "501 5.5.4 Invalid parameter syntax"
PARAMETER_NOT_RECOGNIZED: Final = "555 5.5.4 Parameter not recognized or not implemented"

# -- RCPT TO -------------------------------------------------------------------------------

RECIPIENT_OK: Final = "250 2.1.5 Recipient OK"
RCPT_SYNTAX: Final = "501 5.5.4 Syntax: RCPT TO:<address> [parameters]"
RECIPIENT_SYNTAX: Final = "501 5.1.3 Bad recipient address syntax"
NEED_MAIL: Final = "503 5.5.1 Need MAIL command"
# Never an open relay: a domain we do not serve is refused (X.7.1 "Delivery not authorized").
RELAY_DENIED: Final = "550 5.7.1 Relay access denied: domain not served here"
# X.1.1 "Bad destination mailbox address": not an entry of the directory.
UNKNOWN_RECIPIENT: Final = "550 5.1.1 Recipient address is not in the directory"
# X.7.1: the entry exists but may no longer receive.
REVOKED_RECIPIENT: Final = "550 5.7.1 Recipient address is revoked in the directory"
# X.7.5 "Cryptographic failure": the entry has no valid S/MIME certificate, so nothing can
# be encrypted to it (the key "was not available").
RECIPIENT_NO_CERTIFICATE: Final = "550 5.7.5 Recipient has no valid encryption certificate"
# X.5.3 "Too many recipients"; 452 so the client sends the rest in another transaction
# (RFC 5321 4.5.3.1.10).
TOO_MANY_RECIPIENTS: Final = "452 4.5.3 Too many recipients"

# -- DATA ----------------------------------------------------------------------------------

START_MAIL_INPUT: Final = "354 End data with <CR><LF>.<CR><LF>"
NEED_RCPT: Final = "503 5.5.1 Need RCPT command"
# RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF (X.5.2 "Syntax error").
LINE_TOO_LONG: Final = "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.6)"
# The header section is capped like the message (X.3.4 "Message too big for system").
HEADER_TOO_LARGE: Final = "552 5.3.4 Message header section too large"
QUEUED: Final = "250 2.0.0 Ok: queued as {queue_id}"
# X.7.1: the From: header must be the authenticated account (no spoofing).
FROM_HEADER_MISMATCH: Final = "550 5.7.1 From: header is not the authenticated account"
SENDER_HEADER_MISMATCH: Final = "550 5.7.1 Sender: header is not the authenticated account"
# X.6.0 "Other or undefined media error": not parseable MIME, or RFC 5322 fields missing.
MALFORMED_MESSAGE: Final = "554 5.6.0 Malformed message"
# Permanent defects of the message itself, each named: a retry would send the same bytes.
BARE_CR_IN_MESSAGE: Final = "554 5.6.0 Message holds a bare CR outside a CRLF line end (RFC 5322 section 2.3)"
MIME_TOO_COMPLEX: Final = "554 5.6.0 MIME structure too deep or too large"
REPEATED_HEADER_FIELD: Final = "554 5.6.0 Header field allowed once appears more than once (RFC 5322 section 3.6)"
MALFORMED_ORIGINATOR: Final = (
    "554 5.6.0 From: and Sender: must each be one well-formed mailbox (RFC 5322 section 3.6.2)"
)
# X.7.5 "Cryptographic failure": a client-encrypted message whose envelope holds no key for
# some recipient; they could never decrypt it. X.7.4 ("Security features not supported")
# would wrongly say that S/MIME itself is not supported here.
NOT_ENCRYPTED_FOR_RECIPIENTS: Final = "554 5.7.5 Message is not encrypted for every recipient"
# X.7.4 "Security features not supported": the client's envelope names every recipient, but
# through an algorithm or a recipient kind (key agreement) not done here, so it could never
# be read. Sent with the detail that names the algorithm.
ENVELOPE_NOT_SUPPORTED: Final = "554 5.7.4 Encryption not supported here"
# X.7.0: any other refusal by the trust space's rules.
POLICY_REFUSED: Final = "554 5.7.0 Message refused by policy"
DOCUMENT_REFUSED: Final = "{code} {status} {text}"
DOCUMENT_REFUSED_DEFAULT: Final = "554 5.6.0 Document refused"

# -- builders ------------------------------------------------------------------------------

_ENHANCED = re.compile(r"\A([245])\.(\d{1,3})\.(\d{1,3})\Z")
_UNSAFE = re.compile(r"[^\x20-\x7e]")
MAX_TEXT = 200


def one_line(text: str) -> str:
    """``text`` as printable ASCII on one line, at most ``MAX_TEXT`` characters."""
    cleaned = _UNSAFE.sub("?", text).strip()
    return cleaned if len(cleaned) <= MAX_TEXT else cleaned[: MAX_TEXT - 3] + "..."


def with_detail(reply: str, detail: str) -> str:
    """``reply`` followed by a short explanation (an error's message, safe for its sender)."""
    cleaned = one_line(detail)
    return f"{reply}: {cleaned}" if cleaned else reply


def queued(queue_id: str) -> str:
    """The ``250`` reply for a message durably stored under ``queue_id``."""
    return QUEUED.format(queue_id=one_line(queue_id))


def document_refused(code: object, status: object, text: object) -> str:
    """A refusal carrying a document check's own reply code, status and text.

    Falls back to ``DOCUMENT_REFUSED_DEFAULT`` when the code is not a permanent or temporary
    failure, or when the enhanced status is malformed or of another class than the code.
    """
    if not isinstance(code, int) or not 400 <= code <= 599 or not isinstance(status, str):
        return DOCUMENT_REFUSED_DEFAULT
    match = _ENHANCED.match(status)
    if match is None or match.group(1) != str(code)[0]:
        return DOCUMENT_REFUSED_DEFAULT
    cleaned = one_line(text) if isinstance(text, str) else ""
    if not cleaned:
        return DOCUMENT_REFUSED_DEFAULT
    return DOCUMENT_REFUSED.format(code=code, status=status, text=cleaned)


# -- aiosmtpd's own fixed replies, as we send them -------------------------------------------

_LIBRARY: Final[dict[str, str]] = {
    "250 OK": OK,
    "221 Bye": BYE,
    "220 Ready to start TLS": READY_FOR_TLS,
    "500 Error: bad syntax": BAD_SYNTAX,
    "500 Command line too long": COMMAND_TOO_LONG,
    "500 Error: strict ASCII mode": NON_ASCII,
    "530 Must issue a STARTTLS command first": STARTTLS_REQUIRED,
    "554 Command refused due to lack of security": TLS_REQUIRED_FOR_COMMAND,
    "503 Error: send HELO first": BAD_SEQUENCE_HELO,
    "503 Error: send EHLO first": BAD_SEQUENCE_HELO,
    "501 Syntax: HELO hostname": HELO_SYNTAX,
    "501 Syntax: EHLO hostname": HELO_SYNTAX,
    "501 Syntax: QUIT": NO_ARGUMENTS,
    "501 Syntax: RSET": NO_ARGUMENTS,
    "501 Syntax: STARTTLS": NO_ARGUMENTS,
    "501 Syntax: VRFY <address>": RCPT_SYNTAX,
    "252 Cannot VRFY user, but will accept message and attempt delivery": CANNOT_VRFY,
    "502 EXPN not implemented": NOT_IMPLEMENTED,
    "500 Error: command 'AUTH' not recognized": COMMAND_NOT_RECOGNIZED,
    "503 Already authenticated": AUTH_ALREADY,
    "501 Not enough value": AUTH_SYNTAX,
    "501 Too many values": AUTH_SYNTAX,
    "538 5.7.11 Encryption required for requested authentication mechanism": AUTH_ENCRYPTION_REQUIRED,
    "504 5.5.4 Unrecognized authentication type": AUTH_MECHANISM_UNKNOWN,
    "501 5.7.0 Auth aborted": AUTH_ABORTED,
    "501 5.5.2 Can't decode base64": AUTH_BAD_BASE64,
    "501 5.5.2 Can't split auth value": AUTH_BAD_RESPONSE,
    "530 5.7.0 Authentication required": AUTH_REQUIRED,
    "502 5.5.1 Too many unrecognized commands, goodbye.": TOO_MANY_UNRECOGNIZED,
}
# Library replies that carry the client's own words after a fixed beginning.
_LIBRARY_PREFIXES: Final[tuple[tuple[str, str], ...]] = (
    ("500 Error: command ", COMMAND_NOT_RECOGNIZED),
    ("502 Could not VRFY ", RECIPIENT_SYNTAX),
)
# aiosmtpd's "421 4.7.0 {command} sent too many times" (the command as the client spelled it).
_LIBRARY_CALL_LIMIT = re.compile(r"\A421 4\.7\.0 \S* sent too many times\Z")
_HAS_ENHANCED = re.compile(r"\A\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |\Z)")
_CLASS_DEFAULT: Final[dict[str, str]] = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}


def translate(reply: str) -> str:
    """The reply to send for ``reply``: ours for a known library reply, else ``reply``.

    A final reply that still has no enhanced status code gets the class's undefined one
    (RFC 3463 X.0.0); the greeting, EHLO keyword lines, ``334`` challenges and ``354`` are
    left alone.
    """
    if reply == EHLO_LAST:
        return reply
    known = _LIBRARY.get(reply)
    if known is not None:
        return known
    for prefix, ours in _LIBRARY_PREFIXES:
        if reply.startswith(prefix):
            return ours
    if _LIBRARY_CALL_LIMIT.match(reply):
        return COMMAND_LIMIT
    code = reply[:3]
    final = len(reply) > 4 and reply[3] == " " and code[0] in _CLASS_DEFAULT and code != "220"
    if final and not _HAS_ENHANCED.match(reply):
        return f"{code} {_CLASS_DEFAULT[code[0]]} {reply[4:]}"
    return reply


# -- the MX door: other operators' servers (mss.relay.mx) ---------------------------------------

# No AUTH on the MX port: a peer authenticates with its TLS client certificate.
AUTH_NOT_OFFERED: Final = "502 5.5.1 AUTH is not offered on this port"
# X.7.0 "Other or undefined security status": mutual TLS is the authentication here.
CLIENT_CERTIFICATE_REQUIRED: Final = "530 5.7.0 A client certificate from the health PKI is required on this port"
# X.7.1 "Delivery not authorized": the trust list names the domains mail may come from.
SENDER_NOT_TRUSTED: Final = "550 5.7.1 Sender domain is not on the trust list"
SENDER_SERVED_HERE: Final = "550 5.7.1 Sender domain is served here: its mail cannot come from another operator"
SENDER_NOT_LISTED: Final = "550 5.7.1 Sender is not an active entry of the directory"
# X.1.1: an active entry of a served domain, but nobody reads mail for it here.
NO_MAILBOX: Final = "550 5.1.1 Recipient has no mailbox here"
FROM_NOT_ENVELOPE: Final = "550 5.7.1 From: header is not the envelope sender"
ALREADY_RECEIVED: Final = "250 2.0.0 Ok: already received as {queue_id}"


def already_received(queue_id: str) -> str:
    """The ``250`` reply for a repeated delivery of a message stored under ``queue_id``."""
    return ALREADY_RECEIVED.format(queue_id=one_line(queue_id))
