"""Untrusted XML read safely: no DTD, no entities, no network, bounded in depth, elements,
attributes per element and text. Every XML the service reads (CDA, IHE_XDM metadata) goes
through :func:`parse_xml`.
"""

from __future__ import annotations

from lxml import etree

from mss.documents.base import DocumentLimits, InvalidXml, XmlDoctypeForbidden, XmlTooComplex

_DOCTYPE_MARKERS = tuple(
    marker.encode(encoding)
    for marker in ("<!DOCTYPE", "<!ENTITY", "<!doctype")
    for encoding in ("utf-8", "utf-16-le", "utf-16-be")
)


def _parser() -> etree.XMLParser:
    # A new parser per document: lxml parsers keep state and are not shared across threads.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        dtd_validation=False,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def _check_shape(filename: str, root: etree._Element, limits: DocumentLimits) -> None:
    """Refuse a tree beyond the limits, in one pass that costs no more than the parse did.

    Attributes are counted, never listed: lxml lists the attributes of one element in time
    quadratic in their number.
    """
    depth = elements = 0
    for event, element in etree.iterwalk(root, events=("start", "end")):
        if event == "end":
            depth -= 1
            continue
        depth += 1
        elements += 1
        if depth > limits.max_xml_depth:
            raise XmlTooComplex(filename, f"nests elements deeper than {limits.max_xml_depth} levels")
        if elements > limits.max_xml_elements:
            raise XmlTooComplex(filename, f"holds more than {limits.max_xml_elements} elements")
        if len(element.attrib) > limits.max_xml_attributes:
            raise XmlTooComplex(filename, f"has an element with more than {limits.max_xml_attributes} attributes")


def parse_xml(data: bytes, *, filename: str, limits: DocumentLimits) -> etree._Element:
    """Parse untrusted XML and return its root element.

    Raises ``XmlDoctypeForbidden`` for any DOCTYPE or entity declaration (checked in the raw
    bytes before parsing and again on the parsed tree), ``InvalidXml`` when not well-formed,
    ``XmlTooComplex`` beyond ``limits`` (depth, elements, attributes on one element) or the
    parser's text node bound.
    """
    # Refused before libxml2 sees it: no DTD is ever processed, not even the internal subset.
    if any(marker in data for marker in _DOCTYPE_MARKERS):
        raise XmlDoctypeForbidden(filename, "contains a DOCTYPE declaration, which is not allowed in XML documents")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        text = str(exc).lower()
        if "huge" in text or "depth" in text or "too large" in text:
            raise XmlTooComplex(filename, "is too large or too deeply nested to be read safely") from exc
        line = f" (line {exc.lineno})" if exc.lineno else ""
        raise InvalidXml(filename, f"is not well-formed XML{line}") from exc
    except ValueError as exc:
        # lxml refuses some inputs (e.g. a str with an encoding declaration) with ValueError.
        raise InvalidXml(filename, "is not well-formed XML") from exc
    if root is None:
        raise InvalidXml(filename, "is not well-formed XML: it has no root element")
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None or docinfo.externalDTD is not None:
        # Only reachable with an encoding the byte scan above does not read (UTF-32, EBCDIC).
        raise XmlDoctypeForbidden(filename, "contains a DOCTYPE declaration, which is not allowed in XML documents")
    _check_shape(filename, root, limits)
    return root
