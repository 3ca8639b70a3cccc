"""``mss report indicators``: a month of traffic through the pipeline and the doors, then
the report's counts against counts the test keeps itself (what it sent, to whom, with which
documents; the CDA type code read from the sample with lxml, not with mss)."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

from lxml import etree

from mss.db import utcnow

from relay_support import CDA_SAMPLE, cda_bytes, xdm_bytes
from web_support import GP, NURSE, app, clients, create_person, doctor, gp, login, pdf_bytes, submit  # noqa: F401  (fixtures)


def _type_code() -> str:
    root = etree.fromstring(CDA_SAMPLE.read_bytes(), etree.XMLParser(resolve_entities=False, no_network=True))
    return root.find("{urn:hl7-org:v3}code").get("code")


def test_indicators_of_a_month_match_the_traffic(rt, clients, doctor, gp, mss):
    nurse = create_person(rt, NURSE)
    pdf = ("compte-rendu.pdf", "application/pdf", pdf_bytes())
    cda = (CDA_SAMPLE.name, "text/xml", cda_bytes())
    xdm = ("IHE_XDM.ZIP", "application/zip", xdm_bytes())
    # (sender, recipients, attachments, read receipt asked)
    traffic = [
        (doctor, [GP], [pdf], False),
        (doctor, [GP, NURSE], [cda], True),
        (gp, [doctor.address], [xdm, pdf], False),
        (doctor, [NURSE], [], True),
        (nurse, [GP], [pdf], False),
    ]
    for sender, to, attachments, receipt in traffic:
        submit(rt, sender, to, "Suivi", "Bonjour", attachments, read_receipt=receipt)
    login(clients(), doctor)
    login(clients(), gp)
    api = clients()
    response = api.post(
        "/api/v1/sessions", json={"address": doctor.address, "password": doctor.password, "code": doctor.code()}
    )
    assert response.status_code == 201

    month = f"{utcnow():%Y-%m}"
    report = json.loads(mss("report", "indicators", "--month", month, "--format", "json").stdout)

    assert report["month"] == month
    assert report["messages_sent"] == len(traffic)
    assert report["messages_received"] == sum(len(to) for _s, to, _a, _r in traffic)
    assert report["messages_with_attachments"] == sum(1 for *_x, attachments, _r in traffic if attachments)
    kinds = [a[0] for *_x, attachments, _r in traffic for a in attachments]
    assert report["attachments"] == {"pdf": kinds.count(pdf[0]), "cda": kinds.count(cda[0]), "xdm": kinds.count(xdm[0])}
    # One CDA bare, one inside the package.
    assert report["cda_by_type_code"] == {_type_code(): 2}
    assert report["distinct_senders"] == len({s.address for s, *_rest in traffic})
    assert report["receipts"] == {"mdn_processed": sum(len(to) for _s, to, _a, asked in traffic if asked)}
    # The web logins need two steps (password, then TOTP) and are counted once each; the API one too.
    assert report["connections"]["web"] == 2
    assert report["connections"]["api"] == 1
    assert report["connections"]["smtp"] == 0
    # The three senders are personal mailboxes (PER) of the directory.
    assert report["active_mailboxes"] == {"PER": 3, "ORG": 0, "APP": 0}

    rows = list(csv.DictReader(io.StringIO(mss("report", "indicators", "--month", month).stdout)))
    by_key = {(r["indicator"], r["dimension"]): int(r["value"]) for r in rows}
    assert by_key[("messages_sent", "")] == len(traffic)
    assert by_key[("attachments", "pdf")] == kinds.count(pdf[0])

    previous = f"{utcnow().replace(day=1) - timedelta(days=1):%Y-%m}"
    empty = json.loads(mss("report", "indicators", "--month", previous, "--format", "json").stdout)
    assert empty["messages_sent"] == 0 and sum(empty["connections"].values()) == 0


def test_a_malformed_month_or_format_is_refused(rt, mss):
    result = mss("report", "indicators", "--month", "2026-13", ok=False)
    assert result.exit_code == 1 and "not a month" in result.stderr
    result = mss("report", "indicators", "--month", "2026-11", "--format", "xml", ok=False)
    assert result.exit_code == 1 and "unknown format" in result.stderr
