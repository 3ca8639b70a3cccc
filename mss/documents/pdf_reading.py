"""The part of the PDF check that reads the file's objects, with pypdf (``pdf.check_pdf``
calls it once the bytes passed their checks): the document catalog, the pages, and one
bounded walk of every object for active content.

Imported only where checks run, in the document workers (``workers`` has their fork server
import it first): the relay and the web hand documents to them and never hold pypdf.
"""

from __future__ import annotations

import io
import re

from pypdf import PasswordType, PdfReader
from pypdf.errors import PyPdfError
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, StreamObject

from mss.documents.base import DocumentLimits, InvalidPdf, display_name
from mss.documents.pdf import ActivePdfContent, EncryptedPdf, PdfTooComplex
from mss.documents.sniff import RUNNABLE_EXTENSIONS, executable_kind, extension


def read(filename: str, body: bytes, limits: DocumentLimits) -> tuple[int, bool, int]:
    """The pages of the PDF ``body`` (read up to its last ``%%EOF``), whether it is
    protected with permissions only, and how many files it embeds. Raises ``InvalidPdf``,
    ``EncryptedPdf``, ``ActivePdfContent``, ``PdfTooComplex``."""
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
    return pages, encrypted, embedded


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
