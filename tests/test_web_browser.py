"""End to end in a real headless Chromium against the real server: uvicorn over HTTPS on
loopback, the SMTP relay on loopback, one database.

A message submitted over SMTP (STARTTLS, AUTH) is read in the browser by its recipient, who
first enrols an authenticator: signature badge, byte-exact download, rendered CDA. The
recipient then writes back with a PDF through the compose page (directory search as you
type), and each side sees the other's read receipt appear in its Sent view.

Set ``MSS_WEB_SCREENSHOTS=<folder>`` to keep the screenshots (the README's are made so).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import expect

from mss.documents import DocumentLimits, parse_cda
from mss.relay import RelayServer
from mss.web.twofactor import secret_of
from relay_support import CDA_SAMPLE, RECIPIENTS, SENDER, build_stack, cda_bytes, pdf_bytes, queue_id, transaction
from relay_support import login as smtp_login
from web_support import Person, WebServer, build_message, submit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = os.environ.get("CI", "").lower() == "true"
READER = RECIPIENTS[0]  # cedric.petit@chu-demo.mss.test


@pytest.fixture
def chromium():  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is required under CI=true (tests/sysdeps.sh installs it)")
        pytest.skip(f"{CHROMIUM} is not installed (run tests/sysdeps.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def stack(tmp_path):  # type: ignore[no-untyped-def]
    stack = build_stack(tmp_path)
    stack.relay = RelayServer(stack.rt).start()
    web = WebServer(stack.rt).start()
    try:
        yield stack, web
    finally:
        web.stop()
        stack.close()


def _shot(page, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    folder = Path(os.environ.get("MSS_WEB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=False)


def _enrol(page, url: str, address: str, password: str) -> Person:  # type: ignore[no-untyped-def]
    """First login in the browser: password, then the enrolment page's key, then a code."""
    page.goto(url + "/login")
    page.fill("#address", address)
    page.fill("#password", password)
    page.click("button[type=submit].primary")
    expect(page).to_have_url(re.compile(r"/login/enrol$"))
    assert page.locator(".qr svg").count() == 1
    secret = re.sub(r"\s", "", page.inner_text("#totp-secret"))
    person = Person(address=address, password=password, secret=secret)
    page.fill("#code", person.code())
    page.click("button[type=submit].primary")
    page.wait_for_selector("#recovery-codes")
    assert page.locator("#recovery-codes li").count() == 10
    page.click("#continue")
    expect(page).to_have_url(re.compile(r"/inbox$"))
    return person


def test_browser_reads_writes_and_follows_receipts(stack, chromium, tmp_path):  # type: ignore[no-untyped-def]
    stack, web = stack
    rt = stack.rt
    pdf, cda = pdf_bytes(), cda_bytes()
    title = parse_cda(cda, filename=CDA_SAMPLE.name, limits=DocumentLimits()).title
    assert title

    # A few older messages so the inbox looks like one, then the letter over SMTP.
    colleague = Person(RECIPIENTS[1], stack.passwords[RECIPIENTS[1]], "")
    for subject in ("Résultats de biologie", "Demande d'avis cardiologique", "Compte rendu de consultation"):
        submit(rt, colleague, [READER], subject, "Bonjour,\nci-joint.", [("document.pdf", "application/pdf", pdf)])
    raw = build_message(
        SENDER,
        [READER],
        "Lettre de liaison de sortie",
        "Bonjour,\nveuillez trouver la lettre de liaison.",
        [("lettre.pdf", "application/pdf", pdf), (CDA_SAMPLE.name, "text/xml", cda)],
        read_receipt=True,
    )
    client = smtp_login(stack, SENDER)
    smtp_queue_id = queue_id(transaction(client, SENDER, [READER], raw)[-1])
    client.quit()

    reader_context = chromium.new_context(
        ignore_https_errors=True, accept_downloads=True, locale="fr-FR", viewport={"width": 1366, "height": 768}
    )
    page = reader_context.new_page()
    reader = _enrol(page, web.url, READER, stack.passwords[READER])

    row = page.locator("tr.unread", has_text="Lettre de liaison de sortie")
    assert row.count() == 1
    _shot(page, "inbox", tmp_path)
    row.locator("a").click()
    expect(page).to_have_url(re.compile(rf"/messages/{smtp_queue_id}"))
    badge = page.locator(".badge")
    assert "sig-valid" in (badge.get_attribute("class") or "")
    assert "signature valide" in badge.inner_text() and SENDER in badge.inner_text()
    assert "veuillez trouver la lettre de liaison." in page.inner_text(".body .text")

    with page.expect_download() as download:
        page.click(f'a[href="/messages/{smtp_queue_id}/attachments/0"]')
    assert Path(download.value.path()).read_bytes() == pdf
    assert download.value.suggested_filename == "lettre.pdf"

    page.click(f'a[href="/messages/{smtp_queue_id}/attachments/1/view"]')
    page.wait_for_selector("article.cda")
    assert title in page.inner_text("article.cda h2")
    assert page.locator(".cda-section").count() > 0
    assert "ClinicalDocument" not in page.content()
    _shot(page, "message-cda", tmp_path)

    # Write back with a PDF, choosing the recipient from the directory as you type.
    page.goto(web.url + "/compose")
    page.fill("#subject", "RE : Lettre de liaison de sortie")
    page.fill("#body", "Bien reçu, merci.\nLe patient sera revu dans un mois.")
    page.fill("#to-search", "robert")
    result = page.locator("button.result", has_text=SENDER)
    result.wait_for()
    _shot(page, "compose", tmp_path)
    result.click()
    assert page.locator(f'#chosen input[value="{SENDER}"]').is_checked()
    answer = pdf_bytes(2)
    page.set_input_files(
        "#attachments", files=[{"name": "reponse.pdf", "mimeType": "application/pdf", "buffer": answer}]
    )
    page.check("#read_receipt")
    page.click("#compose-form button[type=submit]")
    expect(page).to_have_url(re.compile(r"/messages/[0-9A-F]{20}\?folder=sent$"))
    sent_url = page.url
    assert "dans la boîte" in page.inner_text(".journey")

    # The sender reads the answer: each side sees the other's read receipt.
    sender_context = chromium.new_context(
        ignore_https_errors=True, accept_downloads=True, locale="fr-FR", viewport={"width": 1366, "height": 768}
    )
    sender_page = sender_context.new_page()
    _enrol(sender_page, web.url, SENDER, stack.passwords[SENDER])
    sender_page.goto(web.url + f"/messages/{smtp_queue_id}?folder=sent")
    journey = sender_page.inner_text(".journey")
    assert READER in journey and "lu" in journey.split()
    sender_page.goto(web.url + "/inbox")
    sender_page.locator("a", has_text="RE : Lettre de liaison de sortie").click()
    assert "Bien reçu, merci." in sender_page.inner_text(".body .text")
    with sender_page.expect_download() as download:
        sender_page.click("a[download][href$='/attachments/0']")
    assert Path(download.value.path()).read_bytes() == answer

    page.goto(sent_url)
    deadline = time.monotonic() + 10
    while "lu" not in page.inner_text(".journey tbody td:nth-child(2)").split() and time.monotonic() < deadline:
        time.sleep(0.2)
        page.reload()
    assert page.inner_text(".journey tbody td:nth-child(2)").strip() == "lu"
    assert reader.address == READER
    reader_context.close()
    sender_context.close()


def test_totp_codes_from_the_page_key_match_pyotp() -> None:
    """The key the enrolment page shows is the RFC 6238 secret itself (grouped by four)."""
    secret = pyotp.random_base32(32)
    shown = secret_of(pyotp.TOTP(secret).provisioning_uri(name="a@mss.test", issuer_name="mss"))
    assert shown.replace(" ", "") == secret and len(shown.split(" ")[0]) == 4


WORLD = Path(__file__).resolve().parent / "samples" / "world"


@pytest.fixture
def roomy_stack(tmp_path):  # type: ignore[no-untyped-def]
    """The stack with the default message size (a level-1 CDA carries a whole PDF)."""
    stack = build_stack(tmp_path, MSS_MAX_MESSAGE_SIZE="20000000")
    stack.relay = RelayServer(stack.rt).start()
    web = WebServer(stack.rt).start()
    try:
        yield stack, web
    finally:
        web.stop()
        stack.close()


def test_foreign_documents_in_the_browser(roomy_stack, chromium, tmp_path):  # type: ignore[no-untyped-def]
    """A US level-1 CDA whose body is a PDF, a CDA with an image, a C-CDA with a 13-column
    table: each read in Chromium, the PDF in the viewer, the image shown, the table scrolled
    in its own box (the page itself never scrolls sideways), and a print layout without the
    inbox around the letter."""
    stack, web = roomy_stack
    documents = {
        "cda-embedded-pdf": WORLD / "hl7-c-cda-examples" / "Unstructured__CDA_with_Embedded_PDF_2__CDA_with_Embedded_PDF.xml",
        "cda-images": CDA_SAMPLE.parent / "BIO-CR-BIO_2021.01_Auto-Presentable_avec-image.xml",
        "cda-wide-table": WORLD / "sample-ccdas" / "Greenway_Samples__26620_ExportSummary_CCDA.xml",
    }
    client = smtp_login(stack, SENDER)
    queues = {}
    for name, path in documents.items():
        raw = build_message(SENDER, [READER], name, "Bonjour.", [(path.name, "text/xml", path.read_bytes())])
        queues[name] = queue_id(transaction(client, SENDER, [READER], raw)[-1])
    client.quit()

    context = chromium.new_context(ignore_https_errors=True, locale="fr-FR", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    _enrol(page, web.url, READER, stack.passwords[READER])

    page.goto(f"{web.url}/messages/{queues['cda-embedded-pdf']}/attachments/0/view")
    frame = page.locator("iframe.pdf")
    expect(frame).to_have_attribute("src", f"/messages/{queues['cda-embedded-pdf']}/attachments/0/embedded")
    assert "Personal Advance Care Document" in page.inner_text(".cda-head h2")
    _shot(page, "cda-embedded-pdf", tmp_path)

    page.goto(f"{web.url}/messages/{queues['cda-images']}/attachments/0/view")
    image = page.locator("img.cda-image").first
    image.scroll_into_view_if_needed()
    assert page.evaluate("img => img.complete && img.naturalWidth > 0", image.element_handle())
    assert "[media]" not in page.inner_text(".cda")
    _shot(page, "cda-images", tmp_path)

    page.goto(f"{web.url}/messages/{queues['cda-wide-table']}/attachments/0/view")
    wide = page.locator(".cda-text .table-wrap").first
    wide.scroll_into_view_if_needed()
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    widths = page.evaluate(
        "() => [...document.querySelectorAll('.cda-text .table-wrap')].map(w => w.scrollWidth - w.clientWidth)"
    )
    assert max(widths) > 0  # at least one table scrolls inside its box
    _shot(page, "cda-wide-table", tmp_path)
    page.emulate_media(media="print")
    assert not page.locator("nav.side").is_visible()
    assert page.locator(".cda-head").is_visible()
    context.close()
