"""IHE_XDM.ZIP packages (IHE ITI XDM): safe reading and standard-conformant writing.

Reading (``parse_xdm``) checks the whole archive before a single byte is decompressed:
entry names (no ``..``, absolute paths, backslashes, drive letters, control characters,
duplicates), entry types (no symbolic links or special files), encryption, compression
method, number of entries, declared sizes and compression ratios, nested archives. Only
then are METADATA.XML and the documents it lists read, each through a bounded reader that
stops as soon as an entry yields more than it declared or the archive's budget is spent.
METADATA.XML (ebRIM 3.0 ``SubmitObjectsRequest``) goes through the same hardened XML parser
as CDA documents, and every listed document through ``single.inspect_document`` (CDA or PDF
only; archives do not nest).

Packages as real systems write them are accepted: names in any letter case, the whole
package inside one top folder (an archiver zipped the folder), files the profile allows
beside the documents (``README.TXT``, ``INDEX.HTM``, a viewer's HTML, stylesheets, images,
an XSL for the CDA) and what archivers add (``__MACOSX/``, ``.DS_Store``, ``Thumbs.db``,
editor swap and backup files). Every entry is checked against traversal and bombs as
above; archiver junk is then ignored, and the other extra files are read (bounded), refused
when they are programs, and listed as what they are (``XdmExtra``): never opened, run or
rendered.

Writing (``build_xdm``) produces ``README.TXT``, ``INDEX.HTM`` and
``IHE_XDM/SUBSET01/{METADATA.XML, DOC0001.XML ...}`` with one submission set, a document
entry per document (patient id, type code, author, hash, size, URI ...) and the HasMember
associations, which ``parse_xdm`` (and any XDM reader) reads back.
"""

from __future__ import annotations

import hashlib
import html
import io
import re
import stat
import struct
import uuid
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from lxml import etree

import mss
from mss.documents.base import (
    Document,
    DocumentLimits,
    DocumentRefused,
    DocumentTooLarge,
    ForbiddenDocumentType,
    InvalidArchive,
    MalformedDocument,
    NestedArchive,
    UnsafeDocument,
    too_large_problem,
)
from mss.documents.cda import RPPS_ROOT, Author, CdaInfo, Code, Patient
from mss.documents.single import inspect_document
from mss.documents.sniff import RUNNABLE_EXTENSIONS, executable_kind, extension
from mss.documents.xml import parse_xml

# What the zipfile module (and zlib under it) raise on a damaged or hostile archive: the one
# table every read of an archive translates into InvalidArchive. zlib.error is a damaged
# deflate stream, which zipfile lets through as it is.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError)


# -- refusals ----------------------------------------------------------------------------


class NotAnXdmPackage(ForbiddenDocumentType):
    """A ZIP archive that is not an IHE_XDM package: archives are carried only as XDM."""

    code = "zip-not-xdm"


class ArchiveUnsafePath(UnsafeDocument):
    """An entry name escapes the archive (``..``, absolute, backslash, drive letter ...)."""

    code = "zip-path"


class ArchiveLink(UnsafeDocument):
    """An entry is a symbolic link or a special file."""

    code = "zip-link"


class ArchiveEncrypted(UnsafeDocument):
    """An entry is encrypted, so it cannot be checked."""

    code = "zip-encrypted"


class ArchiveTooManyEntries(DocumentTooLarge):
    """More entries than ``DocumentLimits.max_xdm_entries``."""

    code = "zip-entries"


class ArchiveBomb(DocumentTooLarge):
    """The archive expands beyond the size or ratio limits (a zip bomb, or close to one)."""

    code = "zip-bomb"


class InvalidXdm(MalformedDocument):
    """The archive does not follow the IHE_XDM layout, or its metadata is wrong."""

    code = "xdm-invalid"


class XdmDocumentRefused(DocumentRefused):
    """A document of the package is of a kind an XDM package may not carry here."""

    code = "xdm-document-type"


# -- constants (IHE ITI TF-3, 4.2 ebRIM metadata) ----------------------------------------

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
DOC_ENTRY_STABLE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_FACILITY = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
FORMAT_MIME_SUFFICIENT = Code(
    "urn:ihe:iti:xds:2017:mimeTypeSufficient", "1.3.6.1.4.1.19376.1.2.3", "mimeType Sufficient"
)
"""IHE format code for a document whose MIME type says all (used for PDFs)."""
CONFIDENTIALITY_NORMAL = Code("N", "2.16.840.1.113883.5.25", "Normal")

_ARCHIVE_EXTENSIONS = (
    ".zip", ".jar", ".war", ".apk", ".7z", ".rar", ".gz", ".tgz", ".tar", ".bz2", ".xz", ".zst", ".cab",
)  # fmt: skip
# What archivers and desktops add to a folder they zip: never part of a package, ignored.
_JUNK = re.compile(
    r"(?:^|/)(?:__MACOSX/|\.DS_Store$|\._[^/]*$|Thumbs\.db$|desktop\.ini$|\.#[^/]*$|[^/]*~$|\.[^/]*\.sw[a-p]$"
    r"|\.Spotlight-V100/|\.Trashes/|\.fseventsd/)",
    re.IGNORECASE,
)
_EXTRA_KINDS = {
    ".htm": "html", ".html": "html", ".xhtml": "html", ".css": "stylesheet", ".xsl": "stylesheet",
    ".xslt": "stylesheet", ".png": "image", ".jpg": "image", ".jpeg": "image", ".gif": "image", ".svg": "image",
    ".bmp": "image", ".ico": "image", ".txt": "text", ".xml": "xml", ".pdf": "pdf", ".xsd": "xml",
}  # fmt: skip
_CHUNK = 64 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")
_METADATA = re.compile(r"^IHE_XDM/([^/]+)/METADATA\.XML$")
_XDM_KINDS = ("cda", "pdf")


# -- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class XdmDocument:
    """A document entry of METADATA.XML, with the checked document it points to."""

    path: str
    """Path inside the archive, e.g. ``IHE_XDM/SUBSET01/DOC0001.XML``."""
    uri: str
    mime_type: str
    title: str | None
    class_code: Code | None
    type_code: Code | None
    format_code: Code | None
    confidentiality: Code | None
    patient_id: str | None
    """``XDSDocumentEntry.patientId`` in CX form, e.g. ``123...^^^&1.2.250.1.213.1.4.8&ISO^NH``."""
    unique_id: str | None
    creation_time: str | None
    authors: tuple[str, ...]
    """``authorPerson`` values (HL7 v2 XCN)."""
    document: Document


@dataclass(frozen=True)
class XdmExtra:
    """A file of the package that is not a listed document (README, index page, viewer,
    stylesheet, image ...): listed for the reader, never opened, run or rendered."""

    path: str
    kind: str
    """``html``, ``stylesheet``, ``image``, ``text``, ``xml``, ``pdf`` or ``file``."""
    size: int


@dataclass(frozen=True)
class XdmSubmissionSet:
    """The submission set of a subset: who sent what for which patient."""

    subset: str
    unique_id: str | None
    source_id: str | None
    patient_id: str | None
    submission_time: str | None
    authors: tuple[str, ...]


@dataclass(frozen=True)
class XdmInfo:
    """What was read from an IHE_XDM.ZIP package that passed its checks."""

    documents: tuple[XdmDocument, ...]
    submission_sets: tuple[XdmSubmissionSet, ...]
    entries: int
    uncompressed_size: int
    has_readme: bool
    has_index: bool
    extras: tuple[XdmExtra, ...] = ()
    """Files beside the documents, archiver junk left out."""
    folder: str = ""
    """The top folder the package sits in (``samplexdm/``), or ``""`` at the archive's root."""

    @property
    def cdas(self) -> tuple[CdaInfo, ...]:
        """The CDA documents of the package, in metadata order."""
        return tuple(doc.document.cda for doc in self.documents if doc.document.cda is not None)


# -- archive checks ----------------------------------------------------------------------


def _check_name(filename: str, name: str) -> None:
    shown = _shown(name)
    if not name or any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ArchiveUnsafePath(filename, f"holds an entry with an empty or unprintable name ({shown})")
    if "\\" in name:
        raise ArchiveUnsafePath(filename, f"holds an entry whose name uses backslashes ({shown})")
    if name.startswith("/"):
        raise ArchiveUnsafePath(filename, f"holds an entry with an absolute path ({shown})")
    if _DRIVE.match(name):
        raise ArchiveUnsafePath(filename, f"holds an entry with a drive letter ({shown})")
    parts = name.rstrip("/").split("/")
    if any(part in {"..", "."} for part in parts):
        raise ArchiveUnsafePath(filename, f"holds an entry that escapes the archive ({shown})")
    if any(part == "" for part in parts):
        raise ArchiveUnsafePath(filename, f"holds an entry with an empty path component ({shown})")


def _shown(name: str) -> str:
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in name)
    return cleaned if len(cleaned) <= 60 else cleaned[:57] + "..."


def _check_entry_type(filename: str, info: zipfile.ZipInfo) -> None:
    # Unix-made archives keep the file mode in the high 16 bits of the external attributes.
    if info.create_system != 3:
        return
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if stat.S_ISLNK(mode):
        raise ArchiveLink(filename, f"holds a symbolic link ({_shown(info.filename)}), which is not allowed")
    if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ArchiveLink(filename, f"holds a special file ({_shown(info.filename)}), which is not allowed")


def _declared_entry_count(filename: str, data: bytes) -> int:
    """Entries announced by the end-of-central-directory record (read before zipfile
    builds a list of them all)."""
    end = data.rfind(b"PK\x05\x06", max(0, len(data) - 65557))
    if end < 0 or end + 22 > len(data):
        raise InvalidArchive(filename, "is not a valid ZIP archive: no end of central directory")
    (total,) = struct.unpack("<H", data[end + 10 : end + 12])
    return total


def _ratio_exceeded(size: int, compressed: int, limits: DocumentLimits) -> bool:
    return size > limits.ratio_threshold and size > limits.max_compression_ratio * max(compressed, 1)


def _check_archive(filename: str, data: bytes, zf: zipfile.ZipFile, limits: DocumentLimits) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_xdm_entries:
        raise ArchiveTooManyEntries(filename, f"holds more than {limits.max_xdm_entries} entries")
    seen: set[str] = set()
    total = 0
    for info in infos:
        _check_name(filename, info.filename)
        _check_entry_type(filename, info)
        if info.flag_bits & 0x41:  # bit 0: encrypted, bit 6: strong encryption
            raise ArchiveEncrypted(
                filename, f"holds an encrypted entry ({_shown(info.filename)}), which cannot be checked"
            )
        key = info.filename.rstrip("/").upper()
        if key in seen:
            raise ArchiveUnsafePath(filename, f"holds two entries named {_shown(info.filename)}")
        seen.add(key)
        if info.is_dir():
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise InvalidArchive(filename, f"uses an unsupported compression method for {_shown(info.filename)}")
        if info.filename.lower().endswith(_ARCHIVE_EXTENSIONS) and not _JUNK.search(info.filename):
            raise NestedArchive(filename, f"holds another archive ({_shown(info.filename)}), which is not allowed")
        if _ratio_exceeded(info.file_size, info.compress_size, limits):
            raise ArchiveBomb(
                filename,
                f"holds an entry compressed more than {limits.max_compression_ratio} times ({_shown(info.filename)})",
            )
        total += info.file_size
        if total > limits.max_xdm_total_size:
            raise ArchiveBomb(filename, f"expands to more than {limits.max_xdm_total_size / 1_000_000:g} MB")
    if _ratio_exceeded(total, len(data), limits):
        raise ArchiveBomb(filename, f"is compressed more than {limits.max_compression_ratio} times overall")
    return infos


class _Budget:
    """Bytes the archive may still yield once decompressed."""

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining


def _read(filename: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, limits: DocumentLimits) -> bytes:
    """Decompress one entry in chunks, stopping as soon as it yields more than it declared,
    more than its ratio allows, or more than the archive's remaining budget."""
    out = bytearray()
    try:
        with zf.open(info) as stream:
            while chunk := stream.read(_CHUNK):
                out += chunk
                if len(out) > info.file_size:
                    raise ArchiveBomb(filename, f"has an entry larger than it declares ({_shown(info.filename)})")
                if len(out) > budget.remaining:
                    raise ArchiveBomb(filename, f"expands to more than {limits.max_xdm_total_size / 1_000_000:g} MB")
                if _ratio_exceeded(len(out), info.compress_size, limits):
                    raise ArchiveBomb(
                        filename,
                        f"holds an entry compressed more than {limits.max_compression_ratio} times "
                        f"({_shown(info.filename)})",
                    )
    except ZIP_ERRORS as exc:
        raise InvalidArchive(filename, f"is not a valid ZIP archive: {_shown(info.filename)} cannot be read") from exc
    if len(out) != info.file_size:
        raise InvalidArchive(filename, f"is not a valid ZIP archive: {_shown(info.filename)} is truncated")
    budget.remaining -= len(out)
    data = bytes(out)
    if data.startswith((b"PK\x03\x04", b"PK\x05\x06", b"\x1f\x8b", b"Rar!", b"7z\xbc\xaf")):
        raise NestedArchive(filename, f"holds another archive ({_shown(info.filename)}), which is not allowed")
    return data


# -- metadata ----------------------------------------------------------------------------


def _r(name: str) -> str:
    return f"{{{RIM}}}{name}"


def _slot(el: etree._Element, name: str) -> list[str]:
    for slot in el.findall(_r("Slot")):
        if slot.get("name") == name:
            return [(value.text or "").strip() for value in slot.findall(f"{_r('ValueList')}/{_r('Value')}")]
    return []


def _first(values: list[str]) -> str | None:
    return values[0] if values and values[0] else None


def _localized(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    found = el.find(f"{_r('Name')}/{_r('LocalizedString')}")
    value = found.get("value") if found is not None else None
    return " ".join(value.split()) if value else None


def _classification(el: etree._Element, scheme: str) -> Code | None:
    for item in el.findall(_r("Classification")):
        if item.get("classificationScheme") == scheme and item.get("nodeRepresentation"):
            return Code(
                code=item.get("nodeRepresentation", ""),
                code_system=_first(_slot(item, "codingScheme")),
                display_name=_localized(item),
            )
    return None


def _external_id(el: etree._Element, scheme: str) -> str | None:
    for item in el.findall(_r("ExternalIdentifier")):
        if item.get("identificationScheme") == scheme:
            return item.get("value")
    return None


def _authors(el: etree._Element, scheme: str) -> tuple[str, ...]:
    found: list[str] = []
    for item in el.findall(_r("Classification")):
        if item.get("classificationScheme") == scheme:
            found.extend(value for value in _slot(item, "authorPerson") if value)
    return tuple(found)


def _uri(values: list[str]) -> str | None:
    """The URI slot; long URIs are split over numbered values (``1|abc``, ``2|def``)."""
    if len(values) <= 1:
        return _first(values)
    parts = []
    for value in values:
        index, sep, text = value.partition("|")
        if not sep or not (index.isascii() and index.isdigit()):
            return None
        parts.append((int(index), text))
    return "".join(text for _, text in sorted(parts))


def _registry_objects(filename: str, root: etree._Element) -> etree._Element:
    if root.tag == f"{{{LCM}}}SubmitObjectsRequest":
        found = root.find(_r("RegistryObjectList"))
        if found is None:
            raise InvalidXdm(filename, "has a METADATA.XML without a RegistryObjectList")
        return found
    if root.tag == _r("RegistryObjectList"):
        return root
    raise InvalidXdm(filename, "has a METADATA.XML that is not an ebRIM 3.0 SubmitObjectsRequest")


def _resolve_uri(filename: str, subset_dir: str, uri: str) -> str:
    if "://" in uri or uri.startswith(("/", "\\")) or "\\" in uri or _DRIVE.match(uri):
        raise InvalidXdm(filename, f"has a METADATA.XML that points outside its folder ({_shown(uri)})")
    parts = uri.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise InvalidXdm(filename, f"has a METADATA.XML that points outside its folder ({_shown(uri)})")
    return f"{subset_dir}/{uri}".upper()


# -- reading -----------------------------------------------------------------------------


def parse_xdm(data: bytes, *, limits: DocumentLimits, filename: str = "IHE_XDM.ZIP") -> XdmInfo:
    """Check an IHE_XDM.ZIP package and every document in it; return its ``XdmInfo``.

    Raises ``InvalidArchive``, ``NotAnXdmPackage``, ``ArchiveUnsafePath``, ``ArchiveLink``,
    ``ArchiveEncrypted``, ``NestedArchive``, ``ArchiveTooManyEntries``, ``ArchiveBomb``,
    ``InvalidXdm``, ``XdmDocumentRefused``, or what the hardened XML parser and
    ``single.inspect_document`` raise for METADATA.XML and the documents.
    """
    if len(data) > limits.max_document_size:
        raise DocumentTooLarge(filename, too_large_problem(limits.max_document_size))
    if _declared_entry_count(filename, data) > limits.max_xdm_entries:
        raise ArchiveTooManyEntries(filename, f"holds more than {limits.max_xdm_entries} entries")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except ZIP_ERRORS as exc:
        raise InvalidArchive(filename, "is not a valid ZIP archive") from exc
    with zf:
        infos = _check_archive(filename, data, zf, limits)
        everything = {info.filename.upper(): info for info in infos if not info.is_dir()}
        kept = {name: info for name, info in everything.items() if not _JUNK.search(info.filename)}
        folder = _package_folder(kept)
        files = {name[len(folder) :]: info for name, info in kept.items() if name.startswith(folder)}
        if not any(name.startswith("IHE_XDM/") for name in files):
            raise NotAnXdmPackage(
                filename, "is a ZIP archive but not an IHE_XDM package: only IHE_XDM.ZIP archives are allowed"
            )
        metadata_paths = sorted(name for name in files if _METADATA.match(name))
        if not metadata_paths:
            raise InvalidXdm(
                filename, "is not a valid IHE_XDM package: no IHE_XDM/SUBSETnn/METADATA.XML", code="xdm-no-metadata"
            )

        budget = _Budget(limits.max_xdm_total_size)
        listed: set[str] = set(metadata_paths)
        documents: list[XdmDocument] = []
        submission_sets: list[XdmSubmissionSet] = []
        for metadata_path in metadata_paths:
            subset_dir = metadata_path.rsplit("/", 1)[0]
            subset_name = files[metadata_path].filename.rsplit("/", 1)[0]
            metadata_bytes = _read(filename, zf, files[metadata_path], budget, limits)
            root = parse_xml(metadata_bytes, filename=f"{filename}/{files[metadata_path].filename}", limits=limits)
            objects = _registry_objects(filename, root)
            entries = objects.findall(_r("ExtrinsicObject"))
            if not entries:
                raise InvalidXdm(filename, f"lists no document in {_shown(subset_name)}/METADATA.XML")
            for entry in entries:
                uri = _uri(_slot(entry, "URI")) or _uri_by_id(entry, subset_dir, files, len(entries))
                if not uri:
                    raise InvalidXdm(filename, "has a document entry without a URI in METADATA.XML")
                path = _resolve_uri(filename, subset_dir, uri)
                info = files.get(path)
                if info is None:
                    raise InvalidXdm(filename, f"lists {_shown(uri)} in METADATA.XML but does not hold it")
                listed.add(path)
                documents.append(_read_document(filename, zf, info, entry, uri, budget, limits))
            for package in objects.findall(_r("RegistryPackage")):
                submission_sets.append(
                    XdmSubmissionSet(
                        subset=subset_name,
                        unique_id=_external_id(package, SS_UNIQUE_ID),
                        source_id=_external_id(package, SS_SOURCE_ID),
                        patient_id=_external_id(package, SS_PATIENT_ID),
                        submission_time=_first(_slot(package, "submissionTime")),
                        authors=_authors(package, SS_AUTHOR),
                    )
                )
        extras = tuple(
            _read_extra(filename, zf, info, budget, limits)
            for name, info in sorted(kept.items())
            if name[len(folder) :] not in listed or not name.startswith(folder)
        )
    return XdmInfo(
        documents=tuple(documents),
        submission_sets=tuple(submission_sets),
        entries=len(infos),
        uncompressed_size=sum(info.file_size for info in infos),
        has_readme="README.TXT" in files,
        has_index="INDEX.HTM" in files,
        extras=extras,
        folder=kept[next(iter(kept))].filename[: len(folder)] if folder else "",
    )


_DOCUMENT_EXTENSIONS = (".XML", ".PDF", ".CDA", ".CCD", ".CCDA")


def _uri_by_id(entry: etree._Element, subset_dir: str, files: dict[str, zipfile.ZipInfo], count: int) -> str | None:
    """The file of a document entry written without a URI slot (some XDR-to-XDM gateways
    leave it out): the subset's file named after the entry's id, else, for a subset with a
    single entry, its single document file."""
    prefix = subset_dir + "/"
    candidates = [
        name[len(prefix) :]
        for name in files
        if name.startswith(prefix)
        and "/" not in name[len(prefix) :]
        and name.endswith(_DOCUMENT_EXTENSIONS)
        and not _METADATA.match(name)
    ]
    entry_id = (entry.get("id") or "").upper().removeprefix("URN:UUID:")
    named = [name for name in candidates if entry_id and name.rsplit(".", 1)[0] == entry_id]
    if len(named) == 1:
        return files[prefix + named[0]].filename.rsplit("/", 1)[-1]
    if count == 1 and len(candidates) == 1:
        return files[prefix + candidates[0]].filename.rsplit("/", 1)[-1]
    return None


def _package_folder(files: dict[str, zipfile.ZipInfo]) -> str:
    """``""`` when ``IHE_XDM/`` is at the archive's root, else the one top folder that
    holds it (upper case, with its slash) when every file sits in that folder."""
    if any(name.startswith("IHE_XDM/") for name in files):
        return ""
    tops = {name.split("/", 1)[0] for name in files}
    if len(tops) == 1:
        top = next(iter(tops)) + "/"
        if any(name.startswith(top + "IHE_XDM/") for name in files):
            return top
    return ""


def _read_extra(
    filename: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget, limits: DocumentLimits
) -> XdmExtra:
    """A file beside the documents: read within the archive's budget, refused when it is a
    program (by its content or by its name), else described."""
    ext = extension(info.filename)
    if ext in RUNNABLE_EXTENSIONS:
        raise UnsafeDocument(filename, f"holds a program ({_shown(info.filename)}), which is not allowed")
    data = _read(filename, zf, info, budget, limits)
    what = executable_kind(data[:64])
    if what is not None:
        raise UnsafeDocument(filename, f"holds {what} ({_shown(info.filename)}), which is not allowed")
    return XdmExtra(path=info.filename, kind=_EXTRA_KINDS.get(ext, "file"), size=len(data))


def _read_document(
    filename: str,
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    entry: etree._Element,
    uri: str,
    budget: _Budget,
    limits: DocumentLimits,
) -> XdmDocument:
    data = _read(filename, zf, info, budget, limits)
    declared_size = _first(_slot(entry, "size"))
    if declared_size is not None and declared_size != str(len(data)):
        raise InvalidXdm(filename, f"declares a size for {_shown(uri)} that does not match the file")
    declared_hash = _first(_slot(entry, "hash"))
    if declared_hash is not None and declared_hash.lower() != hashlib.sha1(data).hexdigest():
        raise InvalidXdm(filename, f"declares a hash for {_shown(uri)} that does not match the file")
    mime_type = entry.get("mimeType") or "application/octet-stream"
    document = inspect_document(f"{filename}/{info.filename}", mime_type, data, limits=limits)
    if document.kind not in _XDM_KINDS:
        raise XdmDocumentRefused(filename, f"holds {_shown(uri)}, which is neither a CDA nor a PDF document")
    return XdmDocument(
        path=info.filename,
        uri=uri,
        mime_type=mime_type,
        title=_localized(entry),
        class_code=_classification(entry, DE_CLASS),
        type_code=_classification(entry, DE_TYPE),
        format_code=_classification(entry, DE_FORMAT),
        confidentiality=_classification(entry, DE_CONFIDENTIALITY),
        patient_id=_external_id(entry, DE_PATIENT_ID),
        unique_id=_external_id(entry, DE_UNIQUE_ID),
        creation_time=_first(_slot(entry, "creationTime")),
        authors=_authors(entry, DE_AUTHOR),
        document=document,
    )


# -- writing -----------------------------------------------------------------------------


def _v2(text: str | None) -> str:
    """Escape HL7 v2 delimiters in a component value."""
    if not text:
        return ""
    escaped = text.replace("\\", "\\E\\")
    for char, escape in (("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        escaped = escaped.replace(char, escape)
    return " ".join(escaped.split())


def author_person(author: Author) -> str:
    """HL7 v2 XCN for ``authorPerson``: ``id^FAMILY^Given^^^^^^&authority&ISO^D^^^IDNPS``
    for a national professional id, else the name alone."""
    name = author.name
    family = _v2(name.family if name else None)
    given = _v2(name.given[0] if name and name.given else None)
    if author.id and author.id.extension:
        id_type = "IDNPS" if author.id.root == RPPS_ROOT else ""
        return f"{_v2(author.id.extension)}^{family}^{given}^^^^^^&{author.id.root}&ISO^D^^^{id_type}".rstrip("^")
    return f"^{family}^{given}"


def author_institution(author: Author) -> str | None:
    """HL7 v2 XON for ``authorInstitution``: ``Name^^^^^&authority&ISO^IDNST^^^id``."""
    organisation = author.organisation
    if organisation is None or not organisation.name:
        return None
    if organisation.id and organisation.id.extension:
        return f"{_v2(organisation.name)}^^^^^&{organisation.id.root}&ISO^IDNST^^^{_v2(organisation.id.extension)}"
    return _v2(organisation.name)


def patient_cx(patient: Patient) -> str | None:
    """The patient id in CX form: the INS when known, else the first identifier."""
    if patient.ins is not None:
        return patient.ins.cx()
    for ident in patient.ids:
        if ident.extension:
            return f"{_v2(ident.extension)}^^^&{ident.root}&ISO"
    return None


def _utc_ts(value: str | None, fallback: datetime) -> str:
    """An HL7 TS as the UTC ``YYYYMMDDhhmmss`` that XDS metadata requires."""
    if value:
        match = re.fullmatch(r"([0-9]{4,14})(?:\.[0-9]+)?(?:([+-])([0-9]{2})([0-9]{2}))?", value.strip())
        if match:
            digits, sign, hours, minutes = match.groups()
            if sign is None:
                return digits
            padded = digits.ljust(14, "0")
            try:
                local = datetime.strptime(padded, "%Y%m%d%H%M%S")
            except ValueError:
                return digits
            offset = timedelta(hours=int(hours), minutes=int(minutes)) * (1 if sign == "+" else -1)
            if abs(offset) >= timedelta(hours=24):
                return digits  # "+9900" is no time zone: the time as written, as without one
            try:
                moment = local.replace(tzinfo=timezone(offset)).astimezone(UTC)
            except OverflowError:
                return digits  # at the edge of the calendar (year 1 or 9999)
            return moment.strftime("%Y%m%d%H%M%S")[: len(digits)]
    return fallback.astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _oid_from_uuid() -> str:
    """A fresh OID in the UUID arc (ITU-T X.667: ``2.25.<uuid as an integer>``)."""
    return f"2.25.{uuid.uuid4().int}"


class _Metadata:
    """Builds the ebRIM elements of one METADATA.XML."""

    def __init__(self) -> None:
        self.root = etree.Element(f"{{{LCM}}}SubmitObjectsRequest", nsmap={"lcm": LCM, "rim": RIM})
        self.objects = etree.SubElement(self.root, _r("RegistryObjectList"))

    @staticmethod
    def slot(parent: etree._Element, name: str, *values: str) -> None:
        slot = etree.SubElement(parent, _r("Slot"), name=name)
        value_list = etree.SubElement(slot, _r("ValueList"))
        for value in values:
            etree.SubElement(value_list, _r("Value")).text = value

    @staticmethod
    def name(parent: etree._Element, text: str | None) -> None:
        if text:
            etree.SubElement(etree.SubElement(parent, _r("Name")), _r("LocalizedString"), value=text)

    @staticmethod
    def classified(parent: etree._Element, scheme: str, node: str) -> etree._Element:
        """A new ``Classification`` of ``parent`` in ``scheme``, coded ``node``."""
        return etree.SubElement(
            parent,
            _r("Classification"),
            classificationScheme=scheme,
            classifiedObject=parent.get("id", ""),
            id=f"urn:uuid:{uuid.uuid4()}",
            nodeRepresentation=node,
        )

    def classification(self, parent: etree._Element, scheme: str, code: Code | None) -> None:
        if code is None:
            return
        item = self.classified(parent, scheme, code.code)
        self.slot(item, "codingScheme", code.code_system or "")
        self.name(item, code.display_name or code.code)

    def author(self, parent: etree._Element, scheme: str, author: Author) -> None:
        item = self.classified(parent, scheme, "")
        self.slot(item, "authorPerson", author_person(author))
        institution = author_institution(author)
        if institution:
            self.slot(item, "authorInstitution", institution)
        if author.specialty is not None:
            specialty = author.specialty
            self.slot(
                item,
                "authorSpecialty",
                f"{_v2(specialty.code)}^{_v2(specialty.display_name)}^{_v2(specialty.code_system)}",
            )

    def external_id(self, parent: etree._Element, scheme: str, value: str | None, label: str) -> None:
        if not value:
            return
        item = etree.SubElement(
            parent,
            _r("ExternalIdentifier"),
            identificationScheme=scheme,
            value=value,
            id=f"urn:uuid:{uuid.uuid4()}",
            registryObject=parent.get("id", ""),
        )
        self.name(item, label)


def _source_patient_info(patient: Patient) -> list[str]:
    values = []
    cx = patient_cx(patient)
    if cx:
        values.append(f"PID-3|{cx}")
    if patient.name is not None:
        family = patient.name.birth_family or patient.name.family
        given = patient.name.first_given or (patient.name.given[0] if patient.name.given else None)
        values.append(f"PID-5|{_v2(family)}^{_v2(given)}^^^^^L")
    if patient.birth_date:
        values.append(f"PID-7|{_v2(patient.birth_date[:8])}")
    if patient.gender is not None:
        values.append(f"PID-8|{_v2(patient.gender.code)}")
    return values


def build_xdm(
    documents: Sequence[tuple[str, bytes, CdaInfo | None]],
    *,
    author: Author,
    patient: Patient | None,
    source_id: str | None = None,
    limits: DocumentLimits | None = None,
    now: datetime | None = None,
) -> bytes:
    """Package documents (CDA or PDF) as an IHE_XDM.ZIP and return the archive bytes.

    Each item is ``(filename, bytes, CdaInfo or None)``; a document without ``CdaInfo`` is
    checked with ``single.inspect_document`` first (and its CdaInfo read if it is a CDA).
    ``author`` is the sender (submission set author, and document author for PDFs);
    ``patient`` gives the submission set's patient id (a CDA's own patient is used for its
    entry). ``source_id`` is the sending system's OID (default: one derived from the
    author's id). Raises ``ValueError`` for an empty list, or the documents' check errors.
    """
    if not documents:
        raise ValueError("an IHE_XDM package needs at least one document")
    limits = limits or DocumentLimits()
    moment = now or datetime.now(UTC)
    timestamp = moment.astimezone(UTC).strftime("%Y%m%d%H%M%S")
    metadata = _Metadata()
    subset = "IHE_XDM/SUBSET01"
    files: list[tuple[str, bytes]] = []
    listing: list[tuple[str, str]] = []

    submission_id = f"urn:uuid:{uuid.uuid4()}"
    entries: list[str] = []
    for number, (original_name, data, cda) in enumerate(documents, start=1):
        if cda is None:
            checked = inspect_document(original_name, "application/octet-stream", data, limits=limits)
            if checked.kind not in _XDM_KINDS:
                raise XdmDocumentRefused(original_name, "is neither a CDA nor a PDF document and cannot be packaged")
            cda = checked.cda
        is_cda = cda is not None
        uri = f"DOC{number:04d}.{'XML' if is_cda else 'PDF'}"
        files.append((f"{subset}/{uri}", data))
        entry_id = f"urn:uuid:{uuid.uuid4()}"
        entries.append(entry_id)
        entry = etree.SubElement(
            metadata.objects,
            _r("ExtrinsicObject"),
            id=entry_id,
            mimeType="text/xml" if is_cda else "application/pdf",
            objectType=DOC_ENTRY_STABLE,
        )
        doc_patient = cda.patient if cda is not None else patient
        metadata.slot(entry, "creationTime", _utc_ts(cda.effective_time if cda else None, moment))
        metadata.slot(entry, "hash", hashlib.sha1(data).hexdigest())
        metadata.slot(entry, "languageCode", (cda.language if cda and cda.language else "fr-FR"))
        metadata.slot(entry, "size", str(len(data)))
        if doc_patient is not None:
            cx = patient_cx(doc_patient)
            if cx:
                metadata.slot(entry, "sourcePatientId", cx)
            info_values = _source_patient_info(doc_patient)
            if info_values:
                metadata.slot(entry, "sourcePatientInfo", *info_values)
        metadata.slot(entry, "URI", uri)
        title = (cda.title if cda else None) or original_name.replace("\\", "/").rsplit("/", 1)[-1]
        metadata.name(entry, title)
        listing.append((uri, title))
        for doc_author in cda.authors if cda and cda.authors else (author,):
            metadata.author(entry, DE_AUTHOR, doc_author)
        confidentiality = cda.confidentiality if cda is not None else None
        metadata.classification(entry, DE_CONFIDENTIALITY, confidentiality or CONFIDENTIALITY_NORMAL)
        metadata.classification(entry, DE_FORMAT, None if cda else FORMAT_MIME_SUFFICIENT)
        if cda is not None:
            metadata.classification(entry, DE_FACILITY, cda.facility_type)
            metadata.classification(entry, DE_PRACTICE, cda.practice_setting)
            metadata.classification(entry, DE_TYPE, cda.type_code)
        metadata.external_id(
            entry, DE_PATIENT_ID, patient_cx(doc_patient) if doc_patient else None, "XDSDocumentEntry.patientId"
        )
        unique = str(cda.document_id) if cda is not None and cda.document_id is not None else _oid_from_uuid()
        metadata.external_id(entry, DE_UNIQUE_ID, unique, "XDSDocumentEntry.uniqueId")

    package = etree.SubElement(metadata.objects, _r("RegistryPackage"), id=submission_id)
    metadata.slot(package, "submissionTime", timestamp)
    metadata.author(package, SS_AUTHOR, author)
    metadata.external_id(package, SS_PATIENT_ID, patient_cx(patient) if patient else None, "XDSSubmissionSet.patientId")
    if source_id is None:
        seed = str(author.id) if author.id else author_person(author)
        source_id = f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, seed).int}"
    metadata.external_id(package, SS_SOURCE_ID, source_id, "XDSSubmissionSet.sourceId")
    metadata.external_id(package, SS_UNIQUE_ID, _oid_from_uuid(), "XDSSubmissionSet.uniqueId")
    etree.SubElement(
        metadata.objects,
        _r("Classification"),
        classifiedObject=submission_id,
        classificationNode=SUBMISSION_SET_NODE,
        id=f"urn:uuid:{uuid.uuid4()}",
    )
    for entry_id in entries:
        association = etree.SubElement(
            metadata.objects,
            _r("Association"),
            associationType=HAS_MEMBER,
            sourceObject=submission_id,
            targetObject=entry_id,
            id=f"urn:uuid:{uuid.uuid4()}",
        )
        metadata.slot(association, "SubmissionSetStatus", "Original")

    metadata_xml = etree.tostring(metadata.root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    out = io.BytesIO()
    date_time = moment.astimezone(UTC).timetuple()[:6]
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, content in (
            ("README.TXT", _readme(author, moment)),
            ("INDEX.HTM", _index(listing, subset)),
            (f"{subset}/METADATA.XML", metadata_xml),
            *files,
        ):
            info = zipfile.ZipInfo(name, date_time=date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, content)
    return out.getvalue()


def _readme(author: Author, moment: datetime) -> bytes:
    sender = author.organisation.name if author.organisation and author.organisation.name else None
    who = author.name.display() if author.name else None
    lines = [
        "IHE XDM interchange package (IHE ITI Technical Framework, XDM profile).",
        "",
        f"Created by: mss {mss.__version__}, secure health messaging.",
        f"Created on: {moment.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"Sender: {' - '.join(part for part in (who, sender) if part) or 'see the message that carried this package'}",
        "Contact: reply to the message that carried this package.",
        "",
        "Contents: INDEX.HTM lists the documents; IHE_XDM/SUBSET01/METADATA.XML describes them",
        "(IHE document entries); the documents themselves are in IHE_XDM/SUBSET01/.",
    ]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _index(listing: list[tuple[str, str]], subset: str) -> bytes:
    rows = "\n".join(
        f'<li><a href="{html.escape(subset)}/{html.escape(uri)}">{html.escape(title)}</a></li>'
        for uri, title in listing
    )
    page = (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8"><title>IHE XDM</title></head>\n'
        f"<body><h1>Documents</h1>\n<ul>\n{rows}\n</ul>\n"
        "<p>Les m&eacute;tadonn&eacute;es IHE sont dans "
        f"{html.escape(subset)}/METADATA.XML.</p></body></html>\n"
    )
    return page.encode("utf-8")


def read_document(data: bytes, index: int, *, limits: DocumentLimits, filename: str) -> tuple[XdmDocument, bytes]:
    """The ``index``-th document of a package and its bytes, read like every entry: the whole
    package is checked first (``parse_xdm``), then the entry is read within the same bounds.

    Raises IndexError for an index the package does not have, and what ``parse_xdm`` raises.
    """
    info = parse_xdm(data, limits=limits, filename=filename)
    if not 0 <= index < len(info.documents):
        raise IndexError(index)
    document = info.documents[index]
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except ZIP_ERRORS as exc:
        raise InvalidArchive(filename, "is not a valid ZIP archive") from exc
    with zf:
        entry = next(i for i in zf.infolist() if i.filename == document.path)
        return document, _read(filename, zf, entry, _Budget(limits.max_xdm_total_size), limits)
