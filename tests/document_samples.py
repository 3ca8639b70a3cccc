"""Documents for the document checks, in tests and benchmarks: the sample folders, the
default limits, and PDFs built for a case, by hand (every byte known) or with pypdf.

It imports nothing of the test suite, so that a benchmark can use it too.
"""

from __future__ import annotations

import io
from pathlib import Path

from pypdf import PdfWriter
from pypdf.generic import DictionaryObject, NameObject

from mss.documents import DocumentLimits

SAMPLES = Path(__file__).resolve().parent / "samples"
CDA_SAMPLES = SAMPLES / "cda"  # the ANS CI-SIS examples of CDA R2
LETTER = CDA_SAMPLES / "LDL-SES_2022.01.xml"  # a lettre de liaison de sortie
WORLD = SAMPLES / "world"  # documents written by other software
LIMITS = DocumentLimits()


# -- written by hand ---------------------------------------------------------------------


def pdf_of_objects(objects: list[bytes], *, version: str = "1.7") -> bytes:
    """A PDF whose objects 1, 2, ... are ``objects`` (object 1 the catalog), with a correct
    cross-reference table."""
    out = bytearray(b"%%PDF-%s\n" % version.encode())
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def pdf_of_size(size: int) -> bytes:
    """A valid one-page PDF of about ``size`` bytes (the page content is padded with comments)."""
    line = b"% padding of the page content\n"
    content = line * max(1, size // len(line))
    return pdf_of_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R >>",
            b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        ]
    )


def with_attributes(count: int) -> bytes:
    """The example letter with ``count`` attributes on its first narrative block (40,000 held
    the service for 10 seconds before attributes were counted)."""
    sample = LETTER.read_bytes()
    attributes = " ".join(f'attr{i}="val"' for i in range(count)).encode()
    start = sample.index(b"<text>")
    return sample[:start] + b"<text " + attributes + b">" + sample[start + len(b"<text>") :]


# -- written with pypdf ------------------------------------------------------------------


def written(writer: PdfWriter) -> bytes:
    """What ``writer`` writes."""
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def pdf_bytes(pages: int = 1) -> bytes:
    """A small valid PDF of ``pages`` blank A4 pages."""
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=595, height=842)
    return written(writer)


def action(kind: str, **entries: object) -> DictionaryObject:
    """A PDF action dictionary (``/S kind`` and its entries)."""
    result = DictionaryObject({NameObject("/S"): NameObject(kind)})
    for key, value in entries.items():
        result[NameObject("/" + key)] = value
    return result


def pdf_opening_with(open_action: DictionaryObject, *, width: int = 595, height: int = 842) -> bytes:
    """One blank page, and ``open_action`` run when the document is opened (``/OpenAction``)."""
    writer = PdfWriter()
    writer.add_blank_page(width=width, height=height)
    writer._root_object[NameObject("/OpenAction")] = open_action
    return written(writer)


def nested_multiparts(depth: int, *, subtype: bytes = b"mixed") -> bytes:
    """A MIME entity whose multiparts nest ``depth`` levels deep around one text part (each
    Content-Type folded, in capitals: what a reader that matches the field on one line, or
    in lower case, would miss). A ``digest`` nests two levels a multipart: each of its parts
    is a message/rfc822 without a field that says so."""
    entity = b"Content-Type: text/plain; charset=utf-8\r\n\r\nAu fond.\r\n"
    for level in range(depth):
        boundary = b"b%d" % level
        inner = b"\r\n" + entity if subtype == b"digest" else entity  # a digest's part: a message
        entity = (
            b"Content-Type:\r\n MULTIPART/" + subtype + b"; boundary=" + boundary + b"\r\n\r\n--" + boundary
            + b"\r\n" + inner + b"\r\n--" + boundary + b"--\r\n"
        )  # fmt: skip
    return entity
