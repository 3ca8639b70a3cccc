"""A CDA R2 document as a readable HTML page: header, patient, authors, sections.

The input is ``mss.documents``' sanitised structure, never the XML: each narrative element
maps to one HTML element from a short list, every text is escaped, attributes are reduced
to numeric ``colspan``/``rowspan`` and to style classes of our own stylesheet, and links
only point inside the document. Nothing is fetched, no stylesheet of the document is run.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from markupsafe import Markup, escape

from mss.documents.cda import NarrativeNode, PersonName

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
_STYLES = {"bold": "cda-bold", "italics": "cda-italic", "underline": "cda-underline", "emphasis": "cda-italic"}
_TS = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d+)?([+-]\d{4})?$")
MAX_DEPTH = 64


def _classes(node: NarrativeNode) -> str:
    styles = (node.attribute("styleCode") or "").lower().split()
    return " ".join(sorted({_STYLES[s] for s in styles if s in _STYLES}))


def _span(node: NarrativeNode, name: str) -> str:
    value = node.attribute(name) or ""
    return f' {name}="{int(value)}"' if value.isdigit() and 0 < int(value) < 100 else ""


def narrative_html(node: NarrativeNode | str | None, depth: int = 0) -> Markup:
    """Escaped HTML for a narrative block (``text`` element of a section)."""
    if node is None:
        return Markup("")
    if isinstance(node, str):
        return escape(node)
    if depth > MAX_DEPTH:
        return escape(node.plain_text())
    inner = Markup("").join(narrative_html(child, depth + 1) for child in node.children)
    tag = node.tag
    if tag == "br":
        return Markup("<br>")
    if tag == "renderMultiMedia":
        return Markup('<span class="cda-media">[') + escape("media") + Markup("]</span>")
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
    """An HL7 TS (``20191029111700+0100``, ``20191029``) as an aware datetime, or None."""
    if not value:
        return None
    found = _TS.match(value.strip())
    if not found:
        return None
    year, month, day, hour, minute, second, offset = found.groups()
    zone = timezone.utc
    if offset:
        sign = 1 if offset[0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
    try:
        return datetime(
            int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0), int(second or 0), tzinfo=zone
        )
    except ValueError:
        return None


def hl7_date(value: str | None) -> str:
    """The date part of an HL7 TS as ``DD/MM/YYYY`` (birth dates carry no time zone)."""
    found = _TS.match((value or "").strip())
    if not found or not found.group(2) or not found.group(3):
        return value or ""
    year, month, day = found.group(1), found.group(2), found.group(3)
    return f"{day}/{month}/{year}"


def person(name: PersonName | None) -> str:
    """A person's name for display, or an empty string."""
    return name.display() if name is not None else ""
