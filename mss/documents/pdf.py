"""PDF checks: is it really a PDF, complete, parseable, and free of active content.

A PDF is accepted when it has a ``%PDF-`` header in its first 1024 bytes, an ``%%EOF`` marker
after it (so a truncated upload is caught before parsing), and pypdf can read its trailer,
catalog and every page without fetching anything. Bytes after the last ``%%EOF`` (scanners
pad files with NULs or line ends, some programs append a checksum or a second trailer
without a marker) are ignored as every reader ignores them: the file is read up to that
marker. pypdf's errors are translated to ``InvalidPdf``.

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

import io
import re
from dataclasses import dataclass

from pypdf import PasswordType, PdfReader
from pypdf.errors import PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, StreamObject

from mss.documents.base import (
    DocumentLimits,
    DocumentTooComplex,
    DocumentTooLarge,
    InvalidPdf,
    UnsafeDocument,
    display_name,
    too_large_problem,
)
from mss.documents.sniff import RUNNABLE_EXTENSIONS, executable_kind, extension

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


def _resolve(obj: object) -> object:
    return obj.get_object() if isinstance(obj, IndirectObject) else obj


_URL = re.compile(r"\A[a-z][a-z0-9+.-]*:", re.IGNORECASE)


class _Walk:
    """One bounded pass over every object of a PDF: what its trailer reaches and what its
    cross-reference table lists (an object nobody references may still be found by a reader
    that repairs the file). Refuses active content wherever it sits."""

    def __init__(self, filename: str, reader: PdfReader, limits: DocumentLimits) -> None:
        self.filename = filename
        self.reader = reader
        self.limit = limits.max_pdf_objects
        self.visited = 0

    def refuse(self, what: str) -> ActivePdfContent:
        return ActivePdfContent(self.filename, f"{what}, which is not allowed")

    def run(self) -> None:
        seen: set[tuple[int, int]] = set()
        stack: list[object] = [self.reader.trailer]
        for generation, numbers in self.reader.xref.items():
            stack.extend(IndirectObject(number, generation, self.reader) for number in numbers)
        stack.extend(IndirectObject(number, 0, self.reader) for number in self.reader.xref_objStm)
        while stack:
            item = stack.pop()
            if isinstance(item, IndirectObject):
                key = (item.idnum, item.generation)
                if key in seen:
                    continue
                seen.add(key)
                item = item.get_object()
            if not isinstance(item, (DictionaryObject, ArrayObject)):
                continue
            self.visited += 1
            if self.visited > self.limit:
                raise PdfTooComplex(self.filename, f"holds more than {self.limit} objects")
            if isinstance(item, DictionaryObject):
                self.inspect(item)
                stack.extend(dict.values(item))  # unresolved: references are followed once
            else:
                stack.extend(list.__iter__(item))

    def inspect(self, node: DictionaryObject) -> None:
        action = _resolve(dict.get(node, "/S"))
        if "/JS" in node or action == "/JavaScript" or "/JavaScript" in node:
            raise self.refuse("runs JavaScript")
        if action == "/Launch":
            raise self.refuse("launches a program")
        if action == "/ImportData":
            raise self.refuse("imports data from another file")
        if action == "/SubmitForm" and self.remote(dict.get(node, "/F")):
            raise self.refuse("sends form data to a remote address")
        if "/XFA" in node and self.xfa_scripts(dict.get(node, "/XFA")):
            raise self.refuse("runs scripts in its XFA form")
        if "/EF" in node:
            self.check_embedded(node)
        elif _resolve(dict.get(node, "/Type")) == "/EmbeddedFile" and isinstance(node, StreamObject):
            self.check_content(node)

    def remote(self, target: object) -> bool:
        """A file specification that names a URL (RFC 3986 scheme), as a string or a dictionary."""
        target = _resolve(target)
        if isinstance(target, DictionaryObject):
            if _resolve(dict.get(target, "/FS")) == "/URL":
                return True
            target = _resolve(dict.get(target, "/UF") or dict.get(target, "/F"))
        return isinstance(target, str) and bool(_URL.match(target.strip()))

    def xfa_scripts(self, xfa: object) -> bool:
        xfa = _resolve(xfa)
        streams = (
            [xfa] if isinstance(xfa, StreamObject) else [_resolve(x) for x in xfa] if isinstance(xfa, list) else []
        )
        return any(isinstance(part, StreamObject) and b"<script" in part.get_data().lower() for part in streams[:64])

    def check_embedded(self, spec: DictionaryObject) -> None:
        """A file specification with embedded files: by its names and by its content."""
        for key in ("/UF", "/F", "/DOS", "/Mac", "/Unix"):
            name = _resolve(dict.get(spec, key))
            if isinstance(name, str) and extension(name) in RUNNABLE_EXTENSIONS:
                raise self.refuse(f"carries an embedded program ({display_name(name)})")
        files = _resolve(dict.get(spec, "/EF"))
        if isinstance(files, DictionaryObject):
            for stream in list(dict.values(files))[:8]:
                stream = _resolve(stream)
                if isinstance(stream, StreamObject):
                    self.check_content(stream)

    def check_content(self, stream: StreamObject) -> None:
        what = executable_kind(stream.get_data()[:64])
        if what is not None:
            raise self.refuse(f"carries {what} as an embedded file")


def _check_active_content(filename: str, reader: PdfReader, limits: DocumentLimits) -> int:
    """Refuse active content anywhere in the file; return the embedded file count."""
    catalog = _resolve(reader.trailer.get("/Root"))
    if not isinstance(catalog, DictionaryObject):
        raise InvalidPdf(filename, "is not a valid PDF: no document catalog")
    _Walk(filename, reader, limits).run()
    names = _resolve(catalog.get("/Names"))
    embedded = 0
    if isinstance(names, DictionaryObject):
        files = _resolve(names.get("/EmbeddedFiles"))
        if isinstance(files, DictionaryObject):
            embedded = _count_name_tree(files)
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
    end = data.rfind(_EOF, start)
    if end < 0:
        raise InvalidPdf(filename, "is not a valid PDF: no %%EOF marker at the end (truncated file?)")
    # Readers look for the last %%EOF and read the cross-reference data before it; what
    # follows it belongs to no object.
    if _HIDDEN_AFTER_EOF.search(data, end + len(_EOF)):
        # A reader that repairs files would find these; one that does not would not.
        raise InvalidPdf(filename, "is not a valid PDF: it holds PDF objects after its last %%EOF marker")
    body = data[: end + len(_EOF)] + b"\n"
    try:
        reader = PdfReader(io.BytesIO(body), strict=False)
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
        embedded = _check_active_content(filename, reader, limits)
    except (InvalidPdf, EncryptedPdf, ActivePdfContent, PdfTooComplex):
        raise
    except PyPdfError as exc:
        raise InvalidPdf(filename, "is not a valid PDF: it cannot be parsed") from exc
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OverflowError) as exc:
        # pypdf lets these escape on some damaged files; they mean the same thing here.
        raise InvalidPdf(filename, "is not a valid PDF: its structure is damaged") from exc
    return PdfInfo(version=version, pages=pages, encrypted=encrypted, embedded_files=embedded)
