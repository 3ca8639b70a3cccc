"""CDA R2 documents: hardened XML parsing, header metadata and a display structure.

``parse_xml`` is the only way mss reads XML from the outside (CDA documents and the
METADATA.XML of IHE_XDM packages): lxml with entities, DTD loading, validation, network and
huge trees off, and any DOCTYPE refused outright, so XXE, billion laughs and parameter
entities are refused before anything is expanded or fetched.

``parse_cda`` checks the root (``ClinicalDocument`` in ``urn:hl7-org:v3``, directly or inside
the ANS "auto-presentable" XSL wrapper) and reads the header (type code, title, patient and
INS, authors, custodian ...) and the body as a sanitised structure that the web can render
without ever showing raw XML: sections with their narrative ``text`` reduced to the CDA
narrative elements, embedded files (``nonXMLBody``, ``observationMedia``) by media type and
size. Embedded PDFs go through the same checks as attached ones.

``cda_header_values`` gives the MSSanté ``X-MSS-CODECDA`` and ``X-MSS-INS`` header values.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from lxml import etree

from mss.documents.base import (
    DocumentCheckError,
    DocumentLimits,
    InvalidPdf,
    MalformedDocument,
    UnsafeDocument,
    XmlTooComplex,
    display_name,
)
from mss.documents.pdf import check_pdf
from mss.documents.sniff import executable_kind
from mss.documents.xml import parse_xml

HL7 = "urn:hl7-org:v3"
XSL = "http://www.w3.org/1999/XSL/Transform"
ANS_WRAPPER = "urn:asip-sante:ci-sis"
"""Namespace of ``data:Contenu``, the element that holds the CDA in an ANS auto-presentable
document (an XSL stylesheet carrying its own CDA; the stylesheet is never run)."""

RPPS_ROOT = "1.2.250.1.71.4.2.1"
"""Authority of national health professional ids (``8`` + RPPS, or ``0`` + ADELI)."""

# INS authorities (ANS, Référentiel INS; the FR Core patient profile lists the same OIDs).
INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "1.2.250.1.213.1.4.11"
INS_ROOTS: dict[str, str] = {
    INS_NIR: "INS-NIR",
    INS_NIA: "INS-NIA",
    INS_NIR_TEST: "INS-NIR-TEST",
    INS_NIR_DEMO: "INS-NIR-DEMO",
}
PRODUCTION_INS_ROOTS = frozenset({INS_NIR, INS_NIA})

_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
SHOWN_IMAGE_TYPES = frozenset(kind for _magic, kind in _IMAGE_MAGIC)
"""Images the web shows inline once their content is checked to be of that type."""
MAX_SHOWN_IMAGE = 5 * 1000 * 1000
"""Bytes of an embedded image shown inline; larger ones are offered for download only."""
_JPEG_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}

_TYPE_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")


# -- refusals ----------------------------------------------------------------------------


class InvalidCda(MalformedDocument):
    """The XML is not an acceptable CDA R2 document."""

    code = "cda-invalid"


class NotClinicalDocument(InvalidCda):
    """The root element is not ``ClinicalDocument``."""

    code = "cda-root"


class WrongCdaNamespace(InvalidCda):
    """The root is ``ClinicalDocument`` but not in the ``urn:hl7-org:v3`` namespace."""

    code = "cda-namespace"


# -- metadata types ----------------------------------------------------------------------


@dataclass(frozen=True)
class Code:
    """A coded value (HL7 CD/CE): code, code system OID, display name."""

    code: str
    code_system: str | None = None
    display_name: str | None = None


@dataclass(frozen=True)
class Identifier:
    """An HL7 instance identifier (II): an OID root and an optional extension."""

    root: str
    extension: str | None = None

    def __str__(self) -> str:
        return f"{self.root}^{self.extension}" if self.extension else self.root


@dataclass(frozen=True)
class PersonName:
    """A person's name as the CDA gives it (used and birth forms, French qualifiers)."""

    family: str | None
    """The family name in use (qualifier ``CL``), else the only one given."""
    given: tuple[str, ...]
    """Given names in use (``CL``), else the unqualified ones, else the birth ones."""
    prefix: str | None = None
    suffix: str | None = None
    birth_family: str | None = None
    """Birth family name (qualifier ``BR``, else an unqualified family name)."""
    first_given: str | None = None
    """First given name on the birth certificate (``BR``, else the first given name)."""

    def display(self) -> str:
        """``Dr Charles BOILEAU``-like text for display."""
        parts = [self.prefix or "", " ".join(self.given), self.family or ""]
        return " ".join(part for part in parts if part).strip()


@dataclass(frozen=True)
class Organisation:
    """An organisation: name and identifier (FINESS, SIRET, RPPS-rang ...)."""

    name: str | None
    id: Identifier | None = None


@dataclass(frozen=True)
class Author:
    """A document author: a professional, or a device (software) acting for one."""

    name: PersonName | None
    id: Identifier | None
    rpps: str | None
    """RPPS number when ``id`` is a national professional id of the RPPS kind (``8`` + RPPS)."""
    specialty: Code | None = None
    organisation: Organisation | None = None
    time: str | None = None
    device: str | None = None
    """Software name, for an authoring device."""


@dataclass(frozen=True)
class Ins:
    """The patient's national health identifier (INS) read from ``patientRole/id``."""

    value: str
    root: str
    kind: str
    """``INS-NIR``, ``INS-NIA``, ``INS-NIR-TEST`` or ``INS-NIR-DEMO``."""

    @property
    def is_test(self) -> bool:
        """True for the test and demonstration authorities (never a real person)."""
        return self.root not in PRODUCTION_INS_ROOTS

    @property
    def key_valid(self) -> bool:
        """For a NIR: the two-digit key matches (97 - number mod 97, Corsica 2A/2B mapped)."""
        parts = re.fullmatch(r"([0-9]{5})([0-9]{2}|2A|2B)([0-9]{6})([0-9]{2})", self.value)
        if parts is None:
            return False
        head, department, tail, key = parts.groups()
        number = int(head + {"2A": "19", "2B": "18"}.get(department, department) + tail)
        return 97 - number % 97 == int(key)

    def cx(self) -> str:
        """HL7 v2 CX form used in IHE metadata: ``value^^^&root&ISO^NH``."""
        return f"{self.value}^^^&{self.root}&ISO^NH"


@dataclass(frozen=True)
class Patient:
    """The patient of the document (``recordTarget/patientRole``)."""

    name: PersonName | None
    birth_date: str | None
    """HL7 TS as written, usually ``YYYYMMDD``."""
    gender: Code | None
    """``administrativeGenderCode``: ``F``, ``M`` or ``U``."""
    ids: tuple[Identifier, ...]
    ins: Ins | None

    def has_identity_traits(self) -> bool:
        """The four INS traits are present: birth family name, first given name, birth
        date, gender."""
        name = self.name
        return bool(
            name
            and name.birth_family
            and name.first_given
            and self.birth_date
            and self.gender
            and self.gender.code in {"F", "M", "U"}
        )


@dataclass(frozen=True)
class NarrativeNode:
    """An element of a section's narrative block, limited to the CDA narrative vocabulary
    (``paragraph``, ``list``/``item``, ``table``/``tr``/``td``, ``content``, ``br``...).

    Unknown elements are dropped (their text kept), attributes are reduced to a short list
    (``styleCode``, ``ID``, ``listType``, ``colspan``...), links keep only ``#``, ``http(s)``
    and ``mailto`` targets. Safe to map to HTML one tag at a time.
    """

    tag: str
    attributes: tuple[tuple[str, str], ...] = ()
    children: tuple[NarrativeNode | str, ...] = ()

    def attribute(self, name: str) -> str | None:
        """The value of attribute ``name``, or None."""
        return dict(self.attributes).get(name)

    def plain_text(self) -> str:
        """The text of this node and its descendants, whitespace collapsed."""
        return " ".join("".join(_iter_text(self)).split())


def _iter_text(node: NarrativeNode | str) -> Iterable[str]:
    if isinstance(node, str):
        yield node
        return
    for child in node.children:
        yield from _iter_text(child)
    if node.tag in {"paragraph", "br", "item", "tr", "td", "th", "caption"}:
        yield " "


@dataclass(frozen=True)
class Section:
    """A section of a structured body, for display."""

    title: str | None
    code: Code | None
    text: NarrativeNode | None
    """The narrative block (tag ``text``), sanitised."""
    sections: tuple[Section, ...] = ()


@dataclass(frozen=True)
class EmbeddedMedia:
    """A file carried inside the CDA (base64): a level-1 body or an entry's media."""

    media_type: str
    size: int | None
    """Decoded size in bytes; None when the element references content instead of holding it."""
    location: Literal["nonXMLBody", "observationMedia", "entry"]
    id: str | None = None
    """The ``ID`` of the ``observationMedia`` (what narrative ``renderMultiMedia`` points to)."""
    pages: int | None = None
    """Page count of an embedded PDF (checked like an attached PDF)."""
    index: int = 0
    """Position among the document's embedded files (see ``embedded_file``)."""
    content_type: str | None = None
    """What the content is, read from its bytes: ``application/pdf``, ``image/png``,
    ``image/jpeg``, ``image/gif``, or None for anything else."""
    reference: str | None = None
    """For media that point to a file outside the document: the reference as written."""
    text: str | None = None
    """The content of a plain-text body (``text/plain``), decoded."""

    @property
    def declared_type_wrong(self) -> bool:
        """True when the declared media type says something other than the content is."""
        return (
            self.content_type is not None and _JPEG_ALIASES.get(self.media_type, self.media_type) != self.content_type
        )

    @property
    def is_pdf(self) -> bool:
        """True when the content is a PDF, whatever type it was declared with."""
        return self.content_type == "application/pdf"

    @property
    def shown_image(self) -> bool:
        """True for an image the web shows inline: a checked PNG, JPEG or GIF, not too large."""
        return self.content_type in SHOWN_IMAGE_TYPES and self.size is not None and self.size <= MAX_SHOWN_IMAGE


@dataclass(frozen=True)
class CdaInfo:
    """What was read from a CDA R2 document that passed its checks."""

    type_code: Code
    """``ClinicalDocument/code``: the document type (LOINC, or a CI-SIS code)."""
    title: str | None
    document_id: Identifier | None
    set_id: Identifier | None
    version: str | None
    effective_time: str | None
    """HL7 TS as written, e.g. ``20191029111700+0100``."""
    confidentiality: Code | None
    language: str | None
    template_ids: tuple[str, ...]
    patient: Patient
    authors: tuple[Author, ...]
    custodian: Organisation | None
    legal_authenticator: Author | None
    practice_setting: Code | None
    """``documentationOf/serviceEvent/performer/.../standardIndustryClassCode`` (XDS practiceSettingCode)."""
    facility_type: Code | None
    """``componentOf/encompassingEncounter/location/healthCareFacility/code`` (XDS healthcareFacilityTypeCode)."""
    sections: tuple[Section, ...]
    non_xml_body: EmbeddedMedia | None
    """The base64 document of a level-1 CDA (usually a PDF)."""
    media: tuple[EmbeddedMedia, ...]
    """Files carried in the structured body's entries."""
    self_presenting: bool
    """The CDA came inside an ANS auto-presentable XSL wrapper (the XSL is never run)."""

    @property
    def ins(self) -> Ins | None:
        """The patient's INS, if the document carries one."""
        return self.patient.ins

    @property
    def embedded_pdf(self) -> bool:
        """True when the document carries a PDF (level-1 body or attached in an entry)."""
        media = (self.non_xml_body, *self.media)
        return any(item is not None and item.is_pdf for item in media)

    def media_by_id(self) -> dict[str, EmbeddedMedia]:
        """The entries' media by their ``ID`` (what narrative ``renderMultiMedia`` names)."""
        return {item.id: item for item in self.media if item.id}


# -- reading the header ------------------------------------------------------------------


def _h(*names: str) -> str:
    return "/".join(f"{{{HL7}}}{name}" for name in names)


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = " ".join(text.split())
    return cleaned or None


def _text_of(el: etree._Element | None) -> str | None:
    if el is None:
        return None
    return _clean("".join(el.itertext()))


def _code(el: etree._Element | None) -> Code | None:
    if el is None or not el.get("code"):
        return None
    return Code(
        code=el.get("code", "").strip(), code_system=el.get("codeSystem"), display_name=_clean(el.get("displayName"))
    )


def _identifier(el: etree._Element | None) -> Identifier | None:
    if el is None or not el.get("root"):
        return None
    return Identifier(root=el.get("root", "").strip(), extension=_clean(el.get("extension")))


def _name(el: etree._Element | None) -> PersonName | None:
    if el is None:
        return None

    def parts(tag: str) -> list[tuple[str | None, str]]:
        found = []
        for part in el.findall(_h(tag)):
            text = _text_of(part)
            if text:
                found.append((part.get("qualifier"), text))
        return found

    def pick(items: list[tuple[str | None, str]], qualifier: str | None) -> list[str]:
        return [text for q, text in items if q == qualifier]

    families, givens = parts("family"), parts("given")
    if not families and not givens:
        text = _text_of(el)
        return PersonName(family=text, given=()) if text else None
    in_use = pick(families, "CL") or pick(families, None) or pick(families, "BR")
    at_birth = pick(families, "BR") or pick(families, None)
    first_given: str | None = next(iter(pick(givens, "BR")), None)
    if first_given is None and pick(givens, None):
        # Unqualified given names are all the birth given names, first one first.
        first_given = pick(givens, None)[0].split()[0]
    family = in_use[0] if in_use else None
    birth_family = at_birth[0] if at_birth else None
    given = tuple(pick(givens, "CL") or pick(givens, None) or pick(givens, "BR"))
    return PersonName(
        family=family,
        given=given,
        prefix=_text_of(el.find(_h("prefix"))),
        suffix=_text_of(el.find(_h("suffix"))),
        birth_family=birth_family,
        first_given=first_given,
    )


def _organisation(el: etree._Element | None) -> Organisation | None:
    if el is None:
        return None
    name = _text_of(el.find(_h("name")))
    ident = _identifier(el.find(_h("id")))
    if name is None and ident is None:
        return None
    return Organisation(name=name, id=ident)


def _rpps(ident: Identifier | None) -> str | None:
    if ident is None or ident.root != RPPS_ROOT or not ident.extension:
        return None
    ext = ident.extension
    return ext[1:] if len(ext) == 12 and ext.startswith("8") and ext.isascii() and ext.isdigit() else None


def _assigned(entity: etree._Element | None, time: str | None) -> Author | None:
    """An ``assignedAuthor`` or ``assignedEntity`` as an ``Author``."""
    if entity is None:
        return None
    ident = _identifier(entity.find(_h("id")))
    person = entity.find(_h("assignedPerson", "name"))
    device = entity.find(_h("assignedAuthoringDevice"))
    return Author(
        name=_name(person),
        id=ident,
        rpps=_rpps(ident),
        specialty=_code(entity.find(_h("code"))),
        organisation=_organisation(entity.find(_h("representedOrganization"))),
        time=time,
        device=_text_of(device.find(_h("softwareName"))) if device is not None else None,
    )


def _attribute(el: etree._Element | None, name: str) -> str | None:
    value = el.get(name) if el is not None else None
    return value.strip() or None if value else None


def _time(el: etree._Element | None) -> str | None:
    return _attribute(el, "value")


def _patient(filename: str, doc: etree._Element) -> Patient:
    role = doc.find(_h("recordTarget", "patientRole"))
    if role is None:
        raise InvalidCda(filename, "is not a valid CDA R2 document: it names no patient (recordTarget)")
    ids = tuple(ident for ident in (_identifier(el) for el in role.findall(_h("id"))) if ident)
    ins = None
    for ident in ids:
        if ident.root in INS_ROOTS and ident.extension:
            ins = Ins(value=ident.extension, root=ident.root, kind=INS_ROOTS[ident.root])
            break
    person = role.find(_h("patient"))
    return Patient(
        name=_name(person.find(_h("name"))) if person is not None else None,
        birth_date=_time(person.find(_h("birthTime"))) if person is not None else None,
        gender=_code(person.find(_h("administrativeGenderCode"))) if person is not None else None,
        ids=ids,
        ins=ins,
    )


# -- reading the body --------------------------------------------------------------------

_NARRATIVE_TAGS = frozenset(
    {
        "text", "content", "linkHtml", "sub", "sup", "br", "footnote", "footnoteRef",
        "renderMultiMedia", "paragraph", "list", "item", "caption", "table", "thead", "tbody",
        "tfoot", "tr", "th", "td", "col", "colgroup",
    }
)  # fmt: skip
_NARRATIVE_ATTRIBUTES = frozenset(
    {
        "styleCode", "ID", "IDREF", "listType", "colspan", "rowspan", "span", "scope", "align", "valign",
        "referencedObject",
    }
)  # fmt: skip
_NARRATIVE_QNAMES = frozenset(f"{{{HL7}}}{name}" for name in _NARRATIVE_TAGS)
_SAFE_HREF = re.compile(r"^(#[\w.:-]*|https?://[^\s\"'<>]+|mailto:[^\s\"'<>]+)$", re.IGNORECASE)


_STRUCTURAL_TAGS = frozenset({"table", "thead", "tbody", "tfoot", "tr", "list", "colgroup"})


class _TextBudget:
    """Characters of narrative text still allowed in one document."""

    def __init__(self, filename: str, limit: int) -> None:
        self.filename = filename
        self.limit = limit
        self.left = limit

    def spend(self, text: str) -> str:
        self.left -= len(text)
        if self.left < 0:
            raise XmlTooComplex(self.filename, f"holds more than {self.limit} characters of narrative text")
        return text


def _local_name(tag: str) -> str:
    return tag[tag.index("}") + 1 :] if tag.startswith("{") else tag


def _narrative(el: etree._Element, budget: _TextBudget) -> NarrativeNode:
    # Called once per element of every narrative block: tags are compared as strings and
    # attributes looked up by name only when present (their number is bounded by parse_xml).
    tag = _local_name(el.tag)
    children: list[NarrativeNode | str] = []

    def add_text(text: str | None) -> None:
        if not text:
            return
        if text.isspace():
            # Indentation between table rows or list items means nothing; between inline
            # elements it is one word separator.
            if tag in _STRUCTURAL_TAGS:
                return
            text = " "
        children.append(budget.spend(text))

    add_text(el.text)
    for child in el:
        child_tag = child.tag
        if isinstance(child_tag, str):
            if child_tag in _NARRATIVE_QNAMES:
                children.append(_narrative(child, budget))
            else:
                # Foreign or unknown markup: keep the words, drop the element.
                add_text("".join(child.itertext()))
        add_text(child.tail)
    attributes = []
    for name in el.keys():
        if name in _NARRATIVE_ATTRIBUTES:
            attributes.append((name, el.get(name)))
        elif name == "href":
            href = el.get(name).strip()
            if _SAFE_HREF.match(href):
                attributes.append((name, href))
    return NarrativeNode(tag=tag, attributes=tuple(attributes), children=tuple(children))


def _section(el: etree._Element, budget: _TextBudget) -> Section:
    text = el.find(_h("text"))
    return Section(
        title=_text_of(el.find(_h("title"))),
        code=_code(el.find(_h("code"))),
        text=_narrative(text, budget) if text is not None else None,
        sections=tuple(_section(sub, budget) for sub in el.findall(_h("component", "section"))),
    )


MediaLocation = Literal["nonXMLBody", "observationMedia", "entry"]


def content_type_of(raw: bytes) -> str | None:
    """What embedded bytes are, from their content: a PDF (a ``%PDF-`` header where readers
    look for it), a PNG, JPEG or GIF image, or None."""
    if raw.find(b"%PDF-", 0, 1024) >= 0 and not raw[: raw.find(b"%PDF-")].strip(b" \t\r\n\f\x00"):
        return "application/pdf"
    for magic, kind in _IMAGE_MAGIC:
        if raw.startswith(magic):
            return kind
    return None


def _media_elements(doc: etree._Element) -> list[tuple[etree._Element, MediaLocation]]:
    """Every embedded or referenced file of a document, in one fixed order: the level-1 body,
    then the structured body's base64 values and ``observationMedia`` values."""
    found: list[tuple[etree._Element, MediaLocation]] = []
    component = doc.find(_h("component"))
    if component is None:
        return found
    non_xml = component.find(_h("nonXMLBody"))
    if non_xml is not None and non_xml.find(_h("text")) is not None:
        found.append((non_xml.find(_h("text")), "nonXMLBody"))
    structured = component.find(_h("structuredBody"))
    if structured is not None:
        for el in structured.iter(f"{{{HL7}}}value", f"{{{HL7}}}text"):
            parent = el.getparent()
            in_media = parent is not None and parent.tag == f"{{{HL7}}}observationMedia"
            if el.get("representation") == "B64" or (in_media and el.tag == f"{{{HL7}}}value"):
                found.append((el, "observationMedia" if in_media else "entry"))
    return found


def _decode_b64(filename: str, el: etree._Element) -> bytes:
    try:
        return base64.b64decode("".join((el.text or "").split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidCda(filename, "is not a valid CDA R2 document: an embedded file is not valid base64") from exc


def _check_embedded(
    filename: str, raw: bytes, media_type: str, limits: DocumentLimits
) -> tuple[str | None, int | None]:
    """Refuse what may not travel inside a document; return the content's type and, for a
    PDF, its page count. Every PDF is checked as a PDF whatever it was declared as (``pdf/xml``
    and ``application/octet-stream`` are seen); a file declared as a PDF must be one."""
    what = executable_kind(raw)
    if what is not None:
        raise UnsafeDocument(filename, f"carries {what} inside the document, which is not allowed")
    content_type = content_type_of(raw)
    pages = None
    if content_type == "application/pdf":
        try:
            pages = check_pdf(filename, raw, limits=limits).pages
        except DocumentCheckError as exc:
            raise type(exc)(filename, f"carries an embedded PDF that {exc.problem}", code=exc.code) from exc
    elif media_type == "application/pdf":
        raise InvalidPdf(filename, "carries an embedded file declared as a PDF that is not a PDF")
    return content_type, pages


def _decode_media(
    filename: str, el: etree._Element, location: MediaLocation, limits: DocumentLimits, index: int, budget: _TextBudget
) -> EmbeddedMedia:
    media_type = (el.get("mediaType") or "text/plain").strip().lower()
    parent = el.getparent()
    media_id = parent.get("ID") if parent is not None else None
    if el.get("representation") != "B64":
        # Plain text content, or a reference to content elsewhere: nothing embedded to check.
        reference = el.find(_h("reference"))
        inline = (el.text or "").strip()
        if reference is not None and not inline:
            target = _clean(reference.get("value"))
            return EmbeddedMedia(
                media_type=media_type, size=None, location=location, id=media_id, index=index, reference=target or ""
            )
        text = budget.spend(el.text or "") if media_type == "text/plain" else None
        return EmbeddedMedia(
            media_type=media_type,
            size=len((el.text or "").encode("utf-8")),
            location=location,
            id=media_id,
            index=index,
            text=text,
        )
    raw = _decode_b64(filename, el)
    content_type, pages = _check_embedded(filename, raw, media_type, limits)
    text = None
    if media_type == "text/plain" and content_type is None:
        if b"\x00" in raw:
            raise InvalidCda(filename, "is not a valid CDA R2 document: its plain-text body is not text")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("cp1252", errors="replace")
        budget.spend(text)
    return EmbeddedMedia(
        media_type=media_type,
        size=len(raw),
        location=location,
        id=media_id,
        pages=pages,
        index=index,
        content_type=content_type,
        text=text,
    )


def _clinical_document(filename: str, root: etree._Element) -> tuple[etree._Element, bool]:
    """The ``ClinicalDocument`` element and whether it came in an auto-presentable wrapper."""
    qname = etree.QName(root)
    if qname.namespace == HL7 and qname.localname == "ClinicalDocument":
        return root, False
    if qname.namespace == XSL and qname.localname == "stylesheet":
        found = root.findall(f"{{{ANS_WRAPPER}}}Contenu/{{{HL7}}}ClinicalDocument")
        if len(found) == 1:
            return found[0], True
        raise NotClinicalDocument(
            filename, "is not a CDA R2 document: an XSL stylesheet without exactly one embedded ClinicalDocument"
        )
    if qname.localname == "ClinicalDocument":
        namespace = display_name(qname.namespace or "no namespace")
        raise WrongCdaNamespace(filename, f"is not a CDA R2 document: ClinicalDocument is in {namespace}, not {HL7}")
    raise NotClinicalDocument(
        filename, f"is not a CDA R2 document: its root element is {display_name(qname.localname)}, not ClinicalDocument"
    )


_PRACTICE_SETTING_PATH = _h(
    "documentationOf", "serviceEvent", "performer", "assignedEntity", "representedOrganization",
    "standardIndustryClassCode",
)  # fmt: skip


def parse_cda(data: bytes, *, filename: str, limits: DocumentLimits) -> CdaInfo:
    """Parse and check a CDA R2 document; return its ``CdaInfo``.

    Raises what ``parse_xml`` raises, ``NotClinicalDocument``, ``WrongCdaNamespace``,
    ``InvalidCda`` (missing type code, patient or body, bad base64), or the PDF checks'
    errors for an embedded PDF.
    """
    root = parse_xml(data, filename=filename, limits=limits)
    doc, wrapped = _clinical_document(filename, root)

    type_code = _code(doc.find(_h("code")))
    if type_code is None:
        raise InvalidCda(filename, "is not a valid CDA R2 document: it has no document type code")
    if not _TYPE_CODE.match(type_code.code):
        raise InvalidCda(filename, "is not a valid CDA R2 document: its document type code is malformed")
    patient = _patient(filename, doc)

    authors = tuple(
        author
        for author in (
            _assigned(el.find(_h("assignedAuthor")), _time(el.find(_h("time")))) for el in doc.findall(_h("author"))
        )
        if author is not None
    )
    legal = doc.find(_h("legalAuthenticator"))
    legal_authenticator = (
        _assigned(legal.find(_h("assignedEntity")), _time(legal.find(_h("time")))) if legal is not None else None
    )

    component = doc.find(_h("component"))
    structured = component.find(_h("structuredBody")) if component is not None else None
    non_xml = component.find(_h("nonXMLBody")) if component is not None else None
    if structured is None and non_xml is None:
        raise InvalidCda(filename, "is not a valid CDA R2 document: it has no body")

    budget = _TextBudget(filename, limits.max_narrative_text)
    sections: tuple[Section, ...] = ()
    media: list[EmbeddedMedia] = []
    non_xml_body = None
    if structured is not None:
        sections = tuple(_section(el, budget) for el in structured.findall(_h("component", "section")))
    if non_xml is not None and non_xml.find(_h("text")) is None:
        raise InvalidCda(filename, "is not a valid CDA R2 document: its nonXMLBody has no text")
    for index, (el, location) in enumerate(_media_elements(doc)):
        item = _decode_media(filename, el, location, limits, index, budget)
        if location == "nonXMLBody":
            non_xml_body = item
        else:
            media.append(item)

    return CdaInfo(
        type_code=type_code,
        title=_text_of(doc.find(_h("title"))),
        document_id=_identifier(doc.find(_h("id"))),
        set_id=_identifier(doc.find(_h("setId"))),
        version=_attribute(doc.find(_h("versionNumber")), "value"),
        effective_time=_time(doc.find(_h("effectiveTime"))),
        confidentiality=_code(doc.find(_h("confidentialityCode"))),
        language=_attribute(doc.find(_h("languageCode")), "code"),
        template_ids=tuple(el.get("root", "") for el in doc.findall(_h("templateId")) if el.get("root")),
        patient=patient,
        authors=authors,
        custodian=_organisation(doc.find(_h("custodian", "assignedCustodian", "representedCustodianOrganization"))),
        legal_authenticator=legal_authenticator,
        practice_setting=_code(doc.find(_PRACTICE_SETTING_PATH)),
        facility_type=_code(
            doc.find(_h("componentOf", "encompassingEncounter", "location", "healthCareFacility", "code"))
        ),
        sections=sections,
        non_xml_body=non_xml_body,
        media=tuple(media),
        self_presenting=wrapped,
    )


def embedded_file(data: bytes, *, filename: str, limits: DocumentLimits, index: int) -> tuple[str, bytes] | None:
    """The embedded file at ``index`` (see ``EmbeddedMedia.index``) when the web may show it:
    a PDF (checked like an attached PDF, whatever type it was declared with) or a PNG, JPEG
    or GIF image within ``MAX_SHOWN_IMAGE``. Returns its content type and bytes, or None.
    Raises what ``parse_xml`` and ``check_pdf`` raise, and ``InvalidCda`` for bad base64."""
    root = parse_xml(data, filename=filename, limits=limits)
    doc, _wrapped = _clinical_document(filename, root)
    elements = _media_elements(doc)
    if not 0 <= index < len(elements):
        return None
    el, _location = elements[index]
    if el.get("representation") != "B64":
        return None
    raw = _decode_b64(filename, el)
    content_type, _pages = _check_embedded(filename, raw, (el.get("mediaType") or "").strip().lower(), limits)
    if content_type == "application/pdf" or (content_type in SHOWN_IMAGE_TYPES and len(raw) <= MAX_SHOWN_IMAGE):
        return content_type, raw
    return None


def level_one_pdf(data: bytes, *, filename: str, limits: DocumentLimits) -> bytes | None:
    """The PDF a level-1 CDA carries as its body (``nonXMLBody``), checked like an attached
    PDF whatever type it was declared with; None when the document has no such body."""
    root = parse_xml(data, filename=filename, limits=limits)
    doc, _wrapped = _clinical_document(filename, root)
    elements = _media_elements(doc)
    if not elements or elements[0][1] != "nonXMLBody":
        return None
    found = embedded_file(data, filename=filename, limits=limits, index=0)
    return found[1] if found is not None and found[0] == "application/pdf" else None


# -- MSSanté headers ---------------------------------------------------------------------


def ins_qualified(info: CdaInfo, *, accept_test_ins: bool = False) -> bool:
    """True when the CDA carries an INS that may be announced as qualified.

    That is an INS from the NIR or NIA authority (or, with ``accept_test_ins``, the test and
    demonstration ones, for non-production platforms), a valid NIR key for NIR kinds, and
    the four identity traits (birth family name, first given name, birth date, gender).
    """
    ins = info.patient.ins
    if ins is None:
        return False
    if ins.is_test and not accept_test_ins:
        return False
    if ins.root != INS_NIA and not ins.key_valid:
        return False
    return info.patient.has_identity_traits()


def cda_header_values(info: CdaInfo, *, accept_test_ins: bool = False) -> dict[str, str]:
    """The MSSanté header values for one CDA (Référentiel socle MSSanté #2, ECO.2.4.1-2).

    ``X-MSS-CODECDA`` is the CDA's type code (``ClinicalDocument/code/@code``, e.g.
    ``11490-0``); ``X-MSS-INS`` is ``O`` when the document carries a qualified INS (see
    ``ins_qualified``), else ``N``. The type code was checked at parse time to hold only
    letters, digits, ``.``, ``_`` and ``-``, so it is safe in a header. For several CDAs use
    ``message_header_values``.
    """
    return {
        "X-MSS-CODECDA": info.type_code.code,
        "X-MSS-INS": "O" if ins_qualified(info, accept_test_ins=accept_test_ins) else "N",
    }


def message_header_values(cdas: Iterable[CdaInfo], *, accept_test_ins: bool = False) -> dict[str, str]:
    """Header values for a message carrying these CDAs (those inside its IHE_XDM packages).

    ``X-MSS-CODECDA`` lists the type codes comma-separated in order, without repeats;
    ``X-MSS-INS`` is ``O`` if any CDA carries a qualified INS. Empty when there is no CDA:
    the headers must then be absent.
    """
    codes: list[str] = []
    qualified = False
    for info in cdas:
        if info.type_code.code not in codes:
            codes.append(info.type_code.code)
        qualified = qualified or ins_qualified(info, accept_test_ins=accept_test_ins)
    if not codes:
        return {}
    return {"X-MSS-CODECDA": ",".join(codes), "X-MSS-INS": "O" if qualified else "N"}
