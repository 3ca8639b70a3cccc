"""Service outcomes in the reader's language: errors, signature statuses, journey steps.

Services speak English (their messages also go to SMTP replies and logs). Here each error
class gets a translated sentence; a document refusal's precise problem and a signature's
reason are matched against the sentences the services write and given in the reader's
language with their details (file name, limit, path) as parameters. A sentence this module
does not know is never shown untranslated: the class's sentence stands alone.
"""

from __future__ import annotations

import re

from mss.documents.base import (
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
    "other-signer": _("valid signature, but not by the sender"),
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


# What mss.documents writes after the file name, and the same problem for people. The
# groups are the details, passed as parameters. Order matters: the first match wins.
_PROBLEMS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern + r"\Z", re.DOTALL), msgid)
    for pattern, msgid in (
        (r"is larger than the (?P<limit>[\d.]+) MB limit for attachments",
         _("%(file)s is larger than the %(limit)s MB limit for attachments.")),
        (r"is protected by a password: .*",
         _("%(file)s is protected by a password: send it unprotected, the message is encrypted anyway.")),
        (r"(?:carries an embedded PDF that )?runs JavaScript, which is not allowed",
         _("%(file)s runs JavaScript, which is not allowed.")),
        (r"(?:carries an embedded PDF that )?launches a program, which is not allowed",
         _("%(file)s launches a program, which is not allowed.")),
        (r"(?:carries an embedded PDF that )?sends form data to a remote address, which is not allowed",
         _("%(file)s sends form data to a remote address, which is not allowed.")),
        (r"(?:carries an embedded PDF that )?imports data from another file, which is not allowed",
         _("%(file)s imports data from another file, which is not allowed.")),
        (r"(?:carries an embedded PDF that )?carries an embedded program \((?P<name>.*)\), which is not allowed",
         _("%(file)s carries an embedded program (%(name)s), which is not allowed.")),
        (r"(?:carries an embedded PDF that )?is not a valid PDF: (?P<why>.*)", _("%(file)s is not a valid PDF.")),
        (r"carries an embedded file declared as a PDF that is not a PDF",
         _("%(file)s carries a file declared as a PDF that is not a PDF.")),
        (r"is at once .*: a file that is two things is not allowed",
         _("%(file)s is two kinds of file at once, which is not allowed.")),
        (r"is an? (?:executable|script)\b.*", _("%(file)s is a program, which is not allowed.")),
        (r"is an Office document: .*", _("%(file)s is an Office document: send it as a PDF.")),
        (r"is an image: .*", _("%(file)s is an image: put it in a PDF or a CDA document.")),
        (r"is an HTML document: .*", _("%(file)s is an HTML document, which is not allowed.")),
        (r"is an? (?:archive|application package).*: this type of attachment is not allowed",
         _("%(file)s is an archive other than an IHE_XDM package, which is not allowed.")),
        (r"is (?:a |an )?(?:CDA R2 document|PDF|ZIP archive|plain text) but is declared as (?P<declared>.*)",
         _("%(file)s is declared as %(declared)s, which its content contradicts.")),
        (r"is (?:a |an )?(?:CDA R2 document|PDF|ZIP archive|plain text) but its name ends in (?P<ext>.*)",
         _("%(file)s has a name ending in %(ext)s, which its content contradicts.")),
        (r"contains a DOCTYPE declaration, .*", _("%(file)s contains a DOCTYPE declaration, which is not allowed.")),
        (r"is not well-formed XML(?: \(line (?P<line>\d+)\))?", _("%(file)s is not well-formed XML.")),
        (r"is not a CDA R2 document: ClinicalDocument is in (?P<namespace>.*), not .*",
         _("%(file)s is not a CDA R2 document: its ClinicalDocument element is in %(namespace)s.")),
        (r"is not a CDA R2 document: .*", _("%(file)s is not a CDA R2 document.")),
        (r"is not a valid CDA R2 document: it names no patient.*",
         _("%(file)s is not a valid CDA R2 document: it names no patient.")),
        (r"is not a valid CDA R2 document: .*", _("%(file)s is not a valid CDA R2 document.")),
        (r"carries (?P<what>.*) inside the document, which is not allowed",
         _("%(file)s carries a program inside the document, which is not allowed.")),
        (r"is a ZIP archive but not an IHE_XDM package: .*",
         _("%(file)s is a ZIP archive but not an IHE_XDM package.")),
        (r"is not a valid IHE_XDM package: no IHE_XDM/SUBSETnn/METADATA.XML",
         _("%(file)s is not a valid IHE_XDM package: it has no IHE_XDM/SUBSETnn/METADATA.XML.")),
        (r"holds a program \((?P<name>.*)\), which is not allowed",
         _("%(file)s holds a program (%(name)s), which is not allowed.")),
        (r"holds (?:an entry|a symbolic link|a special file|two entries).*",
         _("%(file)s holds an entry whose name or type is unsafe.")),
        (r"(?:holds an entry compressed|is compressed) more than (?P<ratio>\d+) times.*",
         _("%(file)s is compressed more than %(ratio)s times, like an archive bomb.")),
        (r"expands to more than (?P<limit>[\d.]+) MB", _("%(file)s expands to more than %(limit)s MB.")),
        (r"holds more than (?P<count>\d+) entries", _("%(file)s holds more than %(count)s files.")),
        (r"(?:nests elements deeper|holds more than|has an element with more|is too large or too deeply).*",
         _("%(file)s is too large or too complex to be checked.")),
        (r"takes longer than (?P<seconds>[\d.]+) seconds to check, which is not allowed",
         _("%(file)s takes longer than %(seconds)s seconds to check, which is not allowed.")),
        (r"is empty", _("%(file)s is empty.")),
    )
)  # fmt: skip
# What mss.crypto.verify and mss.mailbox say about a signature, for people.
SIGNATURE_REASONS = {
    reason: reason
    for reason in (
        _("signature valid, signer's certificate trusted and not revoked"),
        _("the signed content was altered after signing"),
        _("the signature does not match the signer's certificate"),
        _("the signer's CA certificate is revoked"),
        _("the signer's certificate is revoked"),
        _("the signer's certificate does not chain to a trusted CA"),
        _("the signer's certificate is not valid for e-mail signatures"),
        _("the revocation list is out of date"),
        _("the signature uses an algorithm that is no longer accepted"),
        _("the signer's certificate has expired"),
        _("the signer's certificate is not yet valid"),
        _("no revocation list was available to check the signer's certificate"),
        _("the signer's certificate failed path validation (revocation information missing or chain invalid)"),
        _("detached signatures (multipart/signed) are not checked"),
        _("the message holds a nested envelope"),
        _("the sender's software did not sign this message"),
        _("the stored message is not signed as it should be"),
        _("the message was signed by someone other than its sender"),
    )
}


def document_problem(lang: Language, error: DocumentCheckError) -> str | None:
    """The precise problem of a document refusal as a sentence in ``lang``, its details as
    parameters; None when the problem is not one this module knows."""
    for pattern, msgid in _PROBLEMS:
        found = pattern.match(error.problem)
        if found:
            values = {name: value or "" for name, value in found.groupdict().items()}
            return lang.gettext(msgid, file=error.filename, **values)
    return None


def signature_reason(lang: Language, reason: str) -> str:
    """Why a signature has its status, in ``lang`` (a reason this module does not know is
    replaced by the status's own sentence, never shown in English)."""
    if reason in SIGNATURE_REASONS:
        return lang.gettext(reason)
    if reason.startswith("the signature's attributes are inconsistent"):
        return lang.gettext("the signature's signed attributes are inconsistent")
    return lang.gettext("the signature could not be checked")


def signature_text(lang: Language, status: str) -> str:
    """A signature status in words."""
    return lang.gettext(SIGNATURE_STATUSES.get(status, _("signature not checked")))


def step_text(lang: Language, status: str) -> str:
    """A delivery or disposition step in words."""
    return lang.gettext(STEPS.get(status, status))


def error_text(lang: Language, error: MssError | str) -> str:
    """A service error (or its message) as a sentence in ``lang``."""
    if isinstance(error, str):
        return lang.gettext(error)
    if isinstance(error, DocumentCheckError):
        precise = document_problem(lang, error)
        if precise is not None:
            return precise
        for cls, sentence in _DOCUMENT_SENTENCES:
            if isinstance(error, cls):
                return lang.gettext(sentence, file=error.filename)
    if isinstance(error, UnknownAddress):
        return lang.gettext("%(address)s is not in the directory.", address=error.address)
    if isinstance(error, RevokedAddress):
        return lang.gettext("%(address)s is no longer active in the directory.", address=error.address)
    known: tuple[tuple[type[MssError], str], ...] = (
        (RecipientHasNoCertificate, _("A recipient has no valid certificate: nothing can be encrypted to them.")),
        (DomainNotServed, _("A recipient is outside the trust space served here.")),
        (TooManyRecipients, _("There are too many recipients.")),
        (MessageTooLarge, _("The message is too large.")),
        (FromHeaderMismatch, _("The sender must be your own address.")),
        (NotEncryptedForRecipients, _("The message is not encrypted for every recipient.")),
    )
    for error_class, sentence in known:
        if isinstance(error, error_class):
            return lang.gettext(sentence)
    return lang.gettext("The message could not be sent.")


def problem_text(lang: Language, problem: Problem) -> str:
    """A compose form problem in ``lang``."""
    if problem.error is not None:
        return error_text(lang, problem.error)
    return lang.gettext(problem.msgid, **problem.values)
