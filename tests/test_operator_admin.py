"""The administrators' activity pages in a real headless Chromium against the real server:
an administrator sees the figures, the SVG charts and the CSV; a professional without the
role gets the 403 page; each view is in the audit trail.

Set ``MSS_WEB_SCREENSHOTS=<folder>`` to keep the screenshot (the README's is made so).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect
from sqlalchemy import select
from test_web_browser import _enrol, _shot, chromium  # noqa: F401  (fixture)
from typer.testing import CliRunner

from cli.main import app
from mss.db import session_scope
from mss.models import AuditEvent

from relay_support import CDA_SAMPLE, RECIPIENTS, SENDER, UNKNOWN, cda_bytes, pdf_bytes, queue_id, transaction
from relay_support import login as smtp_login
from relay_support import message as smtp_message
from web_support import Person, serving, submit


def run_mss(stack, *args: str) -> str:
    """The ``mss`` command with the stack's environment; asserts success."""
    result = CliRunner().invoke(app, list(args), env=stack.env, catch_exceptions=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def stack(tmp_path):
    with serving(tmp_path) as served:
        yield served


def test_admin_pages_for_admins_only(stack, chromium, tmp_path):
    stack, web = stack
    admin, other = RECIPIENTS
    # Traffic: over SMTP (one with a PDF, one with a CDA), one refused recipient, and through the pipeline.
    client = smtp_login(stack, SENDER)
    sent = [
        transaction(
            client, SENDER, [admin], smtp_message(SENDER, [admin], [("cr.pdf", "application/pdf", pdf_bytes())])
        ),
        transaction(
            client,
            SENDER,
            [admin, other],
            smtp_message(SENDER, [admin, other], [(CDA_SAMPLE.name, "text/xml", cda_bytes())]),
        ),
    ]
    for replies in sent:
        queue_id(replies[-1])
    assert transaction(client, SENDER, [UNKNOWN], b"")[-1][0] == 550
    client.quit()
    submit(stack.rt, Person(other, stack.passwords[other], ""), [SENDER], "Retour", "Bonjour")
    assert "granted" in run_mss(stack, "account", "admin", admin)

    context = chromium.new_context(ignore_https_errors=True, locale="fr-FR", viewport={"width": 1366, "height": 900})
    page = context.new_page()
    _enrol(page, web.url, admin, stack.passwords[admin])
    page.goto(web.url + "/admin")
    expect(page.locator("h1")).to_have_text("Activité")
    assert page.locator("svg.chart").count() == 2
    assert page.locator("svg.chart rect title").count() > 0
    table = page.locator("#per-day tbody tr").last
    cells = table.locator("td").all_inner_texts()
    # Today's row: the 3 messages accepted today.
    assert cells[-1] == "3"
    assert "unknown-address" in page.locator("#refusals").inner_text()
    _shot(page, "admin", tmp_path)
    with page.expect_download() as download:
        page.click("a[href='/admin/activity.csv']")
    text = open(download.value.path(), encoding="utf-8").read()
    assert text.splitlines()[0].startswith("day,door_smtp,door_web")
    assert text.splitlines()[-1].endswith(",3")

    other_context = chromium.new_context(ignore_https_errors=True, locale="fr-FR")
    other_page = other_context.new_page()
    _enrol(other_page, web.url, other, stack.passwords[other])
    response = other_page.goto(web.url + "/admin")
    assert response is not None and response.status == 403
    assert other_page.locator("svg.chart").count() == 0

    with session_scope(stack.rt.engine) as session:
        views = [
            (e.actor, e.object, e.outcome)
            for e in session.execute(
                select(AuditEvent).where(AuditEvent.action == "admin.view").order_by(AuditEvent.seq)
            ).scalars()
        ]
    assert views == [(admin, "activity", "success"), (admin, "activity.csv", "success"), (other, "activity", "denied")]
