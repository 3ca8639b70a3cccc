"""The web inbox's pages through Litestar's test client: login with TOTP enrolment, reading
(signature, sender card, body, attachments, CDA and IHE_XDM views), writing, receipts,
filters, archive, account settings and languages. Messages go through the real pipeline."""

from __future__ import annotations

import base64
import json
import logging
import re
import time

import pytest
from db_faults import refused
from sqlalchemy import select

from directory import certificates
from mss import accounts, mailbox
from mss.db import session_scope
from mss.documents import DocumentLimits, parse_cda
from mss.documents.cda import Author
from mss.documents.xdm import build_xdm
from mss.models import Account, AuditEvent, MailboxItem, Receipt

from web_support import (
    CDA_SAMPLE,
    DOCTOR,
    GP,
    compose_page,
    create_person,
    csrf,
    login,
    pdf_bytes,
    post_compose,
    sent_queue_id,
    submit,
    totp_page,
    unlocked,
)


def _queue_ids(html: str) -> list[str]:
    return re.findall(r'href="/messages/([0-9A-F]{20})\?folder=', html)


def _actions(rt, action: str) -> list[AuditEvent]:
    with session_scope(rt.engine) as session:
        return list(session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars())


def test_first_login_enrols_totp_then_shows_recovery_codes(rt, clients, doctor):
    client = clients()
    page = client.get("/login")
    assert page.status_code == 200 and 'name="password"' in page.text
    pre = client.cookies.get("__Host-mss-pre")
    assert pre
    response = client.post(
        "/login",
        data={"address": DOCTOR, "password": doctor.password, "csrf_token": csrf(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/login/enrol"
    pending = client.cookies.get("__Host-mss")
    enrol = client.get("/login/enrol")
    assert "<svg" in enrol.text and "qrline" in enrol.text  # the QR code, drawn on the server
    assert re.sub(r"\s", "", re.search(r'id="totp-secret">([^<]+)<', enrol.text).group(1)) == doctor.secret
    done = client.post(
        "/login/enrol", data={"code": doctor.code(), "csrf_token": csrf(enrol.text)}, follow_redirects=False
    )
    assert done.status_code == 200
    codes = re.findall(r"<code>([a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4})</code>", done.text)
    assert len(codes) == 10
    active = client.cookies.get("__Host-mss")
    assert len({pre, pending, active}) == 3  # a new session id at each step
    assert client.get("/inbox").status_code == 200
    # The pending session's cookie died with the step.
    stale = clients()
    stale.cookies.set("__Host-mss", pending, domain="mss.test")
    assert stale.get("/inbox", follow_redirects=False).headers["location"] == "/login"
    with session_scope(rt.engine) as session:
        stored = session.execute(
            select(AuditEvent.detail).where(AuditEvent.action == "account.recovery-codes")
        ).scalar()
        account = session.execute(select(Account).where(Account.address == DOCTOR)).scalars().one()
    assert account.totp_confirmed and all(code.replace("-", "") not in account.recovery_codes for code in codes)
    assert stored is not None


def test_recovery_code_replaces_totp_once(rt, clients, doctor):
    first = clients()
    login(first, doctor)
    page = first.get("/login")  # already logged in: goes to the inbox
    assert page.url.path == "/inbox"
    codes = accounts.new_recovery_codes(rt.engine, DOCTOR)
    for attempt, expected in ((codes[0], 303), (codes[0], 401)):
        client = clients()
        page = totp_page(client, doctor)
        response = client.post(
            "/login/totp", data={"code": attempt, "csrf_token": csrf(page.text)}, follow_redirects=False
        )
        assert response.status_code == expected
    assert accounts.remaining_recovery_codes(rt.engine, DOCTOR) == 9


def test_a_login_that_cannot_be_written_leaves_its_code_unused(rt, clients, doctor):
    """A code accepted and the session it moves on are one transaction. When the session
    cannot be written, the enrolment's first TOTP code, and later a recovery code, are
    still unused (no recovery codes were made either), and the same code then logs in."""
    client = clients()
    page = client.get("/login")
    client.post("/login", data={"address": DOCTOR, "password": doctor.password, "csrf_token": csrf(page.text)})
    enrol = client.get("/login/enrol")
    code = doctor.code()
    form = {"code": code, "csrf_token": csrf(enrol.text)}
    with refused(rt.engine, "web_session", "INSERT"):
        assert client.post("/login/enrol", data=form, follow_redirects=False).status_code >= 500
    assert accounts.remaining_recovery_codes(rt.engine, DOCTOR) == 0 and not accounts.totp_confirmed(rt.engine, DOCTOR)
    done = client.post("/login/enrol", data=form, follow_redirects=False)
    assert done.status_code == 200 and "recovery-codes" in done.text
    codes = accounts.new_recovery_codes(rt.engine, DOCTOR)
    other = clients()
    page = totp_page(other, doctor)
    form = {"code": codes[0], "csrf_token": csrf(page.text)}
    with refused(rt.engine, "web_session", "INSERT"):
        assert other.post("/login/totp", data=form, follow_redirects=False).status_code >= 500
    assert accounts.remaining_recovery_codes(rt.engine, DOCTOR) == 10
    assert other.post("/login/totp", data=form, follow_redirects=False).headers["location"] == "/inbox"
    assert accounts.remaining_recovery_codes(rt.engine, DOCTOR) == 9
    assert other.get("/inbox").status_code == 200


def test_inbox_and_message_page(rt, clients, doctor, gp):
    pdf = pdf_bytes()
    accepted = submit(
        rt,
        gp,
        [DOCTOR],
        "Adressage patient Dupont",
        "Bonjour,\nje vous adresse M. Dupont.",
        [("courrier.pdf", "application/pdf", pdf)],
    )
    client = clients()
    login(client, doctor)
    inbox = client.get("/inbox")
    assert "Adressage patient Dupont" in inbox.text and 'class="unread"' in inbox.text
    assert _queue_ids(inbox.text) == [accepted.queue_id]
    page = client.get(f"/messages/{accepted.queue_id}")
    assert page.status_code == 200
    text = page.text
    assert "sig-valid" in text and "signature valide" in text  # French by default
    assert "Éloïse FOURNIER" in text and "Médecin" in text and "Cabinet médical des Tilleuls" in text
    assert "RPPS" in text
    assert "je vous adresse M. Dupont." in text
    assert "courrier.pdf" in text and f"/messages/{accepted.queue_id}/attachments/0/view" in text
    assert 'class="unread"' not in client.get("/inbox").text
    opened = _actions(rt, "message.open")
    assert [(e.actor, e.object) for e in opened] == [(DOCTOR, accepted.queue_id)]
    assert "Dupont" not in opened[0].detail  # the trail names the message, never its content


def test_attachment_bytes_and_pdf_inline(rt, clients, doctor, gp):
    pdf = pdf_bytes("Ordonnance")
    accepted = submit(rt, gp, [DOCTOR], "Ordonnance", "Voir PDF.", [("ordonnance été.pdf", "application/pdf", pdf)])
    client = clients()
    login(client, doctor)
    download = client.get(f"/messages/{accepted.queue_id}/attachments/0")
    assert download.status_code == 200 and download.content == pdf
    assert download.headers["content-disposition"].startswith("attachment;")
    assert "filename*=UTF-8''ordonnance%20%C3%A9t%C3%A9.pdf" in download.headers["content-disposition"]
    assert "sandbox" in download.headers["content-security-policy"]
    view = client.get(f"/messages/{accepted.queue_id}/attachments/0/view")
    assert f'<iframe class="pdf" src="/messages/{accepted.queue_id}/attachments/0/inline"' in view.text
    inline = client.get(f"/messages/{accepted.queue_id}/attachments/0/inline")
    assert inline.content == pdf and inline.headers["content-type"] == "application/pdf"
    assert inline.headers["content-disposition"].startswith("inline;")
    assert "frame-ancestors 'self'" in inline.headers["content-security-policy"]
    assert inline.headers["x-frame-options"] == "SAMEORIGIN"
    assert client.get(f"/messages/{accepted.queue_id}/attachments/1").status_code == 404
    assert [e.object for e in _actions(rt, "attachment.download")] == [accepted.queue_id]


def test_cda_renders_as_a_document_never_as_xml(rt, clients, doctor, gp):
    data = CDA_SAMPLE.read_bytes()
    info = parse_cda(data, filename=CDA_SAMPLE.name, limits=DocumentLimits())
    accepted = submit(rt, gp, [DOCTOR], "Certificat de santé", "CDA joint.", [(CDA_SAMPLE.name, "text/xml", data)])
    client = clients()
    login(client, doctor)
    view = client.get(f"/messages/{accepted.queue_id}/attachments/0/view")
    assert view.status_code == 200
    html = view.text
    assert info.title and info.title in html
    assert info.ins is not None and info.ins.value in html
    assert info.patient.name.family in html
    first_section = next(s for s in info.sections if s.title)
    assert first_section.title in html
    assert "urn:hl7-org:v3" not in html and "ClinicalDocument" not in html
    assert client.get(f"/messages/{accepted.queue_id}/attachments/0").content == data


def test_xdm_lists_its_documents_and_opens_each(rt, clients, doctor, gp):
    data = CDA_SAMPLE.read_bytes()
    info = parse_cda(data, filename=CDA_SAMPLE.name, limits=DocumentLimits())
    archive = build_xdm(
        [(CDA_SAMPLE.name, data, info), ("lettre.pdf", pdf_bytes(), None)],
        author=info.authors[0] if info.authors else Author(None, None, None),
        patient=info.patient,
    )
    accepted = submit(rt, gp, [DOCTOR], "Dossier", "Paquet XDM.", [("IHE_XDM.ZIP", "application/zip", archive)])
    client = clients()
    login(client, doctor)
    listing = client.get(f"/messages/{accepted.queue_id}/attachments/0/view")
    assert listing.status_code == 200 and "IHE_XDM" in listing.text
    links = re.findall(rf'href="(/messages/{accepted.queue_id}/attachments/0/documents/\d+)/view"', listing.text)
    assert len(links) == 2
    cda_view = client.get(links[0] + "/view")
    assert info.title in cda_view.text and "ClinicalDocument" not in cda_view.text
    assert client.get(links[0]).content == data
    assert client.get(links[1] + "/inline").headers["content-type"] == "application/pdf"


def test_compose_with_pdf_and_read_receipt_then_journey(rt, clients, doctor, gp):
    sender = clients()
    page = compose_page(sender, doctor)
    pdf = pdf_bytes("Lettre de liaison")
    response = post_compose(
        sender,
        page,
        {
            "to": GP,
            "subject": "Sortie d'hospitalisation",
            "body": "Votre patiente est sortie ce jour.",
            "read_receipt": "on",
        },
        attachments=[("lettre.pdf", pdf, "application/pdf")],
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    queue_id = sent_queue_id(response)
    sent_page = sender.get(response.headers["location"])
    assert "Sortie d&#39;hospitalisation" in sent_page.text and "dans la boîte" in sent_page.text

    reader = clients()
    login(reader, gp)
    opened = reader.get(f"/messages/{queue_id}")
    assert "sig-valid" in opened.text and "Votre patiente est sortie ce jour." in opened.text
    assert "Envoyer l’accusé de lecture" in opened.text  # asked first (RFC 8098 2.1)
    assert reader.get(f"/messages/{queue_id}/attachments/0").content == pdf
    answered = reader.post(
        f"/messages/{queue_id}/read-receipt",
        data={"decision": "send", "csrf_token": csrf(opened.text)},
        follow_redirects=False,
    )
    assert answered.status_code == 303
    reader.get(f"/messages/{queue_id}")  # a second opening sends no second receipt
    with session_scope(rt.engine) as session:
        statuses = sorted(session.execute(select(Receipt.status).where(Receipt.recipient == GP)).scalars())
    assert statuses == ["displayed", "processed"]

    journey = sender.get(f"/messages/{queue_id}?folder=sent").text
    assert re.search(r"<strong>lu</strong>", journey)
    for step in ("distribué", "dans la boîte", "lu"):
        assert f'">{step} — <time' in journey
    sent = sender.get("/sent").text
    assert "1/1 distribué(s)" in sent and "1 lu(s)" in sent
    inbox = sender.get("/inbox").text  # the receipts reach the sender as messages too
    assert "Accusé de lecture" in inbox


def test_compose_refusals_are_form_errors(rt, clients, doctor):
    client = clients()
    page = compose_page(client, doctor)
    response = post_compose(
        client,
        page,
        {"to": "personne@chu-demo.mss.test", "subject": "Test", "body": "x"},
        attachments=[("outil.exe", b"MZ\x90\x00\x03\x00\x00\x00\x04\x00", "application/octet-stream")],
    )
    assert response.status_code == 422
    assert "personne@chu-demo.mss.test ne figure pas dans l’annuaire." in response.text
    assert "outil.exe est un programme, ce qui n&#39;est pas autorisé." in response.text
    assert "Windows" not in response.text  # the English detail is never shown
    assert 'id="to-errors"' in response.text and 'id="attachments-errors"' in response.text
    assert "Rien n’est perdu" in response.text and "Joignez à nouveau vos fichiers." not in response.text
    assert 'name="draft_keep" value="0"' in response.text and "outil.exe" in response.text
    empty = post_compose(client, page, {"subject": "", "body": ""})
    assert "Choisissez au moins un destinataire dans l’annuaire." in empty.text
    assert "Écrivez un texte ou joignez un document." in empty.text


def test_reply_and_forward_keep_attachments_and_name_their_signer(rt, clients, doctor, gp):
    create_person(rt, "matheo.moreau@infirmier.mss.test")
    pdf = pdf_bytes("Bilan")
    accepted = submit(
        rt, gp, [DOCTOR], "Bilan sanguin", "Résultats ci-joints.", [("bilan.pdf", "application/pdf", pdf)]
    )
    client = clients()
    login(client, doctor)
    form = client.get(f"/compose?forward={accepted.queue_id}")
    assert "TR : Bilan sanguin" in form.text and 'name="keep" value="0"' in form.text
    assert "Éloïse FOURNIER" in form.text or GP in form.text
    response = post_compose(
        client,
        form,
        {
            "to": "matheo.moreau@infirmier.mss.test",
            "subject": "TR : Bilan sanguin",
            "body": "Pour information.",
            "source": accepted.queue_id,
            "keep": "0",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    forwarded = sent_queue_id(response)
    page = client.get(f"/messages/{forwarded}?folder=sent")
    assert "Pièces jointes reprises d’un message précédent :" in page.text
    assert "bilan.pdf : signé par" in page.text and "signature valide" in page.text
    assert client.get(f"/messages/{forwarded}/attachments/0").content == pdf
    reply = client.get(f"/compose?reply={accepted.queue_id}")
    assert (
        "RE : Bilan sanguin" in reply.text
        and f'value="{GP}"' in reply.text
        and "&gt; Résultats ci-joints." in reply.text
    )
    assert [e.object for e in _actions(rt, "attachment.forward")] == [accepted.queue_id]


def test_folder_filters_and_pages(rt, clients, doctor, gp):
    data = CDA_SAMPLE.read_bytes()
    info = parse_cda(data, filename=CDA_SAMPLE.name, limits=DocumentLimits())
    nurse = create_person(rt, "matheo.moreau@infirmier.mss.test")
    with_cda = submit(rt, gp, [DOCTOR], "Certificat du 8e jour", "CDA.", [(CDA_SAMPLE.name, "text/xml", data)])
    cardio = submit(
        rt, nurse, [DOCTOR], "Consultation cardiologie", "Texte.", [("a.pdf", "application/pdf", pdf_bytes())]
    )
    plain = [submit(rt, gp, [DOCTOR], f"Message numéro {n}", "Texte.") for n in range(26)]
    client = clients()
    login(client, doctor)

    def found(query: str) -> list[str]:
        page = client.get("/inbox?" + query)
        assert page.status_code == 200, page.text
        return _queue_ids(page.text)

    assert found("subject=cardio") == [cardio.queue_id]  # a word's beginning is enough
    assert found("subject=CARDIOLOGIE") == [cardio.queue_id]  # case and accents do not matter
    assert found("sender=Moreau") == [cardio.queue_id]  # by name, as the directory knows them
    assert found("sender=infirmier.mss") == [cardio.queue_id]  # or by address
    assert found(f"ins={info.ins.value}") == [with_cda.queue_id]
    assert found("doc_type=cda") == [with_cda.queue_id]
    assert found("doc_type=pdf") == [cardio.queue_id]
    assert found(f"cda_code={info.type_code.code}") == [with_cda.queue_id]
    assert found("date_from=2000-01-01&date_to=2000-01-02") == []
    assert len(found("unread=1")) == 25
    first, second = client.get("/inbox").text, client.get("/inbox?page=2").text
    assert "Page 1 sur 2" in first and "28 messages" in first
    assert len(_queue_ids(first)) == 25 and len(_queue_ids(second)) == 3
    assert _queue_ids(first)[0] == plain[-1].queue_id  # newest first
    bad = client.get("/inbox?ins=abc")
    assert bad.status_code == 200 and "INS" in bad.text and 'role="alert"' in bad.text


def test_archive_and_back(rt, clients, doctor, gp):
    accepted = submit(rt, gp, [DOCTOR], "À archiver", "Texte.")
    client = clients()
    login(client, doctor)
    page = client.get(f"/messages/{accepted.queue_id}")
    response = client.post(
        f"/messages/{accepted.queue_id}/archive", data={"csrf_token": csrf(page.text)}, follow_redirects=False
    )
    assert response.status_code == 303
    assert _queue_ids(client.get("/inbox").text) == []
    assert _queue_ids(client.get("/archive").text) == [accepted.queue_id]
    client.post(f"/messages/{accepted.queue_id}/unarchive", data={"csrf_token": csrf(page.text)})
    assert _queue_ids(client.get("/inbox").text) == [accepted.queue_id]
    assert [e.object for e in _actions(rt, "message.archive")] == [accepted.queue_id]
    with session_scope(rt.engine) as session:
        folders = set(session.execute(select(MailboxItem.folder).where(MailboxItem.owner == DOCTOR)).scalars())
    assert folders == {"inbox"}


def test_html_body_is_shown_as_text(rt, clients, doctor, gp):
    accepted = submit(
        rt,
        gp,
        [DOCTOR],
        "HTML",
        "Version texte.",
        html='<p>Version <b>HTML</b></p><img src="https://tracker.example/x.png"><script>alert(1)</script>',
    )
    client = clients()
    login(client, doctor)
    page = client.get(f"/messages/{accepted.queue_id}").text
    assert "Version texte." in page and "tracker.example" not in page and "alert(1)" not in page


def test_languages(rt, clients, doctor):
    client = clients()
    assert "Se connecter" in client.get("/login").text
    english = client.get("/login", headers={"accept-language": "en-GB,en;q=0.9,fr;q=0.5"})
    assert "Log in" in english.text and '<html lang="en">' in english.text
    page = client.get("/login")
    response = client.post(
        "/language", data={"lang": "en", "next": "/login", "csrf_token": csrf(page.text)}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert "Log in" in client.get("/login").text  # the switch wins over Accept-Language
    hostile = client.post(
        "/language",
        data={"lang": "en", "next": "//evil.example/", "csrf_token": csrf(page.text)},
        follow_redirects=False,
    )
    assert hostile.headers["location"] == "/"


def test_password_change_rewraps_the_key_and_ends_other_sessions(rt, clients, doctor):
    first, second = clients(), clients()
    login(first, doctor)
    login(second, doctor)
    page = first.get("/account")
    new = "another long passphrase 2026"
    wrong = first.post(
        "/account/password",
        data={"current": "not it at all", "new": new, "confirm": new, "csrf_token": csrf(page.text)},
    )
    assert wrong.status_code == 422 and "Le mot de passe actuel est incorrect." in wrong.text
    done = first.post(
        "/account/password",
        data={"current": doctor.password, "new": new, "confirm": new, "csrf_token": csrf(page.text)},
    )
    assert done.status_code == 200 and "Votre mot de passe a été changé." in done.text
    assert first.get("/inbox").status_code == 200
    assert second.get("/inbox", follow_redirects=False).headers["location"] == "/login"
    unlocked = accounts.authenticate(rt.engine, rt.settings, DOCTOR, new, accounts.Origin("cli"))
    assert unlocked.private_key_der


def test_a_password_change_and_the_end_of_other_sessions_are_one(rt, clients, doctor):
    """Changing the password ends the sessions the old one opened: both in one transaction.
    When the sessions cannot be ended, the password is not changed either, and the page
    says the request failed; the same request then succeeds."""
    first, second = clients(), clients()
    login(first, doctor)
    login(second, doctor)
    page = first.get("/account")
    new = "another long passphrase 2026"
    form = {"current": doctor.password, "new": new, "confirm": new, "csrf_token": csrf(page.text)}
    with refused(rt.engine, "web_session", "DELETE"):
        failed = first.post("/account/password", data=form)
    assert failed.status_code >= 500
    assert second.get("/inbox").status_code == 200
    accounts.authenticate(rt.engine, rt.settings, DOCTOR, doctor.password, accounts.Origin("cli"))  # unchanged
    done = first.post("/account/password", data=form)
    assert done.status_code == 200 and "Votre mot de passe a été changé." in done.text
    assert second.get("/inbox", follow_redirects=False).headers["location"] == "/login"


def test_a_second_factor_reset_is_one_change_or_none(rt, clients, doctor):
    """A new TOTP secret, the other sessions ended and this one sent to enrol: one
    transaction. When a session cannot be ended, the secret stays and so do the sessions."""
    first, second = clients(), clients()
    login(first, doctor)
    login(second, doctor)
    page = first.get("/account")
    with refused(rt.engine, "web_session", "DELETE"):
        failed = first.post(
            "/account/second-factor",
            data={"password": doctor.password, "csrf_token": csrf(page.text)},
            follow_redirects=False,
        )
    assert failed.status_code >= 500
    assert first.get("/inbox").status_code == 200 and second.get("/inbox").status_code == 200
    third = clients()
    login(third, doctor)  # the code of the secret as it was
    assert third.get("/inbox").status_code == 200


def test_a_second_factor_reset_for_a_session_that_ended_meanwhile_resets_nothing(rt, doctor):
    """The session ended (a logout in another tab) after the request found it live: the
    reset is refused as a whole, the secret, its confirmation and the audit trail as
    they were (the page then asks for a login)."""
    from mss.web import account, sessions

    policy = sessions.SessionPolicy()
    token = sessions.open_session(
        rt.engine, account=unlocked(rt, doctor), channel=sessions.WEB, stage=sessions.ACTIVE, policy=policy
    )
    live = sessions.load_session(rt.engine, token, policy=policy, channel=sessions.WEB, settings=rt.settings)
    with session_scope(rt.engine) as session:
        before = session.execute(
            select(Account.totp_secret_sealed, Account.totp_confirmed).where(Account.address == DOCTOR)
        ).one()
    assert sessions.end_session(rt.engine, token)
    with pytest.raises(sessions.SessionInvalid):
        account._reset_2fa(rt, live, policy)
    with session_scope(rt.engine) as session:
        assert (
            session.execute(
                select(Account.totp_secret_sealed, Account.totp_confirmed).where(Account.address == DOCTOR)
            ).one()
            == before
        )
    assert _actions(rt, "account.reset-2fa") == []


def test_second_factor_reset_asks_the_password_then_enrols_again(rt, clients, doctor):
    client = clients()
    login(client, doctor)
    page = client.get("/account")
    refused = client.post("/account/second-factor", data={"password": "wrong password!", "csrf_token": csrf(page.text)})
    assert refused.status_code == 422
    response = client.post(
        "/account/second-factor",
        data={"password": doctor.password, "csrf_token": csrf(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/login/enrol"
    enrol = client.get("/login/enrol")
    new_secret = re.sub(r"\s", "", re.search(r'id="totp-secret">([^<]+)<', enrol.text).group(1))
    assert new_secret != doctor.secret
    # Not logged in until enrolled: the inbox sends back to the enrolment step.
    assert client.get("/inbox", follow_redirects=False).headers["location"] == "/login/enrol"
    doctor.secret, doctor.last_step = new_secret, 0
    done = client.post("/login/enrol", data={"code": doctor.code(), "csrf_token": csrf(enrol.text)})
    assert done.status_code == 200 and "recovery-codes" in done.text
    assert client.get("/inbox").status_code == 200


def test_level_one_cda_shows_its_pdf_body(rt, clients, doctor, gp):
    sample = CDA_SAMPLE.parent / "DOC_NON_STRUCTURE_CDA-R2-N1.xml"
    data = sample.read_bytes()
    body = re.search(rb'<nonXMLBody>\s*<text[^>]*representation="B64"[^>]*>([^<]+)</text>', data)
    assert body is not None
    pdf = base64.b64decode(b"".join(body.group(1).split()))
    accepted = submit(rt, gp, [DOCTOR], "Document non structuré", "CDA niveau 1.", [(sample.name, "text/xml", data)])
    client = clients()
    login(client, doctor)
    view = client.get(f"/messages/{accepted.queue_id}/attachments/0/view")
    assert f'src="/messages/{accepted.queue_id}/attachments/0/embedded"' in view.text
    embedded = client.get(f"/messages/{accepted.queue_id}/attachments/0/embedded")
    assert embedded.status_code == 200 and embedded.content == pdf
    assert embedded.headers["content-type"] == "application/pdf"
    assert client.get(f"/messages/{accepted.queue_id}/attachments/1/embedded").status_code == 404


def test_compose_packages_cda_as_ihe_xdm(rt, clients, doctor, gp):
    data = CDA_SAMPLE.read_bytes()
    sender = clients()
    page = compose_page(sender, doctor)
    response = post_compose(
        sender,
        page,
        {"to": GP, "subject": "Paquet", "body": "CDA en XDM.", "package_xdm": "on"},
        attachments=[(CDA_SAMPLE.name, data, "text/xml")],
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    queue_id = sent_queue_id(response)
    opened = mailbox.open_message(rt, unlocked(rt, gp), queue_id)
    assert [(a.filename, a.kind) for a in opened.attachments] == [("IHE_XDM.ZIP", "xdm")]
    attachment = mailbox.open_attachment(rt, unlocked(rt, gp), queue_id, 0).attachment
    entry, inner = mailbox.xdm_document(rt, attachment, 0)
    assert inner == data and entry.kind == "cda"
    refused = post_compose(sender, page, {"to": GP, "subject": "x", "body": "y", "package_xdm": "on"})
    assert refused.status_code == 422 and "Il n’y a aucun document CDA à regrouper." in refused.text


def test_revoked_signer_is_shown_with_a_warning(rt, clients, doctor, gp):
    accepted = submit(rt, gp, [DOCTOR], "Avant révocation", "Texte signé.")
    time.sleep(1.1)  # a CRL dates revocations to the second
    with session_scope(rt.engine) as session:
        certificates.revoke_for_address(session, rt.settings, GP, reason="keyCompromise", actor="test")
    client = clients()
    login(client, doctor)
    page = client.get(f"/messages/{accepted.queue_id}").text
    # Signed before the revocation: both facts, valid when signed and revoked since.
    assert "sig-revoked-since" in page and "le certificat du signataire est révoqué depuis le" in page
    assert 'class="warning" role="alert"' in page and "Texte signé." in page
    assert 'class="body untrusted"' in page


def test_read_receipts_follow_the_readers_consent(rt, clients, doctor, gp):
    """RFC 8098 2.1: ask (default), always or never; each decision audited; asked once."""
    from mss.models import ReadReceiptDeclined

    def statuses() -> list[str]:
        with session_scope(rt.engine) as session:
            return sorted(
                session.execute(
                    select(Receipt.status).where(Receipt.recipient == DOCTOR, Receipt.status == "displayed")
                ).scalars()
            )

    reader = clients()
    login(reader, doctor)
    asked = [submit(rt, gp, [DOCTOR], f"Demande {n}", "Texte.", read_receipt=True).queue_id for n in range(4)]
    quiet = submit(rt, gp, [DOCTOR], "Sans accusé", "Texte.").queue_id

    page = reader.get(f"/messages/{asked[0]}")
    assert "L’expéditeur demande un accusé de lecture" in page.text and statuses() == []
    assert "consent" not in reader.get(f"/messages/{quiet}").text
    token = csrf(page.text)
    bad = reader.post(f"/messages/{asked[0]}/read-receipt", data={"decision": "perhaps", "csrf_token": token})
    assert bad.status_code == 400 and statuses() == []
    no_csrf = reader.post(f"/messages/{asked[0]}/read-receipt", data={"decision": "send"})
    assert no_csrf.status_code == 403 and statuses() == []
    declined = reader.post(
        f"/messages/{asked[0]}/read-receipt", data={"decision": "decline", "csrf_token": token}, follow_redirects=False
    )
    assert declined.status_code == 303 and declined.headers["location"] == f"/messages/{asked[0]}"
    again = reader.get(f"/messages/{asked[0]}").text
    assert "non envoyé (refusé)" in again and "consent-title" not in again and statuses() == []
    # A late second answer (another tab) changes nothing.
    reader.post(f"/messages/{asked[0]}/read-receipt", data={"decision": "send", "csrf_token": token})
    assert statuses() == []

    account = reader.get("/account")
    assert 'value="ask" id="rr-ask" checked' in account.text
    assert reader.post("/account/read-receipts", data={"choice": "often", "csrf_token": token}).status_code == 422
    assert reader.post("/account/read-receipts", data={"choice": "always", "csrf_token": token}).status_code == 200
    page = reader.get(f"/messages/{asked[1]}").text
    assert "envoyé à l’expéditeur à l’instant" in page and statuses() == ["displayed"]
    assert reader.post("/account/read-receipts", data={"choice": "never", "csrf_token": token}).status_code == 200
    page = reader.get(f"/messages/{asked[2]}").text
    assert "non envoyé (refusé)" in page and statuses() == ["displayed"]
    reader.post("/account/read-receipts", data={"choice": "ask", "csrf_token": token})
    reader.get(f"/messages/{asked[3]}")
    sent = reader.post(f"/messages/{asked[3]}/read-receipt", data={"decision": "send", "csrf_token": token})
    assert sent.status_code == 200 and statuses() == ["displayed", "displayed"]

    decisions = [(e.object, e.actor, json.loads(e.detail)) for e in _actions(rt, "receipt.decision")]
    assert decisions == [
        (asked[0], DOCTOR, {"decision": "decline", "by": "reader"}),
        (asked[1], DOCTOR, {"decision": "send", "by": "setting"}),
        (asked[2], DOCTOR, {"decision": "decline", "by": "setting"}),
        (asked[3], DOCTOR, {"decision": "send", "by": "reader"}),
    ]
    assert [json.loads(e.detail)["choice"] for e in _actions(rt, "account.read-receipts")] == ["always", "never", "ask"]
    with session_scope(rt.engine) as session:
        declined_rows = session.execute(select(ReadReceiptDeclined.by)).scalars().all()
    assert sorted(declined_rows) == ["reader", "setting"]
    # The MDN sent on the reader's say-so names the manual mode (RFC 8098 3.2.6.2).
    from mss.mailbox.content import unverified_entity
    from mss.models import Message as Stored

    modes = set()
    sender = unlocked(rt, gp)
    with session_scope(rt.engine, readonly=True) as session:
        for row in session.execute(select(Stored).where(Stored.queue_id.like("%-MDN-%"))).scalars():
            entity = unverified_entity(session, row.cms, row.kind, sender)
            found = re.search(rb"Disposition: ([^;\r\n]+); displayed", entity)
            if found:
                modes.add(found.group(1).decode())
    assert modes == {"manual-action/MDN-sent-automatically", "manual-action/MDN-sent-manually"}


def test_a_refused_send_keeps_the_draft_and_its_attachments(rt, clients, doctor, gp):
    """Nothing is lost: the draft and its files are kept (encrypted to the writer) until
    sent or discarded; the Drafts folder lists them."""
    from mss.models import Draft as StoredDraft

    client = clients()
    page = compose_page(client, doctor)
    pdf = pdf_bytes("Lettre de sortie confidentielle")
    refused = post_compose(
        client,
        page,
        {
            "to": "personne@chu-demo.mss.test",
            "subject": "Sortie de Mme Durand",
            "body": "Texte de la lettre.",
            "read_receipt": "on",
            "action": "send",
        },
        attachments=[("lettre-durand.pdf", pdf, "application/pdf")],
    )
    assert refused.status_code == 422 and "Rien n’est perdu" in refused.text
    draft_id = re.search(r'name="draft_id" value="([0-9A-F]{24})"', refused.text).group(1)
    assert 'name="draft_keep" value="0" id="draft-keep-0" checked' in refused.text
    assert "lettre-durand.pdf" in refused.text and "Texte de la lettre." in refused.text
    assert 'id="read_receipt" name="read_receipt" checked' in refused.text

    # At rest: CMS encrypted to the writer's certificate; neither the text, the subject nor
    # the file is readable, with or without the master key.
    with session_scope(rt.engine) as session:
        row = session.execute(select(StoredDraft)).scalars().one()
    assert row.owner == DOCTOR and row.draft_id == draft_id
    for needle in (b"Durand", b"lettre-durand", b"Texte de la lettre", pdf[:200]):
        assert needle not in row.content_cms and needle not in row.summary_cms

    drafts = client.get("/drafts").text
    assert "Sortie de Mme Durand" in drafts and "lettre-durand.pdf" in drafts and "personne@chu-demo.mss.test" in drafts
    assert f'href="/compose?draft={draft_id}"' in drafts
    # Another writer neither sees nor opens it.
    other = clients()
    login(other, gp)
    assert "Sortie de Mme Durand" not in other.get("/drafts").text
    assert other.get(f"/compose?draft={draft_id}").status_code == 404
    stolen = other.post(f"/drafts/{draft_id}/discard", data={"csrf_token": csrf(other.get("/drafts").text)})
    assert stolen.status_code == 404
    assert client.get("/compose?draft=NOTADRAFT").status_code == 404

    # Back to the draft: correct the recipient, add nothing, send; the kept PDF goes along.
    form = client.get(f"/compose?draft={draft_id}")
    assert form.status_code == 200 and "lettre-durand.pdf" in form.text
    sent = post_compose(
        client,
        form,
        {
            "to": GP,
            "subject": "Sortie de Mme Durand",
            "body": "Texte de la lettre.",
            "draft_id": draft_id,
            "draft_keep": "0",
            "action": "send",
        },
        follow_redirects=False,
    )
    assert sent.status_code == 303, sent.text
    queue_id = sent_queue_id(sent)
    assert client.get(f"/messages/{queue_id}/attachments/0").content == pdf
    assert "Aucun brouillon." in client.get("/drafts").text
    with session_scope(rt.engine) as session:
        assert session.execute(select(StoredDraft)).first() is None

    # Saving on purpose, then discarding.
    page = client.get("/compose")
    saved = post_compose(
        client,
        page,
        {"subject": "À finir", "body": "Brouillon.", "action": "save"},
        attachments=[("notes.pdf", pdf, "application/pdf")],
        follow_redirects=False,
    )
    assert saved.status_code == 303 and saved.headers["location"].endswith("&saved=1")
    again = client.get(saved.headers["location"])
    assert "Votre brouillon est enregistré" in again.text and "notes.pdf" in again.text
    kept_id = re.search(r'name="draft_id" value="([0-9A-F]{24})"', again.text).group(1)
    gone = client.post(f"/drafts/{kept_id}/discard", data={"csrf_token": csrf(again.text)}, follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/drafts"
    assert client.post(f"/drafts/{kept_id}/discard", data={"csrf_token": csrf(again.text)}).status_code == 404
    # A draft discarded in another tab: the form is sent all the same.
    stale = post_compose(
        client, again, {"to": GP, "body": "Brouillon.", "draft_id": kept_id, "draft_keep": "0"}, follow_redirects=False
    )
    assert stale.status_code == 303, stale.text
    actions = [
        (e.action, json.loads(e.detail).get("reason"))
        for e in _actions(rt, "draft.save") + _actions(rt, "draft.discard")
    ]
    assert actions.count(("draft.discard", "sent")) == 1 and actions.count(("draft.discard", "discarded")) == 1
    assert all("Durand" not in e.detail for e in _actions(rt, "draft.save"))


def test_a_sent_message_is_shown_sent_though_its_draft_could_not_be_discarded(rt, clients, doctor, gp, caplog):
    """Nothing after the message is stored decides what the writer is told: when its draft
    cannot be deleted (here the database refuses, by a trigger), the message is still
    shown as sent, not as an error that would have it sent twice; the draft stays."""
    from mss.models import Draft as StoredDraft

    client = clients()
    page = compose_page(client, doctor)
    saved = post_compose(client, page, {"to": GP, "body": "Suivi.", "action": "save"}, follow_redirects=False)
    assert saved.status_code == 303
    form = client.get(saved.headers["location"])
    draft_id = re.search(r'name="draft_id" value="([0-9A-F]{24})"', form.text).group(1)
    with caplog.at_level(logging.ERROR, logger="mss.mailbox"), refused(rt.engine, "draft", "DELETE"):
        sent = post_compose(
            client,
            form,
            {"to": GP, "subject": "Suivi", "body": "Suivi.", "draft_id": draft_id, "action": "send"},
            follow_redirects=False,
        )
    assert sent.status_code == 303, sent.text
    queue_id = sent_queue_id(sent)
    assert "Suivi" in client.get(f"/messages/{queue_id}?folder=sent").text
    with session_scope(rt.engine) as session:
        assert session.execute(select(StoredDraft.draft_id)).scalars().all() == [draft_id]
    assert any("could not be discarded" in record.getMessage() for record in caplog.records)


def test_replies_and_forwards_keep_the_thread(rt, clients, doctor, gp):
    """RFC 5322 3.6.4: a reply names its parent (In-Reply-To) and the thread (References);
    a forward keeps the thread and carries the documents; both quote the text."""
    nurse = create_person(rt, "matheo.moreau@infirmier.mss.test")
    pdf = pdf_bytes("Bilan")
    first = submit(
        rt, gp, [DOCTOR], "Bilan sanguin", "Résultats ci-joints.\nÀ revoir.", [("bilan.pdf", "application/pdf", pdf)]
    )
    first_id = mailbox.open_message(rt, unlocked(rt, gp), first.queue_id).meta.message_id

    doctor_client, gp_client = clients(), clients()
    login(doctor_client, doctor)
    login(gp_client, gp)

    def post(client, form_url: str, **fields: str) -> str:
        form = client.get(form_url)
        assert form.status_code == 200
        response = post_compose(client, form, fields, follow_redirects=False)
        assert response.status_code == 303, response.text
        return sent_queue_id(response)

    form = doctor_client.get(f"/compose?reply={first.queue_id}").text
    assert "&gt; Résultats ci-joints.\n&gt; À revoir." in form
    assert 'name="keep" value="0" id="keep-0" >' in form  # offered, unchecked
    reply = post(
        doctor_client,
        f"/compose?reply={first.queue_id}",
        to=GP,
        subject="RE : Bilan sanguin",
        body="Merci.\n\n> Résultats ci-joints.",
        reply_to=first.queue_id,
        source=first.queue_id,
    )
    opened = mailbox.open_message(rt, unlocked(rt, gp), reply)
    assert opened.headers["In-Reply-To"] == first_id and opened.headers["References"] == first_id
    assert opened.attachments == ()
    assert gp_client.get(f"/compose?reply={reply}").text.count("RE : Bilan sanguin") >= 1
    assert "RE : RE :" not in gp_client.get(f"/compose?reply={reply}").text

    second = post(
        gp_client, f"/compose?reply={reply}", to=DOCTOR, subject="RE : Bilan sanguin", body="Parfait.", reply_to=reply
    )
    opened = mailbox.open_message(rt, unlocked(rt, doctor), second)
    assert opened.headers["In-Reply-To"] == opened_reply_id(rt, gp, reply)
    assert opened.headers["References"].split() == [first_id, opened_reply_id(rt, gp, reply)]

    form = doctor_client.get(f"/compose?forward={first.queue_id}").text
    assert "Message transféré" in form and "Objet : Bilan sanguin" in form and "Résultats ci-joints." in form
    assert 'name="keep" value="0" id="keep-0" checked' in form
    forwarded = post(
        doctor_client,
        f"/compose?forward={first.queue_id}",
        to=nurse.address,
        subject="TR : Bilan sanguin",
        body="Pour information.",
        source=first.queue_id,
        keep="0",
    )
    opened = mailbox.open_message(rt, unlocked(rt, nurse), forwarded)
    assert opened.headers["References"] == first_id and "In-Reply-To" not in opened.headers
    assert [a.filename for a in opened.attachments] == ["bilan.pdf"]
    assert mailbox.open_attachment(rt, unlocked(rt, nurse), forwarded, 0).attachment.data == pdf


def opened_reply_id(rt, person, queue_id: str) -> str:
    return mailbox.open_message(rt, unlocked(rt, person), queue_id).meta.message_id


def test_directory_pages(rt, clients, doctor, gp):
    """The directory as people browse it: search, an entry's card, write to it; the JSON
    behind the search fields lives at /directory.json."""
    from directory import service

    with session_scope(rt.engine) as session:
        entry = service.get_entry(session, GP)
        service.add_entry(
            session,
            actor="test",
            address="e.fournier.cabinet@medecin.mss.test",
            kind="PER",
            rpps=entry.rpps,
            last_name="FOURNIER",
            first_name="Éloïse",
            profession_label="Médecin",
            org_name=entry.org_name,
        )
        service.revoke_entry(session, "cedric.leroy@medecin.mss.test", reason="left", actor="test")
    anonymous = clients()
    assert anonymous.get("/directory", follow_redirects=False).headers["location"].startswith("/login")
    assert anonymous.get(f"/directory/{GP}", follow_redirects=False).status_code in {302, 303}
    client = clients()
    login(client, doctor)
    empty = client.get("/directory")
    assert empty.status_code == 200 and 'role="search"' in empty.text and 'id="directory-results"' in empty.text
    found = client.get("/directory", params={"q": "eloise fournier"})
    assert found.status_code == 200
    # A page number of digits that are not ASCII ("²" is a digit to str.isdigit, not to int).
    odd_page = client.get("/directory", params={"q": "eloise fournier", "page": "²"})
    assert odd_page.status_code == 200 and "Éloïse FOURNIER" in odd_page.text  # read as the first page
    assert "2 entrées" in found.text and "Éloïse FOURNIER" in found.text
    assert f'href="/directory/{GP.replace("@", "%40")}"' in found.text
    assert f'href="/compose?to={GP.replace("@", "%40")}"' in found.text
    assert "Aucune" not in found.text
    nobody = client.get("/directory", params={"q": "zzzyyyxxx"})
    assert "Personne n’a été trouvé." in nobody.text and "entry-item" not in nobody.text
    assert client.get("/directory", params={"q": "x" * 150}).status_code == 422
    assert client.get("/directory", params={"q": " ".join(f"mot{i}" for i in range(20))}).status_code == 422
    as_json = client.get("/directory.json", params={"q": "eloise fournier"})
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_json.json()["total"] == 2 and {i["address"] for i in as_json.json()["items"]} >= {GP}
    # The compose page's recipient field lists the entries and asks for no count.
    uncounted = client.get("/directory.json", params={"q": "eloise fournier", "count": "0"}).json()
    assert uncounted["total"] is None and uncounted["items"] == as_json.json()["items"]
    for unsearchable in ("e", " ".join(f"mot{i}" for i in range(20))):  # too short; too many words
        assert client.get("/directory.json", params={"q": unsearchable, "count": "0"}).json()["total"] is None
    assert client.get("/directory.json", params={"q": " ".join(f"mot{i}" for i in range(20))}).json()["items"] == []

    card = client.get(f"/directory/{GP}")
    assert card.status_code == 200
    text = card.text
    assert '<h1 id="entry-name">Éloïse FOURNIER</h1>' in text
    assert "Cabinet médical des Tilleuls" in text and "Qualifié en Médecine Générale" in text
    assert "12 bis avenue des Tilleuls" in text and "27000 ÉVREUX" in text
    assert 'href="/directory/e.fournier.cabinet%40medecin.mss.test"' in text  # her other mailbox
    assert f'href="/compose?to={GP.replace("@", "%40")}"' in text and "Écrire à Éloïse FOURNIER" in text
    assert "Empreinte SHA-256" in text and f"/directory/{GP.replace('@', '%40')}/certificate.pem" in text
    compose = client.get(f"/compose?to={GP}")
    assert f'value="{GP}"' in compose.text and "checked" in compose.text
    no_certificate = client.get("/directory/e.fournier.cabinet@medecin.mss.test").text
    assert "Aucun certificat n’est publié" in no_certificate and "Écrire à" in no_certificate
    revoked = client.get("/directory/cedric.leroy@medecin.mss.test").text
    assert "n’est plus active" in revoked and "Écrire à" not in revoked and "Aucun certificat" in revoked
    assert client.get("/directory/nobody@medecin.mss.test").status_code == 404
    organisation = client.get("/directory/urgences.pediatriques@chu-demo.mss.test").text
    assert "boîte aux lettres d’une structure" in organisation and "Urgences pédiatriques" in organisation
