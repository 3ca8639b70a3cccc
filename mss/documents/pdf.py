"""PDF checks: is it really a PDF, complete, parseable, and free of active content.

A PDF is accepted when it has a ``%PDF-`` header in its first 1024 bytes, an ``%%EOF`` marker
after it (so a truncated upload is caught before parsing), and pypdf can read its trailer,
catalog and every page without fetching anything. Bytes after the last ``%%EOF`` (scanners
pad files with NULs or line ends, some programs append a checksum or a second trailer
without a marker) are ignored as every reader ignores them: the file is read up to that
marker. pypdf's errors are translated to ``InvalidPdf``. The reading with pypdf is in
``pdf_reading``, imported at the first check: the checks of the bytes, the refusals and
``PdfInfo`` are here, for the processes that only hand PDFs to the document workers.

Encryption: a PDF that opens with the empty user password (permissions-only protection, as
many hospital systems produce) is accepted, since every recipient can read it and we can
check it. A PDF that needs a password is refused (``EncryptedPdf``): we cannot check what it
holds, the recipient would need a secret sent some other way, and the message itself is
already encrypted end to end. PDFs with active content are refused (``ActivePdfContent``):
JavaScript (actions, form fields, annotations, the name tree, XFA scripts), launch and
import actions, forms submitted to a remote address, and embedded programs, wherever they
sit: every object the file holds is walked once, up to ``limits.max_pdf_objects``
(``PdfTooComplex`` beyond). A medical letter has no use for any of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mss.documents.base import (
    DocumentLimits,
    DocumentTooComplex,
    DocumentTooLarge,
    InvalidPdf,
    UnsafeDocument,
    too_large_problem,
)

_HEADER = b"%PDF-"
_EOF = b"%%EOF"
_WINDOW = 1024
_HIDDEN_AFTER_EOF = re.compile(
    rb"\d+\s+\d+\s+obj\b|\bxref\b|\btrailer\b|\bstartxref\b|/J(?:ava)?S(?:cript)?\b|/Launch\b"
)


class EncryptedPdf(UnsafeDocument):
    """The PDF needs a password to be opened."""

    code = "pdf-encrypted"


class ActivePdfContent(UnsafeDocument):
    """The PDF holds JavaScript, a launch or import action, a form sent to a remote address
    or an embedded program, anywhere in its objects."""

    code = "pdf-active-content"


class PdfTooComplex(DocumentTooComplex):
    """The PDF holds more objects than its check walks."""

    code = "pdf-limits"


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
    if not (
        len(version) == 3 and version.isascii() and version[0].isdigit() and version[1] == "." and version[2].isdigit()
    ):
        raise InvalidPdf(filename, "is not a valid PDF: malformed %PDF header")
    end = data.rfind(_EOF, start)
    if end < 0:
        raise InvalidPdf(filename, "is not a valid PDF: no %%EOF marker at the end (truncated file?)")
    # Readers look for the last %%EOF and read the cross-reference data before it; what
    # follows it belongs to no object.
    if _HIDDEN_AFTER_EOF.search(data, end + len(_EOF)):
        # A reader that repairs files would find these; one that does not would not.
        raise InvalidPdf(filename, "is not a valid PDF: it holds PDF objects after its last %%EOF marker")
    body = data[: end + len(_EOF)] + b"\n"
    # pypdf is imported here, where checks run (the document workers, whose fork server
    # imports it first): a process that only hands documents to them does not hold it.
    from mss.documents import pdf_reading

    pages, encrypted, embedded = pdf_reading.read(filename, body, limits)
    return PdfInfo(version=version, pages=pages, encrypted=encrypted, embedded_files=embedded)
