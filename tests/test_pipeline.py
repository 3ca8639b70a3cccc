"""The submission pipeline end to end: checks, signature, encryption, storage, receipts, trace.

Messages go through ``mss.pipeline.submit`` exactly as the relay and the web hand them in;
what is stored is then opened with the recipient's key and checked with pyHanko, and the
exported .eml with ``openssl cms`` as an independent reader.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import subprocess
import tracemalloc
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select
from typer.testing import CliRunner

from cli.main import app
from directory import certificates, service
from directory import revision as directory_revision
from mss import accounts, audit, pipeline, store
from mss.crypto import keys, smime
from mss.crypto.master import MasterKey
from mss.crypto.verify import verify_signed_data
from mss.db import read_scope, session_scope
from mss.errors import FromHeaderMismatch, MalformedMessage, RevokedAddress, UnknownAddress
from mss.models import Delivery, MailboxItem, Message, Receipt
from mss.pipeline import RecipientRequest, Submission, submit

from document_samples import pdf_of_size

SAMPLES = Path(__file__).resolve().parent / "samples"
CDA_DIR = SAMPLES / "cda"
DOCTOR = "marc.robert@chu-demo.mss.test"
GP = "eloise.fournier@medecin.mss.test"
NURSE = "zoe.leroy@infirmier.mss.test"
PASSWORD = "a long enough passphrase"


@pytest.fixture
def people(rt, directory_loaded):
    for address in (DOCTOR, GP, NURSE):
        with session_scope(rt.engine) as session:
            accounts.create_account(session, rt.settings, rt.master_key, address, PASSWORD, actor="test")
    return {
        a: accounts.authenticate(rt.engine, rt.settings, a, PASSWORD, accounts.Origin("cli"))
        for a in (DOCTOR, GP, NURSE)
    }


def letter(sender: str, to: list[str], attachments: list[tuple[str, str, bytes]], **headers: str) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = headers.pop("subject", "Lettre de liaison")
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content("Cher confrère, veuillez trouver ci-joint le compte rendu.\n")
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return message.as_bytes(policy=email.policy.SMTP)


def send(rt, sender, to, raw, **kw):
    requests = tuple(RecipientRequest(address=a, **kw) for a in to)
    return submit(rt, Submission(sender=sender, recipients=requests, raw=raw, channel="smtp", request_id="t"))


def open_as(rt, unlocked, cms: bytes) -> tuple[str, EmailMessage]:
    """Decrypt with the reader's key, verify the signature; return (status, message)."""
    inner = smime.decrypt(cms, unlocked.certificate, keys.private_key_from_der(unlocked.private_key_der))
    signed = store.signed_data_in(inner)
    assert signed is not None
    with session_scope(rt.engine) as session:
        trust = certificates.trust_material(session, rt.settings)
    report = verify_signed_data(signed, trust_roots=trust.roots, crls=trust.crls)
    return report.status, email.message_from_bytes(report.content, policy=email.policy.default)


def attachments_of(message: EmailMessage) -> dict[str, bytes]:
    return {part.get_filename(): part.get_payload(decode=True) for part in message.iter_attachments()}


def test_every_ans_example_arrives_byte_identical(rt, people):
    files = sorted(CDA_DIR.glob("*.xml"))
    assert len(files) == 94
    batches, batch, size = [], [], 0
    for path in files:
        data = path.read_bytes()
        if batch and size + len(data) > 8_000_000:
            batches.append(batch)
            batch, size = [], 0
        batch.append((path.name, "text/xml", data))
        size += len(data)
    batches.append(batch)
    received: dict[str, bytes] = {}
    for attachments in batches:
        raw = letter(DOCTOR, [GP], attachments)
        accepted = send(rt, people[DOCTOR], [GP], raw)
        with session_scope(rt.engine) as session:
            cms = store.find_message(session, accepted.queue_id).cms
        status, message = open_as(rt, people[GP], cms)
        assert status == "valid"
        assert message["X-MSS-CODECDA"]
        received.update(attachments_of(message))
    assert received == {path.name: path.read_bytes() for path in files}


def test_stored_form_is_ciphertext_for_recipients_and_sender(rt, people):
    pdf_marker = b"Compte rendu confidentiel du patient"
    cda = (CDA_DIR / "LDL-SES_2022.01.xml").read_bytes()
    raw = letter(DOCTOR, [GP, NURSE], [("cr.xml", "text/xml", cda)], subject="Patient Dupont")
    accepted = send(rt, people[DOCTOR], [GP, NURSE], raw)
    with session_scope(rt.engine) as session:
        row = store.find_message(session, accepted.message_id)
        owners = sorted(
            session.execute(select(MailboxItem.owner, MailboxItem.folder).where(MailboxItem.message_id == row.id)).all()
        )
        deliveries = session.execute(
            select(Delivery.recipient, Delivery.status).where(Delivery.message_id == row.id)
        ).all()
    assert owners == sorted([(DOCTOR, "sent"), (GP, "inbox"), (NURSE, "inbox")])
    assert sorted(deliveries) == sorted([(GP, "delivered"), (NURSE, "delivered")])
    for secret in (b"Patient Dupont", b"confr", cda[:200], pdf_marker):
        assert secret not in row.cms and secret not in row.meta_sealed
    for reader in (GP, NURSE, DOCTOR):  # the sender keeps a readable copy for the Sent folder
        status, message = open_as(rt, people[reader], row.cms)
        assert status == "valid" and attachments_of(message)["cr.xml"] == cda
    meta = store.MessageMeta.open(rt.master_key, row.meta_sealed)
    assert meta.subject == "Patient Dupont" and meta.documents[0].kind == "cda"


def test_policy_refusals_store_nothing(rt, people):
    spoofed = letter(GP, [NURSE], [])
    with pytest.raises(FromHeaderMismatch):
        send(rt, people[DOCTOR], [NURSE], spoofed)
    with pytest.raises(MalformedMessage):
        send(
            rt,
            people[DOCTOR],
            [NURSE],
            b"From: " + DOCTOR.encode() + b"\r\nContent-Type: multipart/mixed\r\n\r\nno boundary\r\n",
        )
    with pytest.raises(UnknownAddress):
        send(rt, people[DOCTOR], ["ghost@medecin.mss.test"], letter(DOCTOR, ["ghost@medecin.mss.test"], []))
    with session_scope(rt.engine) as session:
        assert session.execute(select(func.count()).select_from(Message)).scalar_one() == 0
        assert session.execute(select(func.count()).select_from(MailboxItem)).scalar_one() == 0


def test_an_attachment_of_malformed_base64_is_refused(rt, people):
    # The email package decodes such a body all the same, skipping what it cannot read;
    # another reader may decode it otherwise: the documents checked would not be the ones read.
    good = letter(
        DOCTOR, [NURSE], [("cr.pdf", "application/pdf", pdf_of_size(30_000) + b"\n")]
    )  # one byte past a multiple of 3: padded
    lines = good.split(b"\r\n")
    named = lines.index(b'Content-Disposition: attachment; filename="cr.pdf"')
    first = lines.index(b"", named) + 1  # the attachment's first line
    last = len(lines) - 4  # the attachment's last line, before "--boundary--" and the end
    assert lines[first - 1] == b"" and lines[last].endswith(b"=") and lines[last + 1] == b""
    for changed in (
        lines[: first + 5] + [b"*" + lines[first + 5][1:]] + lines[first + 6 :],  # outside the alphabet
        lines[:last] + [lines[last].rstrip(b"=")] + lines[last + 1 :],  # padding missing
    ):
        raw = b"\r\n".join(changed)
        with pytest.raises(MalformedMessage, match="InvalidBase64"):
            send(rt, people[DOCTOR], [NURSE], raw)
    send(rt, people[DOCTOR], [NURSE], good)
    with session_scope(rt.engine) as session:
        assert session.execute(select(func.count()).select_from(Message)).scalar_one() == 1


def test_success_dsn_and_processed_mdn_reach_the_sender(rt, people):
    raw = letter(DOCTOR, [GP], [], Disposition_Notification_To=DOCTOR)
    accepted = send(rt, people[DOCTOR], [GP], raw, notify=frozenset({"SUCCESS", "FAILURE"}))
    with session_scope(rt.engine) as session:
        row = store.find_message(session, accepted.queue_id)
        rows = session.execute(select(Receipt).where(Receipt.message_id == row.id)).scalars().all()
        notifications = {r.kind: session.get(Message, r.notification_id) for r in rows}
        inbox = (
            session.execute(
                select(MailboxItem.message_id).where(MailboxItem.owner == DOCTOR, MailboxItem.folder == "inbox")
            )
            .scalars()
            .all()
        )
    assert sorted((r.kind, r.status, r.recipient) for r in rows) == [("dsn", "delivered", GP), ("mdn", "processed", GP)]
    assert {n.id for n in notifications.values()} == set(inbox)
    status, dsn = open_as(rt, people[DOCTOR], notifications["dsn"].cms)
    assert status == "valid"
    assert dsn.get_content_type() == "multipart/report" and dsn.get_param("report-type") == "delivery-status"
    assert b"Final-Recipient: rfc822; " + GP.encode() in dsn.as_bytes()
    assert b"Cher confr" not in dsn.as_bytes()  # receipts carry headers, never content
    status, mdn = open_as(rt, people[DOCTOR], notifications["mdn"].cms)
    assert status == "valid" and mdn.get_param("report-type") == "disposition-notification"
    assert b"processed" in mdn.as_bytes()
    # The receipts are written with the message: their events follow its own in the chain,
    # which still verifies.
    with session_scope(rt.engine) as session:
        trail = [e.action for e in audit.events_for(session, object_prefix=accepted.queue_id)]
        assert audit.verify(session, rt.master_key).ok
    assert trail == [
        "message.submit", "message.check", "message.sign", "message.deliver", "receipt.dsn", "receipt.mdn",
    ]  # fmt: skip


def test_recipient_revoked_before_data_gets_a_failure_dsn(rt, people):
    with session_scope(rt.engine) as session:
        service.revoke_entry(session, NURSE, reason="left the practice", actor="test")
    accepted = send(rt, people[DOCTOR], [GP, NURSE], letter(DOCTOR, [GP, NURSE], []))
    with session_scope(rt.engine) as session:
        row = store.find_message(session, accepted.queue_id)
        deliveries = dict(
            session.execute(select(Delivery.recipient, Delivery.status).where(Delivery.message_id == row.id)).all()
        )
        receipt = session.execute(select(Receipt).where(Receipt.message_id == row.id)).scalars().one()
        failure_cms = session.get(Message, receipt.notification_id).cms
    assert deliveries == {GP: "delivered", NURSE: "failed"}
    assert (receipt.kind, receipt.status, receipt.recipient) == ("dsn", "failed", NURSE)
    _status, dsn = open_as(rt, people[DOCTOR], failure_cms)
    assert b"Action: failed" in dsn.as_bytes() and b"5.7.1" in dsn.as_bytes()
    with pytest.raises(RevokedAddress):
        send(rt, people[DOCTOR], [NURSE], letter(DOCTOR, [NURSE], []))


def test_trace_and_export_open_with_openssl(rt, people, env, tmp_path):
    pdf = _pdf()
    cda = (CDA_DIR / "IMG_CR_IMG_2024.01.xml").read_bytes()
    raw = letter(DOCTOR, [GP], [("cr.pdf", "application/pdf", pdf), ("img.xml", "text/xml", cda)])
    accepted = send(rt, people[DOCTOR], [GP], raw)
    runner = CliRunner()
    traced = runner.invoke(app, ["trace", accepted.message_id], env=env)
    assert traced.exit_code == 0, traced.stderr
    for step in ("message.submit", "message.check", "message.sign", "message.deliver"):
        assert step in traced.stdout
    eml = tmp_path / "message.eml"
    refused = runner.invoke(app, ["message", "export", accepted.queue_id, "--for", NURSE, "--out", str(eml)], env=env)
    assert refused.exit_code == 1 and not eml.exists()
    exported = runner.invoke(app, ["message", "export", accepted.queue_id, "--for", GP, "--out", str(eml)], env=env)
    assert exported.exit_code == 0, exported.stderr
    # The GP's key as a mail client would import it, then openssl as the independent reader.
    p12 = tmp_path / "gp.p12"
    p12.write_bytes(accounts.export_key(rt.engine, rt.settings, GP, PASSWORD, "export passphrase", actor="test"))
    key_pem = tmp_path / "gp.pem"
    subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-noenc", "-passin", "pass:export passphrase", "-out", str(key_pem)],
        check=True,
        capture_output=True,
    )
    signed = tmp_path / "signed.eml"
    subprocess.run(
        ["openssl", "cms", "-decrypt", "-in", str(eml), "-inkey", str(key_pem), "-out", str(signed)],
        check=True,
        capture_output=True,
    )
    content = tmp_path / "content.eml"
    ca = rt.settings.pki.certs_dir / "ca.pem"
    verified = subprocess.run(
        ["openssl", "cms", "-verify", "-in", str(signed), "-CAfile", str(ca), "-out", str(content)],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stderr
    parts = attachments_of(email.message_from_bytes(content.read_bytes(), policy=email.policy.default))
    assert parts == {"cr.pdf": pdf, "img.xml": cda}
    # One flipped byte in the ciphertext: openssl no longer opens or verifies it.
    with session_scope(rt.engine) as session:
        row = store.find_message(session, accepted.queue_id)
    tampered = bytearray(row.cms)
    tampered[len(tampered) // 2] ^= 0x01
    bad = tmp_path / "bad.der"
    bad.write_bytes(bytes(tampered))
    opened = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(bad), "-inkey", str(key_pem)], capture_output=True
    )
    if opened.returncode == 0:
        checked = subprocess.run(
            ["openssl", "cms", "-verify", "-CAfile", str(ca)], input=opened.stdout, capture_output=True
        )
        assert checked.returncode != 0
    with session_scope(rt.engine) as session:
        assert audit.verify(session, rt.master_key).ok


def _pdf() -> bytes:
    from io import BytesIO

    from pypdf import PdfWriter

    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


def test_the_sealed_metadata_is_the_json_of_its_fields() -> None:
    meta = store.MessageMeta(
        sender="a@mss.test",
        recipients=["b@mss.test", "c@mss.test"],
        subject="Compte rendu é",
        date="Tue, 01 Dec 2026 10:00:00 +0100",
        message_id="<x@mss.test>",
        headers={"X-MSS-CODECDA": "11490-0"},
        documents=[
            store.DocumentSummary("cr.pdf", "pdf", 1234, "ab" * 32),
            store.DocumentSummary("ihe.zip", "xdm", 99, "", (store.CdaSummary("t", "11490-0", "CR", "1", "2026"),)),
        ],
        client={"to": "b@mss.test", "shape": {"parts": [1, 2]}},
    )
    assert meta.to_json() == json.dumps(dataclasses.asdict(meta), ensure_ascii=False)
    key = MasterKey(bytes(range(32)))
    assert store.MessageMeta.open(key, meta.seal(key)) == meta


def test_a_long_message_is_not_held_in_every_form_at_once(rt, people):
    """The signed entity, our SignedData and its MIME form are each as large as the message:
    the pipeline lets each go once the next is made. Held all at once until the commit, as
    they were, a 1 MB referral took Python allocations of more than seven times its size at
    their peak; about five now (``tracemalloc``: allocations, not time)."""
    pdf = pdf_of_size(750_000)
    send(rt, people[DOCTOR], [GP], letter(DOCTOR, [GP], [("cr.pdf", "application/pdf", pdf)]))  # caches warm
    raw = letter(DOCTOR, [GP], [("cr2.pdf", "application/pdf", pdf)], subject="Compte rendu 2")
    tracemalloc.start()
    try:
        send(rt, people[DOCTOR], [GP], raw)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * len(raw), (peak, len(raw))


def _ended_certificate() -> x509.Certificate:
    """A certificate whose validity ended ten days ago (only its dates matter here)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Ended")])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=40))
        .not_valid_after(now - timedelta(days=10))
        .sign(key, hashes.SHA256())
    )


def test_a_kept_recipient_counts_only_at_its_revision_and_within_its_certificate(rt, people):
    # Found reachable once, a recipient is known at that revision of the directory, and only
    # at it; a kept verdict whose certificate has ended (time alone, no write) is not used.
    with read_scope(rt.engine) as reader:
        revision = directory_revision.current(reader)
    assert pipeline.known_recipient(rt, GP, revision) is None  # nothing found yet
    assert pipeline.check_recipient(rt, GP.upper()) == GP
    assert pipeline.known_recipient(rt, f" {GP.upper()} ", revision) == GP
    assert pipeline.known_recipient(rt, GP, revision + 1) is None
    kept = rt.recipients.get(GP, revision)
    rt.recipients.keep(revision, {GP: dataclasses.replace(kept, certificate=_ended_certificate())})
    assert pipeline.known_recipient(rt, GP, revision) is None
    # At DATA the ended verdict is not used either: the directory is read again, and its
    # current certificate is the one the message is encrypted to.
    accepted = send(rt, people[DOCTOR], [GP], letter(DOCTOR, [GP], []))
    with session_scope(rt.engine) as session:
        row = session.execute(select(Message).where(Message.queue_id == accepted.queue_id)).scalar_one()
    status, _opened = open_as(rt, people[GP], row.cms)
    assert status == "valid"
    assert pipeline.known_recipient(rt, GP, revision) == GP
