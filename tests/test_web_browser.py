"""End to end in a real headless Chromium against the real server: uvicorn over HTTPS on
loopback, the SMTP relay on loopback, one database.

A message submitted over SMTP (STARTTLS, AUTH) is read in the browser by its recipient, who
first enrols an authenticator: signature badge, byte-exact download, rendered CDA. The
recipient then writes back with a PDF through the compose page (directory search as you
type), and each side sees the other's read receipt appear in its Sent view.

Everyday use, in one more session: login, reading and writing with the keyboard alone; the
read receipt asked first; a text without a charset read as written; a refused send that
keeps its draft and attachments; a reply that keeps the thread; the directory browsed;
every page checked with axe-core (no serious or critical violation), and the main pages at
390 px (a phone) and 768 px (a tablet) without anything running off the right edge.

Set ``MSS_WEB_SCREENSHOTS=<folder>`` to keep the screenshots (the README's and
``docs/screenshots/`` are made so).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pyotp
import pytest
from playwright.sync_api import expect

from mss import accounts, mailbox
from mss.documents import DocumentLimits, parse_cda
from mss.web.twofactor import secret_of

from relay_support import CDA_SAMPLE, RECIPIENTS, SENDER, cda_bytes, pdf_bytes, queue_id, transaction
from relay_support import login as smtp_login
from web_support import Person, build_message, serving, submit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    # The server's certificate comes from the test's own CA. The contexts' ignore_https_errors
    # covers page loads only: a link with the download attribute is fetched by the browser's
    # download manager, which refuses the certificate whenever it opens a new connection
    # (the download then ends "canceled"), so the whole browser accepts it.
    "--ignore-certificate-errors",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = os.environ.get("CI", "").lower() == "true"
READER = RECIPIENTS[0]  # cedric.petit@chu-demo.mss.test
# axe-core, installed by `make test` from tests/package.json (npm ci --prefix tests).
AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS = {"serious", "critical"}


@pytest.fixture
def chromium():
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


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.exists():
        if IN_CI:
            pytest.fail(f"{AXE} is required under CI=true (`make test` installs it with npm)")
        pytest.skip(f"{AXE} is not installed (npm ci --prefix tests)")
    return AXE.read_text(encoding="utf-8")


@pytest.fixture
def stack(tmp_path):
    with serving(tmp_path) as served:
        yield served


def _shot(page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("MSS_WEB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=False)


def _enrol(page, url: str, address: str, password: str) -> Person:
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


def test_browser_reads_writes_and_follows_receipts(stack, chromium, tmp_path):
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
    # RFC 8098 2.1: the read receipt waits for the reader's consent.
    consent = page.locator("section.consent")
    assert "L’expéditeur demande un accusé de lecture" in consent.inner_text()
    consent.locator("button[value=send]").click()
    expect(page.locator("section.consent")).to_have_count(0)
    assert "envoyé à l’expéditeur" in page.inner_text("dl.meta")

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
    sender_page.locator("section.consent button[value=send]").click()
    expect(sender_page.locator("section.consent")).to_have_count(0)
    sender_page.wait_for_load_state("networkidle")  # a click during the reload cancels the download
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
def roomy_stack(tmp_path):
    """The stack with the default message size (a level-1 CDA carries a whole PDF)."""
    with serving(tmp_path, MSS_MAX_MESSAGE_SIZE="20000000") as served:
        yield served


def test_foreign_documents_in_the_browser(roomy_stack, chromium, tmp_path):
    """A US level-1 CDA whose body is a PDF, a CDA with an image, a C-CDA with a 13-column
    table: each read in Chromium, the PDF in the viewer, the image shown, the table scrolled
    in its own box (the page itself never scrolls sideways), and a print layout without the
    inbox around the letter."""
    stack, web = roomy_stack
    documents = {
        "cda-embedded-pdf": WORLD
        / "hl7-c-cda-examples"
        / "Unstructured__CDA_with_Embedded_PDF_2__CDA_with_Embedded_PDF.xml",
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


# -- everyday use ------------------------------------------------------------------------


def _accessibility(page, axe_source: str, name: str, report: dict) -> None:
    """Run axe-core on the page as it stands (WCAG 2 A and AA rules); keep the serious and
    critical violations under ``name``. The script is evaluated through the DevTools
    protocol, so the page's Content-Security-Policy stays as it is served."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(axe_source)
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                           nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
        }"""
    )
    report[name] = [v for v in result if v["impact"] in SERIOUS]


def _tab_to(page, selector: str, limit: int = 80) -> None:
    """Move the focus with the Tab key alone until ``selector`` has it."""
    focused = "(s) => document.activeElement !== null && document.activeElement.matches(s)"
    for _ in range(limit):
        if page.evaluate(focused, selector):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"{selector} cannot be reached with the Tab key")


def _type_address_and_password(page, address: str, password: str) -> None:
    """Fill the login form and send it with the keyboard alone."""
    _tab_to(page, "#address")
    page.keyboard.type(address)
    _tab_to(page, "#password")
    page.keyboard.type(password)
    page.keyboard.press("Enter")


def _off_loop(fn, *args, **kwargs):
    """Call a blocking service in a thread: Playwright's sync API runs an event loop here."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def _no_overflow(page, width: int) -> None:
    """Nothing runs off the right edge: the page is no wider than the screen."""
    scroll = page.evaluate("() => document.documentElement.scrollWidth")
    culprit = (
        page.evaluate(
            """(w) => { const out = [];
        for (const el of document.querySelectorAll('body *')) {
          const r = el.getBoundingClientRect();
          if (r.right > w + 0.5) out.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : '') + ' ' + Math.round(r.right));
        } return out.slice(0, 5).join(', '); }""",
            width,
        )
        if scroll > width
        else ""
    )
    assert scroll <= width, f"{page.url}: {scroll} px wide on a {width} px screen ({culprit})"


def _undeclared_charset_message(sender: str, to: str, subject: str, text: str, pdf: bytes) -> bytes:
    """A message as some French mail software writes it: 8-bit Windows-1252 text, no charset."""
    import base64
    from email.header import Header

    attachment = base64.encodebytes(pdf).replace(b"\n", b"\r\n")
    return (
        (
            f"From: {sender}\r\nTo: {to}\r\nSubject: {Header(subject, 'utf-8').encode()}\r\nMIME-Version: 1.0\r\n"
            f"Disposition-Notification-To: {sender}\r\nMessage-ID: <charset-1@client.test>\r\n"
            'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
            "--b1\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode("ascii")
        + text.encode("cp1252")
        + (
            b"\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="bilan.pdf"\r\n\r\n'
        )
        + attachment
        + b"--b1--\r\n"
    )


def test_everyday_use_in_the_browser(stack, chromium, axe_source, tmp_path):
    stack, web = stack
    rt = stack.rt
    pdf, cda = pdf_bytes(), cda_bytes()
    text = "Bonjour,\nvoici la pièce jointe : à vérifier avant jeudi.\nCordialement"
    client = smtp_login(stack, SENDER)
    charset_qid = queue_id(
        transaction(client, SENDER, [READER], _undeclared_charset_message(SENDER, READER, "Bilan à revoir", text, pdf))[
            -1
        ]
    )
    cda_qid = queue_id(
        transaction(
            client,
            SENDER,
            [READER],
            build_message(SENDER, [READER], "Lettre de liaison", "Ci-joint.", [(CDA_SAMPLE.name, "text/xml", cda)]),
        )[-1]
    )
    client.quit()
    report: dict[str, list] = {}
    context = chromium.new_context(ignore_https_errors=True, locale="fr-FR", viewport={"width": 1280, "height": 800})
    page = context.new_page()

    # Log in and enrol with the keyboard alone.
    page.goto(web.url + "/login")
    _accessibility(page, axe_source, "login", report)
    _type_address_and_password(page, READER, stack.passwords[READER])
    expect(page).to_have_url(re.compile(r"/login/enrol$"))
    _accessibility(page, axe_source, "enrol", report)
    person = Person(READER, stack.passwords[READER], re.sub(r"\s", "", page.inner_text("#totp-secret")))
    _tab_to(page, "#code")
    page.keyboard.type(person.code())
    page.keyboard.press("Enter")
    page.wait_for_selector("#recovery-codes")
    _accessibility(page, axe_source, "recovery-codes", report)
    _tab_to(page, "#continue")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/inbox$"))
    _accessibility(page, axe_source, "inbox", report)

    # Read with the keyboard: the text as written, the read receipt asked first.
    _tab_to(page, f'a[href^="/messages/{charset_qid}"]')
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(rf"/messages/{charset_qid}"))
    assert "voici la pièce jointe : à vérifier avant jeudi." in page.inner_text(".body .text")
    assert "WINDOWS-1252" in page.inner_text(".charset-guess")
    assert "L’expéditeur demande un accusé de lecture" in page.inner_text("section.consent")
    _accessibility(page, axe_source, "message", report)
    _tab_to(page, "section.consent button[value=send]")
    page.keyboard.press("Enter")
    expect(page.locator("section.consent")).to_have_count(0)
    assert "envoyé à l’expéditeur" in page.inner_text("dl.meta")
    assert [j.status for j in _off_loop(mailbox.journey, rt, SENDER, charset_qid)] == ["displayed"]

    # Reply with the keyboard: the text is quoted, the thread kept.
    _tab_to(page, f'a[href="/compose?reply={charset_qid}"]')
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/compose\?reply="))
    assert "> voici la pièce jointe : à vérifier avant jeudi." in page.input_value("#body")
    _accessibility(page, axe_source, "compose-reply", report)
    _tab_to(page, "#body")
    page.keyboard.press("Control+Home")
    page.keyboard.type("Bien reçu, je vérifie.")
    _tab_to(page, "#compose-form button[value=send]")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/messages/[0-9A-F]{20}\?folder=sent$"))
    reply_qid = page.url.split("/messages/")[1].split("?")[0]
    _accessibility(page, axe_source, "sent-message", report)
    sender = _off_loop(
        accounts.authenticate, rt.engine, rt.settings, SENDER, stack.passwords[SENDER], accounts.Origin("cli")
    )
    answer = _off_loop(mailbox.open_message, rt, sender, reply_qid)
    assert answer.headers["In-Reply-To"] == "<charset-1@client.test>"
    assert answer.headers["References"] == "<charset-1@client.test>"
    assert answer.body.startswith("Bien reçu, je vérifie.")

    # A refused send loses nothing: the draft keeps its text and files until it is sent.
    page.goto(web.url + "/compose")
    _tab_to(page, "#to-search")
    page.keyboard.type("robert marc")
    page.locator("button.result", has_text=SENDER).wait_for()
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    assert page.locator(f'#chosen input[value="{SENDER}"]').is_checked()
    _tab_to(page, "#subject")
    page.keyboard.type("Compte rendu et outil")
    _tab_to(page, "#body")
    page.keyboard.type("Le compte rendu est joint.")
    page.set_input_files(
        "#attachments",
        files=[
            {"name": "compte-rendu.pdf", "mimeType": "application/pdf", "buffer": pdf},
            {"name": "outil.exe", "mimeType": "application/octet-stream", "buffer": b"MZ\x90\x00\x03\x00\x00\x00"},
        ],
    )
    _tab_to(page, "#compose-form button[value=send]")
    page.keyboard.press("Enter")
    page.wait_for_selector("#draft-kept")
    assert "outil.exe" in page.inner_text("#attachments-errors")
    assert page.input_value("#body") == "Le compte rendu est joint."
    assert page.locator("#draft-keep-0").is_checked() and page.locator("#draft-keep-1").is_checked()
    _accessibility(page, axe_source, "compose-refused", report)
    page.goto(web.url + "/drafts")
    _accessibility(page, axe_source, "drafts", report)
    page.locator("a", has_text="Compte rendu et outil").click()
    assert "compte-rendu.pdf" in page.inner_text(".draft-files") and "outil.exe" in page.inner_text(".draft-files")
    _tab_to(page, "#draft-keep-1")
    page.keyboard.press("Space")
    assert not page.locator("#draft-keep-1").is_checked()
    _tab_to(page, "#compose-form button[value=send]")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/messages/[0-9A-F]{20}\?folder=sent$"))
    assert "compte-rendu.pdf" in page.inner_text(".attachments") and "outil.exe" not in page.inner_text(".attachments")
    page.goto(web.url + "/drafts")
    assert "Aucun brouillon." in page.inner_text("main")

    # The directory: search as you type, an entry's card, write to it.
    page.goto(web.url + "/directory")
    _tab_to(page, "#q")
    page.keyboard.type("robert marc")
    entry = page.locator(".entry-item", has_text=SENDER)
    entry.wait_for()
    assert "/directory?q=" in page.url  # found as typed, no form sent
    _accessibility(page, axe_source, "directory", report)
    entry.locator("a.entry-name").click()
    expect(page).to_have_url(re.compile(r"/directory/marc\.robert"))
    assert "Centre Hospitalier Universitaire de Démo" in page.inner_text("main")
    assert "Empreinte SHA-256" in page.inner_text("main")
    _accessibility(page, axe_source, "directory-entry", report)
    page.locator("a.button.primary", has_text="Écrire à").click()
    assert page.locator(f'#chosen input[value="{SENDER}"]').is_checked()
    page.goto(web.url + f"/directory/{SENDER}/certificate")
    _accessibility(page, axe_source, "certificate", report)

    # The other pages.
    for name, path in (
        ("attachment-cda", f"/messages/{cda_qid}/attachments/0/view"),
        ("attachment-pdf", f"/messages/{charset_qid}/attachments/0/view"),
        ("sent", "/sent"),
        ("archive", "/archive"),
        ("account", "/account"),
        ("not-found", "/messages/NOSUCHMESSAGE0000000"),
    ):
        page.goto(web.url + path)
        _accessibility(page, axe_source, name, report)

    # Phones and tablets: nothing runs off the right edge, and the phone layout is checked too.
    page.set_viewport_size({"width": 360, "height": 740})  # the narrowest phones in use
    for path in ("/inbox", f"/messages/{charset_qid}", "/compose", "/directory?q=rouen", "/account"):
        page.goto(web.url + path)
        _no_overflow(page, 360)
    for width, height in ((390, 844), (768, 1024)):
        page.set_viewport_size({"width": width, "height": height})
        for name, path in (
            ("inbox", "/inbox"),
            ("message", f"/messages/{charset_qid}"),
            ("compose", "/compose"),
            ("directory", "/directory?q=rouen"),
        ):
            page.goto(web.url + path)
            _no_overflow(page, width)
            _shot(page, f"{name}-{width}", tmp_path)
            if width == 390:
                _accessibility(page, axe_source, f"{name}-{width}", report)
    # The next login asks the authenticator's code, with the keyboard alone.
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(web.url + "/inbox")
    _tab_to(page, "form[action='/logout'] button")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/login$"))
    _type_address_and_password(page, READER, stack.passwords[READER])
    expect(page).to_have_url(re.compile(r"/login/totp$"))
    _accessibility(page, axe_source, "login-code", report)
    _tab_to(page, "#code")
    page.keyboard.type(person.code())
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/inbox$"))
    (tmp_path / "axe-report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    assert len(report) >= 20
    assert {name: found for name, found in report.items() if found} == {}
    context.close()
