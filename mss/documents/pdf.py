"""PDF checks: is it really a PDF, complete, parseable, and free of active content.

A PDF is accepted when it has a ``%PDF-`` header in its first 1024 bytes, an ``%%EOF`` marker
in its last 1024 bytes (so a truncated upload is caught before parsing), and pypdf can read
its trailer, catalog and every page without fetching anything. pypdf's errors are translated
to ``InvalidPdf``.

Encryption: a PDF that opens with the empty user password (permissions-only protection, as
many hospital systems produce) is accepted, since every recipient can read it and we can
check it. A PDF that needs a password is refused (``EncryptedPdf``): we cannot check what it
holds, the recipient would need a secret sent some other way, and the message itself is
already encrypted end to end. PDFs that run JavaScript or launch programs are refused
(``ActivePdfContent``): a medical letter has no use for them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pypdf import PasswordType, PdfReader
from pypdf.errors import PyPdfError
from pypdf.generic import DictionaryObject, IndirectObject

from mss.documents.detect import (
    DocumentLimits,
    DocumentTooLarge,
    MalformedDocument,
    UnsafeDocument,
    too_large_problem,
)

_HEADER = b"%PDF-"
_EOF = b"%%EOF"
_WINDOW = 1024


class InvalidPdf(MalformedDocument):
    """The file claims to be a PDF but is not one, or is damaged or truncated."""

    code = "pdf-invalid"


class EncryptedPdf(UnsafeDocument):
    """The PDF needs a password to be opened."""

    code = "pdf-encrypted"


class ActivePdfContent(UnsafeDocument):
    """The PDF runs JavaScript or launches a program when opened."""

    code = "pdf-active-content"


@dataclass(frozen=True)
class PdfInfo:
    """What was read from a PDF that passed its checks."""

    version: str
    """From the header, e.g. ``1.7``."""
    pages: int
    encrypted: bool
    """Protected with permissions only (opens without a password)."""
    embedded_files: int
    """Files attached inside the PDF (shown to the reader, never opened by us)."""


def _resolve(obj: object) -> object:
    return obj.get_object() if isinstance(obj, IndirectObject) else obj


def _action_kinds(action: object, depth: int = 0) -> set[str]:
    """The ``/S`` types of an action and of its ``/Next`` chain (bounded)."""
    action = _resolve(action)
    if not isinstance(action, DictionaryObject) or depth > 16:
        return set()
    kinds = {str(action.get("/S", ""))}
    following = _resolve(action.get("/Next"))
    if isinstance(following, list):
        for item in following[:32]:
            kinds |= _action_kinds(item, depth + 1)
    elif following is not None:
        kinds |= _action_kinds(following, depth + 1)
    return kinds


_ACTIVE_ACTIONS = {"/JavaScript", "/Launch", "/ImportData", "/Rendition"}


def _check_active_content(filename: str, reader: PdfReader) -> int:
    """Refuse document-level JavaScript and launch actions; return the embedded file count."""
    catalog = _resolve(reader.trailer.get("/Root"))
    if not isinstance(catalog, DictionaryObject):
        raise InvalidPdf(filename, "is not a valid PDF: no document catalog")
    kinds = _action_kinds(catalog.get("/OpenAction"))
    additional = _resolve(catalog.get("/AA"))
    if isinstance(additional, DictionaryObject):
        for action in list(additional.values())[:32]:
            kinds |= _action_kinds(action)
    names = _resolve(catalog.get("/Names"))
    embedded = 0
    if isinstance(names, DictionaryObject):
        if "/JavaScript" in names:
            kinds.add("/JavaScript")
        files = _resolve(names.get("/EmbeddedFiles"))
        if isinstance(files, DictionaryObject):
            embedded = _count_name_tree(files)
    for page in reader.pages:
        page_actions = _resolve(page.get("/AA"))
        if isinstance(page_actions, DictionaryObject):
            for action in list(page_actions.values())[:32]:
                kinds |= _action_kinds(action)
    if kinds & _ACTIVE_ACTIONS:
        raise ActivePdfContent(filename, "runs scripts or programs when opened, which is not allowed")
    return embedded


def _count_name_tree(node: DictionaryObject, depth: int = 0) -> int:
    if depth > 16:
        return 0
    count = 0
    names = _resolve(node.get("/Names"))
    if isinstance(names, list):
        count += len(names) // 2
    kids = _resolve(node.get("/Kids"))
    if isinstance(kids, list):
        for kid in kids[:1024]:
            kid = _resolve(kid)
            if isinstance(kid, DictionaryObject):
                count += _count_name_tree(kid, depth + 1)
    return count


def check_pdf(filename: str, data: bytes, *, limits: DocumentLimits) -> PdfInfo:
    """Check that ``data`` is a complete, readable PDF without active content.

    Returns its ``PdfInfo``. Raises ``DocumentTooLarge``, ``InvalidPdf``, ``EncryptedPdf``
    or ``ActivePdfContent``.
    """
    if len(data) > limits.max_document_size:
        raise DocumentTooLarge(filename, too_large_problem(limits.max_document_size))
    start = data.find(_HEADER, 0, _WINDOW)
    if start < 0:
        raise InvalidPdf(filename, "is not a valid PDF: no %PDF header")
    version = data[start + len(_HEADER) : start + len(_HEADER) + 3].decode("ascii", "replace")
    if not (len(version) == 3 and version[0].isdigit() and version[1] == "." and version[2].isdigit()):
        raise InvalidPdf(filename, "is not a valid PDF: malformed %PDF header")
    if _EOF not in data[-_WINDOW:]:
        raise InvalidPdf(filename, "is not a valid PDF: no %%EOF marker at the end (truncated file?)")
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
        if encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED:
            raise EncryptedPdf(
                filename, "is protected by a password: send it unprotected, the message is encrypted anyway"
            )
        pages = len(reader.pages)
        if pages < 1:
            raise InvalidPdf(filename, "is not a valid PDF: it has no pages")
        for page in reader.pages:
            if "/Type" in page and page["/Type"] != "/Page":
                raise InvalidPdf(filename, "is not a valid PDF: its page tree is damaged")
        embedded = _check_active_content(filename, reader)
    except (InvalidPdf, EncryptedPdf, ActivePdfContent):
        raise
    except PyPdfError as exc:
        raise InvalidPdf(filename, "is not a valid PDF: it cannot be parsed") from exc
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OverflowError) as exc:
        # pypdf lets these escape on some damaged files; they mean the same thing here.
        raise InvalidPdf(filename, "is not a valid PDF: its structure is damaged") from exc
    return PdfInfo(version=version, pages=pages, encrypted=encrypted, embedded_files=embedded)
