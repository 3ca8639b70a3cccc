"""Service outcomes in the reader's language: errors, signature statuses, journey steps.

Services speak English (their messages also go to SMTP replies and logs). Here each error
class gets a translated sentence; the service's own sentence, which names the precise
problem, follows as the detail when the page is not in English.
"""

from __future__ import annotations

from mss.documents.detect import (
    DocumentCheckError,
    DocumentRefused,
    DocumentTooLarge,
    DocumentTypeMismatch,
    UnsafeDocument,
)
from mss.errors import (
    AccountDisabled,
    AccountLocked,
    AddressNotServed,
    AuthError,
    BadCredentials,
    CertificateExpired,
    CertificateRevoked,
    DomainNotServed,
    EntryRevoked,
    FromHeaderMismatch,
    MessageTooLarge,
    MssError,
    NotEncryptedForRecipients,
    RecipientHasNoCertificate,
    RevokedAddress,
    TooManyAttempts,
    TooManyRecipients,
    UnknownAddress,
)
from mss.mailbox import Problem
from mss.web.i18n import Language


def _(message: str) -> str:
    """Marks a msgid for extraction; translated where it is shown."""
    return message


SIGNATURE_STATUSES = {
    "valid": _("valid signature"),
    "invalid": _("invalid signature: the message was altered or the signature is broken"),
    "untrusted": _("untrusted signature"),
    "revoked": _("signature by a revoked certificate"),
    "revoked-since": _("valid when signed; the signer's certificate has been revoked since"),
    "expired": _("signature by an expired certificate"),
    "unsigned": _("not signed"),
    "unverifiable": _("signature not checked"),
}
STEPS = {
    "pending": _("pending"),
    "queued": _("waiting to be sent to the recipient's operator"),
    "delayed": _("delayed"),
    "delivered": _("delivered"),
    "relayed": _("relayed"),
    "processed": _("in the mailbox"),
    "displayed": _("read"),
    "failed": _("failed"),
}
# Why a login (or a session) is refused: HTTP status and the sentence shown, by class.
LOGIN_REFUSALS: tuple[tuple[type[AuthError], int, str], ...] = (
    (BadCredentials, 401, _("Invalid address or password.")),
    (TooManyAttempts, 429, _("Too many failed logins from your network. Try again in %(seconds)s seconds.")),
    (AccountLocked, 423, _("This account is locked for a while after repeated failures. Try again later.")),
    (AccountDisabled, 403, _("This account is disabled. Contact your administrator.")),
    (
        EntryRevoked,
        403,
        _("Your directory entry is revoked: this address can no longer send or receive. Contact your administrator."),
    ),
    (
        CertificateRevoked,
        403,
        _("Your signing certificate is revoked. Your administrator must give you a new key (mss account rekey)."),
    ),
    (CertificateExpired, 403, _("Your signing certificate has expired. Your administrator must renew it.")),
    (AddressNotServed, 403, _("This address is not one of the domains served here.")),
)


def login_refusal(lang: Language, error: AuthError) -> tuple[int, str]:
    """The HTTP status and the sentence in ``lang`` for a refused login."""
    for cls, status, sentence in LOGIN_REFUSALS:
        if isinstance(error, cls):
            return status, lang.gettext(sentence, seconds=getattr(error, "retry_after", 0))
    return 403, lang.gettext("This account cannot log in now. Contact your administrator.")


_DOCUMENT_SENTENCES: tuple[tuple[type[DocumentCheckError], str], ...] = (
    (DocumentTooLarge, _("%(file)s is too large.")),
    (DocumentTypeMismatch, _("%(file)s: its content does not match its type or its name.")),
    (UnsafeDocument, _("%(file)s holds something refused for safety.")),
    (DocumentRefused, _("%(file)s: this type of attachment is not allowed (PDF, CDA or IHE_XDM.ZIP only).")),
    (DocumentCheckError, _("%(file)s is damaged or is not what its name says.")),
)


def signature_text(lang: Language, status: str) -> str:
    """A signature status in words."""
    return lang.gettext(SIGNATURE_STATUSES.get(status, _("signature not checked")))


def step_text(lang: Language, status: str) -> str:
    """A delivery or disposition step in words."""
    return lang.gettext(STEPS.get(status, status))


def _with_detail(lang: Language, sentence: str, detail: str) -> str:
    if lang.code == "en" or not detail:
        return sentence
    label = lang.gettext("detail:")
    return f"{sentence} ({label} {detail})"


def error_text(lang: Language, error: MssError | str) -> str:
    """A service error (or its message) as a sentence in ``lang``."""
    if isinstance(error, str):
        return lang.gettext(error)
    if isinstance(error, DocumentCheckError):
        for cls, sentence in _DOCUMENT_SENTENCES:
            if isinstance(error, cls):
                return _with_detail(lang, lang.gettext(sentence, file=error.filename), error.problem)
    if isinstance(error, UnknownAddress):
        return lang.gettext("%(address)s is not in the directory.", address=error.address)
    if isinstance(error, RevokedAddress):
        return lang.gettext("%(address)s is no longer active in the directory.", address=error.address)
    known = (
        (RecipientHasNoCertificate, _("A recipient has no valid certificate: nothing can be encrypted to them.")),
        (DomainNotServed, _("A recipient is outside the trust space served here.")),
        (TooManyRecipients, _("There are too many recipients.")),
        (MessageTooLarge, _("The message is too large.")),
        (FromHeaderMismatch, _("The sender must be your own address.")),
        (NotEncryptedForRecipients, _("The message is not encrypted for every recipient.")),
    )
    for cls, sentence in known:
        if isinstance(error, cls):
            return _with_detail(lang, lang.gettext(sentence), error.message)
    return _with_detail(lang, lang.gettext("The message could not be sent."), error.message)


def problem_text(lang: Language, problem: Problem) -> str:
    """A compose form problem in ``lang``."""
    if problem.error is not None:
        return error_text(lang, problem.error)
    return lang.gettext(problem.msgid, **problem.values)
