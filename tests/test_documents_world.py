"""Documents as the world writes them: a corpus of public documents that mss did not write
(tests/samples/world, provenance and licences in its SOURCES file).

Every document goes through the document checks and, for every CDA (bare or in an IHE_XDM
package), through the page that renders it, in both languages: the valid ones are accepted
and read (title, patient or a clear "not named", author, sections or body), the others are
refused with the reason EXPECTED names. One document per source and kind then travels the
real way: SMTP over TLS to the relay, the recipient's web inbox, the download that must be
byte-identical and the page that shows it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from litestar.testing import TestClient

from mss.documents import Document, DocumentLimits, inspect_attachment
from mss.errors import DocumentError
from mss.web import create_app
from mss.web.i18n import load_languages
from mss.web.messages import error_text
from mss.web.pages import TEMPLATE_HELPERS

from relay_support import SENDER, Stack, build_stack, message, queue_id, transaction
from relay_support import login as smtp_login
from web_support import BASE_URL, GP, create_person
from web_support import login as web_login

pytestmark = pytest.mark.sqlite_only

WORLD = Path(__file__).resolve().parent / "samples" / "world"
LIMITS = DocumentLimits()
TYPES = {".pdf": "application/pdf", ".zip": "application/zip"}


def corpus() -> list[Path]:
    return sorted(p for p in WORLD.glob("*/*") if p.is_file())


def expected() -> dict[str, str]:
    lines = (WORLD / "EXPECTED").read_text().splitlines()
    return dict(line.split() for line in lines if line.strip() and not line.startswith("#"))


def declared_type(path: Path) -> str:
    return TYPES.get(path.suffix.lower(), "text/xml")


def checked(path: Path) -> Document | DocumentError:
    try:
        return inspect_attachment(path.name, declared_type(path), path.read_bytes(), limits=LIMITS)
    except DocumentError as exc:
        return exc


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Document | DocumentError]:
    return {f"{path.parent.name}/{path.name}": checked(path) for path in corpus()}


def test_the_corpus_is_real_and_documented() -> None:
    files = corpus()
    sources = {
        line.split(" | ")[0]
        for line in (WORLD / "SOURCES").read_text().splitlines()
        if " | " in line and not line.startswith("#")
    }
    assert len(files) >= 150
    assert len({path.parent.name for path in files}) >= 5
    assert sources == {f"{path.parent.name}/{path.name}" for path in files}
    assert sum(path.stat().st_size for path in files) < 8_000_000


def test_valid_documents_are_accepted_and_unsafe_or_invalid_ones_refused_for_their_reason(outcomes) -> None:
    refusals = expected()
    got = {name: outcome.code for name, outcome in outcomes.items() if isinstance(outcome, DocumentError)}
    assert got == refusals
    kinds = Counter(outcome.kind for outcome in outcomes.values() if isinstance(outcome, Document))
    assert kinds["pdf"] >= 70 and kinds["cda"] >= 60 and kinds["xdm"] >= 1


def test_every_refusal_reads_in_french_without_english(outcomes) -> None:
    french = load_languages()["fr"]
    for name, outcome in outcomes.items():
        if isinstance(outcome, DocumentError):
            sentence = error_text(french, outcome)
            assert outcome.filename in sentence, name
            assert not re.search(r"\b(is|not|the|which|allowed|holds)\b", sentence), (name, sentence)


def cdas(outcome: Document) -> list:
    if outcome.cda is not None:
        return [outcome.cda]
    if outcome.xdm is not None:
        return [doc.document.cda for doc in outcome.xdm.documents if doc.document.cda is not None]
    return []


@pytest.mark.parametrize("code", ["fr", "en"])
def test_every_accepted_cda_renders_a_readable_page(outcomes, code: str) -> None:
    language = load_languages()[code]
    language.env.globals.update(TEMPLATE_HELPERS)
    page = language.env.from_string('{% import "_macros.html" as m %}{{ m.cda_document(cda, "/d", "file") }}')
    rendered = 0
    for name, outcome in outcomes.items():
        if not isinstance(outcome, Document):
            continue
        for cda in cdas(outcome):
            html = page.render(cda=cda)
            rendered += 1
            title = re.search(r"<h2>(.*?)</h2>", html)
            patient = re.search(r'class="patient">\s*<strong>(.+?)</strong>', html)
            authors = re.findall(r"<dt>(?:Author|Auteur)</dt>\s*<dd>(.+?)</dd>", html, re.DOTALL)
            assert title and title.group(1).strip(), name
            assert patient and patient.group(1).strip(), name
            assert authors and all(a.strip() for a in authors), name
            assert "cda-section" in html or "cda-plain" in html or "iframe" in html or "notice" in html, name
            assert not re.search(r"<h\d>\s*</h\d>|<dd>\s*</dd>|\[media\]", html), name
            assert "<script" not in html.lower(), name
    assert rendered >= 60


def test_dates_are_shown_as_written() -> None:
    data = (WORLD / "hl7-c-cda-examples" / "Documents__Progress_Note__Progress_Note.xml").read_bytes()
    info = inspect_attachment("note.xml", "text/xml", data, limits=LIMITS).cda
    assert info is not None and info.effective_time is not None
    french = load_languages()["fr"]
    french.env.globals.update(TEMPLATE_HELPERS)
    html = french.env.from_string('{% import "_macros.html" as m %}{{ m.cda_document(cda, "/d", "f") }}').render(
        cda=info
    )
    shown = re.search(r"<dt>Date</dt><dd>(.*?)</dd>", html).group(1)
    from mss.web.cda_view import hl7_when

    assert shown == hl7_when(info.effective_time, "fr")
    assert hl7_when("20130619", "fr") == "19 juin 2013"
    assert hl7_when("201306191430", "fr") == "19 juin 2013, 14:30"
    assert hl7_when("201306", "en") == "June 2013"


# -- the real way: SMTP, then the web ------------------------------------------------------


def representatives(outcomes: dict[str, Document | DocumentError]) -> list[str]:
    """One accepted document per source and kind."""
    chosen: dict[tuple[str, str], str] = {}
    for name, outcome in outcomes.items():
        if isinstance(outcome, Document):
            chosen.setdefault((name.split("/")[0], outcome.kind), name)
    return sorted(chosen.values())


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Stack:
    from mss.relay import RelayServer

    built = build_stack(tmp_path_factory.mktemp("world"))
    built.relay = RelayServer(built.rt).start()
    yield built
    built.close()


@pytest.fixture(scope="module")
def gp(stack: Stack):
    return create_person(stack.rt, GP)


def test_a_document_per_source_and_kind_travels_by_smtp_and_reads_on_the_web(stack: Stack, gp, outcomes) -> None:
    names = representatives(outcomes)
    assert len(names) >= 7
    sent: dict[str, str] = {}
    client = smtp_login(stack)
    for name in names:
        path = WORLD / name
        reply = transaction(
            client,
            SENDER,
            [GP],
            message(SENDER, [GP], [(path.name, declared_type(path), path.read_bytes())], subject=name),
        )[-1]
        sent[name] = queue_id(reply)
    client.quit()

    with TestClient(create_app(stack.rt), base_url=BASE_URL) as web:
        web_login(web, gp)
        for name, queue in sent.items():
            data = (WORLD / name).read_bytes()
            download = web.get(f"/messages/{queue}/attachments/0")
            assert download.status_code == 200 and download.content == data, name
            view = web.get(f"/messages/{queue}/attachments/0/view")
            assert view.status_code == 200, name
            outcome = outcomes[name]
            if outcome.kind == "cda":
                assert "cda-head" in view.text and "Document non affichable" not in view.text, name
            if outcome.kind == "xdm":
                for index, doc in enumerate(outcome.xdm.documents):
                    page = web.get(f"/messages/{queue}/attachments/0/documents/{index}/view")
                    assert page.status_code == 200 and "cda-head" in page.text, name
                    assert web.get(f"/messages/{queue}/attachments/0/documents/{index}").content == (
                        zip_member(data, doc.path)
                    )
                assert "Autres fichiers du paquet" in view.text
            if outcome.kind == "pdf":
                assert web.get(f"/messages/{queue}/attachments/0/inline").content == data


def zip_member(data: bytes, path: str) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.read(path)


def test_embedded_pdf_of_a_foreign_cda_opens_in_the_viewer(stack: Stack, gp) -> None:
    path = WORLD / "hl7-c-cda-examples" / "Unstructured__CDA_with_Embedded_PDF_2__CDA_with_Embedded_PDF.xml"
    client = smtp_login(stack)
    reply = transaction(client, SENDER, [GP], message(SENDER, [GP], [(path.name, "text/xml", path.read_bytes())]))[-1]
    client.quit()
    queue = queue_id(reply)
    with TestClient(create_app(stack.rt), base_url=BASE_URL) as web:
        web_login(web, gp)
        view = web.get(f"/messages/{queue}/attachments/0/view")
        assert f'src="/messages/{queue}/attachments/0/embedded"' in view.text
        pdf = web.get(f"/messages/{queue}/attachments/0/embedded")
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")
        assert pdf.headers["content-type"] == "application/pdf"
