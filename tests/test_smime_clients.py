"""S/MIME as mail clients write it, through the real doors, read with three independent
implementations on the other side.

A sender's mail client is played by OpenSSL, GnuPG (gpgsm) and NSS (cmsutil, the library of
Thunderbird), each with the sender's key from the PKCS#12 file mss exports and the
recipients' certificates downloaded from the directory (web and API). Each writes signed
messages (detached ``multipart/signed`` and opaque ``signed-data``), signed then encrypted,
encrypted only, encrypted then signed and triple-wrapped; RSA PKCS #1 v1.5 and RSA-OAEP;
AES-128/192/256-CBC, AES-256-GCM and 3DES; to one and to two recipients. Each message goes
through the relay (SMTP, STARTTLS, AUTH) and is read by every recipient, and by the sender
in Sent, through the web pages and the JSON API of a real HTTPS server: the test checks the
signature status shown, the signer, the text and the attachment.

Hostile envelopes (garbage, truncated, for someone else, unknown algorithms, key agreement,
nested 50 deep, altered) get a permanent refusal at submission or a clear page, never a
``451`` nor a ``500``. And what mss stores, exports and serves opens in all three tools.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select
from typer.testing import CliRunner

from cli.main import app as cli_app
from mss import accounts
from mss.crypto import envelope as cms_envelope
from mss.crypto import keys, pki
from mss.db import session_scope
from mss.models import Certificate, Message, Receipt
from mss.relay import RelayServer, replies

from relay_support import (
    NO_ACCOUNT,
    RECIPIENTS,
    REVOKED,
    SENDER,
    UNKNOWN,
    Stack,
    build_stack,
    login,
    pdf_bytes,
    queue_id,
    transaction,
)
from smime_tools import GpgSm, Nss, OpenSSL, crlf, der_of, mail, multipart_signed, pkcs7_mime, require, run
from web_support import Person, WebServer
from web_support import login as web_login

EXPORT_PASSWORD = "export passphrase 42"
PDF = pdf_bytes()


@dataclass
class World:
    """One service (relay and HTTPS web server), its people logged in, their tools."""

    stack: Stack
    web: WebServer
    people: dict[str, Person]
    browsers: dict[str, httpx.Client]
    api: dict[str, httpx.Client]
    pem: dict[str, bytes] = field(default_factory=dict)  # certificates as the web serves them
    der: dict[str, bytes] = field(default_factory=dict)  # and as the API returns them
    p12: dict[tuple[str, str], bytes] = field(default_factory=dict)  # (address, profile) -> file
    tmp: Path = Path()


def _https(web: WebServer, stack: Stack) -> httpx.Client:
    return httpx.Client(base_url=web.url, verify=stack.client_context(), timeout=60)


def _person(stack: Stack, address: str) -> Person:
    with session_scope(stack.rt.engine) as session:
        enrolment = accounts.reset_2fa(session, stack.settings, stack.rt.master_key, address, actor="test")
    secret = enrolment.otpauth_uri.split("secret=", 1)[1].split("&", 1)[0]
    return Person(address=address, password=stack.passwords[address], secret=secret)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("smime-clients")
    stack = build_stack(root)
    stack.relay = RelayServer(stack.rt).start()
    web = WebServer(stack.rt).start()
    world = World(stack=stack, web=web, people={}, browsers={}, api={}, tmp=root)
    try:
        for address in (SENDER, *RECIPIENTS):
            person = world.people[address] = _person(stack, address)
            browser = world.browsers[address] = _https(web, stack)
            web_login(browser, person)
            api = world.api[address] = _https(web, stack)
            token = api.post(
                "/api/v1/sessions", json={"address": address, "password": person.password, "code": person.code()}
            )
            assert token.status_code == 201, token.text
            api.headers["authorization"] = f"Bearer {token.json()['token']}"
        # The sender's client gets the recipients' certificates from the directory: the page's
        # PEM download, and the API's DER.
        for address in (SENDER, *RECIPIENTS):
            pem = world.browsers[SENDER].get(f"/directory/{address}/certificate.pem")
            assert pem.status_code == 200 and pem.headers["content-type"].startswith(
                "application/pem-certificate-chain"
            )
            world.pem[address] = pem.content
            served = world.api[SENDER].get(f"/api/v1/directory/{address}/certificate")
            assert served.status_code == 200, served.text
            world.der[address] = base64.b64decode(served.json()["der_base64"])
        for address in (SENDER, RECIPIENTS[0]):
            for profile in keys.PKCS12_PROFILES:
                world.p12[(address, profile)] = accounts.export_key(
                    stack.rt.engine,
                    stack.settings,
                    address,
                    stack.passwords[address],
                    EXPORT_PASSWORD,
                    actor="test",
                    profile=profile,
                )
        yield world
    finally:
        for client in (*world.browsers.values(), *world.api.values()):
            client.close()
        web.stop()
        stack.close()


def _ca_pem(world: World) -> bytes:
    return world.stack.ca_file.read_bytes()


def _provision(tool, world: World, profile: str, certificates: dict[str, bytes]) -> None:
    """Give ``tool`` the keys of the sender and the first recipient (their PKCS#12 files of
    ``profile``) and the other recipients' certificates."""
    for address in (SENDER, RECIPIENTS[0]):
        tool.import_pkcs12(address, world.p12[(address, profile)], EXPORT_PASSWORD)
    for address in RECIPIENTS[1:]:
        tool.add_certificate(address, certificates[address])


@pytest.fixture(scope="module")
def openssl(world: World) -> OpenSSL:
    tool = OpenSSL(world.tmp / "openssl", _ca_pem(world))
    _provision(tool, world, keys.PKCS12_STRONG, world.pem)
    return tool


@pytest.fixture(scope="module")
def gpgsm(world: World) -> Iterator[GpgSm]:
    tool = GpgSm(_ca_pem(world))
    try:
        # gpgsm 2.2 (Debian 12) reads only the compatible PKCS#12 profile.
        _provision(tool, world, keys.PKCS12_COMPATIBLE, world.der)
        yield tool
    finally:
        tool.close()


@pytest.fixture(scope="module")
def nss(world: World) -> Nss:
    tool = Nss(world.tmp / "nss", _ca_pem(world))
    _provision(tool, world, keys.PKCS12_STRONG, world.der)
    return tool


# -- the matrix ------------------------------------------------------------------------------

DETACHED, OPAQUE, ENCRYPT = "detached", "opaque", "encrypt"


@dataclass(frozen=True)
class Case:
    """A message a client writes: its layers from the inside out, how it encrypts, to whom."""

    tool: str
    layers: tuple[str, ...]
    cipher: str = ""
    oaep: str | None = None
    recipients: int = 1

    @property
    def id(self) -> str:
        crypto = "-".join(p for p in (self.cipher, f"oaep-{self.oaep}" if self.oaep else "") if p)
        return f"{self.tool}:{'+'.join(self.layers)}{':' + crypto if crypto else ''}:{self.recipients}rcpt"

    @property
    def to(self) -> list[str]:
        return list(RECIPIENTS[: self.recipients])

    @property
    def signed(self) -> bool:
        return DETACHED in self.layers or OPAQUE in self.layers

    @property
    def stored_kind(self) -> str:
        # Encrypted as a whole by the client: passed through; otherwise mss signs over it.
        return "client" if self.layers[-1] == ENCRYPT else "signed"


CASES = [
    Case("openssl", (DETACHED,), recipients=2),
    Case("openssl", (OPAQUE,)),
    Case("openssl", (ENCRYPT,), "aes128"),
    Case("openssl", (ENCRYPT,), "aes256", "sha256", recipients=2),
    # What Thunderbird and Outlook send by default: detached signature inside an envelope.
    Case("openssl", (DETACHED, ENCRYPT), "aes256", recipients=2),
    Case("openssl", (DETACHED, ENCRYPT), "aes128", "sha1"),
    Case("openssl", (OPAQUE, ENCRYPT), "aes128", "sha256", recipients=2),
    Case("openssl", (OPAQUE, ENCRYPT), "des3"),
    Case("openssl", (DETACHED, ENCRYPT), "aes-256-gcm"),
    Case("openssl", (DETACHED, ENCRYPT), "aes192", "sha256"),
    Case("openssl", (ENCRYPT, DETACHED), "aes256"),
    Case("openssl", (DETACHED, ENCRYPT, OPAQUE), "aes128", recipients=2),  # triple-wrapped
    Case("gpgsm", (OPAQUE,)),
    Case("gpgsm", (DETACHED,), recipients=2),
    Case("gpgsm", (ENCRYPT,), "AES", recipients=2),
    Case("gpgsm", (OPAQUE, ENCRYPT), "AES256", recipients=2),
    Case("gpgsm", (DETACHED, ENCRYPT), "AES"),
    Case("gpgsm", (ENCRYPT,), "3DES"),
    Case("nss", (OPAQUE,)),
    Case("nss", (DETACHED,)),
    Case("nss", (ENCRYPT,), recipients=2),
    Case("nss", (OPAQUE, ENCRYPT)),
    Case("nss", (DETACHED, ENCRYPT), recipients=2),
]


def content_entity(marker: str) -> bytes:
    """What the sender writes: a text and a PDF, as a client's MIME entity (CRLF)."""
    entity = EmailMessage()
    entity.set_content(f"Bonjour,\nveuillez trouver la lettre de liaison ({marker}).\n")
    entity.add_attachment(PDF, maintype="application", subtype="pdf", filename="lettre.pdf")
    del entity["MIME-Version"]
    return entity.as_bytes(policy=email.policy.SMTP)


def _layer(tool, case: Case, step: str, entity: bytes) -> bytes:
    readers = [*case.to, SENDER]  # clients encrypt to themselves too, for their Sent folder
    if isinstance(tool, OpenSSL):
        if step == ENCRYPT:
            return tool.encrypt(entity, readers, cipher=case.cipher, oaep=case.oaep)
        return tool.sign(entity, SENDER, detached=step == DETACHED)
    if step == ENCRYPT:
        der = (
            tool.encrypt(entity, readers, cipher=case.cipher)
            if isinstance(tool, GpgSm)
            else tool.encrypt(entity, readers)
        )
        return pkcs7_mime(der, "enveloped-data")
    signature = tool.sign(entity, SENDER, detached=step == DETACHED)
    return multipart_signed(entity, signature) if step == DETACHED else pkcs7_mime(signature, "signed-data")


def client_message(tool, case: Case, marker: str) -> bytes:
    """The message as ``tool`` writes it for ``case``."""
    entity = content_entity(marker)
    for step in case.layers:
        entity = crlf(_layer(tool, case, step, entity))
    return mail(SENDER, case.to, f"Lettre {marker}", entity)


def submit(world: World, raw: bytes, to: list[str]) -> tuple[int, bytes]:
    """The DATA reply for ``raw`` over SMTP with STARTTLS and AUTH."""
    client = login(world.stack)
    try:
        replies_ = transaction(client, SENDER, to, raw)
    finally:
        client.quit()
    assert [r[0] for r in replies_[:-1]] == [250] * (len(replies_) - 1), replies_
    return replies_[-1]


def stored(world: World, queue: str) -> Message:
    with session_scope(world.stack.rt.engine) as session:
        row = session.execute(select(Message).where(Message.queue_id == queue)).scalar_one()
        session.expunge(row)
        return row


def check_read(world: World, reader: str, queue: str, case_signed: bool, marker: str, *, download: bool) -> None:
    """What the web page and the API show ``reader`` about the message."""
    expected = "valid" if case_signed else "unsigned"
    api = world.api[reader].get(f"/api/v1/messages/{queue}")
    assert api.status_code == 200, api.text
    body = api.json()
    assert body["signature"]["status"] == expected, body["signature"]
    if case_signed:
        assert body["signature"]["signer_address"] == SENDER
    assert marker in body["body"]
    assert [a["filename"] for a in body["attachments"]] == ["lettre.pdf"]
    if download:
        assert world.api[reader].get(body["attachments"][0]["url"]).content == PDF
    page = world.browsers[reader].get(f"/messages/{queue}")
    assert page.status_code == 200
    assert f'class="badge sig-{expected}"' in page.text
    assert marker in page.text and "lettre.pdf" in page.text
    assert f'href="/directory/{SENDER.replace("@", "%40")}/certificate"' in page.text  # on the sender's card
    assert ('role="alert"' in page.text) == (expected != "valid")  # the warning, only when due


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_client_message_through_relay_web_and_api(world: World, case: Case, request: pytest.FixtureRequest) -> None:
    tool = request.getfixturevalue(case.tool)
    marker = case.id
    reply = submit(world, client_message(tool, case, marker), case.to)
    assert reply[0] == 250, reply
    queue = queue_id(reply)
    row = stored(world, queue)
    assert row.kind == case.stored_kind
    if row.kind == "client":
        assert cms_envelope.to_der(row.cms) == row.cms  # stored in DER, whatever the client wrote
    for number, reader in enumerate([*case.to, SENDER]):
        check_read(world, reader, queue, case.signed, marker, download=number == 0)


def test_a_signature_by_someone_other_than_the_sender_is_named_as_such(world: World, openssl: OpenSSL) -> None:
    """RFC 8550 3: the reader's agent compares the sender with the signer's certificate. A
    document the first recipient signed, forwarded by the sender as it is (opaque, which mss
    signs over), or signed detached inside the client's envelope: both hold, and both are
    shown as signed by that recipient, not by the sender, with the warning."""
    author, to = RECIPIENTS[0], RECIPIENTS[1:2]
    opaque = crlf(openssl.sign(content_entity("opaque by another"), author, detached=False))
    detached = crlf(openssl.sign(content_entity("detached by another"), author, detached=True))
    enveloped = pkcs7_mime(_envelope(openssl, detached, [*to, SENDER], "-aes256"), "enveloped-data")
    for marker, entity, kind in (("opaque by another", opaque, "signed"), ("detached by another", enveloped, "client")):
        queue = queue_id(submit(world, mail(SENDER, to, marker, entity), to))
        assert stored(world, queue).kind == kind
        for reader in (*to, SENDER):
            shown = world.api[reader].get(f"/api/v1/messages/{queue}").json()
            assert shown["signature"]["status"] == "other-signer", shown["signature"]
            assert shown["signature"]["signer_address"] == author and marker in shown["body"]
            page = world.browsers[reader].get(f"/messages/{queue}")
            assert 'class="badge sig-other-signer"' in page.text and 'role="alert"' in page.text
            assert f"&lt;{author}&gt;" in page.text


# -- hostile envelopes ---------------------------------------------------------------------


def refused(world: World, raw: bytes, to: list[str]) -> tuple[int, str]:
    """A refusal at DATA, after which the relay still serves; nothing was stored."""
    before = world.stack.counts()
    code, text = submit(world, raw, to)
    assert world.stack.counts() == before
    client = login(world.stack)
    assert client.noop()[0] == 250
    client.quit()
    return code, text.decode()


def _envelope(openssl: OpenSSL, entity: bytes, readers: list[str], *extra: str) -> bytes:
    args = ["openssl", "cms", "-encrypt", "-binary", "-outform", "DER", *extra]
    for who in readers:
        args += ["-recip", str(openssl.home / f"{who}.pem")]
    return run(args, input=entity).stdout


def test_garbage_and_truncated_envelopes_are_refused_for_good(world: World, openssl: OpenSSL) -> None:
    to = RECIPIENTS[:1]
    garbage = mail(SENDER, to, "garbage", pkcs7_mime(b"\x30\x80 this is not CMS at all" * 10, "enveloped-data"))
    code, text = refused(world, garbage, to)
    assert (code, text[:5]) == (554, "5.6.0") and "S/MIME" in text
    not_base64 = mail(SENDER, to, "x", pkcs7_mime(b"", "enveloped-data").replace(b"\r\n\r\n", b"\r\n\r\n%%%%\r\n"))
    assert refused(world, not_base64, to)[0] == 554
    whole = _envelope(openssl, content_entity("t"), [*to, SENDER])
    for cut in (40, len(whole) // 2, len(whole) - 7):
        code, text = refused(world, mail(SENDER, to, "cut", pkcs7_mime(whole[:cut], "enveloped-data")), to)
        assert (code, text[:5]) == (554, "5.6.0"), text
    signed_garbage = mail(SENDER, to, "x", pkcs7_mime(b"\x30\x03\x02\x01\x01", "signed-data"))
    assert refused(world, signed_garbage, to)[0] == 554


def test_envelope_for_someone_else_is_refused(world: World, openssl: OpenSSL) -> None:
    der = _envelope(openssl, content_entity("t"), [RECIPIENTS[1], SENDER])
    code, text = refused(world, mail(SENDER, RECIPIENTS[:1], "x", pkcs7_mime(der, "enveloped-data")), RECIPIENTS[:1])
    assert (code, text) == (554, replies.NOT_ENCRYPTED_FOR_RECIPIENTS[4:])


def _ec_certificate_for(world: World, address: str, tmp: Path) -> Path:
    """An EC certificate with the issuer and serial number of ``address``'s own: what a
    client holds when it encrypts to that recipient by key agreement (ECDH)."""
    ca = pki.load_ca(world.stack.settings)
    rsa_certificate = x509.load_pem_x509_certificate(world.pem[address])
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(rsa_certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(rsa_certificate.serial_number)
        .not_valid_before(rsa_certificate.not_valid_before_utc)
        .not_valid_after(rsa_certificate.not_valid_before_utc + timedelta(days=30))
        .add_extension(x509.KeyUsage(False, False, False, False, True, False, False, False, False), critical=True)
        .sign(ca.private_key, hashes.SHA256())
    )
    path = tmp / "ec.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


def test_unknown_algorithms_and_key_agreement_are_refused_by_name(
    world: World, openssl: OpenSSL, tmp_path: Path
) -> None:
    to = RECIPIENTS[:1]
    cases = {
        "Camellia-128-CBC": ["-camellia128"],
        "md5": [
            "-aes128",
            "-recip",
            str(openssl.home / f"{to[0]}.pem"),
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:md5",
        ],
        "key agreement": ["-aes128", "-recip", str(_ec_certificate_for(world, to[0], tmp_path))],
    }
    for name, extra in cases.items():
        readers = [SENDER] if "-recip" in extra else [*to, SENDER]
        der = _envelope(openssl, content_entity("t"), readers, *extra)
        code, text = refused(world, mail(SENDER, to, "x", pkcs7_mime(der, "enveloped-data")), to)
        assert (code, text[:5]) == (554, "5.7.4") and name in text, text


def _nested(openssl: OpenSSL, depth: int, operation: list[str]) -> bytes:
    """``depth`` layers of bare DER CMS (a SignedData or an envelope holding the next one),
    the innermost holding the letter: size grows by a certificate per layer, not by base64."""
    data = content_entity("deep")
    for _ in range(depth):
        data = run(["openssl", "cms", *operation, "-binary", "-outform", "DER"], input=data).stdout
    return data


def test_nesting_fifty_deep(world: World, openssl: OpenSSL) -> None:
    to = RECIPIENTS[:1]
    home = openssl.home
    sign = [
        "-sign",
        "-nodetach",
        "-md",
        "sha256",
        "-signer",
        str(home / f"{SENDER}.pem"),
        "-inkey",
        str(home / f"{SENDER}.key"),
    ]
    encrypt = ["-encrypt", "-aes128", "-recip", str(home / f"{to[0]}.pem"), "-recip", str(home / f"{SENDER}.pem")]
    deep = pkcs7_mime(_nested(openssl, 50, sign), "signed-data")
    # Signed only: the relay walks the layers to check the documents, and stops.
    code, text = refused(world, mail(SENDER, to, "deep", deep), to)
    assert (code, text[:5]) == (554, "5.6.0") and "nested" in text
    # Encrypted, the layers cannot be seen at submission; the reader is told, not shown.
    sealed = openssl.encrypt(deep, [*to, SENDER], cipher="aes128")
    envelopes = pkcs7_mime(_nested(openssl, 50, encrypt), "enveloped-data")
    for raw in (mail(SENDER, to, "deep", sealed), mail(SENDER, to, "deep", envelopes)):
        queue = queue_id(submit(world, raw, to))
        api = world.api[to[0]].get(f"/api/v1/messages/{queue}")
        assert api.status_code == 200
        signature = api.json()["signature"]
        assert signature["status"] == "unverifiable" and "nested" in signature["reason"]
        assert "deep" not in api.json()["body"]
        page = world.browsers[to[0]].get(f"/messages/{queue}")
        assert page.status_code == 200 and 'role="alert"' in page.text


def test_altered_or_malformed_content_is_shown_as_such(world: World, openssl: OpenSSL) -> None:
    to = RECIPIENTS[:1]
    der = bytearray(_envelope(openssl, content_entity("altered"), [*to, SENDER], "-aes128"))
    # The last byte of the next-to-last CBC block: the padding can no longer be valid.
    der[-17] ^= 0xFF
    queue = queue_id(submit(world, mail(SENDER, to, "altered", pkcs7_mime(bytes(der), "enveloped-data")), to))
    api = world.api[to[0]].get(f"/api/v1/messages/{queue}")
    assert api.status_code == 422 and api.json()["error"] == "undecryptable"
    assert world.browsers[to[0]].get(f"/messages/{queue}").status_code == 422
    # An envelope holding garbage where a signature should be.
    inner = pkcs7_mime(b"\x30\x80garbage" * 8, "signed-data")
    der = _envelope(openssl, inner, [*to, SENDER], "-aes128")
    queue = queue_id(submit(world, mail(SENDER, to, "garbage inside", pkcs7_mime(der, "enveloped-data")), to))
    api = world.api[to[0]].get(f"/api/v1/messages/{queue}")
    assert api.status_code == 200 and api.json()["signature"]["status"] == "invalid"
    assert world.browsers[to[0]].get(f"/messages/{queue}").status_code == 200
    # A detached signature over other content than the part it stands beside.
    entity = content_entity("tampered")
    signed = openssl.sign(entity, SENDER, detached=True).replace(b"(tampered)", b"(t4mpered)")
    der = _envelope(openssl, crlf(signed), [*to, SENDER], "-aes128")
    queue = queue_id(submit(world, mail(SENDER, to, "tampered", pkcs7_mime(der, "enveloped-data")), to))
    shown = world.api[to[0]].get(f"/api/v1/messages/{queue}").json()
    assert shown["signature"]["status"] == "invalid" and "altered" in shown["signature"]["reason"]
    page = world.browsers[to[0]].get(f"/messages/{queue}")
    assert 'class="badge sig-invalid"' in page.text and 'role="alert"' in page.text


def test_bare_cr_in_a_signed_message_is_refused_for_good(world: World) -> None:
    to = RECIPIENTS[:1]
    raw = mail(SENDER, to, "cr", content_entity("cr").replace(b"Bonjour,", b"Bon\rjour,"))
    before = world.stack.counts()
    client = login(world.stack)
    try:
        client.mail(SENDER)
        client.rcpt(to[0])
        # smtplib's data() would turn the bare CR into CRLF; a client that does not is the case here.
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(raw + b"\r\n.\r\n")
        code, text = client.getreply()
        assert client.noop()[0] == 250
    finally:
        client.quit()
    assert code == 554 and text.startswith(b"5.6.0") and b"bare CR" in text
    assert world.stack.counts() == before


# -- what mss stores, exports and serves, read by the three tools -----------------------------


def test_stored_and_exported_messages_open_and_verify_in_three_tools(
    world: World, openssl: OpenSSL, gpgsm: GpgSm, nss: Nss, tmp_path: Path
) -> None:
    reader = RECIPIENTS[0]
    raw = mail(SENDER, [reader], "stored", content_entity("stored"))
    row = stored(world, queue_id(submit(world, raw, [reader])))
    assert row.kind == "signed"
    # The envelope as stored (DER): opened, then the signed-data entity inside verified.
    inner = openssl.decrypt(row.cms, reader)
    assert b"(stored)" in openssl.verify(inner)
    inner_gpg = gpgsm.decrypt(row.cms, reader)
    assert gpgsm.verify(der_of(inner_gpg))
    inner_nss, report = nss.decode(row.cms)
    assert "type=envelopedData" in report
    content, report = nss.decode(der_of(inner_nss))
    assert "signer0.status=GoodSignature" in report and b"(stored)" in content
    # The export for the reader's own mail client (`mss message export`).
    out = tmp_path / "export.eml"
    result = CliRunner().invoke(
        cli_app, ["message", "export", row.queue_id, "--for", reader, "--out", str(out)], env=world.stack.env
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    exported = der_of(out.read_bytes())
    assert b"(stored)" in openssl.verify(openssl.decrypt(exported, reader))
    assert gpgsm.verify(der_of(gpgsm.decrypt(exported, reader)))
    assert "signer0.status=GoodSignature" in nss.decode(der_of(nss.decode(exported)[0]))[1]


def test_receipts_open_and_verify_in_three_tools(world: World, openssl: OpenSSL, gpgsm: GpgSm, nss: Nss) -> None:
    """A receipt (here the ``processed`` MDN the sender asked for) is signed with the
    operator's certificate, ECDSA P-256 by default, and encrypted to the sender: their client
    opens it and finds the signature good, whichever of the three it is."""
    reader = RECIPIENTS[0]
    asked = f"Disposition-Notification-To: {SENDER}\r\n".encode()
    queue = queue_id(submit(world, asked + mail(SENDER, [reader], "receipt", content_entity("receipt")), [reader]))
    with session_scope(world.stack.rt.engine) as session:
        message = session.execute(select(Message).where(Message.queue_id == queue)).scalar_one()
        receipt = session.execute(select(Receipt).where(Receipt.message_id == message.id)).scalar_one()
        cms = session.get(Message, receipt.notification_id).cms
        operator = session.execute(select(Certificate).where(Certificate.usage == "operator")).scalar_one()
    operator_certificate = x509.load_der_x509_certificate(operator.der)
    assert receipt.kind == "mdn" and isinstance(operator_certificate.public_key(), ec.EllipticCurvePublicKey)
    assert b"; processed\r\n" in openssl.verify(openssl.decrypt(cms, SENDER))
    signer = gpgsm.verify(der_of(gpgsm.decrypt(cms, SENDER)))
    assert signer == operator_certificate.fingerprint(hashes.SHA1()).hex().upper()
    content, report = nss.decode(der_of(nss.decode(cms)[0]))
    assert "signer0.status=GoodSignature" in report and b"processed" in content


def test_served_certificates_load_into_three_tools(world: World, tmp_path: Path) -> None:
    require("openssl", "gpgsm", "certutil")
    address = RECIPIENTS[1]
    pem, der = world.pem[address], world.der[address]
    assert x509.load_pem_x509_certificate(pem) == x509.load_der_x509_certificate(der)
    printed = run(["openssl", "x509", "-noout", "-email", "-fingerprint", "-sha256"], input=pem).stdout.decode()
    served = world.api[SENDER].get(f"/api/v1/directory/{address}/certificate").json()
    assert address in printed and served["fingerprint_sha256"] in printed
    from_web = world.browsers[SENDER].get(f"/directory/{address}/certificate.der")
    assert from_web.content == der and from_web.headers["content-type"] == "application/pkix-cert"
    page = world.browsers[SENDER].get(f"/directory/{address}/certificate")
    assert page.status_code == 200 and served["fingerprint_sha256"] in page.text and served["serial"] in page.text
    # The page's own links, with the address percent-encoded.
    links = re.findall(r'href="(/directory/[^"]+/certificate\.(?:pem|der))"', page.text)
    assert len(links) == 2 and "%40" in links[0]
    assert [world.browsers[SENDER].get(link).content for link in links] == [pem, der]
    gpg = GpgSm(_ca_pem(world))
    try:
        gpg.add_certificate(address, der)
        listed = run(["gpgsm", "--list-keys", address], env=gpg.env).stdout.decode()
        assert address in listed
    finally:
        gpg.close()
    db = Nss(tmp_path / "nss", _ca_pem(world))
    db.add_certificate(address, der)
    checked = run(["certutil", "-V", "-d", db.db, "-n", address, "-u", "R"]).stdout.decode()
    assert "certificate is valid" in checked


def test_certificate_views_need_a_login_and_an_active_entry(world: World) -> None:
    with _https(world.web, world.stack) as anonymous:
        for path in (f"/directory/{SENDER}/certificate", f"/directory/{SENDER}/certificate.pem"):
            assert anonymous.get(path, follow_redirects=False).status_code == 303
        assert anonymous.get(f"/api/v1/directory/{SENDER}/certificate").status_code == 401
    browser, api = world.browsers[SENDER], world.api[SENDER]
    for address in (REVOKED, UNKNOWN, NO_ACCOUNT, "not an address", "operator"):
        assert browser.get(f"/directory/{address}/certificate").status_code == 404
        assert browser.get(f"/directory/{address}/certificate.der").status_code == 404
        answer = api.get(f"/api/v1/directory/{address}/certificate")
        assert answer.status_code == 404 and answer.json()["error"] == "not-found"


# -- PKCS#12 -------------------------------------------------------------------------------


def test_pkcs12_exports_import_into_three_tools(world: World, tmp_path: Path) -> None:
    env = world.stack.env
    runner = CliRunner()
    files = {}
    for profile, flags in ((keys.PKCS12_STRONG, []), (keys.PKCS12_COMPATIBLE, ["--compatible"])):
        out = tmp_path / f"{profile}.p12"
        result = runner.invoke(
            cli_app,
            ["account", "export-key", SENDER, "--out", str(out), "--password-stdin", *flags],
            input=f"{world.stack.passwords[SENDER]}\n{EXPORT_PASSWORD}\n",
            env=env,
        )
        assert result.exit_code == 0, result.stdout + result.stderr
        files[profile] = out.read_bytes()
    issued = tmp_path / "issued.p12"
    result = runner.invoke(
        cli_app,
        ["pki", "issue", NO_ACCOUNT, "--out", str(issued), "--password-stdin", "--compatible"],
        input=f"{EXPORT_PASSWORD}\n",
        env=env,
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    for profile, blob in files.items():
        OpenSSL(tmp_path / f"openssl-{profile}", _ca_pem(world)).import_pkcs12(SENDER, blob, EXPORT_PASSWORD)
        Nss(tmp_path / f"nss-{profile}", _ca_pem(world)).import_pkcs12(SENDER, blob, EXPORT_PASSWORD)
    gpg = GpgSm(_ca_pem(world))
    try:
        gpg.import_pkcs12(SENDER, files[keys.PKCS12_COMPATIBLE], EXPORT_PASSWORD)
        gpg.import_pkcs12(NO_ACCOUNT, issued.read_bytes(), EXPORT_PASSWORD)
    finally:
        gpg.close()
    # A password gpgsm 2.2 could not read is refused with the reason, not written.
    too_long = runner.invoke(
        cli_app,
        ["account", "export-key", SENDER, "--out", str(tmp_path / "x.p12"), "--password-stdin", "--compatible"],
        input=f"{world.stack.passwords[SENDER]}\n{'a much longer export passphrase than 31'}\n",
        env=env,
    )
    assert too_long.exit_code == 1 and "at most 31 characters" in too_long.stderr
    assert not (tmp_path / "x.p12").exists()


def test_exported_key_decrypts_what_a_client_sent(world: World, openssl: OpenSSL) -> None:
    """The recipient's own client (key from the PKCS#12 export) opens a message another
    client encrypted to it, exactly as the relay passed it through."""
    reader = RECIPIENTS[0]
    raw = mail(SENDER, [reader], "through", openssl.encrypt(content_entity("through"), [reader, SENDER]))
    row = stored(world, queue_id(submit(world, raw, [reader])))
    opened = openssl.decrypt(row.cms, reader)
    assert (
        b"(through)" in email.message_from_bytes(opened, policy=email.policy.default).get_body().get_content().encode()
    )
