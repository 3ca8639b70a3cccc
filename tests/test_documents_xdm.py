"""IHE_XDM.ZIP: a built package reads back; hostile archives are refused before extraction."""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import zipfile

import pytest

from mss.documents import (
    ArchiveBomb,
    ArchiveEncrypted,
    ArchiveLink,
    ArchiveTooManyEntries,
    ArchiveUnsafePath,
    CdaInfo,
    DocumentLimits,
    ForbiddenDocumentType,
    InvalidArchive,
    InvalidXdm,
    NestedArchive,
    NotAnXdmPackage,
    UnsafeDocument,
    XmlDoctypeForbidden,
    build_xdm,
    inspect_attachment,
    message_header_values,
    parse_cda,
    parse_xdm,
)
from mss.documents.xdm import DE_TYPE, DOC_ENTRY_STABLE, LCM, RIM
from mss.relay.handler import document_status

from document_samples import LETTER, LIMITS, WORLD, pdf_bytes

pytestmark = pytest.mark.sqlite_only


@pytest.fixture(scope="module")
def letter() -> tuple[bytes, CdaInfo]:
    data = LETTER.read_bytes()
    return data, parse_cda(data, filename=LETTER.name, limits=LIMITS)


def metadata_for(uri: str, data: bytes, mime_type: str = "application/pdf") -> bytes:
    """A minimal METADATA.XML listing one document."""
    digest = hashlib.sha1(data).hexdigest()
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<lcm:SubmitObjectsRequest xmlns:lcm="{LCM}" xmlns:rim="{RIM}">
 <rim:RegistryObjectList>
  <rim:ExtrinsicObject id="Document01" mimeType="{mime_type}" objectType="{DOC_ENTRY_STABLE}">
   <rim:Slot name="URI"><rim:ValueList><rim:Value>{uri}</rim:Value></rim:ValueList></rim:Slot>
   <rim:Slot name="hash"><rim:ValueList><rim:Value>{digest}</rim:Value></rim:ValueList></rim:Slot>
   <rim:Slot name="size"><rim:ValueList><rim:Value>{len(data)}</rim:Value></rim:ValueList></rim:Slot>
   <rim:Name><rim:LocalizedString value="Compte rendu"/></rim:Name>
  </rim:ExtrinsicObject>
 </rim:RegistryObjectList>
</lcm:SubmitObjectsRequest>
""".encode()


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compression) as zf:
        for name, content in entries:
            zf.writestr(name, content)
    return out.getvalue()


def pdf_package(extra: list[tuple[str | zipfile.ZipInfo, bytes]] = ()) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    pdf = pdf_bytes()
    return [
        ("README.TXT", b"IHE XDM package\r\n"),
        ("IHE_XDM/SUBSET01/METADATA.XML", metadata_for("DOC0001.PDF", pdf)),
        ("IHE_XDM/SUBSET01/DOC0001.PDF", pdf),
        *extra,
    ]


# -- round trip --------------------------------------------------------------------------


def test_built_package_round_trips(letter: tuple[bytes, CdaInfo]) -> None:
    data, info = letter
    pdf = pdf_bytes()
    package = build_xdm(
        [("LDL-SES_2022.01.xml", data, info), ("scan.pdf", pdf, None)], author=info.authors[0], patient=info.patient
    )
    assert len(package) < LIMITS.max_document_size
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        assert zf.namelist() == [
            "README.TXT",
            "INDEX.HTM",
            "IHE_XDM/SUBSET01/METADATA.XML",
            "IHE_XDM/SUBSET01/DOC0001.XML",
            "IHE_XDM/SUBSET01/DOC0002.PDF",
        ]
        assert zf.read("IHE_XDM/SUBSET01/DOC0001.XML") == data

    document = inspect_attachment("IHE_XDM.ZIP", "application/zip", package, limits=LIMITS)
    assert document.kind == "xdm"
    xdm = document.xdm
    assert xdm is not None
    assert xdm.has_readme and xdm.has_index
    assert xdm.entries == 5
    cda_entry, pdf_entry = xdm.documents
    assert cda_entry.path == "IHE_XDM/SUBSET01/DOC0001.XML"
    assert cda_entry.mime_type == "text/xml"
    assert cda_entry.title == "Lettre de liaison à la sortie de l'établissement de santé"
    assert cda_entry.type_code is not None
    assert (cda_entry.type_code.code, cda_entry.type_code.code_system) == ("11490-0", "2.16.840.1.113883.6.1")
    assert cda_entry.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert cda_entry.unique_id == str(info.document_id)
    assert cda_entry.creation_time == "20191203123000"  # 13:30 +0100 in UTC
    assert cda_entry.authors == ("801234567897^DAVID^Charles^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",)
    assert cda_entry.document.cda is not None and cda_entry.document.cda.title == info.title
    assert pdf_entry.mime_type == "application/pdf"
    assert pdf_entry.title == "scan.pdf"
    assert pdf_entry.document.kind == "pdf"
    assert pdf_entry.format_code is not None
    assert pdf_entry.format_code.code == "urn:ihe:iti:xds:2017:mimeTypeSufficient"
    (submission,) = xdm.submission_sets
    assert submission.patient_id == cda_entry.patient_id
    assert submission.source_id and submission.source_id.startswith("2.25.")
    assert submission.unique_id and submission.submission_time
    assert xdm.cdas == (cda_entry.document.cda,)
    assert message_header_values(xdm.cdas, accept_test_ins=True) == {"X-MSS-CODECDA": "11490-0", "X-MSS-INS": "O"}


def test_metadata_uses_the_ebrim_schemes(letter: tuple[bytes, CdaInfo]) -> None:
    data, info = letter
    package = build_xdm([("lettre.xml", data, None)], author=info.authors[0], patient=None)
    with zipfile.ZipFile(io.BytesIO(package)) as zf:
        metadata = zf.read("IHE_XDM/SUBSET01/METADATA.XML").decode()
    assert "<!DOCTYPE" not in metadata
    assert f'classificationScheme="{DE_TYPE}"' in metadata
    assert 'classificationNode="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"' in metadata
    assert "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember" in metadata
    assert f"<rim:Value>{hashlib.sha1(data).hexdigest()}</rim:Value>" in metadata


def test_build_refuses_what_an_xdm_cannot_carry(letter: tuple[bytes, CdaInfo]) -> None:
    _, info = letter
    with pytest.raises(ValueError):
        build_xdm([], author=info.authors[0], patient=None)
    with pytest.raises(ForbiddenDocumentType):
        build_xdm([("x.exe", b"MZ\x90\x00" + b"\x00" * 60, None)], author=info.authors[0], patient=None)


def test_hand_made_package_is_accepted() -> None:
    xdm = parse_xdm(make_zip(pdf_package()), limits=LIMITS)
    (entry,) = xdm.documents
    assert entry.title == "Compte rendu"
    assert entry.document.pdf is not None and entry.document.pdf.pages == 1


# -- hostile archives --------------------------------------------------------------------


def test_zip_bomb_is_refused_before_extraction() -> None:
    bomb = make_zip([("IHE_XDM/SUBSET01/DOC0001.PDF", bytes(50 * 1024 * 1024))])
    assert len(bomb) < 100_000
    with pytest.raises(ArchiveBomb) as caught:
        inspect_attachment("IHE_XDM.ZIP", "application/zip", bomb, limits=LIMITS)
    assert caught.value.code == "zip-bomb"
    assert document_status(caught.value) == (552, "5.3.4")


def test_many_small_compressible_entries_are_refused_by_the_overall_ratio() -> None:
    entries = [(f"IHE_XDM/SUBSET01/F{i:03d}.XML", bytes(1024 * 1024)) for i in range(20)]
    with pytest.raises(ArchiveBomb):
        parse_xdm(make_zip(entries), limits=LIMITS)


def test_total_uncompressed_size_is_bounded() -> None:
    package = make_zip(pdf_package(), compression=zipfile.ZIP_STORED)
    with pytest.raises(ArchiveBomb, match="expands to more than"):
        parse_xdm(package, limits=DocumentLimits(max_xdm_total_size=1000))


def test_entry_lying_about_its_size_is_refused() -> None:
    """Header sizes are not trusted: an entry that yields other than it declares is refused."""
    package = bytearray(make_zip(pdf_package()))
    name = b"IHE_XDM/SUBSET01/DOC0001.PDF"
    # Halve the uncompressed size in both the local header and the central directory.
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        position = 0
        while (position := package.find(signature, position)) >= 0:
            if package[position + name_offset : position + name_offset + len(name)] == name:
                (size,) = struct.unpack_from("<I", package, position + size_offset)
                struct.pack_into("<I", package, position + size_offset, size // 2)
            position += 4
    with pytest.raises(InvalidArchive):
        parse_xdm(bytes(package), limits=LIMITS)


def test_too_many_entries_are_refused() -> None:
    entries = [(f"IHE_XDM/SUBSET01/F{i:03d}.TXT", b"x") for i in range(LIMITS.max_xdm_entries + 1)]
    with pytest.raises(ArchiveTooManyEntries) as caught:
        parse_xdm(make_zip(entries), limits=LIMITS)
    assert caught.value.code == "zip-entries"


@pytest.mark.parametrize(
    "name",
    ["../evil", "IHE_XDM/../../evil", "/etc/cron.d/evil", "IHE_XDM\\..\\evil", "C:/Windows/evil.dll", "IHE_XDM//x"],
    ids=["dotdot", "nested-dotdot", "absolute", "backslash", "drive-letter", "empty-part"],
)
def test_unsafe_paths_are_refused(name: str) -> None:
    with pytest.raises(ArchiveUnsafePath) as caught:
        parse_xdm(make_zip(pdf_package([(zipfile.ZipInfo(name), b"pwned")])), limits=LIMITS)
    assert caught.value.code == "zip-path"
    assert document_status(caught.value) == (550, "5.7.1")


def test_duplicate_names_are_refused() -> None:
    entries = pdf_package([("ihe_xdm/subset01/doc0001.pdf", b"other")])
    with pytest.raises(ArchiveUnsafePath, match="two entries"):
        parse_xdm(make_zip(entries), limits=LIMITS)


def test_symbolic_link_is_refused() -> None:
    link = zipfile.ZipInfo("IHE_XDM/SUBSET01/LINK")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(ArchiveLink):
        parse_xdm(make_zip(pdf_package([(link, b"/etc/passwd")])), limits=LIMITS)


def test_nested_archive_is_refused() -> None:
    inner = make_zip(pdf_package())
    with pytest.raises(NestedArchive):
        parse_xdm(make_zip(pdf_package([("IHE_XDM/SUBSET01/INNER.ZIP", inner)])), limits=LIMITS)
    # The same archive under a document's name is caught by its content.
    disguised = [
        ("IHE_XDM/SUBSET01/METADATA.XML", metadata_for("DOC0001.PDF", inner)),
        ("IHE_XDM/SUBSET01/DOC0001.PDF", inner),
    ]
    with pytest.raises(NestedArchive):
        parse_xdm(make_zip(disguised), limits=LIMITS)


def test_encrypted_entry_is_refused() -> None:
    package = bytearray(make_zip(pdf_package()))
    # zipfile cannot write encrypted entries: set the "encrypted" flag bit by hand.
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        position = 0
        while (position := package.find(signature, position)) >= 0:
            (flags,) = struct.unpack_from("<H", package, position + flag_offset)
            struct.pack_into("<H", package, position + flag_offset, flags | 0x1)
            position += 4
    with pytest.raises(ArchiveEncrypted) as caught:
        parse_xdm(bytes(package), limits=LIMITS)
    assert caught.value.code == "zip-encrypted"


def test_missing_metadata_is_refused() -> None:
    with pytest.raises(InvalidXdm) as caught:
        parse_xdm(make_zip([("IHE_XDM/SUBSET01/DOC0001.PDF", pdf_bytes())]), limits=LIMITS)
    assert caught.value.code == "xdm-no-metadata"
    assert document_status(caught.value) == (554, "5.6.0")


def test_zip_that_is_not_a_package_is_refused() -> None:
    with pytest.raises(NotAnXdmPackage) as caught:
        inspect_attachment("photos.zip", "application/zip", make_zip([("a.txt", b"hello")]), limits=LIMITS)
    assert document_status(caught.value) == (550, "5.7.1")


def test_metadata_with_doctype_is_refused() -> None:
    metadata = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">&xxe;</lcm:SubmitObjectsRequest>"""
    entries = [("IHE_XDM/SUBSET01/METADATA.XML", metadata), ("IHE_XDM/SUBSET01/DOC0001.PDF", pdf_bytes())]
    with pytest.raises(XmlDoctypeForbidden):
        parse_xdm(make_zip(entries), limits=LIMITS)


def test_metadata_that_is_not_ebrim_is_refused() -> None:
    entries = [("IHE_XDM/SUBSET01/METADATA.XML", b"<metadata/>"), ("IHE_XDM/SUBSET01/DOC0001.PDF", pdf_bytes())]
    with pytest.raises(InvalidXdm, match="SubmitObjectsRequest"):
        parse_xdm(make_zip(entries), limits=LIMITS)


def test_files_the_profile_allows_beside_the_documents_are_listed_not_refused() -> None:
    extras = [
        ("INDEX.HTM", b"<html><body><a href='IHE_XDM/SUBSET01/DOC0001.PDF'>doc</a></body></html>"),
        ("viewer/style.css", b"body { color: black }"),
        ("viewer/logo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32),
        ("IHE_XDM/SUBSET01/CCD.xsl", b"<xsl:stylesheet xmlns:xsl='http://www.w3.org/1999/XSL/Transform'/>"),
    ]
    info = parse_xdm(make_zip(pdf_package(extras)), limits=LIMITS)
    assert [doc.path for doc in info.documents] == ["IHE_XDM/SUBSET01/DOC0001.PDF"]
    assert {(extra.path, extra.kind) for extra in info.extras} == {
        ("README.TXT", "text"),
        ("INDEX.HTM", "html"),
        ("viewer/style.css", "stylesheet"),
        ("viewer/logo.png", "image"),
        ("IHE_XDM/SUBSET01/CCD.xsl", "stylesheet"),
    }
    assert info.has_readme and info.has_index


def test_archiver_junk_is_ignored_even_inside_the_subset() -> None:
    junk = [
        ("__MACOSX/IHE_XDM/SUBSET01/._DOC0001.PDF", b"\x00\x05\x16\x07" + b"\x00" * 60),
        (".DS_Store", b"\x00\x00\x00\x01Bud1" + b"\x00" * 40),
        ("IHE_XDM/SUBSET01/.DS_Store", b"\x00\x00\x00\x01Bud1"),
        ("IHE_XDM/SUBSET01/.METADATA.XML.swp", b"b0VIM 8.2" + b"\x00" * 40),
        ("IHE_XDM/SUBSET01/METADATA.XML~", b"<old/>"),
        ("IHE_XDM/Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 40),
    ]
    info = parse_xdm(make_zip(pdf_package(junk)), limits=LIMITS)
    assert len(info.documents) == 1
    assert [extra.path for extra in info.extras] == ["README.TXT"]


def test_junk_is_still_checked_for_traversal() -> None:
    with pytest.raises(ArchiveUnsafePath):
        parse_xdm(make_zip(pdf_package([("__MACOSX/../../evil", b"x")])), limits=LIMITS)


@pytest.mark.parametrize(
    ("name", "content"),
    [("tools/viewer.exe", b"harmless-looking"), ("autorun.js", b"alert(1)"), ("viewer/run", b"\x7fELF" + b"\x00" * 60)],
)
def test_a_program_beside_the_documents_is_refused(name: str, content: bytes) -> None:
    with pytest.raises(UnsafeDocument):
        parse_xdm(make_zip(pdf_package([(name, content)])), limits=LIMITS)


def test_package_zipped_with_its_folder_and_lower_case_names_is_accepted() -> None:
    pdf = pdf_bytes()
    entries = [
        ("export/", b""),
        ("export/README.txt", b"package"),
        ("export/INDEX.htm", b"<html></html>"),
        ("export/IHE_XDM/SUBSET01/METADATA.xml", metadata_for("doc0001.pdf", pdf)),
        ("export/IHE_XDM/SUBSET01/doc0001.pdf", pdf),
    ]
    info = parse_xdm(make_zip(entries), limits=LIMITS)
    assert info.folder == "export/"
    assert [doc.path for doc in info.documents] == ["export/IHE_XDM/SUBSET01/doc0001.pdf"]
    assert info.has_readme and info.has_index


def test_entry_without_uri_is_found_by_its_id() -> None:
    pdf = pdf_bytes()
    metadata = metadata_for("X", pdf).replace(
        b'<rim:Slot name="URI"><rim:ValueList><rim:Value>X</rim:Value></rim:ValueList></rim:Slot>', b""
    )
    entries = [("IHE_XDM/SUBSET01/METADATA.XML", metadata), ("IHE_XDM/SUBSET01/Document01.pdf", pdf)]
    info = parse_xdm(make_zip(entries), limits=LIMITS)
    assert [doc.path for doc in info.documents] == ["IHE_XDM/SUBSET01/Document01.pdf"]


@pytest.mark.parametrize("mime_type", ["text/x-cda-r2+xml", "application/x-hl7-cda-level-one+xml", "text/xml"])
def test_cda_declared_with_real_world_mime_types_is_a_cda(letter: tuple[bytes, CdaInfo], mime_type: str) -> None:
    data, _info = letter
    entries = [
        ("IHE_XDM/SUBSET01/METADATA.XML", metadata_for("DOC0001.XML", data, mime_type)),
        ("IHE_XDM/SUBSET01/DOC0001.XML", data),
    ]
    info = parse_xdm(make_zip(entries), limits=LIMITS)
    assert info.documents[0].document.kind == "cda"


def test_direct_project_package_is_accepted() -> None:
    data = (WORLD / "direct-project" / "xd-common__samplexdm.zip").read_bytes()
    info = parse_xdm(data, limits=LIMITS)
    assert info.folder == "samplexdm/"
    assert [doc.document.kind for doc in info.documents] == ["cda"]
    assert {extra.kind for extra in info.extras} == {"stylesheet", "html", "text"}


def test_metadata_uri_escaping_the_subset_is_refused() -> None:
    pdf = pdf_bytes()
    entries = [("README.TXT", pdf), ("IHE_XDM/SUBSET01/METADATA.XML", metadata_for("../../README.TXT", pdf))]
    with pytest.raises(InvalidXdm, match="outside its folder"):
        parse_xdm(make_zip(entries), limits=LIMITS)


def test_listed_document_missing_or_altered_is_refused() -> None:
    pdf = pdf_bytes()
    missing = [("IHE_XDM/SUBSET01/METADATA.XML", metadata_for("DOC0001.PDF", pdf))]
    with pytest.raises(InvalidXdm, match="does not hold it"):
        parse_xdm(make_zip(missing), limits=LIMITS)
    other = pdf_bytes().replace(b"/MediaBox", b"/MediaBox ")
    altered = [
        ("IHE_XDM/SUBSET01/METADATA.XML", metadata_for("DOC0001.PDF", pdf)),
        ("IHE_XDM/SUBSET01/DOC0001.PDF", other),
    ]
    with pytest.raises(InvalidXdm, match="does not match"):
        parse_xdm(make_zip(altered), limits=LIMITS)


def test_executable_inside_package_is_refused() -> None:
    exe = b"MZ\x90\x00" + b"\x00" * 200
    entries = [
        ("IHE_XDM/SUBSET01/METADATA.XML", metadata_for("DOC0001.PDF", exe)),
        ("IHE_XDM/SUBSET01/DOC0001.PDF", exe),
    ]
    with pytest.raises(ForbiddenDocumentType) as caught:
        parse_xdm(make_zip(entries), limits=LIMITS)
    assert "IHE_XDM/SUBSET01/DOC0001.PDF is an executable" in caught.value.message


def test_corrupt_zip_is_refused() -> None:
    package = make_zip(pdf_package())
    with pytest.raises(InvalidArchive):
        inspect_attachment("IHE_XDM.ZIP", "application/zip", package[: len(package) // 2], limits=LIMITS)
    with pytest.raises(InvalidArchive):
        inspect_attachment("IHE_XDM.ZIP", "application/zip", b"not a zip at all", limits=LIMITS)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("20261130101500+0100", "20261130091500"),
        ("20261130101500+9900", "20261130101500"),  # no time zone: the time as written
        ("99991231235900-1000", "99991231235900"),  # past the calendar once in UTC
        ("2026113010", "2026113010"),
        ("٢٠٢٦١١٣٠", "20260101000000"),  # digits, but not HL7's: the package's own time
    ],
)
def test_a_cda_time_becomes_the_utc_time_xds_metadata_requires(written: str, expected: str) -> None:
    from datetime import UTC, datetime

    from mss.documents.xdm import _utc_ts

    assert _utc_ts(written, datetime(2026, 1, 1, tzinfo=UTC)) == expected
