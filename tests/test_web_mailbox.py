"""The mailbox service behind the pages and the API: search tokens that hide what they index,
client-encrypted messages, one displayed-MDN per reader even under concurrent openings, the
Sent journey of a refused recipient, safe rendering helpers, and complete translations."""

from __future__ import annotations

import email.policy
import logging
import re
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po
from db_faults import refused
from sqlalchemy import select

from directory import certificates, service
from mss import mailbox, pipeline
from mss.crypto import keys, smime
from mss.db import session_scope
from mss.documents import CdaInfo, DocumentLimits, NarrativeNode, parse_cda
from mss.mailbox.content import html_to_text, split
from mss.mailbox.index import CONTENT
from mss.models import AuditEvent, MailboxIndexed, MailboxItem, MailboxToken, Message, Receipt
from mss.pipeline import RecipientRequest, Submission
from mss.web import cda_view, i18n

from web_support import CDA_SAMPLE, DOCTOR, GP, NURSE, build_message, create_person, login, pdf_bytes, submit, unlocked


def test_search_tokens_hide_what_they_index(rt, doctor, gp):
    data = CDA_SAMPLE.read_bytes()
    info = parse_cda(data, filename=CDA_SAMPLE.name, limits=DocumentLimits())
    accepted = submit(rt, gp, [DOCTOR], "Echographie thyroidienne", "Texte.", [(CDA_SAMPLE.name, "text/xml", data)])
    reader, sender = unlocked(rt, doctor), unlocked(rt, gp)
    for person, folder in ((reader, "inbox"), (sender, "sent")):
        page = mailbox.list_folder(rt, person, folder, mailbox.Filters(subject="thyro", ins=info.ins.value))
        assert [i.queue_id for i in page.items] == [accepted.queue_id]
    with session_scope(rt.engine) as session:
        rows = session.execute(select(MailboxToken.owner, MailboxToken.token)).all()
        sealed = session.execute(select(Message.meta_sealed).where(Message.queue_id == accepted.queue_id)).scalar_one()
    dump = " ".join(token for _owner, token in rows).encode() + sealed
    for clear in (b"thyro", b"echographie", info.ins.value.encode(), info.type_code.code.encode()):
        assert clear not in dump.lower()
    by_owner: dict[str, set[str]] = {}
    for owner, token in rows:
        by_owner.setdefault(owner, set()).add(token)
    assert by_owner[DOCTOR] and by_owner[GP] and not by_owner[DOCTOR] & by_owner[GP]  # unlinkable across mailboxes


def _client_encrypted(rt, sender, readers: list[str], attachment: tuple[str, str, bytes]) -> bytes:
    """What a mail client that signs and encrypts itself submits (RFC 8551)."""
    entity = EmailMessage(policy=email.policy.SMTP)
    entity["Content-Type"] = "text/plain"
    entity.set_content("Chiffré par mon logiciel.")
    entity.add_attachment(attachment[2], maintype="text", subtype="xml", filename=attachment[0])
    del entity["MIME-Version"]
    signed = smime.sign(
        entity.as_bytes(policy=email.policy.SMTP), sender.certificate, keys.private_key_from_der(sender.private_key_der)
    )
    with session_scope(rt.engine) as session:
        recipients = [certificates.current_certificate(session, a) for a in readers]
    envelope = smime.encrypt(smime.signed_entity(signed), recipients)
    return smime.to_smime_message(
        envelope, {"From": sender.address, "To": ", ".join(readers[:1]), "Subject": "Chiffré par le client"}
    )


def _client_encrypted_cda(rt, doctor, gp) -> tuple[bytes, CdaInfo, pipeline.Accepted]:
    """The CDA sample sent by GP to DOCTOR in a message GP's client signed and encrypted:
    the document, what it says, and the submission."""
    data = CDA_SAMPLE.read_bytes()
    info = parse_cda(data, filename=CDA_SAMPLE.name, limits=DocumentLimits())
    sender = unlocked(rt, gp)
    raw = _client_encrypted(rt, sender, [DOCTOR, GP], (CDA_SAMPLE.name, "text/xml", data))
    accepted = pipeline.submit(
        rt, Submission(sender=sender, recipients=(RecipientRequest(DOCTOR),), raw=raw, channel="smtp")
    )
    return data, info, accepted


def test_client_encrypted_message_is_read_verified_and_searched_by_content(rt, doctor, gp):
    data, info, accepted = _client_encrypted_cda(rt, doctor, gp)
    reader = unlocked(rt, doctor)
    # Nobody inspected its documents at submission: the INS is found by reading the content
    # with the reader's key when a filter needs it.
    page = mailbox.list_folder(rt, reader, "inbox", mailbox.Filters(ins=info.ins.value))
    assert [i.queue_id for i in page.items] == [accepted.queue_id] and page.unsearched == 0
    opened = mailbox.open_message(rt, reader, accepted.queue_id)
    assert opened.kind == "client" and opened.signature.status == "valid" and opened.signature.signer_address == GP
    assert opened.body.strip() == "Chiffré par mon logiciel."
    assert [(a.filename, a.kind) for a in opened.attachments] == [(CDA_SAMPLE.name, "cda")]
    assert mailbox.open_attachment(rt, reader, accepted.queue_id, 0).attachment.data == data


def test_search_terms_not_kept_do_not_fail_an_opening(rt, doctor, gp, caplog):
    """A message its client encrypted gets its content's search terms when it is opened,
    once the opening is committed: a database that will not write them fails nothing, and
    the next opening writes them."""
    _data, info, accepted = _client_encrypted_cda(rt, doctor, gp)
    reader = unlocked(rt, doctor)

    def reader_row() -> tuple[bool, int | None]:
        with session_scope(rt.engine) as session:
            item_id, unread = session.execute(
                select(MailboxItem.id, MailboxItem.unread)
                .join(Message, Message.id == MailboxItem.message_id)
                .where(Message.queue_id == accepted.queue_id, MailboxItem.owner == DOCTOR)
            ).one()
            level = session.execute(select(MailboxIndexed.level).where(MailboxIndexed.item_id == item_id)).scalar()
        return unread, level

    with caplog.at_level(logging.ERROR, logger="mss.mailbox"), refused(rt.engine, "mailbox_token", "INSERT"):
        opened = mailbox.open_message(rt, reader, accepted.queue_id)
    assert opened.body.strip() == "Chiffré par mon logiciel."
    assert any("could not be kept" in record.getMessage() for record in caplog.records)
    unread, level = reader_row()
    assert not unread and level != CONTENT
    with session_scope(rt.engine) as session:
        opens = session.execute(
            select(AuditEvent.id).where(AuditEvent.action == "message.open", AuditEvent.object == accepted.queue_id)
        ).all()
    assert len(opens) == 1
    mailbox.open_message(rt, reader, accepted.queue_id)
    assert reader_row() == (False, CONTENT)
    page = mailbox.list_folder(rt, reader, "inbox", mailbox.Filters(ins=info.ins.value))
    assert [i.queue_id for i in page.items] == [accepted.queue_id]


def test_a_bcc_recipient_is_shown_to_the_sender_only(rt, doctor, gp):
    """RFC 5322 3.6.3: the recipients of a message see those its To and Cc name, not the
    ones its sender gave only on the envelope (a Bcc); the sender sees them all."""
    nurse = create_person(rt, NURSE)
    raw = build_message(GP, [DOCTOR], "Copie cachée", "Texte.")
    sender = unlocked(rt, gp)
    accepted = pipeline.submit(
        rt,
        Submission(
            sender=sender, recipients=(RecipientRequest(DOCTOR), RecipientRequest(NURSE)), raw=raw, channel="smtp"
        ),
    )
    for person in (doctor, nurse):
        reader = unlocked(rt, person)
        opened = mailbox.open_message(rt, reader, accepted.queue_id)
        assert [address for address, _card in opened.recipients] == [DOCTOR], person.address
        listed = mailbox.list_folder(rt, reader, "inbox", mailbox.Filters()).items
        assert [item.recipients for item in listed] == [(DOCTOR,)], person.address
    own = mailbox.open_message(rt, sender, accepted.queue_id, folder="sent")
    assert sorted(address for address, _card in own.recipients) == sorted([DOCTOR, NURSE])


def test_one_displayed_receipt_for_concurrent_openings(rt, doctor, gp):
    from mss import accounts

    accepted = submit(rt, gp, [DOCTOR], "Accusé demandé", "Texte.", read_receipt=True)
    with session_scope(rt.engine) as session:
        accounts.set_read_receipt_choice(session, DOCTOR, "always", actor=DOCTOR)
    reader = unlocked(rt, doctor)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            barrier.wait()
            mailbox.open_message(rt, reader, accepted.queue_id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with session_scope(rt.engine) as session:
        statuses = session.execute(select(Receipt.status).where(Receipt.recipient == DOCTOR)).scalars().all()
    assert sorted(statuses) == ["displayed", "processed"]
    journey = mailbox.journey(rt, GP, accepted.queue_id)
    assert [(j.address, j.status) for j in journey] == [(DOCTOR, "displayed")]
    # The sender's own opening of its Sent copy sends nothing.
    mailbox.open_message(rt, unlocked(rt, gp), accepted.queue_id, folder="sent")
    with session_scope(rt.engine) as session:
        assert len(session.execute(select(Receipt.id)).all()) == 2


def test_sent_journey_shows_a_refused_recipient_with_its_reason(rt, doctor, gp):
    create_person(rt, NURSE)
    with session_scope(rt.engine) as session:
        service.revoke_entry(session, NURSE, reason="left the practice", actor="test")
    accepted = submit(rt, gp, [DOCTOR, NURSE], "Deux destinataires", "Texte.")
    journey = {j.address: j for j in mailbox.journey(rt, GP, accepted.queue_id)}
    assert journey[DOCTOR].status == "delivered"
    assert journey[NURSE].status == "failed" and "revoked" in journey[NURSE].steps[-1].reason
    page = mailbox.list_folder(rt, unlocked(rt, gp), "sent")
    progress = page.items[0].progress
    assert (progress.recipients, progress.delivered, progress.failed) == (2, 1, 1)
    with pytest.raises(mailbox.MessageNotFound):  # a recipient does not see the sender's journey
        mailbox.journey(rt, DOCTOR, accepted.queue_id)


def test_archive_moves_only_received_copies(rt, doctor, gp):
    accepted = submit(rt, gp, [DOCTOR], "À ranger", "Texte.", [("a.pdf", "application/pdf", pdf_bytes())])
    mailbox.move(rt, DOCTOR, accepted.queue_id, to=mailbox.ARCHIVE)
    with pytest.raises(mailbox.MessageNotFound):  # the sender's copy is in Sent, not received
        mailbox.move(rt, GP, accepted.queue_id, to=mailbox.ARCHIVE)
    assert mailbox.unread_count(rt, DOCTOR) == 0
    assert [i.queue_id for i in mailbox.list_folder(rt, unlocked(rt, doctor), "archive").items] == [accepted.queue_id]


def test_html_becomes_plain_text() -> None:
    html = (
        "<html><head><title>t</title><style>p{color:red}</style></head><body><p>Bonjour&nbsp;Docteur,</p>"
        "<script>alert(1)</script><div>Résultats <b>normaux</b>.</div><img src='https://x.example/p.png'>"
        "<table><tr><td>Hb</td><td>14 g/dL</td></tr></table></body></html>"
    )
    text = html_to_text(html)
    assert [line for line in text.splitlines() if line] == ["Bonjour Docteur,", "Résultats normaux.", "Hb 14 g/dL"]
    assert "alert" not in text and "color" not in text and "example" not in text


@pytest.mark.parametrize("field", ["Cc: \\@[\t", "Cc: *)>/, :;,(=", "Reply-To: , .<:/", "Message-ID: <a@"])
def test_a_header_field_the_email_package_cannot_read_is_left_out_of_the_view(field: str) -> None:
    """A message from elsewhere whose field makes the email package's parser raise (here an
    UnboundLocalError, an IndexError, a TypeError) is still shown, without that field."""
    raw = f"From: a@mss.test.example.org\r\nTo: b@mss.test.example.org\r\n{field}\r\nSubject: x\r\n\r\nhello\r\n"
    shown = split(raw.encode())
    assert (list(shown.headers), shown.body.strip()) == (["From", "To", "Subject"], "hello")


def test_cda_narrative_maps_to_a_short_list_of_escaped_tags() -> None:
    node = NarrativeNode(
        tag="text",
        children=(
            NarrativeNode(
                tag="paragraph", attributes=(("styleCode", "Bold Italics"),), children=("<script>x</script>",)
            ),
            NarrativeNode(tag="linkHtml", attributes=(("href", "https://evil.example/"),), children=("lien",)),
            NarrativeNode(tag="linkHtml", attributes=(("href", "#note1"),), children=("note",)),
            NarrativeNode(
                tag="table",
                children=(
                    NarrativeNode(
                        tag="tr",
                        children=(
                            NarrativeNode(
                                tag="td", attributes=(("colspan", "2"), ("rowspan", "9999")), children=("a",)
                            ),
                        ),
                    ),
                ),
            ),
            NarrativeNode(
                tag="list",
                attributes=(("listType", "ordered"),),
                children=(NarrativeNode(tag="item", children=("i",)),),
            ),
            NarrativeNode(tag="unknownTag", attributes=(("ID", 'x" onmouseover="alert(1)'),), children=("t",)),
        ),
    )
    html = str(cda_view.narrative_html(node))
    assert '<p class="cda-bold cda-italic">&lt;script&gt;x&lt;/script&gt;</p>' in html
    assert 'href="https://evil' not in html and "(https://evil.example/)" in html
    assert '<a href="#cda-note1">note</a>' in html
    assert '<td colspan="2">a</td>' in html
    assert "<ol><li>i</li></ol>" in html
    assert "onmouseover" not in html
    assert cda_view.hl7_date("19790328") == "28/03/1979"
    assert cda_view.hl7_time("20191029111700+0100").isoformat() == "2019-10-29T11:17:00+01:00"


def test_every_string_is_translated_and_placeholders_match() -> None:
    root = Path(i18n.__file__).resolve().parents[2]
    method_map = [
        ("mss/web/**.py", "python"),
        ("mss/mailbox/compose.py", "python"),
        ("mss/web/templates/**.html", "jinja2"),
    ]
    options = {
        "mss/web/templates/**.html": {"extensions": "jinja2.ext.i18n", "trim_blocks": "true", "lstrip_blocks": "true"}
    }
    keywords = {"_": None, "gettext": None, "ngettext": (1, 2), "t": None, "_problem": (3,)}
    found = set()
    for _filename, _lineno, message, _comments, _context in extract_from_dir(
        str(root), method_map=method_map, options_map=options, keywords=keywords
    ):
        found.add(message if isinstance(message, str) else message[0])
    assert len(found) > 150
    with (i18n.TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        french = {m.id if isinstance(m.id, str) else m.id[0]: m for m in read_po(handle) if m.id}
    missing = sorted(found - set(french))
    assert not missing, missing
    placeholder = re.compile(r"%\((\w+)\)[sd]")
    for msgid, entry in french.items():
        strings = entry.string if isinstance(entry.string, tuple) else (entry.string,)
        assert all(strings), f"no French for {msgid!r}"
        assert "fuzzy" not in entry.flags
        for string in strings:
            assert set(placeholder.findall(string)) <= set(placeholder.findall(msgid)) | {"num"}, msgid
    languages = i18n.load_languages()
    assert languages["fr"].gettext("Inbox") == "Boîte de réception"
    assert languages["en"].gettext("Inbox") == "Inbox"
    assert languages["fr"].ngettext("%(num)d message", "%(num)d messages", 3) == "3 messages"
    assert i18n.negotiate(None, "de-DE,en;q=0.5") == "en" and i18n.negotiate(None, "de") == "fr"
    assert i18n.negotiate("en", "fr") == "en" and i18n.negotiate("xx", "") == "fr"


def test_hostile_cda_in_a_client_encrypted_message_is_not_rendered(rt, clients, doctor, gp):
    """A client's own envelope is not inspected at submission: the CDA with 40,000 attributes
    on one element reaches the inbox. Opening it in the web gets the page with its
    "cannot be displayed" notice, and the service answers meanwhile and after."""
    from test_documents_hostile import with_attributes

    data = with_attributes(40_000)
    sender = unlocked(rt, gp)
    raw = _client_encrypted(rt, sender, [DOCTOR, GP], ("cr.xml", "text/xml", data))
    accepted = pipeline.submit(
        rt, Submission(sender=sender, recipients=(RecipientRequest(DOCTOR),), raw=raw, channel="smtp")
    )
    client = clients()
    login(client, doctor)
    assert client.get(f"/messages/{accepted.queue_id}").status_code == 200
    view = client.get(f"/messages/{accepted.queue_id}/attachments/0/view")
    assert view.status_code == 200
    assert "Ce document ne peut pas être affiché" in view.text
    assert client.get(f"/messages/{accepted.queue_id}/attachments/0").content == data
    assert client.get("/healthz").status_code == 200


def test_one_answer_for_concurrent_read_receipt_answers(rt, doctor, gp):
    from mss.errors import ReceiptNotPending

    accepted = submit(rt, gp, [DOCTOR], "Accusé demandé", "Texte.", read_receipt=True)
    reader = unlocked(rt, doctor)
    assert mailbox.open_message(rt, reader, accepted.queue_id).read_receipt == "pending"
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def answer(send: bool) -> None:
        barrier.wait()
        try:
            outcomes.append(mailbox.answer_read_receipt(rt, reader, accepted.queue_id, send=send))
        except ReceiptNotPending as exc:
            outcomes.append(exc.details["state"])

    threads = [threading.Thread(target=answer, args=(n % 2 == 0,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 4 and len(set(outcomes)) == 1  # the first answer wins; the others see it
    with session_scope(rt.engine) as session:
        displayed = (
            session.execute(select(Receipt.status).where(Receipt.recipient == DOCTOR, Receipt.status == "displayed"))
            .scalars()
            .all()
        )
    assert len(displayed) == (1 if outcomes[0] == "sent" else 0)
