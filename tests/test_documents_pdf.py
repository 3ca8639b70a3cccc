"""PDF checks and type detection: what is accepted, what is refused, with which reply."""

from __future__ import annotations

import io
import os
import random
import zipfile

import pytest
from pypdf import PdfWriter
from pypdf.generic import TextStringObject

from mss.documents import (
    ActivePdfContent,
    DocumentLimits,
    DocumentTooLarge,
    DocumentTypeMismatch,
    EncryptedPdf,
    ForbiddenDocumentType,
    InvalidPdf,
    MalformedDocument,
    check_pdf,
    inspect_attachment,
)
from mss.relay import replies
from mss.relay.handler import document_status

from document_samples import LIMITS, WORLD, action, pdf_bytes, pdf_of_objects, pdf_opening_with, written

# These tests touch no database: once per suite run is enough.
pytestmark = pytest.mark.sqlite_only


def make_pdf(pages: int = 2) -> bytes:
    return pdf_bytes(pages)


# A minimal valid PDF written by hand: one empty page, a correct cross-reference table.
def handmade_pdf() -> bytes:
    return pdf_of_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] >>",
        ],
        version="1.4",
    )


def test_generated_pdf_is_accepted_with_its_page_count() -> None:
    data = make_pdf(pages=3)
    document = inspect_attachment("ordonnance.pdf", "application/pdf", data, limits=LIMITS)
    assert document.kind == "pdf"
    assert document.filename == "ordonnance.pdf"
    assert document.content_type == "application/pdf"
    assert document.size == len(data)
    assert len(document.sha256) == 64
    assert document.pdf is not None and document.pdf.pages == 3
    assert document.pdf.encrypted is False
    assert document.cda is None and document.xdm is None


def test_handmade_pdf_is_accepted() -> None:
    info = check_pdf("lettre.pdf", handmade_pdf(), limits=LIMITS)
    assert info.pages == 1
    assert info.version == "1.4"


def test_octet_stream_pdf_is_accepted_and_type_parameters_are_ignored() -> None:
    data = make_pdf()
    assert inspect_attachment("a.pdf", "application/octet-stream", data, limits=LIMITS).kind == "pdf"
    document = inspect_attachment("a.PDF", "Application/PDF; name=a.pdf", data, limits=LIMITS)
    assert document.content_type == "application/pdf"


def test_truncated_pdf_is_refused() -> None:
    data = make_pdf()
    with pytest.raises(InvalidPdf) as caught:
        inspect_attachment("ordonnance.pdf", "application/pdf", data[: len(data) // 2], limits=LIMITS)
    error = caught.value
    assert document_status(error) == (554, "5.6.0")
    assert error.code == "pdf-invalid"
    assert error.message.startswith("ordonnance.pdf is not a valid PDF")
    assert "%%EOF" in error.message


def test_pdf_cut_before_its_trailer_is_refused_even_with_an_eof_marker() -> None:
    data = make_pdf()
    with pytest.raises(InvalidPdf):
        inspect_attachment("a.pdf", "application/pdf", data[:-200] + b"\n%%EOF\n", limits=LIMITS)


def test_garbage_between_header_and_eof_is_refused() -> None:
    data = b"%PDF-1.7\n" + os.urandom(4096).replace(b"%", b"_") + b"\n%%EOF\n"
    with pytest.raises(InvalidPdf):
        inspect_attachment("a.pdf", "application/pdf", data, limits=LIMITS)


def test_random_bytes_named_pdf_are_refused_as_invalid_pdf() -> None:
    data = random.Random(20240611).randbytes(8192)
    with pytest.raises(InvalidPdf) as caught:
        inspect_attachment("ordonnance.pdf", "application/pdf", data, limits=LIMITS)
    assert caught.value.message == "ordonnance.pdf is not a valid PDF: no %PDF header"
    assert document_status(caught.value) == (554, "5.6.0")


def test_text_named_pdf_is_refused_with_no_header_message() -> None:
    with pytest.raises(InvalidPdf) as caught:
        inspect_attachment("ordonnance.pdf", "application/pdf", b"hello, this is not a PDF", limits=LIMITS)
    assert caught.value.message == "ordonnance.pdf is not a valid PDF: no %PDF header"


@pytest.mark.parametrize(
    "head",
    [
        b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56,
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 48,
    ],
    ids=["elf", "windows-pe"],
)
def test_executable_named_pdf_is_refused_as_forbidden_type(head: bytes) -> None:
    # The executable even carries a PDF header further on (a polyglot): what it starts as wins.
    data = head + b"%PDF-1.4\n" + make_pdf()
    with pytest.raises(ForbiddenDocumentType) as caught:
        inspect_attachment("ordonnance.pdf", "application/pdf", data, limits=LIMITS)
    error = caught.value
    assert document_status(error) == (550, "5.7.1")
    assert "executable" in error.message
    assert error.message.startswith("ordonnance.pdf ")


def test_zip_named_pdf_is_refused_as_type_mismatch() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("IHE_XDM/SUBSET01/METADATA.XML", "<x/>")
    with pytest.raises(DocumentTypeMismatch) as caught:
        inspect_attachment("ordonnance.pdf", "application/pdf", out.getvalue(), limits=LIMITS)
    assert document_status(caught.value) == (550, "5.7.1")
    assert caught.value.code == "type-mismatch"


def test_pdf_declared_as_another_type_or_extension_is_refused() -> None:
    data = make_pdf()
    with pytest.raises(DocumentTypeMismatch):
        inspect_attachment("ordonnance.pdf", "image/png", data, limits=LIMITS)
    with pytest.raises(DocumentTypeMismatch):
        inspect_attachment("ordonnance.exe", "application/pdf", data, limits=LIMITS)
    # No extension at all contradicts nothing.
    assert inspect_attachment("(unnamed part)", "application/pdf", data, limits=LIMITS).kind == "pdf"


def test_password_protected_pdf_is_refused() -> None:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt("secret", algorithm="AES-256")
    with pytest.raises(EncryptedPdf) as caught:
        inspect_attachment("secret.pdf", "application/pdf", written(writer), limits=LIMITS)
    assert caught.value.code == "pdf-encrypted"
    assert document_status(caught.value) == (550, "5.7.1")


def test_permissions_only_encrypted_pdf_is_accepted() -> None:
    writer = PdfWriter()
    writer.add_blank_page(width=200, height=200)
    writer.encrypt(user_password="", owner_password="owner", algorithm="AES-128")
    info = check_pdf("protected.pdf", written(writer), limits=LIMITS)
    assert info.encrypted is True
    assert info.pages == 1


def test_pdf_with_javascript_is_refused() -> None:
    data = pdf_opening_with(action("/JavaScript", JS=TextStringObject("app.alert(1)")), width=200, height=200)
    with pytest.raises(ActivePdfContent):
        inspect_attachment("a.pdf", "application/pdf", data, limits=LIMITS)


def test_size_limit_applies() -> None:
    data = make_pdf()
    with pytest.raises(DocumentTooLarge) as caught:
        inspect_attachment("a.pdf", "application/pdf", data, limits=DocumentLimits(max_document_size=len(data) - 1))
    assert document_status(caught.value) == (552, "5.3.4")


@pytest.mark.parametrize(
    ("filename", "content_type", "data", "what"),
    [
        ("photo.jpg", "image/jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image"),
        ("scan.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image"),
        ("lettre.doc", "application/msword", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "Office"),
        ("page.html", "text/html", b"<!DOCTYPE html><html><body>x</body></html>", "HTML"),
        ("run.sh", "application/x-sh", b"#!/bin/sh\nrm -rf /\n", "script"),
        ("data.bin", "application/octet-stream", b"\x00\x01\x02\x03" * 50, "unknown"),
        ("table.csv", "text/csv", b"a;b\n1;2\n", "unrecognised"),
    ],
)
def test_other_types_are_refused(filename: str, content_type: str, data: bytes, what: str) -> None:
    with pytest.raises(ForbiddenDocumentType) as caught:
        inspect_attachment(filename, content_type, data, limits=LIMITS)
    assert what in caught.value.message
    assert document_status(caught.value) == (550, "5.7.1")


def test_office_open_xml_is_refused_as_office_document() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document/>")
    with pytest.raises(ForbiddenDocumentType) as caught:
        inspect_attachment(
            "lettre.docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            out.getvalue(),
            limits=LIMITS,
        )
    assert "Office" in caught.value.message


def test_plain_text_body_is_accepted() -> None:
    body = "Cher confrère,\n<voir pièce jointe>\nBien à vous.\n".encode()
    document = inspect_attachment("", "text/plain; charset=utf-8", body, limits=LIMITS)
    assert document.kind == "text"
    assert document.size == len(body)
    assert inspect_attachment("note.txt", "text/plain", b"", limits=LIMITS).kind == "text"


def test_empty_pdf_is_refused() -> None:
    with pytest.raises(MalformedDocument) as caught:
        inspect_attachment("a.pdf", "application/pdf", b"", limits=LIMITS)
    assert caught.value.code == "empty"


def test_file_name_in_reply_cannot_break_the_smtp_line() -> None:
    with pytest.raises(ForbiddenDocumentType) as caught:
        exe = b"MZ\x00\x00" + b"\x00" * 60
        inspect_attachment("evil\r\n250 OK.exe", "application/octet-stream", exe, limits=LIMITS)
    reply = replies.document_refused(*document_status(caught.value), caught.value.message)
    assert "\r" not in reply and "\n" not in reply
    assert reply.startswith("550 5.7.1 evil??250 OK.exe is an executable")


@pytest.mark.parametrize(
    "tail",
    [b"\x00" * 4096, b"\r\n" * 800, b"\n%scanner-checksum 8d41f1\n" + b" " * 2000],
    ids=["nul-padding", "line-ends", "scanner-trailer"],
)
def test_bytes_after_the_last_eof_marker_are_ignored_as_readers_do(tail: bytes) -> None:
    info = check_pdf("scan.pdf", make_pdf(1) + tail, limits=LIMITS)
    assert info.pages == 1


def test_incremental_save_is_read_to_its_last_eof_marker() -> None:
    data = (WORLD / "qpdf" / "incremental-1.pdf").read_bytes()
    assert data.count(b"%%EOF") > 1
    check_pdf("incremental-1.pdf", data, limits=LIMITS)


def test_objects_hidden_after_the_last_eof_marker_are_refused() -> None:
    hidden = b"\n9 0 obj\n<< /S /JavaScript /JS (app.alert(1)) >>\nendobj\n"
    with pytest.raises(InvalidPdf, match="after its last"):
        check_pdf("scan.pdf", make_pdf(1) + hidden, limits=LIMITS)
