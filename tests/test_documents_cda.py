"""CDA R2: the ANS examples are read correctly; hostile or broken XML is refused, never expanded."""

from __future__ import annotations

import base64

import pytest
from pypdf.generic import TextStringObject

from mss.documents import (
    ActivePdfContent,
    CdaInfo,
    Document,
    DocumentTypeMismatch,
    InvalidCda,
    InvalidPdf,
    InvalidXml,
    NotClinicalDocument,
    UnsafeDocument,
    WrongCdaNamespace,
    XmlDoctypeForbidden,
    XmlTooComplex,
    cda_header_values,
    embedded_file,
    inspect_attachment,
    level_one_pdf,
    message_header_values,
    parse_cda,
    parse_xml,
)
from mss.documents.cda import INS_NIR, INS_NIR_TEST
from mss.relay.handler import document_status

from document_samples import CDA_SAMPLES, LIMITS, action, pdf_bytes, pdf_opening_with

pytestmark = pytest.mark.sqlite_only


def javascript_pdf() -> bytes:
    return pdf_opening_with(action("/JavaScript", JS=TextStringObject("app.alert('x');")))


@pytest.fixture(scope="module")
def parsed() -> dict[str, Document]:
    """Every ANS example, inspected once for the module."""
    return {
        path.name: inspect_attachment(path.name, "text/xml", path.read_bytes(), limits=LIMITS)
        for path in sorted(CDA_SAMPLES.glob("*.xml"))
    }


def cda(parsed: dict[str, Document], name: str) -> CdaInfo:
    info = parsed[name].cda
    assert info is not None
    return info


def test_all_ans_examples_are_accepted(parsed: dict[str, Document]) -> None:
    assert len(parsed) == 94
    for name, document in parsed.items():
        info = document.cda
        assert document.kind == "cda", name
        assert info is not None, name
        assert info.type_code.code and info.type_code.code_system, name
        assert info.title, name
        assert info.patient.name is not None and info.patient.name.family, name
        assert info.patient.birth_date, name
        assert info.patient.ins is not None, name
        assert info.authors, name
        assert info.sections or info.non_xml_body is not None, name


def test_lettre_de_liaison_header(parsed: dict[str, Document]) -> None:
    info = cda(parsed, "LDL-EES_2022.01.xml")
    assert info.type_code.code == "18761-7"
    assert info.type_code.code_system == "2.16.840.1.113883.6.1"
    assert info.title == "Lettre de liaison à l'entrée en établissement de santé"
    assert info.effective_time == "20191029111700+0100"
    assert info.confidentiality is not None and info.confidentiality.code == "N"
    assert info.language == "fr-FR"
    assert str(info.document_id) == "1.2.250.1.213.1.1.1.21.2022.1.1"
    patient = info.patient
    assert patient.name is not None
    assert patient.name.family == "PAT-TROIS"
    assert patient.name.birth_family == "PAT-TROIS"
    assert patient.name.given == ("DOMINIQUE",)
    assert patient.name.first_given == "DOMINIQUE"
    assert patient.birth_date == "19790328"
    assert patient.gender is not None and patient.gender.code == "F"
    assert patient.ins is not None
    assert (patient.ins.value, patient.ins.root, patient.ins.kind) == ("279035121518989", INS_NIR_TEST, "INS-NIR-TEST")
    assert patient.ins.is_test and patient.ins.key_valid
    author = info.authors[0]
    assert author.rpps == "01234567897"
    assert author.id is not None and author.id.extension == "801234567897"
    assert author.name is not None and (author.name.given, author.name.family) == (("Charles",), "BOILEAU")
    assert author.organisation is not None and author.organisation.name == "Centre de soins du Belvédère"
    assert info.custodian is not None and info.custodian.name == "Centre de soins du Belvédère"
    assert info.legal_authenticator is not None and info.legal_authenticator.rpps == "01234567897"
    assert info.self_presenting is False
    assert not info.embedded_pdf


def test_lettre_de_liaison_sections(parsed: dict[str, Document]) -> None:
    info = cda(parsed, "LDL-EES_2022.01.xml")
    titles = [section.title for section in info.sections]
    assert titles == [
        "Motif d'hospitalisation",
        "Traitements à l'admission",
        "Allergies et hypersensibilités connues",
        "Antécédents médicaux",
        "Antécédents chirurgicaux",
        "Autres informations",
    ]
    first = info.sections[0]
    assert first.code is not None and first.code.code == "42349-1"
    assert first.text is not None and first.text.tag == "text"
    assert first.text.plain_text() == "Episode psychotique - cachexie/anorexie"
    table = next(child for child in first.text.children if not isinstance(child, str))
    assert table.tag == "table"
    last = info.sections[-1].text
    assert last is not None
    th = last.children[1].children[0].children[0].children[0]  # text/table/thead/tr/th
    assert th.tag == "th" and th.attribute("colspan") == "3"


def test_narrative_is_sanitised() -> None:
    document = (
        SAMPLE_HEAD
        + b"""<component><structuredBody><component><section>
        <title>Notes</title>
        <text><paragraph styleCode="Bold" onclick="alert(1)">Bonjour <content>docteur</content></paragraph>
        <linkHtml href="javascript:alert(1)">lien</linkHtml> <linkHtml href="https://example.org/">site</linkHtml>
        <script xmlns="http://www.w3.org/1999/xhtml">alert(2)</script></text>
        <component><section><title>Sous-section</title><text>Texte</text></section></component>
        </section></component></structuredBody></component></ClinicalDocument>"""
    )
    info = parse_cda(document, filename="notes.xml", limits=LIMITS)
    section = info.sections[0]
    assert section.title == "Notes"
    assert [sub.title for sub in section.sections] == ["Sous-section"]
    text = section.text
    assert text is not None
    nodes = [child for child in text.children if not isinstance(child, str)]
    assert [node.tag for node in nodes] == ["paragraph", "linkHtml", "linkHtml"]
    assert nodes[0].attributes == (("styleCode", "Bold"),)
    assert nodes[1].attribute("href") is None
    assert nodes[2].attribute("href") == "https://example.org/"
    # The foreign script element is gone; only its words remain, as inert text.
    assert all(getattr(child, "tag", None) != "script" for child in text.children)
    assert text.plain_text() == "Bonjour docteur lien site alert(2)"


def test_cda_with_embedded_pdfs_in_entries(parsed: dict[str, Document]) -> None:
    info = cda(parsed, "BIO-CR-BIO_2024.01_CR-2nde-intention-PDF.xml")
    assert info.type_code.code == "11502-2"
    assert info.embedded_pdf
    assert info.non_xml_body is None
    assert [(m.media_type, m.location, m.id, m.size, m.pages) for m in info.media] == [
        ("application/pdf", "observationMedia", "CRBio", 82200, 2),
        ("application/pdf", "observationMedia", "doc-1", 104574, 5),
    ]


def test_level_one_cda_exposes_its_pdf_body(parsed: dict[str, Document]) -> None:
    info = cda(parsed, "DOC_NON_STRUCTURE_CDA-R2-N1.xml")
    assert info.sections == ()
    body = info.non_xml_body
    assert body is not None
    assert (body.media_type, body.location, body.size, body.pages) == ("application/pdf", "nonXMLBody", 326650, 2)
    assert info.embedded_pdf


def test_auto_presentable_cda_is_read_inside_its_stylesheet(parsed: dict[str, Document]) -> None:
    info = cda(parsed, "CANCER-PPS_2022.01_Autopresentable.xml")
    assert info.self_presenting is True
    assert info.type_code.code == "18776-5"
    assert info.title is not None and info.title.startswith("PROGRAMME PERSONNALISÉ DE SOINS")


def test_ci_sis_type_codes(parsed: dict[str, Document]) -> None:
    assert cda(parsed, "CNAM-HR_2021.01.xml").type_code.code == "REMB"
    assert cda(parsed, "CSE-CS8_2024.01.xml").type_code.code == "CERT_DECL"
    assert cda(parsed, "VSM_1.4_2022.01.xml").type_code.code == "SYNTH"


def test_header_values_for_a_qualified_production_ins(parsed: dict[str, Document]) -> None:
    info = cda(parsed, "OBP-SAP_2024.01.xml")
    assert info.patient.ins is not None and info.patient.ins.root == INS_NIR
    assert info.patient.name is not None and info.patient.name.birth_family == "NESSI"
    assert cda_header_values(info) == {"X-MSS-CODECDA": "57055-6", "X-MSS-INS": "O"}


def test_header_values_for_test_and_invalid_ins(parsed: dict[str, Document]) -> None:
    test_ins = cda(parsed, "LDL-SES_2022.01.xml")
    assert cda_header_values(test_ins) == {"X-MSS-CODECDA": "11490-0", "X-MSS-INS": "N"}
    assert cda_header_values(test_ins, accept_test_ins=True) == {"X-MSS-CODECDA": "11490-0", "X-MSS-INS": "O"}
    # A production NIR whose key does not check out is not announced as qualified.
    bad_key = cda(parsed, "CSE-CS24_2024.01.xml")
    assert bad_key.patient.ins is not None and not bad_key.patient.ins.key_valid
    assert cda_header_values(bad_key)["X-MSS-INS"] == "N"


def test_message_header_values_join_codes(parsed: dict[str, Document]) -> None:
    infos = [cda(parsed, "OBP-SAP_2024.01.xml"), cda(parsed, "LDL-SES_2022.01.xml"), cda(parsed, "OBP-SAP_2024.01.xml")]
    assert message_header_values(infos) == {"X-MSS-CODECDA": "57055-6,11490-0", "X-MSS-INS": "O"}
    assert message_header_values([]) == {}


# -- hostile and broken XML --------------------------------------------------------------

SAMPLE_HEAD = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
<id root="1.2.3" extension="42"/>
<code code="11490-0" codeSystem="2.16.840.1.113883.6.1" displayName="Lettre de liaison"/>
<title>Lettre</title>
<effectiveTime value="20240101120000+0100"/>
<recordTarget><patientRole><id root="1.2.250.1.213.1.4.8" extension="279035121518989"/>
<patient><name><family qualifier="BR">MARTIN</family><given qualifier="BR">ANNE</given></name>
<administrativeGenderCode code="F"/><birthTime value="19790328"/></patient></patientRole></recordTarget>
"""
MINIMAL = SAMPLE_HEAD + b"<component><structuredBody/></component></ClinicalDocument>"


def test_minimal_cda_is_accepted() -> None:
    info = parse_cda(MINIMAL, filename="lettre.xml", limits=LIMITS)
    assert info.type_code.code == "11490-0"
    assert cda_header_values(info) == {"X-MSS-CODECDA": "11490-0", "X-MSS-INS": "O"}


def test_external_file_entity_is_refused_not_expanded() -> None:
    document = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>"""
    with pytest.raises(XmlDoctypeForbidden) as caught:
        inspect_attachment("lettre.xml", "text/xml", document, limits=LIMITS)
    error = caught.value
    assert error.code == "xml-doctype"
    assert document_status(error) == (550, "5.7.1")
    assert "root:" not in error.message and "DOCTYPE" in error.message


def test_billion_laughs_is_refused() -> None:
    entities = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    document = (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol0 "lol">' + entities + "]>\n"
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>'
    ).encode()
    with pytest.raises(XmlDoctypeForbidden):
        parse_cda(document, filename="lol.xml", limits=LIMITS)


def test_parameter_entity_is_refused() -> None:
    document = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument [
  <!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd">
  <!ENTITY % file SYSTEM "file:///etc/hostname">
  %remote;
]>
<ClinicalDocument xmlns="urn:hl7-org:v3"/>"""
    with pytest.raises(XmlDoctypeForbidden):
        parse_cda(document, filename="pe.xml", limits=LIMITS)


def test_doctype_is_refused_in_utf16_and_utf32() -> None:
    text = (
        '<?xml version="1.0" encoding="{enc}"?>'
        '<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>'
    )
    for encoding in ("UTF-16", "UTF-32"):
        with pytest.raises(XmlDoctypeForbidden):
            parse_xml(text.format(enc=encoding).encode(encoding.lower()), filename="x.xml", limits=LIMITS)


def test_plain_doctype_without_entities_is_refused() -> None:
    document = b'<!DOCTYPE ClinicalDocument SYSTEM "cda.dtd"><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
    with pytest.raises(XmlDoctypeForbidden):
        parse_cda(document, filename="dtd.xml", limits=LIMITS)


def test_undeclared_entity_is_malformed() -> None:
    document = b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&nope;</title></ClinicalDocument>'
    with pytest.raises(InvalidXml):
        parse_cda(document, filename="x.xml", limits=LIMITS)


def test_wrong_root_is_refused() -> None:
    with pytest.raises(NotClinicalDocument) as caught:
        inspect_attachment("lettre.xml", "text/xml", b'<Document xmlns="urn:hl7-org:v3"/>', limits=LIMITS)
    assert caught.value.code == "cda-root"
    assert document_status(caught.value) == (554, "5.6.0")
    assert "Document" in caught.value.message


def test_wrong_namespace_is_refused() -> None:
    with pytest.raises(WrongCdaNamespace) as caught:
        parse_cda(b'<ClinicalDocument xmlns="urn:hl7-org:v2"/>', filename="lettre.xml", limits=LIMITS)
    assert caught.value.code == "cda-namespace"
    with pytest.raises(WrongCdaNamespace):
        parse_cda(b"<ClinicalDocument/>", filename="lettre.xml", limits=LIMITS)


def test_not_well_formed_is_refused() -> None:
    with pytest.raises(InvalidXml) as caught:
        inspect_attachment(
            "lettre.xml",
            "text/xml",
            b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>x</ClinicalDocument>',
            limits=LIMITS,
        )
    assert caught.value.code == "xml-malformed"
    assert caught.value.message.startswith("lettre.xml is not well-formed XML")


def test_non_xml_named_xml_is_refused() -> None:
    with pytest.raises(InvalidXml):
        inspect_attachment("lettre.xml", "text/xml", b"just some words", limits=LIMITS)


def test_too_deep_xml_is_refused() -> None:
    document = b'<ClinicalDocument xmlns="urn:hl7-org:v3">' + b"<a>" * 200 + b"</a>" * 200 + b"</ClinicalDocument>"
    with pytest.raises(XmlTooComplex):
        parse_cda(document, filename="deep.xml", limits=LIMITS)


def test_cda_without_type_code_patient_or_body_is_refused() -> None:
    code = b'<code code="11490-0" codeSystem="2.16.840.1.113883.6.1" displayName="Lettre de liaison"/>'
    no_code = MINIMAL.replace(code, b"")
    with pytest.raises(InvalidCda, match="no document type code"):
        parse_cda(no_code, filename="a.xml", limits=LIMITS)
    bad_code = MINIMAL.replace(b'code="11490-0"', b'code="11490-0&#13;&#10;Bcc: x"')
    with pytest.raises(InvalidCda, match="malformed"):
        parse_cda(bad_code, filename="a.xml", limits=LIMITS)
    no_body = SAMPLE_HEAD + b"</ClinicalDocument>"
    with pytest.raises(InvalidCda, match="no body"):
        parse_cda(no_body, filename="a.xml", limits=LIMITS)
    start = MINIMAL.index(b"<recordTarget>")
    end = MINIMAL.index(b"</recordTarget>") + len(b"</recordTarget>")
    with pytest.raises(InvalidCda, match="no patient"):
        parse_cda(MINIMAL[:start] + MINIMAL[end:], filename="a.xml", limits=LIMITS)


def non_xml_body(payload: bytes, media_type: str = "application/pdf") -> bytes:
    encoded = base64.b64encode(payload)
    return (
        SAMPLE_HEAD
        + b'<component><nonXMLBody><text mediaType="'
        + media_type.encode()
        + b'" representation="B64">'
        + encoded
        + b"</text></nonXMLBody></component></ClinicalDocument>"
    )


def test_level_one_body_with_bad_base64_is_refused() -> None:
    document = SAMPLE_HEAD + (
        b'<component><nonXMLBody><text mediaType="application/pdf" representation="B64">!!not base64!!'
        b"</text></nonXMLBody></component></ClinicalDocument>"
    )
    with pytest.raises(InvalidCda, match="base64"):
        parse_cda(document, filename="a.xml", limits=LIMITS)


def test_embedded_executable_is_refused() -> None:
    with pytest.raises(UnsafeDocument, match="executable"):
        parse_cda(non_xml_body(b"\x7fELF" + b"\x00" * 100, "image/jpeg"), filename="a.xml", limits=LIMITS)


def test_embedded_broken_pdf_is_refused() -> None:
    with pytest.raises(InvalidPdf) as caught:
        parse_cda(non_xml_body(b"%PDF-1.4\nbroken"), filename="a.xml", limits=LIMITS)
    assert caught.value.message.startswith("a.xml carries an embedded PDF that is not a valid PDF")


def test_cda_declared_or_named_otherwise_is_refused() -> None:
    with pytest.raises(DocumentTypeMismatch):
        inspect_attachment("lettre.pdf", "application/pdf", MINIMAL, limits=LIMITS)
    with pytest.raises(DocumentTypeMismatch):
        inspect_attachment("lettre.xml", "image/svg+xml", MINIMAL, limits=LIMITS)


def test_pdf_body_declared_with_another_type_is_checked_and_reported() -> None:
    pdf = pdf_bytes()
    info = parse_cda(non_xml_body(pdf, "pdf/xml"), filename="a.xml", limits=LIMITS)
    body = info.non_xml_body
    assert body is not None and body.is_pdf and body.pages == 1 and body.declared_type_wrong
    assert level_one_pdf(non_xml_body(pdf, "pdf/xml"), filename="a.xml", limits=LIMITS) == pdf
    with pytest.raises(ActivePdfContent):
        parse_cda(non_xml_body(javascript_pdf(), "application/octet-stream"), filename="a.xml", limits=LIMITS)


def test_file_declared_as_pdf_that_is_not_one_is_refused() -> None:
    with pytest.raises(InvalidPdf, match="declared as a PDF"):
        parse_cda(non_xml_body(b"GIF89a" + b"\x00" * 40, "application/pdf"), filename="a.xml", limits=LIMITS)


def test_plain_text_body_is_decoded() -> None:
    info = parse_cda(
        non_xml_body("Compte rendu opératoire\n<b>pas du HTML</b>".encode(), "text/plain"),
        filename="a.xml",
        limits=LIMITS,
    )
    assert info.non_xml_body is not None
    assert info.non_xml_body.text == "Compte rendu opératoire\n<b>pas du HTML</b>"


@pytest.mark.parametrize(
    ("payload", "declared", "shown", "wrong"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", True, False),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, "image/jpg", True, False),
        (b"GIF89a" + b"\x00" * 40, "image/png", True, True),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", False, False),
    ],
)
def test_embedded_images_are_typed_by_their_content(payload: bytes, declared: str, shown: bool, wrong: bool) -> None:
    document = non_xml_body(payload, declared)
    body = parse_cda(document, filename="a.xml", limits=LIMITS).non_xml_body
    assert body is not None and body.shown_image is shown and body.declared_type_wrong is wrong
    found = embedded_file(document, filename="a.xml", limits=LIMITS, index=0)
    assert (found is not None) is shown


def test_reference_to_an_external_file_is_kept() -> None:
    document = SAMPLE_HEAD + (
        b'<component><nonXMLBody><text mediaType="application/pdf"><reference value="UD_sample.pdf"/>'
        b"</text></nonXMLBody></component></ClinicalDocument>"
    )
    body = parse_cda(document, filename="a.xml", limits=LIMITS).non_xml_body
    assert body is not None and body.reference == "UD_sample.pdf" and body.size is None
