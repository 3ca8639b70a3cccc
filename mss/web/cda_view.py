"""A CDA R2 document as a readable HTML page: header, patient, authors, sections.

The input is ``mss.documents``' sanitised structure, never the XML: each narrative element
maps to one HTML element from a short list, every text is escaped, attributes are reduced
to numeric ``colspan``/``rowspan`` and to style classes of our own stylesheet, and links
only point inside the document. Nothing is fetched, no stylesheet of the document is run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone

from babel.dates import format_date, format_skeleton, format_time
from markupsafe import Markup, escape

from mss.documents.cda import Author, CdaInfo, Code, EmbeddedMedia, NarrativeNode, Organisation, PersonName, Section
from mss.mailbox.items import DISPLAY_TZ

_TAGS = {
    "text": "div",
    "paragraph": "p",
    "content": "span",
    "sub": "sub",
    "sup": "sup",
    "br": "br",
    "footnote": "small",
    "footnoteRef": "small",
    "caption": "caption",
    "table": "table",
    "thead": "thead",
    "tbody": "tbody",
    "tfoot": "tfoot",
    "tr": "tr",
    "th": "th",
    "td": "td",
    "item": "li",
}
_STYLES = {
    "bold": "cda-bold", "italics": "cda-italic", "underline": "cda-underline", "emphasis": "cda-italic",
    # The xHTML-like table styles of the CDA narrative schema.
    "botrule": "cda-botrule", "toprule": "cda-toprule", "lrule": "cda-lrule", "rrule": "cda-rrule",
    # Styles C-CDA and eHDSI generators write: their meaning is visual only.
    "xfirstrow": "cda-bold", "xrowgroupheading": "cda-bold", "xlabel": "cda-bold",
}  # fmt: skip
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")
MAX_DEPTH = 64


def _classes(node: NarrativeNode) -> str:
    styles = (node.attribute("styleCode") or "").lower().split()
    return " ".join(sorted({_STYLES[s] for s in styles if s in _STYLES}))


def _span(node: NarrativeNode, name: str) -> str:
    value = node.attribute(name) or ""
    return f' {name}="{int(value)}"' if value.isascii() and value.isdigit() and 0 < int(value) < 100 else ""


def narrative_html(
    node: NarrativeNode | str | None, media: Mapping[str, Markup] | None = None, depth: int = 0
) -> Markup:
    """Escaped HTML for a narrative block (``text`` element of a section). ``media`` maps
    the ``ID`` of an embedded file to the markup that shows it (see ``media_markup``)."""
    if node is None:
        return Markup("")
    if isinstance(node, str):
        return escape(node)
    if depth > MAX_DEPTH:
        return escape(node.plain_text())
    inner = Markup("").join(narrative_html(child, media, depth + 1) for child in node.children)
    tag = node.tag
    if tag == "br":
        return Markup("<br>")
    if tag == "renderMultiMedia":
        shown = [
            (media or {}).get(ref, Markup('<span class="cda-media">[{}]</span>').format(ref))
            for ref in (node.attribute("referencedObject") or "").split()
        ]
        caption = Markup('<span class="cda-caption">{}</span>').format(inner) if inner else Markup("")
        return Markup('<span class="cda-figure">') + Markup(" ").join(shown) + caption + Markup("</span>")
    if tag == "footnote":
        anchor = node.attribute("ID")
        ident = f' id="cda-{anchor}"' if anchor and re.fullmatch(r"[A-Za-z][\w.:-]{0,63}", anchor) else ""
        return Markup(f'<small class="cda-footnote"{ident}>') + inner + Markup("</small>")
    if tag == "footnoteRef":
        ref = node.attribute("IDREF") or ""
        if re.fullmatch(r"[A-Za-z][\w.:-]{0,63}", ref):
            return Markup('<sup><a href="#cda-{}">{}</a></sup>').format(ref, inner or "*")
        return Markup("<sup>") + inner + Markup("</sup>")
    if tag == "linkHtml":
        href = node.attribute("href") or ""
        if href.startswith("#") and len(href) > 1:
            return Markup('<a href="#cda-{}">{}</a>').format(href[1:], inner)
        # External targets are shown, never linked: nothing leaves for another site.
        suffix = Markup(' <span class="cda-url">({})</span>').format(href) if href else Markup("")
        return inner + suffix
    if tag == "list":
        html_tag = "ol" if (node.attribute("listType") or "").lower() == "ordered" else "ul"
    elif tag in {"col", "colgroup"}:
        return Markup("")
    else:
        html_tag = _TAGS.get(tag, "span")
    attributes = ""
    classes = _classes(node)
    if classes:
        attributes += f' class="{classes}"'
    if html_tag in {"td", "th"}:
        attributes += _span(node, "colspan") + _span(node, "rowspan")
    anchor = node.attribute("ID")
    if anchor and re.fullmatch(r"[A-Za-z][\w.:-]{0,63}", anchor):
        attributes += f' id="cda-{anchor}"'
    if html_tag == "table":
        return Markup(f'<div class="table-wrap"><table{attributes}>') + inner + Markup("</table></div>")
    return Markup(f"<{html_tag}{attributes}>") + inner + Markup(f"</{html_tag}>")


def hl7_time(value: str | None) -> datetime | None:
    """An HL7 TS (``20191029111700+0100``, ``20191029``) as a datetime, or None: aware when
    the value has an offset, naive (as written) when it has none."""
    if not value:
        return None
    found = _TS.match(value.strip())
    if not found:
        return None
    year, month, day, hour, minute, second, offset = found.groups()
    zone = None
    if offset:
        sign = 1 if offset[0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        return datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=zone
        )
    except ValueError:
        return None


def hl7_when(value: str | None, locale: str) -> str:
    """An HL7 TS for people, at the precision it was written with: ``2013``, ``juin 2013``,
    ``19 juin 2013`` (a date has no time of day), ``19 juin 2013, 14:30`` as written when no
    offset is given, and in the display zone when one is. A value that is not a TS is shown
    as written."""
    text = (value or "").strip()
    found = _TS.match(text)
    moment = hl7_time(text)
    if not found or moment is None:
        return text
    _year, month, day, hour, minute, second, offset = found.groups()
    if month is None:
        return str(moment.year)
    if day is None:
        return format_skeleton("yMMMM", moment, locale=locale)
    if hour is None:
        return format_date(moment.date(), format="long", locale=locale)
    if offset:
        moment = moment.astimezone(DISPLAY_TZ)
    clock = format_time(moment, format="HH:mm:ss" if second else "HH:mm", locale=locale)
    return f"{format_date(moment.date(), format='long', locale=locale)}, {clock}"


def hl7_date(value: str | None) -> str:
    """The date part of an HL7 TS as ``DD/MM/YYYY`` (birth dates carry no time zone), at the
    precision written: ``MM/YYYY`` or ``YYYY`` for a partial date."""
    found = _TS.match((value or "").strip())
    if not found:
        return value or ""
    year, month, day = found.group(1), found.group(2), found.group(3)
    if not month:
        return year
    if not day:
        return f"{month}/{year}"
    return f"{day}/{month}/{year}"


def person(name: PersonName | None) -> str:
    """A person's name for display, or an empty string."""
    return name.display() if name is not None else ""


def organisation(org: Organisation | None) -> str:
    """An organisation's name, else its identifier, else an empty string."""
    if org is None:
        return ""
    return org.name or (str(org.id) if org.id else "")


def author_name(author: Author | None) -> str:
    """Who an author is: the person's name, else the device's software, else its
    organisation; an empty string when the document says none of them."""
    if author is None:
        return ""
    return person(author.name) or author.device or organisation(author.organisation)


# Common LOINC document types (display names as LOINC publishes them), for documents that
# give a code without a displayName.
DOCUMENT_TYPES: dict[str, str] = {
    "11488-4": "Consult note", "11490-0": "Physician Discharge summary", "11502-2": "Laboratory report",
    "11504-8": "Surgical operation note", "11506-3": "Progress note", "11526-1": "Pathology study",
    "18726-0": "Radiology studies", "18748-4": "Diagnostic imaging study", "18761-7": "Transfer summary note",
    "18776-5": "Plan of care note", "18842-5": "Discharge summary", "28570-0": "Procedure note",
    "34105-7": "Hospital Discharge summary", "34108-1": "Outpatient Note", "34109-9": "Note",
    "34111-5": "Emergency department note", "34117-2": "History and physical note",
    "34133-9": "Summarization of episode note", "34746-8": "Nurse note",
    "47039-3": "Admission history and physical note",
    "47420-5": "Functional status assessment note", "51851-4": "Administrative note", "52521-2": "Overall plan of care",
    "56446-8": "Appointment summary", "57016-8": "Privacy policy acknowledgment", "57133-1": "Referral note",
    "57832-8": "Prescription request", "57833-6": "Prescription for medication", "60591-5": "Patient summary",
    "60593-1": "Medication dispensed", "68834-1": "Primary care Note", "75496-0": "Telehealth Note",
    "81214-9": "Vaccination record", "87273-9": "Immunization note", "11369-6": "History of Immunization Narrative",
}  # fmt: skip
# Common LOINC section codes, for sections without a title.
SECTION_TYPES: dict[str, str] = {
    "10154-3": "Chief complaint", "10157-6": "Family history", "10160-0": "Medications",
    "10164-2": "History of present illness",
    "10183-2": "Discharge medications", "10187-3": "Review of systems", "10190-7": "Mental status",
    "11348-0": "History of past illness", "11369-6": "Immunizations", "11450-4": "Problem list",
    "11535-2": "Discharge diagnosis", "18776-5": "Plan of care", "29299-5": "Reason for visit",
    "29545-1": "Physical findings", "29762-2": "Social history", "30954-2": "Results", "42348-3": "Advance directives",
    "42349-1": "Reason for referral", "46239-0": "Chief complaint and reason for visit", "46240-8": "Encounters",
    "46264-8": "Medical equipment", "47420-5": "Functional status", "47519-4": "Procedures",
    "48764-5": "Summary purpose", "48765-2": "Allergies and adverse reactions", "48768-6": "Payers",
    "51848-0": "Assessment", "55109-3": "Complications", "61146-7": "Goals", "75310-3": "Health concerns",
    "8648-8": "Hospital course", "8716-3": "Vital signs", "8653-8": "Hospital discharge instructions",
}  # fmt: skip


def code_label(code: Code | None, table: Mapping[str, str] = DOCUMENT_TYPES) -> str:
    """A code for people: its display name, else the name of a common LOINC code, else
    an empty string (the caller shows the code itself or says there is none)."""
    if code is None:
        return ""
    return code.display_name or table.get(code.code, "")


def section_title(section: Section) -> str:
    """A section's title, else its code's name; empty when neither is known."""
    return section.title or code_label(section.code, SECTION_TYPES)


MediaLabels = Mapping[str, str]
"""The page's sentences for embedded files, translated by the template with ``{pages}``,
``{name}`` and ``{type}`` left as slots: ``image``, ``pdf``, ``reference``, ``other``."""


def _label(labels: MediaLabels, key: str, **values: object) -> Markup:
    text = str(escape(labels[key]))
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(escape(str(value))))
    return Markup(text)


def media_markup(cda: CdaInfo, base: str, labels: MediaLabels) -> dict[str, Markup]:
    """For each embedded file an entry names by ``ID``: how the narrative shows it where
    ``renderMultiMedia`` points to it. Images checked by content are shown from the
    document's media route (the CSP allows images from this origin only), PDFs open in the
    viewer, references and other types are named, never fetched."""
    return {item.id: media_link(item, base, labels) for item in cda.media if item.id}


def media_link(item: EmbeddedMedia, base: str, labels: MediaLabels) -> Markup:
    """The markup that shows one embedded file (see ``media_markup``)."""
    url = f"{base}/media/{item.index}"
    if item.shown_image:
        return Markup('<img class="cda-image" src="{}" alt="{}">').format(url, _label(labels, "image"))
    if item.is_pdf:
        label = _label(labels, "pdf", pages=item.pages or 0)
        return Markup('<a class="cda-media" href="{}" target="_blank" rel="noopener">{}</a>').format(url, label)
    if item.reference is not None:
        return Markup('<span class="cda-media">{}</span>').format(
            _label(labels, "reference", name=item.reference or "?")
        )
    return Markup('<span class="cda-media">{}</span>').format(_label(labels, "other", type=item.media_type))
