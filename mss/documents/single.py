"""One attachment checked: its kind from its content, its declared type and name held
against that kind, then the kind's own checks, with what was read from it.

An archive is read by the reader the caller passes: a message's attachments may be
IHE_XDM packages (``mss.documents.detect`` passes ``xdm.parse_xdm``), the documents inside a
package may not (archives do not nest), so the package reader calls this without one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mss.documents.base import (
    Document,
    DocumentLimits,
    DocumentTooLarge,
    MalformedDocument,
    NestedArchive,
    too_large_problem,
)
from mss.documents.cda import CdaInfo, parse_cda
from mss.documents.pdf import check_pdf
from mss.documents.sniff import check_declared, normalise_content_type, sniff

# ``xdm.parse_xdm``: its result becomes ``Document.xdm``. Named by its shape, not imported:
# the package reader builds on this module.
ArchiveReader = Callable[..., Any]


def inspect_document(
    filename: str, content_type: str, data: bytes, *, limits: DocumentLimits, read_archive: ArchiveReader | None = None
) -> Document:
    """Check one attachment and return what it is, with its metadata.

    Without ``read_archive`` ZIP content is refused (``NestedArchive``). Raises a
    ``DocumentError`` subclass: ``ForbiddenDocumentType``, ``DocumentTypeMismatch``,
    ``DocumentTooLarge``, ``UnsafeDocument`` or a ``MalformedDocument`` of the kind
    (``InvalidPdf``, ``InvalidCda``, ``InvalidArchive`` ...).
    """
    declared = normalise_content_type(content_type)
    if len(data) > limits.max_document_size:
        raise DocumentTooLarge(filename, too_large_problem(limits.max_document_size))
    if not data and declared != "text/plain":
        raise MalformedDocument(filename, "is empty", code="empty")
    kind = sniff(data, declared, filename)
    if kind == "xdm" and read_archive is None:
        raise NestedArchive(filename, "is an archive inside an archive, which is not allowed")
    check_declared(kind, filename, declared)

    document = Document(
        kind=kind, filename=filename, content_type=declared, size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    if kind == "pdf":
        return replace(document, pdf=check_pdf(filename, data, limits=limits))
    if kind == "cda":
        info: CdaInfo = parse_cda(data, filename=filename, limits=limits)
        return replace(document, cda=info)
    if kind == "xdm" and read_archive is not None:
        return replace(document, xdm=read_archive(data, limits=limits, filename=filename))
    return document
