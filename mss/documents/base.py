"""What every document check shares: the kinds, the limits, the refusals and the result.

Imports nothing of ``mss.documents`` at run time (the types of what each kind reads are
named for annotations only), so every module of the package builds on it and the arrows
point one way: ``base`` <- ``xml`` <- ``pdf`` <- ``cda`` <- ``sniff``/``single`` <- ``xdm``
<- ``detect`` <- ``workers``.

Every refusal is a ``mss.errors.DocumentError`` with a machine ``code`` and a short English
``message`` that names the file and the problem, never its content. Which SMTP reply a
refusal gets is the relay's business (``mss.relay.replies.document_status``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mss.errors import DocumentError

if TYPE_CHECKING:  # annotations only: these modules build on this one
    from mss.documents.cda import CdaInfo
    from mss.documents.pdf import PdfInfo
    from mss.documents.xdm import XdmInfo

Kind = Literal["pdf", "cda", "xdm", "text"]

MIB = 1024 * 1024


# -- limits ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentLimits:
    """Bounds applied to every attachment; the defaults suit a medical mail service."""

    max_document_size: int = 20 * 1000 * 1000
    """Bytes of one attachment as received (a PDF, a CDA, a whole IHE_XDM.ZIP). 20 MB."""
    max_xdm_entries: int = 100
    """Entries (files and folders) in one archive."""
    max_xdm_total_size: int = 100 * 1000 * 1000
    """Bytes of all entries of one archive once decompressed. 100 MB."""
    max_compression_ratio: int = 100
    """Uncompressed / compressed size, per entry and for the whole archive."""
    ratio_threshold: int = 1 * MIB
    """Entries (and archives) smaller than this once decompressed skip the ratio check:
    small repetitive files (a short XML) legitimately compress very well."""
    max_xml_depth: int = 128
    """Element nesting in an XML document. The ANS examples reach 22."""
    max_xml_elements: int = 100_000
    """Elements in an XML document. The ANS examples hold at most 6,300; reading 100,000
    into the display structure takes about a second here."""
    max_xml_attributes: int = 64
    """Attributes on one XML element. The ANS examples put at most 6 on one."""
    max_narrative_text: int = 4_000_000
    """Characters of narrative text (what the web renders) in one CDA, embedded files aside."""
    max_pdf_objects: int = 200_000
    """Objects (dictionaries, arrays, streams, followed references) walked in one PDF."""
    max_check_seconds: float = 20.0
    """Wall-clock seconds the checks of one attachment may take in a worker process (see
    ``mss.documents.workers``); past that the worker is stopped and the attachment refused."""

    def __post_init__(self) -> None:
        for name in (
            "max_document_size",
            "max_xdm_entries",
            "max_xdm_total_size",
            "max_compression_ratio",
            "max_xml_depth",
            "max_xml_elements",
            "max_xml_attributes",
            "max_narrative_text",
            "max_pdf_objects",
            "max_check_seconds",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"DocumentLimits.{name} must be positive")
        if self.ratio_threshold < 0:
            raise ValueError("DocumentLimits.ratio_threshold must not be negative")


# -- refusals ----------------------------------------------------------------------------


def display_name(filename: str | None) -> str:
    """A file name safe to put in an SMTP reply or a log line: printable, short, one line."""
    if not filename:
        return "the attachment"
    # An SMTP reply line must not be split or forged by a crafted file name.
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in filename).strip()
    if not cleaned:
        return "the attachment"
    return cleaned if len(cleaned) <= 80 else cleaned[:77] + "..."


class DocumentCheckError(DocumentError):
    """Base of every document refusal: a machine code and a safe sentence. Its three
    branches say what kind of refusal it is: ``DocumentRefused`` (never carried),
    ``DocumentTooLarge``, ``MalformedDocument``; the relay names the reply of each."""

    code: str = "document-refused"
    """Machine code of the refusal (``pdf-invalid``, ``zip-bomb`` ...), stable for callers."""

    def __init__(self, filename: str | None, problem: str, *, code: str | None = None) -> None:
        self.filename = display_name(filename)
        self.problem = problem
        if code is not None:
            self.code = code
        super().__init__(f"{self.filename} {problem}", code=self.code, filename=self.filename)

    def __reduce__(self) -> tuple[object, ...]:
        # Checks run in worker processes (mss.documents.workers): the refusal crosses back
        # as its class, file name, problem and code.
        return (_rebuild_refusal, (type(self), self.filename, self.problem, self.code))


def _rebuild_refusal(cls: type[DocumentCheckError], filename: str, problem: str, code: str) -> DocumentCheckError:
    return cls(filename, problem, code=code)


class DocumentRefused(DocumentCheckError):
    """The attachment is of a type the trust space does not carry (policy refusal)."""

    code = "type-not-allowed"


class ForbiddenDocumentType(DocumentRefused):
    """Executables, Office files, images, HTML, archives, unknown types: never carried."""


class DocumentTypeMismatch(DocumentRefused):
    """The content contradicts the declared MIME type or the file extension."""

    code = "type-mismatch"


class UnsafeDocument(DocumentRefused):
    """The document holds a construct refused for safety (DTD, encryption, links ...)."""

    code = "unsafe-content"


class PolyglotDocument(UnsafeDocument):
    """The file carries the signatures of two formats: another program would open it as the
    other one (a ZIP that is also a PDF, markup with a PDF header in its first kilobyte ...)."""

    code = "polyglot"


class DocumentTooLarge(DocumentCheckError):
    """The attachment (or what it expands to) exceeds a size limit."""

    code = "too-large"


class MalformedDocument(DocumentCheckError):
    """The document claims a supported kind but fails that kind's checks."""

    code = "malformed"


class DocumentTooComplex(MalformedDocument):
    """The document is beyond what its checks read (nesting, element or object counts, time)."""

    code = "too-complex"


def too_large_problem(limit: int) -> str:
    """The end of a ``DocumentTooLarge`` sentence for a limit in bytes."""
    return f"is larger than the {limit / 1_000_000:g} MB limit for attachments"


# -- the result --------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    """An attachment that passed its checks, with what was read from it."""

    kind: Kind
    filename: str
    content_type: str
    """The declared MIME type, normalised (lower case, no parameters)."""
    size: int
    sha256: str
    """Hex SHA-256 of the bytes as received."""
    pdf: PdfInfo | None = None
    cda: CdaInfo | None = None
    xdm: XdmInfo | None = None


# -- refusals of one kind that sniffing already raises ------------------------------------


class InvalidPdf(MalformedDocument):
    """The file claims to be a PDF but is not one, or is damaged or truncated."""

    code = "pdf-invalid"


class InvalidXml(MalformedDocument):
    """The document is not well-formed XML."""

    code = "xml-malformed"


class XmlDoctypeForbidden(UnsafeDocument):
    """The XML carries a DOCTYPE (a DTD, entity declarations): refused, never expanded."""

    code = "xml-doctype"


class XmlTooComplex(DocumentTooComplex):
    """The XML nests too deep, holds too many elements, attributes on one element or
    narrative text, or a text node beyond the parser's bound."""

    code = "xml-limits"


class InvalidArchive(MalformedDocument):
    """The file is not a readable ZIP archive (damaged, truncated, unsupported features)."""

    code = "zip-invalid"


class NestedArchive(UnsafeDocument):
    """An archive inside the archive."""

    code = "zip-nested"
