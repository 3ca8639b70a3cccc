"""The JSON API: bearer-token login (password + TOTP), folders and filters, reading,
attachments, sending, receipts, logout, and the OpenAPI schema. Same rights as the pages."""

from __future__ import annotations

import base64
import logging

from db_faults import refused

from web_support import CDA_SAMPLE, DOCTOR, GP, app, clients, create_person, doctor, gp, login, pdf_bytes, submit  # noqa: F401  (fixtures)


def _token(client, person) -> str:
    response = client.post(
        "/api/v1/sessions", json={"address": person.address, "password": person.password, "code": person.code()}
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["idle_timeout_seconds"] == 900
    return body["token"]


def _auth(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_login_needs_password_totp_and_an_enrolled_authenticator(rt, clients, doctor):
    client = clients()
    unenrolled = client.post(
        "/api/v1/sessions", json={"address": DOCTOR, "password": doctor.password, "code": "123456"}
    )
    assert unenrolled.status_code == 403 and unenrolled.json()["error"] == "enrolment-required"
    login(clients(), doctor)  # enrols in the browser
    wrong = client.post(
        "/api/v1/sessions", json={"address": DOCTOR, "password": "bad password!!", "code": doctor.code()}
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "bad-credentials"
    replayed_code = doctor.code()
    token = client.post(
        "/api/v1/sessions", json={"address": DOCTOR, "password": doctor.password, "code": replayed_code}
    ).json()["token"]
    again = client.post(
        "/api/v1/sessions", json={"address": DOCTOR, "password": doctor.password, "code": replayed_code}
    )
    assert again.status_code == 401
    assert client.get("/api/v1/messages", headers=_auth(token)).status_code == 200
    assert client.delete("/api/v1/sessions/current", headers=_auth(token)).status_code == 204
    gone = client.get("/api/v1/messages", headers=_auth(token))
    assert gone.status_code == 401 and gone.headers["www-authenticate"].startswith("Bearer")


def test_a_token_that_cannot_be_written_leaves_its_recovery_code_unused(rt, clients, doctor):
    from mss import accounts

    login(clients(), doctor)
    code = accounts.new_recovery_codes(rt.engine, DOCTOR)[0]
    client = clients()
    login_form = {"address": DOCTOR, "password": doctor.password, "code": code}
    with refused(rt.engine, "web_session", "INSERT"):
        assert client.post("/api/v1/sessions", json=login_form).status_code >= 500
    assert accounts.remaining_recovery_codes(rt.engine, DOCTOR) == 10
    token = client.post("/api/v1/sessions", json=login_form)
    assert token.status_code == 201 and accounts.remaining_recovery_codes(rt.engine, DOCTOR) == 9
    assert client.get("/api/v1/messages", headers=_auth(token.json()["token"])).status_code == 200


def test_read_filter_download_send_and_receipts(rt, clients, doctor, gp):
    login(clients(), doctor)
    login(clients(), gp)
    pdf = pdf_bytes()
    cda = CDA_SAMPLE.read_bytes()
    first = submit(
        rt,
        gp,
        [DOCTOR],
        "Compte rendu opératoire",
        "Voir pièces.",
        [("cr.pdf", "application/pdf", pdf), (CDA_SAMPLE.name, "text/xml", cda)],
    )
    submit(rt, gp, [DOCTOR], "Autre sujet", "Texte.")
    client = clients()
    token = _token(client, doctor)
    listing = client.get("/api/v1/messages", params={"folder": "inbox", "subject": "operatoire"}, headers=_auth(token))
    assert listing.status_code == 200
    body = listing.json()
    assert body["total"] == 1 and body["items"][0]["queue_id"] == first.queue_id and body["items"][0]["unread"]
    assert {d["kind"] for d in body["items"][0]["documents"]} == {"pdf", "cda"}
    assert client.get("/api/v1/messages", params={"ins": "abc"}, headers=_auth(token)).status_code == 400

    message = client.get(f"/api/v1/messages/{first.queue_id}", headers=_auth(token)).json()
    assert message["signature"]["status"] == "valid" and message["signature"]["signer_address"] == GP
    assert message["sender"]["name"].endswith("Éloïse FOURNIER") and message["sender"]["rpps"]
    assert message["body"].strip() == "Voir pièces."
    assert [a["filename"] for a in message["attachments"]] == ["cr.pdf", CDA_SAMPLE.name]
    download = client.get(message["attachments"][1]["url"], headers=_auth(token))
    assert download.content == cda

    sent = client.post(
        "/api/v1/messages",
        headers=_auth(token),
        json={
            "to": [GP],
            "subject": "Réponse",
            "body": "Bien reçu.",
            "read_receipt": True,
            "reply_to": first.queue_id,
            "attachments": [
                {
                    "filename": "reponse.pdf",
                    "content_type": "application/pdf",
                    "content_base64": base64.b64encode(pdf).decode(),
                }
            ],
        },
    )
    assert sent.status_code == 201, sent.text
    queue_id = sent.json()["queue_id"]
    journey = client.get(f"/api/v1/messages/{queue_id}/receipts", headers=_auth(token)).json()
    assert [(j["recipient"]["address"], j["status"]) for j in journey] == [(GP, "processed")]

    gp_client = clients()
    gp_token = _token(gp_client, gp)
    reply = gp_client.get(f"/api/v1/messages/{queue_id}", headers=_auth(gp_token)).json()
    # RFC 8098 2.1: opening asks (the default setting); nothing goes out before the answer.
    assert reply["read_receipt"] == "pending" and not reply["displayed_receipt_sent"]
    assert reply["attachments"][0]["size"] == len(pdf)
    journey = client.get(f"/api/v1/messages/{queue_id}/receipts", headers=_auth(token)).json()
    assert [s["status"] for s in journey[0]["steps"]] == ["delivered", "processed"]
    answer = f"/api/v1/messages/{queue_id}/read-receipt"
    bad = gp_client.post(answer, json={"send": "maybe"}, headers=_auth(gp_token))
    assert bad.status_code == 400
    assert gp_client.post(answer, json={}, headers=_auth(gp_token)).status_code == 400
    sent_now = gp_client.post(answer, json={"send": True}, headers=_auth(gp_token))
    assert sent_now.status_code == 200 and sent_now.json() == {"read_receipt": "sent"}
    twice = gp_client.post(answer, json={"send": False}, headers=_auth(gp_token))
    assert twice.status_code == 409 and twice.json()["error"] == "not-pending"
    journey = client.get(f"/api/v1/messages/{queue_id}/receipts", headers=_auth(token)).json()
    assert [s["status"] for s in journey[0]["steps"]] == ["delivered", "processed", "displayed"]
    again = gp_client.get(f"/api/v1/messages/{queue_id}", headers=_auth(gp_token)).json()
    assert again["read_receipt"] == "sent" and not again["displayed_receipt_sent"]
    # The sender answers nothing about their own message, nor anyone about another's.
    assert client.post(answer, json={"send": True}, headers=_auth(token)).status_code == 404

    refused = client.post(
        "/api/v1/messages", headers=_auth(token), json={"to": ["nobody@chu-demo.mss.test"], "subject": "x", "body": "y"}
    )
    assert refused.status_code == 422 and "to" in refused.json()["fields"]
    assert client.post(f"/api/v1/messages/{first.queue_id}/archive", headers=_auth(token)).status_code == 204
    archived = client.get("/api/v1/messages", params={"folder": "archive"}, headers=_auth(token)).json()
    assert [i["queue_id"] for i in archived["items"]] == [first.queue_id]


def test_same_rights_as_the_pages(rt, clients, doctor, gp):
    nurse = create_person(rt, "matheo.moreau@infirmier.mss.test")
    login(clients(), nurse)
    private = submit(rt, gp, [DOCTOR], "Confidentiel", "Texte.", [("a.pdf", "application/pdf", pdf_bytes())])
    client = clients()
    token = _token(client, nurse)
    for path in (
        f"/api/v1/messages/{private.queue_id}",
        f"/api/v1/messages/{private.queue_id}/attachments/0",
        f"/api/v1/messages/{private.queue_id}/receipts",
    ):
        response = client.get(path, headers=_auth(token))
        assert response.status_code == 404 and "Confidentiel" not in response.text
    # A browser session cookie is no API credential, and a bearer token opens no page.
    browser = clients()
    login(browser, doctor)
    assert browser.get("/api/v1/messages").status_code == 401
    assert client.get("/inbox", headers=_auth(token), follow_redirects=False).status_code == 303


def test_openapi_schema_describes_the_api(rt, clients):
    schema = clients().get("/api/v1/schema/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/api/v1/sessions",
        "/api/v1/messages",
        "/api/v1/messages/{queue_id}",
        "/api/v1/messages/{queue_id}/attachments/{index}",
        "/api/v1/messages/{queue_id}/receipts",
        "/api/v1/directory",
        "/api/v1/directory/{address}/certificate",
    ):
        assert path in paths, path
    assert schema["components"]["securitySchemes"]["BearerToken"]["scheme"] == "bearer"
    assert not any(p.startswith(("/inbox", "/login", "/messages")) for p in paths)


def test_malformed_input_is_refused_not_crashed(rt, clients, doctor):
    login(clients(), doctor)
    client = clients()
    token = _token(client, doctor)
    sent = client.post(
        "/api/v1/messages",
        headers=_auth(token),
        json={"to": ["a\x00b@chu-demo.mss.test"], "subject": "x\x00", "body": "y"},
    )
    assert sent.status_code == 422 and "to" in sent.json()["fields"]
    for path in ("/api/v1/messages/%00", "/api/v1/messages/ABC%27--/receipts"):
        assert client.get(path, headers=_auth(token)).status_code == 404
    assert client.get("/api/v1/messages", params={"folder": "trash"}, headers=_auth(token)).status_code == 400
    assert client.get("/api/v1/messages", params={"date_from": "yesterday"}, headers=_auth(token)).status_code == 400
    assert client.get("/api/v1/messages", params={"per_page": 1000}, headers=_auth(token)).status_code == 400
    # A page number past what a database integer holds: refused, not a server error.
    huge = str(10**20)
    assert client.get("/api/v1/messages", params={"page": huge}, headers=_auth(token)).status_code == 400
    assert client.get("/api/v1/directory", params={"q": "ab", "page": huge}, headers=_auth(token)).status_code == 400


def test_a_refused_query_is_logged_without_its_words(rt, clients, doctor, caplog):
    """The log says which request was refused and in what kind, not what it searched for: a
    validation error's own text quotes the query string (a subject's words, a patient's INS)."""
    login(clients(), doctor)
    client = clients()
    token = _token(client, doctor)
    with caplog.at_level(logging.INFO, logger="mss.web"):
        refused = client.get(
            "/api/v1/messages",
            params={"subject": "Thyroide", "ins": "255069999999934", "page": "abc"},
            headers=_auth(token),
        )
    assert refused.status_code == 400
    lines = [record.getMessage() for record in caplog.records if record.name == "mss.web"]
    assert any("/api/v1/messages -> 400" in line for line in lines), lines
    assert not any("255069999999934" in line or "Thyroide" in line for line in lines), lines


def _raw_text_message(sender: str, to: str, subject: str, content_type: str, body: bytes) -> bytes:
    """A message as a client that writes 8-bit text writes it (no MIME encoding by us)."""
    return (
        (
            f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: Mon, 30 Nov 2026 10:00:00 +0100\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}@client.test>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode("ascii")
        + body
        + b"\r\n"
    )


def test_text_without_a_charset_is_read_as_written(rt, clients, doctor, gp):
    from mss import pipeline
    from mss.pipeline import RecipientRequest, Submission

    from web_support import unlocked

    login(clients(), doctor)
    sender = unlocked(rt, gp)
    cases = {
        "windows": ("text/plain", "Voici la pièce jointe, à vérifier.".encode("cp1252"), "windows-1252"),
        "utf8": ("text/plain", "Voici la pièce jointe, à vérifier.".encode(), "utf-8"),
        "declared": ("text/plain; charset=iso-8859-1", "Voici la pièce jointe, à vérifier.".encode("latin-1"), None),
        "ascii": ("text/plain", b"Voici la piece jointe.", None),
        "wrong": ("text/plain; charset=utf-8", "Voici la pièce jointe, à vérifier.".encode("cp1252"), "windows-1252"),
    }
    queued = {}
    for name, (content_type, body, _guess) in cases.items():
        raw = _raw_text_message(GP, DOCTOR, f"Encodage {name}", content_type, body)
        queued[name] = pipeline.submit(
            rt, Submission(sender=sender, recipients=(RecipientRequest(DOCTOR),), raw=raw, channel="smtp")
        ).queue_id
    client = clients()
    token = _token(client, doctor)
    for name, (_content_type, _body, guess) in cases.items():
        message = client.get(f"/api/v1/messages/{queued[name]}", headers=_auth(token)).json()
        expected = "Voici la piece jointe." if name == "ascii" else "Voici la pièce jointe, à vérifier."
        assert message["body"].strip() == expected, name
        assert "\ufffd" not in message["body"]
        assert message["body_charset_guess"] == guess, name
