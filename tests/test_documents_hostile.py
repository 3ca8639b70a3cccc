"""Hostile documents: files that are two things, PDF active content anywhere in the object
graph, and XML shaped to make its checks slow. Each is refused with a permanent reply."""

from __future__ import annotations

import gc
import io
import os
import sys
import time
import zipfile

import pytest
from pypdf import PdfWriter
from pypdf.generic import ArrayObject, DictionaryObject, NameObject, NumberObject, TextStringObject
from test_documents_cda import MINIMAL, non_xml_body
from test_documents_pdf import make_pdf

from mss.documents import (
    ActivePdfContent,
    DocumentLimits,
    DocumentTooComplex,
    PdfTooComplex,
    PolyglotDocument,
    XmlTooComplex,
    check_pdf,
    inspect_attachment,
    parse_cda,
    workers,
)
from mss.relay.handler import document_status

from document_samples import LETTER, LIMITS, action, pdf_of_size, with_attributes, written

pytestmark = pytest.mark.sqlite_only


def name(value: str) -> NameObject:
    return NameObject(value)


def pdf_with_link(link_action: DictionaryObject) -> bytes:
    """One page with one link annotation that runs ``link_action`` when clicked."""
    writer = PdfWriter()
    page = writer.add_blank_page(width=595, height=842)
    annotation = DictionaryObject(
        {
            name("/Type"): name("/Annot"),
            name("/Subtype"): name("/Link"),
            name("/Rect"): ArrayObject([NumberObject(10), NumberObject(10), NumberObject(200), NumberObject(40)]),
            name("/A"): link_action,
        }
    )
    page[name("/Annots")] = ArrayObject([writer._add_object(annotation)])
    return written(writer)


def pdf_with_form_field(field_actions: DictionaryObject) -> bytes:
    """A form with one text field whose additional actions (``/AA``) are ``field_actions``."""
    writer = PdfWriter()
    page = writer.add_blank_page(width=595, height=842)
    field = writer._add_object(
        DictionaryObject(
            {
                name("/FT"): name("/Tx"),
                name("/T"): TextStringObject("dose"),
                name("/Type"): name("/Annot"),
                name("/Subtype"): name("/Widget"),
                name("/Rect"): ArrayObject([NumberObject(10), NumberObject(10), NumberObject(200), NumberObject(40)]),
                name("/AA"): field_actions,
            }
        )
    )
    page[name("/Annots")] = ArrayObject([field])
    writer._root_object[name("/AcroForm")] = DictionaryObject({name("/Fields"): ArrayObject([field])})
    return written(writer)


def pdf_with_attachment(filename: str, content: bytes) -> bytes:
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer.add_attachment(filename, content)
    return written(writer)


JS = TextStringObject("app.launchURL('https://example.org/x')")


@pytest.mark.parametrize(
    "data",
    [
        pdf_with_link(action("/JavaScript", JS=JS)),
        pdf_with_link(action("/Launch", F=TextStringObject("cmd.exe"))),
        pdf_with_link(action("/URI", URI=TextStringObject("https://example.org"), Next=action("/JavaScript", JS=JS))),
        pdf_with_form_field(DictionaryObject({name("/K"): action("/JavaScript", JS=JS)})),
        pdf_with_form_field(
            DictionaryObject({name("/Bl"): action("/SubmitForm", F=TextStringObject("https://x.example/c"))})
        ),
        pdf_with_form_field(
            DictionaryObject(
                {
                    name("/Bl"): action(
                        "/SubmitForm",
                        F=DictionaryObject(
                            {name("/FS"): name("/URL"), name("/F"): TextStringObject("https://x.example/c")}
                        ),
                    )
                }
            )
        ),
        pdf_with_attachment("bilan.exe", b"MZ\x90\x00" + b"\x00" * 200),
        pdf_with_attachment("resultats.pdf", b"\x7fELF\x02\x01\x01" + b"\x00" * 200),
        pdf_with_attachment("lisez-moi.bat", b"@echo off\r\nformat c:\r\n"),
    ],
    ids=[
        "link-javascript",
        "link-launch",
        "javascript-after-uri",
        "field-keystroke-javascript",
        "field-submit-url",
        "field-submit-url-spec",
        "embedded-pe",
        "embedded-elf-named-pdf",
        "embedded-script",
    ],
)
def test_active_content_anywhere_is_refused(data: bytes) -> None:
    with pytest.raises(ActivePdfContent) as caught:
        inspect_attachment("courrier.pdf", "application/pdf", data, limits=LIMITS)
    assert document_status(caught.value) == (550, "5.7.1")
    assert caught.value.message.startswith("courrier.pdf ")


def test_javascript_in_an_object_nobody_references_is_refused() -> None:
    """A repairing reader may find an object the trailer does not reach: it is walked too."""
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    writer._add_object(action("/JavaScript", JS=JS))
    with pytest.raises(ActivePdfContent):
        check_pdf("a.pdf", written(writer), limits=LIMITS)


def test_links_and_a_harmless_attachment_pass() -> None:
    assert check_pdf("a.pdf", pdf_with_link(action("/URI", URI=TextStringObject("https://ans.example"))), limits=LIMITS)
    info = check_pdf("a.pdf", pdf_with_attachment("notes.txt", b"rien de grave\n"), limits=LIMITS)
    assert info.embedded_files == 1


def test_pdf_object_walk_is_bounded() -> None:
    writer = PdfWriter()
    for _ in range(50):
        writer.add_blank_page(width=595, height=842)
    with pytest.raises(PdfTooComplex) as caught:
        check_pdf("a.pdf", written(writer), limits=DocumentLimits(max_pdf_objects=20))
    assert document_status(caught.value) == (554, "5.6.0")


def test_active_pdf_inside_a_cda_is_refused() -> None:
    with pytest.raises(ActivePdfContent) as caught:
        parse_cda(
            non_xml_body(pdf_with_link(action("/Launch", F=TextStringObject("x.exe")))),
            filename="cr.xml",
            limits=LIMITS,
        )
    assert "embedded PDF" in caught.value.message


# -- polyglots ----------------------------------------------------------------------------


def zip_with(entries: dict[str, bytes], *, comment: bytes = b"") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for entry, content in entries.items():
            archive.writestr(entry, content)
        archive.comment = comment
    return out.getvalue()


@pytest.mark.parametrize(
    ("filename", "content_type", "data"),
    [
        # A ZIP whose first entry is stored uncompressed and holds a PDF: "%PDF-" is in the
        # first kilobyte, so a PDF reader opens it; a ZIP reader finds setup.exe.
        ("a.pdf", "application/pdf", zip_with({"a.pdf": make_pdf(), "setup.exe": b"MZ" + b"\x00" * 100})),
        ("IHE_XDM.ZIP", "application/zip", zip_with({"a.pdf": make_pdf(), "README.TXT": b"x"})),
        # A PDF with a ZIP after it: ZIP readers start from the end.
        ("a.pdf", "application/pdf", make_pdf() + zip_with({"setup.exe": b"MZ" + b"\x00" * 100})),
        # HTML that a PDF reader also opens.
        ("a.pdf", "application/pdf", b"<html><body><script>alert(1)</script>\n" + make_pdf()),
        ("a.pdf", "application/octet-stream", b"<!-- -->\n<p>hello</p>\n" + make_pdf()),
        # A CDA with a PDF header in its first kilobyte (Acrobat opens it as a PDF).
        ("cr.xml", "text/xml", MINIMAL.replace(b"<component>", b"<!-- %PDF-1.4 --><component>")),
    ],
    ids=["zip-then-pdf", "zip-named-xdm", "pdf-then-zip", "html-then-pdf", "markup-then-pdf", "cda-with-pdf-header"],
)
def test_polyglots_are_refused(filename: str, content_type: str, data: bytes) -> None:
    with pytest.raises(PolyglotDocument) as caught:
        inspect_attachment(filename, content_type, data, limits=LIMITS)
    assert document_status(caught.value) == (550, "5.7.1")
    assert "two things" in caught.value.message


def test_single_format_files_still_pass() -> None:
    assert inspect_attachment("a.pdf", "application/pdf", b"\r\n" + make_pdf(), limits=LIMITS).kind == "pdf"
    assert inspect_attachment("cr.xml", "text/xml", LETTER.read_bytes(), limits=LIMITS).kind == "cda"


# -- XML shaped to be slow ----------------------------------------------------------------


def test_attribute_flood_is_refused_by_count() -> None:
    data = with_attributes(40_000)
    with pytest.raises(XmlTooComplex) as caught:
        inspect_attachment("cr.xml", "text/xml", data, limits=LIMITS)
    assert document_status(caught.value) == (554, "5.6.0")
    assert "attributes" in caught.value.message
    # Up to the limit, the document reads as before.
    assert parse_cda(with_attributes(LIMITS.max_xml_attributes), filename="cr.xml", limits=LIMITS).sections


def with_narrative(text: bytes) -> bytes:
    """The minimal CDA with one section whose narrative block holds ``text``."""
    return MINIMAL.replace(
        b"<structuredBody/>",
        b"<structuredBody><component><section><text>" + text + b"</text></section></component></structuredBody>",
    )


def test_element_count_and_narrative_text_are_bounded() -> None:
    many = with_narrative(b"<br/>" * 5000)
    with pytest.raises(XmlTooComplex, match="elements"):
        parse_cda(many, filename="cr.xml", limits=DocumentLimits(max_xml_elements=1000))
    assert parse_cda(many, filename="cr.xml", limits=LIMITS).sections
    wordy = with_narrative(b"mot " * 50_000)
    with pytest.raises(XmlTooComplex, match="narrative text"):
        parse_cda(wordy, filename="cr.xml", limits=DocumentLimits(max_narrative_text=100_000))


# -- checks in worker processes ------------------------------------------------------------


def slow_cda(elements: int) -> bytes:
    """A CDA whose narrative holds ``elements`` line breaks (300,000 take seconds to read)."""
    return with_narrative(b"<br/>" * elements)


def test_a_check_past_its_deadline_is_stopped_and_refused() -> None:
    limits = DocumentLimits(max_xml_elements=10_000_000, max_check_seconds=0.2)
    with pytest.raises(DocumentTooComplex, match="longer than 0.2 seconds") as caught:
        workers.inspect_attachment("lent.xml", "text/xml", slow_cda(300_000), limits=limits)
    assert document_status(caught.value) == (554, "5.6.0")
    # The stopped worker was replaced: the next checks run.
    assert workers.parse_cda(MINIMAL, filename="cr.xml", limits=limits).type_code.code == "11490-0"


def test_refusals_cross_back_from_the_worker_as_they_are() -> None:
    with pytest.raises(XmlTooComplex) as caught:
        workers.inspect_attachment("cr.xml", "text/xml", with_attributes(40_000), limits=LIMITS)
    assert caught.value.filename == "cr.xml" and caught.value.code == "xml-limits"
    with pytest.raises(PolyglotDocument):
        workers.inspect_attachment("a.pdf", "application/pdf", b"<html>\n" + make_pdf(), limits=LIMITS)
    document = workers.inspect_attachment("a.pdf", "application/pdf", make_pdf(3), limits=LIMITS)
    assert document.pdf is not None and document.pdf.pages == 3


def test_a_worker_that_dies_refuses_its_document() -> None:
    with pytest.raises(DocumentTooComplex, match="stopped the program"):
        workers._in_worker(os._exit, (70,), {}, "crash.pdf", LIMITS)
    assert workers.inspect_attachment("a.pdf", "application/pdf", make_pdf(), limits=LIMITS).kind == "pdf"


def test_the_server_keeps_nothing_of_a_document_once_checked() -> None:
    # pebble's scheduling thread keeps its last task until the next one arrives: the
    # document (for the IMAP door's pool, the reader's key) stayed in the server's memory
    # until then. Its only references now are this test's own.
    data = make_pdf(2)
    before = sys.getrefcount(data)
    assert workers.inspect_attachment("a.pdf", "application/pdf", data, limits=LIMITS).kind == "pdf"
    for _ in range(500):  # the pool lets go of it once the result is handed over
        if sys.getrefcount(data) == before:
            break
        time.sleep(0.01)
    assert sys.getrefcount(data) == before


def test_damaged_deflate_stream_in_a_package_is_an_invalid_archive() -> None:
    from mss.documents import InvalidArchive

    from relay_support import xdm_bytes

    data = bytearray(xdm_bytes())
    header = data.index(b"IHE_XDM/SUBSET01/DOC0001.XML") - 30  # its local file header
    assert data[header : header + 4] == b"PK\x03\x04"
    name_length = int.from_bytes(data[header + 26 : header + 28], "little")
    extra_length = int.from_bytes(data[header + 28 : header + 30], "little")
    start = header + 30 + name_length + extra_length
    data[start : start + 8] = b"\xff" * 8  # a deflate block of the reserved type
    with pytest.raises(InvalidArchive, match="cannot be read"):
        inspect_attachment("IHE_XDM.ZIP", "application/zip", bytes(data), limits=LIMITS)


def test_one_account_cannot_take_every_worker() -> None:
    """An account with as many slow checks as there are workers gets its share of them; a
    check for another account runs at once and is done before any of the slow ones."""
    from concurrent.futures import ThreadPoolExecutor, wait

    slow = slow_cda(1_500_000)  # about 7 s of work here, twice the deadline: always stopped there
    limits = DocumentLimits(max_xml_elements=10_000_000, max_check_seconds=3)
    quick = make_pdf()
    workers.start()
    with ThreadPoolExecutor(max_workers=workers.WORKERS) as pool:
        pending = [
            pool.submit(workers.inspect_attachment, "lent.xml", "text/xml", slow, limits=limits, owner="a@mss.test")
            for _ in range(workers.WORKERS)
        ]
        document = workers.inspect_attachment("a.pdf", "application/pdf", quick, limits=LIMITS, owner="b@mss.test")
        assert document.kind == "pdf"
        assert not any(future.done() for future in pending)
        wait(pending)
    assert all(isinstance(future.exception(), DocumentTooComplex) for future in pending)


def _pool_workers() -> list[int]:
    """The children of this process's fork server: the document workers (and those of
    other pools started by earlier tests, idle here)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    servers = [pid for pid in children.get(os.getpid(), []) if b"forkserver" in _command_line(pid)]
    return [pid for server in servers for pid in children.get(server, [])]


def _command_line(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


def _anonymous_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            total += next(int(line.split()[1]) for line in rollup if line.startswith("Anonymous:"))
    return total / 1024


def test_workers_give_back_what_large_documents_took() -> None:
    """A worker that read a 1 MB PDF does not keep what its parse took: idle workers stay
    near their size before (they used to keep 10 to 20 MiB more each)."""
    workers.start()
    for _ in range(2 * workers.WORKERS):
        workers.inspect_attachment("small.pdf", "application/pdf", make_pdf(), limits=LIMITS)
    pids = _pool_workers()
    assert len(pids) >= workers.WORKERS
    before = _anonymous_mib(pids)
    large = pdf_of_size(750_000)
    for _ in range(3 * workers.WORKERS):
        assert workers.inspect_attachment("large.pdf", "application/pdf", large, limits=LIMITS).kind == "pdf"
    assert _pool_workers() == pids
    grown = _anonymous_mib(pids) - before
    assert grown < 5 * workers.WORKERS, (before, grown)


def test_workers_set_aside_what_they_inherit_from_their_fork_server() -> None:
    """A worker freezes the objects it inherited from the fork server (the modules it
    preloaded), so that the cyclic collector's full passes leave their pages shared instead
    of writing to them and making the worker copy them."""
    workers.start()
    frozen = [workers._in_worker(gc.get_freeze_count, (), {}, "count", LIMITS) for _ in range(workers.WORKERS)]
    # pypdf, the CDA reader and their imports: tens of thousands of objects.
    assert min(frozen) > 10_000, frozen
