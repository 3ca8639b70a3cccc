"""The exception tree: one root, one subtree per concern.

Library errors (cryptography, SQLAlchemy, lxml, zipfile ...) are translated at the boundary
with ``raise X(...) from exc``; callers catch these classes, never the libraries'.
Messages are safe to show to the person who caused them: they never hold secrets or content.
"""

from __future__ import annotations


class MssError(Exception):
    """Root of every error mss raises on purpose."""

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(MssError):
    """A setting is missing or malformed."""


class StorageError(MssError):
    """The database or the data directory refused an operation."""


# -- directory ---------------------------------------------------------------------------


class DirectoryError(MssError):
    """A directory operation failed."""


class UnknownAddress(DirectoryError):
    """The address is not in the directory."""

    def __init__(self, address: str) -> None:
        super().__init__(f"{address} is not in the directory", address=address)
        self.address = address


class RevokedAddress(DirectoryError):
    """The directory entry exists but is revoked or inactive."""

    def __init__(self, address: str, reason: str | None = None) -> None:
        text = f"{address} is revoked in the directory"
        super().__init__(f"{text}: {reason}" if reason else text, address=address)
        self.address = address
        self.reason = reason


class ImportFileError(DirectoryError):
    """The extract cannot be read at all (missing file, wrong header, not UTF-8)."""


# -- accounts and authentication ---------------------------------------------------------


class AccountError(MssError):
    """An account operation failed."""


class AccountExists(AccountError):
    """An account already exists for this address."""


class NoSuchAccount(AccountError):
    """No account for this address (only raised where telling so leaks nothing)."""


class AuthError(MssError):
    """Authentication failed."""


class BadCredentials(AuthError):
    """Wrong address or password (deliberately not telling which)."""

    def __init__(self) -> None:
        super().__init__("invalid address or password")


class AccountLocked(AuthError):
    """Too many failures: the account is locked for a while."""

    def __init__(self, until: object) -> None:
        super().__init__("account temporarily locked after repeated failures", until=until)
        self.until = until


class BadTotp(AuthError):
    """The TOTP code is wrong, expired or already used."""


class EnrolmentRequired(AuthError):
    """The account has not enrolled an authenticator yet (done once, in the web inbox)."""


class TooManyAttempts(AuthError):
    """Too many failed logins from this client address: it must wait before trying again."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"too many failed logins from your address; try again in {retry_after} s", retry_after=retry_after
        )
        self.retry_after = retry_after


class StandingError(AuthError):
    """The account may no longer log in or send: its directory entry, domain or signing
    certificate does not allow it. ``code`` names the cause for doors and the audit trail."""

    code = "not-in-standing"


class AccountDisabled(StandingError):
    """The account was disabled by an administrator."""

    code = "disabled"

    def __init__(self) -> None:
        super().__init__("account disabled")


class EntryRevoked(StandingError):
    """The account's directory entry is revoked or inactive."""

    code = "entry-revoked"


class AddressNotServed(StandingError):
    """The address is not in a domain this operator serves: no account, no certificate here."""

    code = "domain-not-served"


class CredentialsChanged(StandingError):
    """The account's password changed (a change, a recovery) since this session logged in
    with the one before: a session opened with a password its owner replaced ends."""

    code = "password-changed"


class CertificateRevoked(StandingError):
    """The account's signing certificate is revoked (or was replaced by a rekey)."""

    code = "certificate-revoked"


class CertificateExpired(StandingError):
    """The account's signing certificate has expired: it must be renewed."""

    code = "certificate-expired"


class PasswordPolicyError(AccountError):
    """The new password does not meet the policy."""


# -- cryptography ------------------------------------------------------------------------


class CryptoError(MssError):
    """A cryptographic operation failed."""


class KeyUnwrapError(CryptoError):
    """A wrapped private key could not be opened (wrong password or key, or tampered)."""


class PkiError(CryptoError):
    """Certificate issuance, revocation or loading failed."""


class SignatureError(CryptoError):
    """A CMS signature is missing, malformed or does not verify."""


class DecryptionError(CryptoError):
    """A CMS envelope could not be opened with the given key."""


class UnsupportedCms(CryptoError):
    """A CMS structure uses an algorithm or a recipient kind that is not supported here."""


# -- audit -------------------------------------------------------------------------------


class AuditError(MssError):
    """The audit trail refused an operation or is inconsistent."""


# -- documents and policy (the relay and the web translate these to replies) -------------


class PolicyError(MssError):
    """A message breaks a rule of the trust space (sender, recipient, size ...)."""


class DocumentError(MssError):
    """An attached document is of a refused type or fails its checks."""


class SenderMismatch(PolicyError):
    """The envelope sender is not the authenticated account."""


class FromHeaderMismatch(PolicyError):
    """The From: header is not the authenticated account (spoofing)."""


class SenderHeaderMismatch(FromHeaderMismatch):
    """A Sender: header names someone other than the authenticated account: nobody sends
    on another's behalf here, and a mail client shows that field as who sent it."""


class DomainNotServed(PolicyError):
    """The address's domain is not one this operator serves (no open relay, no account or
    certificate for another operator's address)."""


class TooManyRecipients(PolicyError):
    """More recipients than the configured cap."""


class MessageTooLarge(PolicyError):
    """The message exceeds the configured size."""


class NotEncryptedForRecipients(PolicyError):
    """A client-encrypted S/MIME message cannot be opened by every recipient."""


class UnopenableEnvelope(PolicyError):
    """A client-encrypted message uses an algorithm or a recipient kind its recipients
    could not open here."""


class MessageError(MssError):
    """A submitted message itself (not one of its documents) cannot be accepted."""


class MalformedMessage(MessageError):
    """The message is not parseable MIME, or lacks what RFC 5322 requires."""


class BareCarriageReturn(MalformedMessage):
    """A CR that does not start a CRLF line end (RFC 5322 2.3): parsers would split lines differently."""


class MimeTooComplex(MalformedMessage):
    """The MIME parts nest too deep or are too many to be checked."""


class RepeatedHeaderField(MalformedMessage):
    """A header field that RFC 5322 3.6 allows once appears more often: readers would disagree."""


class MalformedOriginator(MalformedMessage):
    """``From:`` or ``Sender:`` is not exactly one well-formed mailbox (RFC 5322 3.6.2)."""


class RecipientHasNoCertificate(PolicyError):
    """The recipient publishes no valid certificate, so nothing can be encrypted to them."""


class DsnParameterError(PolicyError):
    """An RFC 3461 parameter (NOTIFY, ORCPT, RET, ENVID) is malformed: answer 501 5.5.4."""

    def __init__(self, keyword: str, message: str) -> None:
        super().__init__(f"{keyword}: {message}", keyword=keyword)
        self.keyword = keyword


class ParameterRefused(PolicyError):
    """A MAIL or RCPT parameter the relay refuses; ``reply`` is what the client is told."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


# -- mailbox -----------------------------------------------------------------------------


class MailboxError(MssError):
    """A mailbox request cannot be served."""


class MessageNotFound(MailboxError):
    """No stored message has this queue id or Message-ID (or the reader may not see it)."""


class FilterError(MailboxError):
    """A folder filter has a value that cannot be searched for (bad date, INS, type)."""


class ReceiptNotPending(MailboxError):
    """No read receipt waits for the reader's answer on this message (none was asked, or it
    was already sent or declined); ``state`` says which."""


class DraftNotFound(MailboxError):
    """No draft with this id in the writer's drafts."""


class DraftTooLarge(MailboxError):
    """A draft cannot be kept: too large, or too many drafts already."""


# -- receipts ----------------------------------------------------------------------------


class ReceiptError(MssError):
    """A receipt cannot be built from the values given (malformed address, status, id ...)."""


# -- other operators of the trust space ----------------------------------------------------


class TrustListError(MssError):
    """The trust list (the MSSanté "liste blanche") or a domain given for it is unusable."""


class SenderNotTrusted(PolicyError):
    """Mail from another operator whose sender domain is not on the trust list."""


class PeerNotAuthenticated(PolicyError):
    """Another operator's server presented no client certificate (mutual TLS is required)."""


class NoMailboxHere(PolicyError):
    """The recipient is an active directory entry of a served domain but has no account here."""


class QueueError(MssError):
    """An outbound queue operation cannot be done (unknown entry, already finished, in flight)."""


# -- operator reports --------------------------------------------------------------------


class ReportError(MssError):
    """A report cannot be made as asked (a malformed month, an unknown format)."""
