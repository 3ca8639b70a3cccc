"""CMS sign/encrypt/decrypt and signature verification, with openssl as the independent peer.

What openssl 3 shows about our DER (checked below): ``openssl cms -decrypt`` then
``openssl cms -verify`` returns the signed MIME entity byte for byte, with or without
``-binary`` (with embedded DER content openssl does no line-ending translation on output).
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from mss.crypto import envelope as cms_envelope
from mss.crypto import keys, pki, smime
from mss.crypto.verify import async_verify_signed_data, verify_signed_data
from mss.errors import CryptoError, DecryptionError, SignatureError, UnsupportedCms

pytestmark = pytest.mark.sqlite_only  # no database involved

ENTITY = (
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Bonjour Docteur,\r\n"
    b"From here on: lettre de liaison \xc3\xa0 l'\xc3\xa9tablissement.  \r\n"
    b".\r\n"
    b"\r\n"
)


class Party:
    def __init__(self, key, certificate: x509.Certificate) -> None:
        self.key = key
        self.certificate = certificate


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.new_certificate_authority(common_name="test CA", organisation="mss tests")


def _party(ca: pki.CertificateAuthority, address: str, name: str) -> Party:
    key, certificate = pki.issue_smime_certificate(
        ca,
        address=address,
        rpps_national_id="810000064199",
        common_name=name,
        organisation="CHU Démo",
        key_bits=2048,
        days=30,
    )
    return Party(key, certificate)


@pytest.fixture(scope="module")
def alice(ca: pki.CertificateAuthority) -> Party:
    return _party(ca, "alice@mss.test", "Alice Martin")


@pytest.fixture(scope="module")
def bob(ca: pki.CertificateAuthority) -> Party:
    return _party(ca, "bob@mss.test", "Bob Durand")


@pytest.fixture(scope="module")
def mallory(ca: pki.CertificateAuthority) -> Party:
    return _party(ca, "mallory@mss.test", "Mallory")


@pytest.fixture(scope="module")
def empty_crl(ca: pki.CertificateAuthority) -> x509.CertificateRevocationList:
    return pki.build_crl(ca, [])


@pytest.fixture(scope="module")
def pem_dir(tmp_path_factory: pytest.TempPathFactory, ca, alice, bob) -> Path:
    folder = tmp_path_factory.mktemp("pem")
    (folder / "ca.pem").write_bytes(ca.certificate.public_bytes(serialization.Encoding.PEM))
    for name, party in (("alice", alice), ("bob", bob)):
        (folder / f"{name}.pem").write_bytes(party.certificate.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(keys.private_key_to_pem(party.key))
    return folder


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], input=input, capture_output=True, timeout=120)


def _verify(signed: bytes, ca: pki.CertificateAuthority, crls, **kwargs):
    return verify_signed_data(signed, trust_roots=[ca.certificate], crls=crls, **kwargs)


# -- structure -----------------------------------------------------------------------------


def test_sign_embeds_the_entity_byte_for_byte(alice: Party) -> None:
    signed = smime.sign(ENTITY, alice.certificate, alice.key)
    assert smime.content_type(signed) == "signed_data" and smime.is_signed(signed)
    assert smime.signed_content(signed) == ENTITY
    info = asn1_cms.ContentInfo.load(signed)
    signer = info["content"]["signer_infos"][0]
    assert signer["digest_algorithm"]["algorithm"].native == "sha256"
    embedded = [c.chosen.dump() for c in info["content"]["certificates"]]
    assert alice.certificate.public_bytes(serialization.Encoding.DER) in embedded


def test_sign_rejects_bad_input(alice: Party, bob: Party) -> None:
    with pytest.raises(CryptoError, match="CRLF"):
        smime.sign(b"Content-Type: text/plain\n\nhello\n", alice.certificate, alice.key)
    with pytest.raises(CryptoError, match="CRLF"):
        smime.sign(b"a\rb\r\n", alice.certificate, alice.key)
    with pytest.raises(CryptoError, match="no MIME entity"):
        smime.sign(b"", alice.certificate, alice.key)
    with pytest.raises(CryptoError, match="does not belong"):
        smime.sign(ENTITY, alice.certificate, bob.key)


def test_encrypt_decrypt_for_each_recipient(alice: Party, bob: Party, mallory: Party) -> None:
    signed = smime.sign(ENTITY, alice.certificate, alice.key)
    envelope = smime.encrypt(signed, [bob.certificate, alice.certificate, bob.certificate])
    assert smime.is_enveloped(envelope) and not smime.is_signed(envelope)
    info = asn1_cms.ContentInfo.load(envelope)["content"]
    assert info["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native == "aes256_cbc"
    recipients = smime.envelope_recipients(envelope)
    assert len(recipients) == 2  # the duplicate was dropped
    assert {r.serial for r in recipients} == {bob.certificate.serial_number, alice.certificate.serial_number}
    assert all("test CA" in r.issuer for r in recipients)
    assert smime.can_decrypt_for(envelope, bob.certificate) and smime.can_decrypt_for(envelope, alice.certificate)
    assert not smime.can_decrypt_for(envelope, mallory.certificate)
    assert smime.missing_recipients(envelope, [alice.certificate, mallory.certificate]) == [mallory.certificate]
    assert smime.decrypt(envelope, bob.certificate, bob.key) == signed
    assert smime.decrypt(envelope, alice.certificate, alice.key) == signed
    with pytest.raises(DecryptionError, match="not encrypted for") as caught:
        smime.decrypt(envelope, mallory.certificate, mallory.key)
    assert caught.value.details["reason"] == "not_a_recipient"
    with pytest.raises(DecryptionError, match="does not belong"):
        smime.decrypt(envelope, bob.certificate, alice.key)


def test_encrypt_rejects_bad_recipients(alice: Party, ca: pki.CertificateAuthority) -> None:
    with pytest.raises(CryptoError, match="at least one recipient"):
        smime.encrypt(b"x", [])
    _, tls_certificate = pki.issue_tls_certificate(ca, ["localhost"])
    with pytest.raises(CryptoError, match="only RSA"):
        smime.encrypt(b"x", [alice.certificate, tls_certificate])


def _locate(der: bytes, field: bytes) -> int:
    offset = der.find(field)
    assert offset > 0 and der.find(field, offset + 1) == -1
    return offset


def test_tampered_ciphertext_never_yields_a_valid_message(alice: Party, bob: Party, ca, empty_crl) -> None:
    signed = smime.sign(ENTITY, alice.certificate, alice.key)
    envelope = smime.encrypt(signed, [bob.certificate])
    ciphertext = asn1_cms.ContentInfo.load(envelope)["content"]["encrypted_content_info"]["encrypted_content"].native
    start = _locate(envelope, ciphertext)

    # CBC: flipping a byte of the next-to-last block flips the same byte of the last
    # plaintext block. XOR the final byte with the padding length: it becomes 0, which is
    # never valid PKCS#7 padding, so decryption must fail.
    pad = 16 - len(signed) % 16
    tampered = bytearray(envelope)
    tampered[start + len(ciphertext) - 17] ^= pad
    with pytest.raises(DecryptionError, match="altered"):
        smime.decrypt(bytes(tampered), bob.certificate, bob.key)

    # A flip inside the body decrypts to garbage in that block (CBC is malleable, no error
    # raised): the signature check is what catches it.
    block = _locate(signed, b"Bonjour Docteur") // 16
    tampered = bytearray(envelope)
    tampered[start + block * 16 + 3] ^= 0x40
    inner = smime.decrypt(bytes(tampered), bob.certificate, bob.key)
    assert inner != signed
    report = _verify(inner, ca, [empty_crl])
    assert report.status == "invalid" and "altered" in report.reason


def test_garbage_gets_specific_errors(alice: Party, bob: Party) -> None:
    for garbage in (b"garbage", b"\x30\x03\x02\x01\x00", b"-----BEGIN PKCS7-----"):
        with pytest.raises(CryptoError, match="not a CMS"):
            smime.content_type(garbage)
        with pytest.raises(CryptoError, match="not a CMS"):
            smime.envelope_recipients(garbage)
        with pytest.raises(DecryptionError, match="not a CMS"):
            smime.decrypt(garbage, bob.certificate, bob.key)
        with pytest.raises(SignatureError, match="not a CMS"):
            smime.signed_content(garbage)
        with pytest.raises(SignatureError, match="not a CMS"):
            verify_signed_data(garbage, trust_roots=[alice.certificate], crls=[])
    signed = smime.sign(ENTITY, alice.certificate, alice.key)
    envelope = smime.encrypt(signed, [bob.certificate])
    with pytest.raises(CryptoError, match="expected a CMS EnvelopedData, got signed_data"):
        smime.envelope_recipients(signed)
    with pytest.raises(SignatureError, match="expected a CMS SignedData, got enveloped_data"):
        smime.signed_content(envelope)
    with pytest.raises(SignatureError, match="expected a CMS SignedData"):
        verify_signed_data(envelope, trust_roots=[alice.certificate], crls=[])
    with pytest.raises(CryptoError, match="not a CMS"):
        smime.content_type(signed + b"trailing")
    with pytest.raises(CryptoError, match="not a CMS"):
        smime.content_type(envelope[:-10])


# -- openssl interop -----------------------------------------------------------------------


def test_openssl_decrypts_and_verifies_what_we_produce(alice: Party, bob: Party, pem_dir: Path, tmp_path: Path) -> None:
    envelope = smime.sign_and_encrypt(ENTITY, alice.certificate, alice.key, [bob.certificate, alice.certificate])
    (tmp_path / "env.der").write_bytes(envelope)
    done = openssl(
        "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "env.der"),
        "-recip", str(pem_dir / "bob.pem"), "-inkey", str(pem_dir / "bob.key"), "-out", str(tmp_path / "signed.der"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for binary in ([], ["-binary"]):
        out = tmp_path / f"content{len(binary)}"
        done = openssl(
            "cms", "-verify", *binary, "-inform", "DER", "-in", str(tmp_path / "signed.der"),
            "-CAfile", str(pem_dir / "ca.pem"), "-out", str(out),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert b"Verification successful" in done.stderr
        assert out.read_bytes() == ENTITY  # byte for byte, with and without -binary


def test_we_decrypt_and_verify_what_openssl_produces(
    alice: Party, bob: Party, pem_dir: Path, tmp_path: Path, ca, empty_crl
) -> None:
    (tmp_path / "entity").write_bytes(ENTITY)
    done = openssl(
        "cms", "-sign", "-binary", "-nodetach", "-md", "sha256", "-in", str(tmp_path / "entity"),
        "-signer", str(pem_dir / "alice.pem"), "-inkey", str(pem_dir / "alice.key"),
        "-outform", "DER", "-out", str(tmp_path / "signed.der"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for keyid in ([], ["-keyid"]):  # issuer+serial, then subject key identifier
        done = openssl(
            "cms", "-encrypt", "-binary", "-aes256", *keyid, "-in", str(tmp_path / "signed.der"),
            "-outform", "DER", "-out", str(tmp_path / "env.der"), str(pem_dir / "bob.pem"),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        envelope = (tmp_path / "env.der").read_bytes()
        recipients = smime.envelope_recipients(envelope)
        assert (recipients[0].subject_key_identifier is not None) == bool(keyid)
        assert smime.can_decrypt_for(envelope, bob.certificate)
        assert not smime.can_decrypt_for(envelope, alice.certificate)
        inner = smime.decrypt(envelope, bob.certificate, bob.key)
        assert inner == (tmp_path / "signed.der").read_bytes()
        report = _verify(inner, ca, [empty_crl])
        assert report.status == "valid", report.reason
        assert report.content == ENTITY
        assert report.signer_address == "alice@mss.test"


def test_export_for_a_mail_client_is_standard_smime(alice: Party, bob: Party, pem_dir: Path, tmp_path: Path) -> None:
    envelope = smime.sign_and_encrypt(ENTITY, alice.certificate, alice.key, [bob.certificate])
    headers = {"From": "Alice Martin <alice@mss.test>", "To": "bob@mss.test", "Subject": "Lettre de liaison – été"}
    message = smime.export_for_mail_client(envelope, bob.certificate, bob.key, headers)
    head, _, body = message.partition(b"\r\n\r\n")
    assert b"Content-Type: application/pkcs7-mime; smime-type=enveloped-data;\r\n name=smime.p7m\r\n" in head
    assert b"Subject: Lettre de liaison =?utf-8?" in head and b"\n" not in message.replace(b"\r\n", b"")
    assert all(len(line) <= 78 for line in message.split(b"\r\n"))
    assert smime.is_enveloped(smime.smime_payload(message))

    (tmp_path / "message.eml").write_bytes(message)
    done = openssl(
        "cms", "-decrypt", "-in", str(tmp_path / "message.eml"), "-recip", str(pem_dir / "bob.pem"),
        "-inkey", str(pem_dir / "bob.key"), "-out", str(tmp_path / "inner.eml"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        (tmp_path / "inner.eml")
        .read_bytes()
        .startswith(b"Content-Type: application/pkcs7-mime; smime-type=signed-data")
    )
    done = openssl(
        "cms", "-verify", "-in", str(tmp_path / "inner.eml"), "-CAfile", str(pem_dir / "ca.pem"),
        "-out", str(tmp_path / "content"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "content").read_bytes() == ENTITY


def test_smime_message_checks_headers_and_payloads(alice: Party, bob: Party) -> None:
    envelope = smime.encrypt(b"x", [bob.certificate])
    assert smime.smime_payload(smime.to_smime_message(envelope, {"To": "bob@mss.test"})) == envelope
    with pytest.raises(CryptoError, match="one line"):
        smime.to_smime_message(envelope, {"Subject": "a\r\nBcc: victim@example.org"})
    with pytest.raises(CryptoError, match="set by the S/MIME encoding"):
        smime.to_smime_message(envelope, {"Content-Type": "text/plain"})
    with pytest.raises(CryptoError, match="not a header field name"):
        smime.to_smime_message(envelope, {"Bad Name": "x"})
    with pytest.raises(CryptoError, match="only a CMS EnvelopedData"):
        smime.to_smime_message(smime.sign(ENTITY, alice.certificate, alice.key), {})
    with pytest.raises(CryptoError, match="expected application/pkcs7-mime"):
        smime.smime_payload(b"Content-Type: text/plain\r\n\r\nhello\r\n")
    with pytest.raises(CryptoError, match="base64"):
        smime.smime_payload(b"Content-Type: application/pkcs7-mime\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!\r\n")


# -- verification --------------------------------------------------------------------------


def test_valid_signature_report(alice: Party, ca, empty_crl) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    report = _verify(smime.sign(ENTITY, alice.certificate, alice.key), ca, [empty_crl])
    assert report.status == "valid" and report.trusted
    assert report.content == ENTITY
    assert report.signer_address == "alice@mss.test"
    assert report.signer_common_name == "Alice Martin"
    assert report.signer_serial == pki.serial_hex(alice.certificate.serial_number)
    assert report.signing_time is not None and report.signing_time >= before
    assert "Bonjour" not in repr(report)  # content never reaches a log through repr()
    # CRLs may be given as PEM, DER or objects.
    pem = empty_crl.public_bytes(serialization.Encoding.PEM)
    assert _verify(smime.sign(ENTITY, alice.certificate, alice.key), ca, [pem]).status == "valid"


def test_tampered_signed_content_is_invalid(alice: Party, ca, empty_crl) -> None:
    signed = bytearray(smime.sign(ENTITY, alice.certificate, alice.key))
    offset = _locate(bytes(signed), b"Bonjour Docteur")
    signed[offset] = ord("b")
    report = _verify(bytes(signed), ca, [empty_crl])
    assert report.status == "invalid" and not report.trusted
    assert "altered" in report.reason

    signature = asn1_cms.ContentInfo.load(bytes(signed))["content"]["signer_infos"][0]["signature"].native
    signed = bytearray(smime.sign(ENTITY, alice.certificate, alice.key))
    signature = asn1_cms.ContentInfo.load(bytes(signed))["content"]["signer_infos"][0]["signature"].native
    signed[_locate(bytes(signed), signature) + 10] ^= 0x01
    report = _verify(bytes(signed), ca, [empty_crl])
    assert report.status == "invalid" and "signature does not match" in report.reason


def test_unknown_ca_is_untrusted(alice: Party, ca) -> None:
    stranger = pki.new_certificate_authority(common_name="test CA", organisation="mss tests")
    report = verify_signed_data(
        smime.sign(ENTITY, alice.certificate, alice.key),
        trust_roots=[stranger.certificate],
        crls=[pki.build_crl(stranger, [])],
    )
    assert report.status == "untrusted"
    assert "does not chain to a trusted CA" in report.reason
    assert report.content == ENTITY  # available, but only to show with the warning


def test_revoked_signer(alice: Party, bob: Party, ca) -> None:
    signed = smime.sign(ENTITY, alice.certificate, alice.key)
    revoked_at = datetime.now(UTC)
    crl = pki.build_crl(ca, [(alice.certificate.serial_number, revoked_at, "keyCompromise")])
    report = _verify(signed, ca, [crl])
    assert report.status == "revoked" and "revoked" in report.reason
    # Bob is not on the list.
    assert _verify(smime.sign(ENTITY, bob.certificate, bob.key), ca, [crl]).status == "valid"
    # Checked as of a moment before the revocation, with today's list, it held.
    report = _verify(signed, ca, [crl], moment=revoked_at - timedelta(seconds=30))
    assert report.status == "valid", report.reason


def test_expired_signer(ca, empty_crl) -> None:
    key, template = pki.issue_smime_certificate(
        ca, address="old@mss.test", rpps_national_id=None, common_name="Old", key_bits=2048, days=1
    )
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(template.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=40))
        .not_valid_after(now - timedelta(days=10))
    )
    for extension in template.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    expired = builder.sign(ca.private_key, hashes.SHA256())
    report = _verify(smime.sign(ENTITY, expired, key), ca, [empty_crl])
    assert report.status == "expired" and "expired" in report.reason


def test_missing_revocation_information_is_untrusted(alice: Party, ca) -> None:
    report = _verify(smime.sign(ENTITY, alice.certificate, alice.key), ca, [])
    assert report.status == "untrusted" and "revocation" in report.reason
    later = datetime.now(UTC) + timedelta(days=3)
    short_lived = pki.build_crl(ca, [], next_update_days=1)
    report = _verify(smime.sign(ENTITY, alice.certificate, alice.key), ca, [short_lived], moment=later)
    assert report.status == "untrusted" and "revocation" in report.reason


def test_certificate_without_email_protection_is_untrusted(ca, empty_crl) -> None:
    key, certificate = pki.issue_tls_certificate(ca, ["localhost"])  # serverAuth only
    report = _verify(smime.sign(ENTITY, certificate, key), ca, [empty_crl])
    assert report.status == "untrusted" and "not valid for e-mail" in report.reason


def test_detached_or_multi_signer_input_is_refused(alice: Party, pem_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "entity").write_bytes(ENTITY)
    done = openssl(
        "cms", "-sign", "-binary", "-md", "sha256", "-in", str(tmp_path / "entity"),
        "-signer", str(pem_dir / "alice.pem"), "-inkey", str(pem_dir / "alice.key"),
        "-outform", "DER", "-out", str(tmp_path / "detached.der"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    detached = (tmp_path / "detached.der").read_bytes()
    with pytest.raises(SignatureError, match="detached"):
        verify_signed_data(detached, trust_roots=[alice.certificate], crls=[])
    with pytest.raises(SignatureError, match="detached"):
        smime.signed_content(detached)
    done = openssl(
        "cms", "-sign", "-binary", "-nodetach", "-md", "sha256", "-in", str(tmp_path / "entity"),
        "-signer", str(pem_dir / "alice.pem"), "-inkey", str(pem_dir / "alice.key"),
        "-signer", str(pem_dir / "bob.pem"), "-inkey", str(pem_dir / "bob.key"),
        "-outform", "DER", "-out", str(tmp_path / "two.der"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with pytest.raises(SignatureError, match="exactly one"):
        verify_signed_data((tmp_path / "two.der").read_bytes(), trust_roots=[alice.certificate], crls=[])


def test_detached_signature_verifies_against_its_content(
    alice: Party, pem_dir: Path, tmp_path: Path, ca, empty_crl
) -> None:
    (tmp_path / "entity").write_bytes(ENTITY)
    done = openssl(
        "cms", "-sign", "-binary", "-md", "sha256", "-in", str(tmp_path / "entity"),
        "-signer", str(pem_dir / "alice.pem"), "-inkey", str(pem_dir / "alice.key"), "-outform", "DER",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    detached = done.stdout
    report = _verify(detached, ca, [empty_crl], detached_content=ENTITY)
    assert report.status == "valid" and report.signer_address == "alice@mss.test" and report.content == ENTITY
    altered = _verify(detached, ca, [empty_crl], detached_content=ENTITY.replace(b"Docteur", b"Dokteur"))
    assert altered.status == "invalid" and "altered" in altered.reason
    embedded = smime.sign(ENTITY, alice.certificate, alice.key)
    with pytest.raises(SignatureError, match="must not embed"):
        _verify(embedded, ca, [empty_crl], detached_content=ENTITY)


# -- envelopes as other implementations write them -------------------------------------------


def _openssl_envelope(pem_dir: Path, tmp_path: Path, *options: str, recipient: str = "bob") -> bytes:
    (tmp_path / "entity").write_bytes(ENTITY)
    done = openssl(
        "cms", "-encrypt", "-binary", "-in", str(tmp_path / "entity"), "-outform", "DER",
        "-recip", str(pem_dir / f"{recipient}.pem"), *options,  # -keyopt applies to the -recip before it
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "options",
    [
        ["-aes128"],
        ["-aes192"],
        ["-aes256", "-stream"],  # BER, indefinite lengths and chunked ciphertext
        ["-des3"],  # read, never written
        ["-aes-128-gcm"],  # AuthEnvelopedData (RFC 5083)
        ["-aes-256-gcm", "-stream"],
    ],
    ids=["aes128", "aes192", "aes256-ber", "3des", "aes128-gcm", "aes256-gcm-ber"],
)
def test_we_open_the_envelopes_clients_write(options, bob: Party, pem_dir: Path, tmp_path: Path) -> None:
    envelope = _openssl_envelope(pem_dir, tmp_path, *options)
    assert smime.decrypt(envelope, bob.certificate, bob.key) == ENTITY
    der = cms_envelope.to_der(envelope)
    assert cms_envelope.to_der(der) == der
    assert ("-stream" in options) == (der != envelope)
    assert smime.decrypt(der, bob.certificate, bob.key) == ENTITY
    (tmp_path / "der").write_bytes(der)
    opened = openssl("cms", "-decrypt", "-binary", "-inform", "DER", "-in", str(tmp_path / "der"),
                     "-recip", str(pem_dir / "bob.pem"), "-inkey", str(pem_dir / "bob.key"))  # fmt: skip
    assert opened.returncode == 0 and opened.stdout == ENTITY


@pytest.mark.parametrize("digest", ["sha1", "sha256", "sha512"])
def test_we_open_rsa_oaep_key_transport(digest: str, bob: Party, pem_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "entity").write_bytes(ENTITY)
    done = openssl(
        "cms", "-encrypt", "-binary", "-aes256", "-in", str(tmp_path / "entity"), "-outform", "DER",
        "-recip", str(pem_dir / "bob.pem"), "-keyopt", "rsa_padding_mode:oaep", "-keyopt", f"rsa_oaep_md:{digest}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = asn1_cms.ContentInfo.load(done.stdout)["content"]["recipient_infos"][0].chosen
    assert info["key_encryption_algorithm"]["algorithm"].native == "rsaes_oaep"
    assert smime.decrypt(done.stdout, bob.certificate, bob.key) == ENTITY


def test_envelopes_we_cannot_open_say_why(alice: Party, bob: Party, pem_dir: Path, tmp_path: Path) -> None:
    camellia = _openssl_envelope(pem_dir, tmp_path, "-camellia128")
    with pytest.raises(DecryptionError, match="Camellia-128-CBC is not supported") as caught:
        smime.decrypt(camellia, bob.certificate, bob.key)
    assert caught.value.details["reason"] == "unsupported"
    with pytest.raises(UnsupportedCms, match="Camellia"):
        cms_envelope.check_openable(cms_envelope.load(camellia), bob.certificate)
    md5 = _openssl_envelope(
        pem_dir, tmp_path, "-aes128", "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:md5"
    )
    with pytest.raises(UnsupportedCms, match="RSA-OAEP with md5"):
        cms_envelope.check_openable(cms_envelope.load(md5), bob.certificate)
    with pytest.raises(DecryptionError) as caught:
        cms_envelope.check_openable(cms_envelope.load(md5), alice.certificate)
    assert caught.value.details["reason"] == "not_a_recipient"
    gcm = bytearray(_openssl_envelope(pem_dir, tmp_path, "-aes-128-gcm"))
    tag = asn1_cms.ContentInfo.load(bytes(gcm))["content"]["mac"].native
    gcm[_locate(bytes(gcm), tag)] ^= 1
    with pytest.raises(DecryptionError, match="altered") as caught:
        smime.decrypt(bytes(gcm), bob.certificate, bob.key)
    assert caught.value.details["reason"] == "failed"
    for cut in (20, 200, len(camellia) - 3):
        with pytest.raises(DecryptionError) as caught:
            smime.decrypt(_openssl_envelope(pem_dir, tmp_path, "-aes128")[:cut], bob.certificate, bob.key)
        assert caught.value.details["reason"] == "malformed"


def test_a_key_transport_that_fails_looks_like_altered_content(bob: Party, mallory: Party) -> None:
    """RFC 3218 2.3.2: a wrong key (here: the envelope names bob, mallory's key answers)
    fails at the content, like any altered message, never at the key transport."""
    envelope = smime.encrypt(ENTITY, [bob.certificate])
    parsed = asn1_cms.ContentInfo.load(envelope)
    parsed["content"]["recipient_infos"][0].chosen["rid"] = asn1_cms.RecipientIdentifier(
        name="issuer_and_serial_number",
        value={
            "issuer": asn1_x509.Name.load(mallory.certificate.issuer.public_bytes()),
            "serial_number": mallory.certificate.serial_number,
        },
    )
    with pytest.raises(DecryptionError) as caught:
        smime.decrypt(parsed.dump(force=True), mallory.certificate, mallory.key)
    assert caught.value.details["reason"] == "failed"


# -- layers ----------------------------------------------------------------------------------


def _multipart_signed(content: bytes, signature: bytes, boundary: str = "b1") -> bytes:
    return (
        (
            f'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg=sha-256; boundary="{boundary}"\r\n'
            f"\r\npreamble\r\n--{boundary}\r\n"
        ).encode()
        + content
        + (
            f"\r\n--{boundary}\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        ).encode()
        + base64.encodebytes(signature).replace(b"\n", b"\r\n")
        + f"--{boundary}--\r\n".encode()
    )


def test_peel_names_each_layer(alice: Party, bob: Party) -> None:
    signed = smime.sign(ENTITY, alice.certificate, alice.key)
    assert smime.peel(ENTITY).kind == smime.PLAIN
    layer = smime.peel(signed)
    assert (layer.kind, layer.content, layer.cms) == (smime.SIGNED, ENTITY, signed)
    assert smime.peel(smime.signed_entity(signed)).content == ENTITY
    envelope = smime.encrypt(ENTITY, [bob.certificate])
    assert smime.peel(smime.to_smime_message(envelope, {"Subject": "x"})).kind == smime.ENVELOPED
    assert smime.peel(envelope).cms == envelope
    # The first part exactly as signed, even when a boundary-like line is inside it.
    content = b"Content-Type: text/plain\r\n\r\n--b1x is not the boundary\r\nend\r\n"
    detached = smime.peel(_multipart_signed(content, signed))
    assert (detached.kind, detached.content, detached.cms) == (smime.DETACHED, content, signed)
    lf_only = _multipart_signed(content, signed).replace(b"\r\n", b"\n")
    assert smime.peel(lf_only).content == content  # canonicalised back to CRLF
    garbage = smime.signed_entity(signed).replace(b"MII", b"AAA", 1)
    for bad in (
        garbage,
        _multipart_signed(content, b"not cms"),
        b"Content-Type: application/pkcs7-mime\r\n\r\n%%%\r\n",
    ):
        with pytest.raises(CryptoError):
            smime.peel(bad)


def test_verification_needs_trust_roots(alice: Party) -> None:
    with pytest.raises(CryptoError, match="trust root"):
        verify_signed_data(smime.sign(ENTITY, alice.certificate, alice.key), trust_roots=[], crls=[])


async def test_verification_from_an_event_loop(alice: Party, ca, empty_crl) -> None:
    signed = smime.sign(ENTITY, alice.certificate, alice.key)
    # The service's way: a worker thread while this loop keeps running.
    report = await asyncio.to_thread(verify_signed_data, signed, trust_roots=[ca.certificate], crls=[empty_crl])
    assert report.status == "valid"
    reports = await asyncio.gather(
        *(
            asyncio.to_thread(verify_signed_data, signed, trust_roots=[ca.certificate], crls=[empty_crl])
            for _ in range(4)
        )
    )
    assert {r.status for r in reports} == {"valid"}
    assert (await async_verify_signed_data(signed, trust_roots=[ca.certificate], crls=[empty_crl])).status == "valid"
    with pytest.raises(RuntimeError, match="to_thread"):
        verify_signed_data(signed, trust_roots=[ca.certificate], crls=[empty_crl])
