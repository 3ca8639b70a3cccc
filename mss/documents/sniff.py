"""What a file is, from its content first: magic bytes, every signature it carries (a file
that is two things is refused), then its declared type and name.
"""

from __future__ import annotations

import io
import re
import zipfile

from mss.documents.base import (
    DocumentTypeMismatch,
    ForbiddenDocumentType,
    InvalidArchive,
    InvalidPdf,
    InvalidXml,
    Kind,
    PolyglotDocument,
    display_name,
)

# -- sniffing ----------------------------------------------------------------------------

# Magic numbers of what is never carried, checked at offset 0 before anything else so that a
# polyglot (an executable that also holds "%PDF-" further on) is refused for what it starts as.
_FORBIDDEN_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x7fELF", "an executable (ELF)"),
    (b"\xca\xfe\xba\xbe", "an executable (Mach-O or Java class)"),
    (b"\xcf\xfa\xed\xfe", "an executable (Mach-O)"),
    (b"\xce\xfa\xed\xfe", "an executable (Mach-O)"),
    (b"\xfe\xed\xfa\xce", "an executable (Mach-O)"),
    (b"\xfe\xed\xfa\xcf", "an executable (Mach-O)"),
    (b"dex\n", "an executable (Android)"),
    (b"\x00asm", "an executable (WebAssembly)"),
    (b"#!", "a script"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Office document"),
    (b"{\\rtf", "an RTF document"),
    (b"\x89PNG\r\n\x1a\n", "an image"),
    (b"\xff\xd8\xff", "an image"),
    (b"GIF87a", "an image"),
    (b"GIF89a", "an image"),
    (b"II*\x00", "an image"),
    (b"MM\x00*", "an image"),
    (b"RIFF", "a media file"),
    (b"Rar!\x1a\x07", "an archive (RAR)"),
    (b"7z\xbc\xaf\x27\x1c", "an archive (7z)"),
    (b"\x1f\x8b", "an archive (gzip)"),
    (b"BZh", "an archive (bzip2)"),
    (b"\xfd7zXZ\x00", "an archive (xz)"),
    (b"\x28\xb5\x2f\xfd", "an archive (zstd)"),
    (b"MSCF", "an archive (cabinet)"),
)

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_PDF_MAGIC = b"%PDF-"
_PDF_HEADER_WINDOW = 1024
_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_HTML_START = re.compile(rb"\s*<(!doctype\s+html|html[\s>]|head[\s>]|body[\s>]|script[\s>])", re.IGNORECASE)

DECLARED_TYPES: dict[str, frozenset[str]] = {
    # Mail clients often label any attachment application/octet-stream: the content decides.
    "pdf": frozenset({"application/pdf", "application/x-pdf", "application/octet-stream"}),
    # CDA as vendors label it: the XML types, HL7's registered v3 type, and the CDA types
    # found in IHE_XDM metadata and mail from US, Swiss and Austrian systems.
    "cda": frozenset(
        {
            "text/xml",
            "application/xml",
            "application/hl7-v3+xml",
            "application/octet-stream",
            "text/x-cda-r2+xml",
            "application/x-cda-r2+xml",
            "application/cda+xml",
            "text/cda+xml",
            "application/x-hl7-cda-level-one+xml",
            "application/hl7-cda+xml",
            "application/x-cda+xml",
        }
    ),  # fmt: skip
    "xdm": frozenset(
        {"application/zip", "application/x-zip-compressed", "application/x-zip", "application/octet-stream"}
    ),
    "text": frozenset({"text/plain"}),
}
EXTENSIONS: dict[str, frozenset[str]] = {
    "pdf": frozenset({".pdf"}),
    # ".ccd" and ".ccda" are how US systems name C-CDA exports; ".txt" how some name any
    # export. The content decides the kind, and a text viewer runs nothing.
    "cda": frozenset({".xml", ".cda", ".ccd", ".ccda", ".txt"}),
    "xdm": frozenset({".zip"}),
    "text": frozenset({".txt", ".text", ""}),
}
_KIND_NAMES = {"pdf": "a PDF", "cda": "a CDA R2 document", "xdm": "a ZIP archive", "text": "plain text"}


def normalise_content_type(content_type: str | None) -> str:
    """``Text/Plain; charset=utf-8`` -> ``text/plain``; empty -> ``application/octet-stream``."""
    value = (content_type or "").split(";", 1)[0].strip().lower()
    return value or "application/octet-stream"


def extension(filename: str | None) -> str:
    """The lower-case extension with its dot (``.pdf``), or ``""``."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    if "." not in name.strip("."):
        return ""
    return "." + name.rsplit(".", 1)[-1].lower()


def _forbidden_magic(data: bytes) -> str | None:
    for magic, what in _FORBIDDEN_MAGIC:
        if data.startswith(magic):
            return what
    # "MZ" and "BM" also start plain words; the binary headers always hold NUL bytes.
    if data.startswith(b"MZ") and b"\x00" in data[2:64]:
        return "an executable (Windows)"
    if data.startswith(b"BM") and b"\x00" in data[2:14]:
        return "an image"
    return None


# Names of files a reader's system would run rather than show, whatever their content says
# (scripts are text): never carried inside a PDF or an IHE_XDM package.
RUNNABLE_EXTENSIONS = frozenset(
    {
        ".exe", ".com", ".scr", ".pif", ".bat", ".cmd", ".msi", ".msp", ".dll", ".cpl", ".vbs", ".vbe", ".js",
        ".jse", ".wsf", ".wsh", ".ps1", ".psm1", ".hta", ".lnk", ".jar", ".sh", ".app", ".dmg", ".reg", ".inf",
        ".apk", ".iso", ".docm", ".xlsm", ".pptm",
    }
)  # fmt: skip

_NOT_EXECUTABLE = ("an image", "a media file", "an RTF document")


def executable_kind(data: bytes) -> str | None:
    """What ``data`` is when it is an executable, a script, an archive or an Office binary
    (never acceptable inside a document), else None."""
    what = _forbidden_magic(data)
    if what is None and data.startswith(_ZIP_MAGIC):
        return "an archive (ZIP)"
    return None if what in _NOT_EXECUTABLE else what


def _looks_like_xml(data: bytes) -> bool:
    head = data[:512]
    for bom, codec in _BOMS:
        if head.startswith(bom):
            return head[len(bom) :].decode(codec, "ignore").lstrip().startswith("<")
    # UTF-16 without a byte order mark: "<" then a NUL, or the reverse.
    return head.lstrip().startswith(b"<") or head.startswith((b"<\x00", b"\x00<"))


def _claimed_kind(content_type: str, ext: str) -> Kind | None:
    """The kind the sender claims by type or extension (for a clearer refusal)."""
    for kind in ("pdf", "xdm", "cda"):
        if (ext in EXTENSIONS[kind] and ext != ".txt") or (
            content_type in DECLARED_TYPES[kind] and content_type != "application/octet-stream"
        ):
            return kind
    return None


def _zip_directory_at_end(data: bytes) -> bool:
    """True when a ZIP reader would open ``data``: it reads the end of central directory
    record near the end of the file, whatever the file starts with."""
    try:
        return zipfile.is_zipfile(io.BytesIO(data))
    except (OSError, ValueError):
        return False


def signatures(data: bytes) -> list[str]:
    """Every format ``data`` announces, in the places readers look for them.

    A PDF reader accepts ``%PDF-`` anywhere in the first kilobyte; a ZIP reader starts from
    the directory at the end; a browser or an XML parser from the first markup. A file that
    announces one format is one thing to every reader; two is a polyglot.
    """
    found: list[str] = []
    pdf_at = data.find(_PDF_MAGIC, 0, _PDF_HEADER_WINDOW)
    if pdf_at >= 0:
        found.append("a PDF")
        if data[:pdf_at].strip(b" \t\r\n\f\x00"):
            # Bytes a PDF reader skips but another program reads first.
            found.append("another format before its %PDF- header")
    if data.startswith(_ZIP_MAGIC) or _zip_directory_at_end(data):
        found.append("a ZIP archive")
    if _looks_like_xml(data):
        found.append("markup (XML or HTML)")
    return found


def sniff(data: bytes, content_type: str = "application/octet-stream", filename: str = "") -> Kind:
    """The kind of ``data`` judged from its content first, then its declared type and name.

    Returns ``pdf``, ``xdm`` (any ZIP), ``cda`` (any XML) or ``text``. Raises
    ``ForbiddenDocumentType`` for what is never carried (executables, images, HTML, Office,
    unknown binary), ``PolyglotDocument`` for a file with the signatures of two formats
    (see ``signatures``), and the claimed kind's ``MalformedDocument`` when the name or type
    says PDF, XML or ZIP but the content is none of them.
    """
    what = _forbidden_magic(data)
    if what is not None:
        raise ForbiddenDocumentType(filename, f"is {what}: this type of attachment is not allowed")
    found = signatures(data)
    if len(found) > 1:
        raise PolyglotDocument(filename, f"is at once {' and '.join(found)}: a file that is two things is not allowed")
    if found == ["a PDF"]:
        return "pdf"
    if data.startswith(_ZIP_MAGIC):
        # The first entry's name (at offset 30 of a local header) gives away the common
        # ZIP-based formats, for a clearer reply than "not an IHE_XDM package".
        first_entry = data[30:100]
        if first_entry.startswith((b"[Content_Types].xml", b"_rels/", b"docProps/", b"word/", b"xl/", b"ppt/")):
            raise ForbiddenDocumentType(filename, "is an Office document: this type of attachment is not allowed")
        if first_entry.startswith(b"mimetypeapplication/vnd.oasis.opendocument"):
            raise ForbiddenDocumentType(filename, "is an Office document: this type of attachment is not allowed")
        if first_entry.startswith((b"META-INF/", b"AndroidManifest.xml", b"classes.dex")):
            raise ForbiddenDocumentType(filename, "is an application package: this type of attachment is not allowed")
        return "xdm"
    declared = normalise_content_type(content_type)
    ext = extension(filename)
    if declared == "text/plain" and ext in EXTENSIONS["text"] and b"\x00" not in data:
        # A text body may well start with "<" or look like markup: it is shown as text.
        return "text"
    if _HTML_START.match(data[:512]):
        raise ForbiddenDocumentType(filename, "is an HTML document: this type of attachment is not allowed")
    if _looks_like_xml(data):
        return "cda"
    claimed = _claimed_kind(declared, ext)
    if claimed == "pdf":
        raise InvalidPdf(filename, "is not a valid PDF: no %PDF header")
    if claimed == "cda":
        raise InvalidXml(filename, "is not a valid XML document: it does not start with markup")
    if claimed == "xdm":
        raise InvalidArchive(filename, "is not a valid ZIP archive: no ZIP signature")
    if b"\x00" in data:
        raise ForbiddenDocumentType(filename, "is of an unknown type: this type of attachment is not allowed")
    raise ForbiddenDocumentType(
        filename, f"is of an unrecognised type ({display_name(declared)}): this type of attachment is not allowed"
    )


def check_declared(kind: Kind, filename: str, content_type: str) -> None:
    """Refuse when the declared type or the extension names another kind than the content."""
    if content_type not in DECLARED_TYPES[kind]:
        raise DocumentTypeMismatch(filename, f"is {_KIND_NAMES[kind]} but is declared as {display_name(content_type)}")
    ext = extension(filename)
    # A name without an extension contradicts nothing; a different extension does.
    if ext and ext not in EXTENSIONS[kind]:
        raise DocumentTypeMismatch(
            filename, f"is {_KIND_NAMES[kind]} but its name ends in {display_name(ext or 'no extension')}"
        )
