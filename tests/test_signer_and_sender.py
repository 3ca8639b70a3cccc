"""Who signed, against who sent (RFC 8550 3): a valid signature by a certificate that names
mail addresses but not the sender's is shown as ``other-signer``; one that names the sender
among others, in its subjectAltName or its subject, holds and is shown under the sender's
address; one that names no address at all vouches for no sender; what the operator signs in
the name of another From (its notices, its receipts) is not held to that.

The certificates are made here with the cryptography package, under the service's own CA, in
shapes mss never issues but other CAs of a trust space do."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from directory import certificates
from mss import lifecycle, mailbox
from mss.crypto import pki, smime
from mss.db import session_scope, utcnow
from mss.mailbox.content import decrypt_and_verify
from mss.models import Account, Message
from mss.runtime import Runtime

from web_support import DOCTOR, unlocked


def _certificate(rt: Runtime, *, alt_names: list[str], subject_email: str | None):
    """A key and an S/MIME certificate under the service's CA with these names."""
    ca = pki.load_ca(rt.settings)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"), x509.NameAttribute(NameOID.COMMON_NAME, "Dr Carte")]
    if subject_email:
        subject.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    now = utcnow()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.certificate.public_key()), critical=False)
    )
    if alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(a) for a in alt_names]), critical=False
        )
    return key, builder.sign(ca.private_key, hashes.SHA256())


def _shown(rt: Runtime, doctor, key, certificate, *, kind: str = "signed"):
    """The signature the doctor is shown for a text signed with ``certificate``, stored as
    ``kind`` from the doctor's own address."""
    reader = unlocked(rt, doctor)
    signed = smime.signed_entity(smime.sign(b"Content-Type: text/plain\r\n\r\nBonjour.\r\n", certificate, key))
    envelope = smime.encrypt(signed, [reader.certificate])
    with session_scope(rt.engine) as session:
        trust = certificates.trust_material(session, rt.settings)
        signature, _entity = decrypt_and_verify(
            session, envelope, kind, reader, trust.roots, trust.crls, sender=doctor.address
        )
    return signature


def test_the_signer_is_the_sender_wherever_the_certificate_names_them(rt, doctor):
    cases = {
        "only someone else": (["autre@mss.test"], None, "other-signer", "autre@mss.test"),
        "someone else, and the sender in the subject": (["autre@mss.test"], DOCTOR, "valid", DOCTOR),
        "someone else, then the sender": (["autre@mss.test", DOCTOR.upper()], None, "valid", DOCTOR.upper()),
        "the sender in the subject alone": ([], DOCTOR, "valid", DOCTOR),
        "no address at all: it vouches for no sender": ([], None, "other-signer", None),
    }
    for case, (alt_names, subject_email, status, signer) in cases.items():
        key, certificate = _certificate(rt, alt_names=alt_names, subject_email=subject_email)
        shown = _shown(rt, doctor, key, certificate)
        assert (shown.status, shown.signer_address) == (status, signer), case
    key, certificate = _certificate(rt, alt_names=["autre@mss.test"], subject_email=None)
    assert _shown(rt, doctor, key, certificate, kind="receipt").status == "valid"


def test_a_notice_is_the_operator_s_whatever_its_from(rt, doctor):
    """The inactivity notice comes from postmaster@ the first served domain, signed with the
    operator's certificate made for the domain that came first then: it still holds after
    another domain is put first."""
    settings = dataclasses.replace(rt.settings, domains=("nouveau.test", *rt.settings.domains))
    for runtime in (rt, Runtime(settings=settings, engine=rt.engine, master_key=rt.master_key)):
        with session_scope(rt.engine) as session:
            account = session.execute(select(Account).where(Account.address == DOCTOR)).scalar_one()
            assert lifecycle._notice(session, runtime, account, utcnow())
        with session_scope(rt.engine) as session:
            notice = session.execute(
                select(Message.queue_id).where(Message.kind == lifecycle.NOTICE_KIND).order_by(Message.id.desc())
            ).scalar()
        assert mailbox.open_message(rt, unlocked(rt, doctor), notice).signature.status == "valid"
