"""What an attachment is, and whether it may travel: the one entry point for document checks.

``inspect_attachment`` decides the kind from the content (``sniff``), holds it against the
declared MIME type and the file extension, then runs that kind's checks (``pdf``, ``cda``,
``xdm``; see ``single``). Only four kinds travel: PDF, CDA R2, IHE_XDM.ZIP packages and
plain text (the message body). Everything else is refused. The services run it through
``workers``, in worker processes within a deadline.
"""

from __future__ import annotations

from mss.documents.base import Document, DocumentLimits
from mss.documents.single import inspect_document
from mss.documents.xdm import parse_xdm


def inspect_attachment(
    filename: str, content_type: str, data: bytes, *, limits: DocumentLimits, allow_archive: bool = True
) -> Document:
    """Check one attachment and return what it is, with its metadata.

    ``allow_archive=False`` refuses ZIP content (used for documents inside an IHE_XDM.ZIP:
    archives do not nest). Raises what :func:`mss.documents.single.inspect_document` raises.
    """
    return inspect_document(
        filename, content_type, data, limits=limits, read_archive=parse_xdm if allow_archive else None
    )
