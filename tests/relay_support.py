"""Helpers for the relay tests: a whole service in a tmp folder, TLS clients, test messages.

``build_stack`` makes what an operator would have after ``mss pki init``, a directory import
and a few ``mss account create``: a development PKI, the sample directory extract, accounts
with known passwords, one revoked entry, and a migrated database (SQLite or PostgreSQL as
``MSS_TEST_BACKEND`` says). ``running_stack`` also runs the real relay on a free loopback
port; test modules wrap it in a module-scoped fixture.
"""

from __future__ import annotations

import io
import secrets
import select as select_module
import smtplib
import ssl
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from directory import service
from mss import accounts
from mss.db import session_scope
from mss.documents import DocumentLimits, build_xdm, parse_cda
from mss.models import MailboxItem, Message
from mss.relay import RelayServer
from mss.runtime import Runtime

from document_samples import LETTER, pdf_bytes
from installation import Installation, install

CDA_SAMPLE = LETTER

SENDER = "marc.robert@chu-demo.mss.test"
RECIPIENTS = ("cedric.petit@chu-demo.mss.test", "joel.michel@medecin.mss.test")
LOCKOUT_ACCOUNT = "chloe.ndiaye@pharmacie.mss.test"  # only the lockout test logs in as this one
ACCOUNTS = (SENDER, *RECIPIENTS, LOCKOUT_ACCOUNT)
REVOKED = "noel.richard@chu-demo.mss.test"
NO_ACCOUNT = "zoe.leroy@infirmier.mss.test"  # active in the directory, never issued a certificate
UNKNOWN = "nobody.here@chu-demo.mss.test"
FOREIGN = "someone@example.org"
MAX_LOGIN_FAILURES = 3
MAX_RECIPIENTS = 4
MAX_MESSAGE_SIZE = 2_000_000


@dataclass
class Stack(Installation):
    """An installation with accounts of known passwords, and its relay once started."""

    passwords: dict[str, str] = field(default_factory=dict)
    relay: RelayServer | None = None
    extra: list[Runtime] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.relay is not None
        return self.relay.port

    def counts(self) -> tuple[int, int]:
        """Rows in ``message`` and ``mailbox_item``."""
        with session_scope(self.rt.engine) as session:
            messages = session.execute(select(func.count()).select_from(Message)).scalar_one()
            items = session.execute(select(func.count()).select_from(MailboxItem)).scalar_one()
        return messages, items

    def runtime(self, **relay_changes: object) -> Runtime:
        """The same database and keys with other relay settings (a second relay)."""
        settings = self.settings.with_changes(relay=replace(self.settings.relay, **relay_changes))
        return Runtime(settings=settings, engine=self.rt.engine, master_key=self.rt.master_key)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        super().close()


def build_stack(root: Path, **env_overrides: str) -> Stack:
    """PKI, directory, accounts and a revoked entry in ``root``; the relay is not started."""
    relay_env = {
        "MSS_MAX_LOGIN_FAILURES": str(MAX_LOGIN_FAILURES),
        "MSS_MAX_RECIPIENTS": str(MAX_RECIPIENTS),
        "MSS_MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE),
        "MSS_SMTP_PORT": "0",
    }
    stack = install(Stack, root, {**relay_env, **env_overrides})
    stack.passwords.update({address: "pw-" + secrets.token_urlsafe(12) for address in ACCOUNTS})
    with session_scope(stack.rt.engine) as session:
        for address, password in stack.passwords.items():
            accounts.create_account(session, stack.settings, stack.rt.master_key, address, password, actor="test")
    with session_scope(stack.rt.engine) as session:
        service.revoke_entry(session, REVOKED, reason="left the practice", actor="test")
    return stack


def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with the relay running on 127.0.0.1, stopped and removed after the yield."""
    stack = build_stack(tmp_path_factory.mktemp("relay"))
    stack.relay = RelayServer(stack.rt).start()
    try:
        yield stack
    finally:
        stack.close()


# -- clients -----------------------------------------------------------------------------


def connect(
    stack: Stack, *, port: int | None = None, context: ssl.SSLContext | None = None, source: str | None = None
) -> smtplib.SMTP:
    """An smtplib client after EHLO, STARTTLS (trusting the dev CA) and EHLO again.

    ``source`` is the loopback address the client connects from (127.0.0.2 is another
    client than 127.0.0.1 to the relay).
    """
    client = smtplib.SMTP("127.0.0.1", port or stack.port, timeout=30, source_address=(source, 0) if source else None)
    client.ehlo("client.test")
    client.starttls(context=context or stack.client_context())
    client.ehlo("client.test")
    return client


def login(stack: Stack, address: str = SENDER, *, port: int | None = None, source: str | None = None) -> smtplib.SMTP:
    """A client authenticated as ``address`` with AUTH PLAIN."""
    client = connect(stack, port=port, source=source)
    client.login(address, stack.passwords[address])
    return client


def transaction(
    client: smtplib.SMTP, sender: str, recipients: tuple[str, ...] | list[str], message: bytes, *, mail_options=()
) -> list[tuple[int, bytes]]:
    """MAIL, each RCPT and DATA (if any recipient was accepted); every reply in order."""
    replies = [client.mail(sender, list(mail_options))]
    if replies[0][0] != 250:
        return replies
    accepted = 0
    for rcpt in recipients:
        replies.append(client.rcpt(rcpt))
        accepted += replies[-1][0] == 250
    if accepted:
        replies.append(client.data(message))
    return replies


def answered_within(client: smtplib.SMTP, seconds: float) -> bool:
    """Whether the server has written to ``client`` (after STARTTLS) within ``seconds``;
    nothing is read."""
    assert isinstance(client.sock, ssl.SSLSocket)
    return client.sock.pending() > 0 or bool(select_module.select([client.sock], [], [], seconds)[0])


def code_of(reply: str) -> tuple[int, bytes]:
    """A named reply as smtplib returns it: (code, the text after the code)."""
    return int(reply[:3]), reply[4:].encode()


def still_serving(stack: Stack, before: tuple[int, int]) -> None:
    """Nothing was stored since ``before``, and a new client can log in."""
    assert stack.counts() == before
    client = login(stack)
    assert client.noop()[0] == 250
    client.quit()


def queue_id(reply: tuple[int, bytes]) -> str:
    """The queue id in a ``250 2.0.0 Ok: queued as <id>`` reply."""
    code, text = reply
    assert code == 250, reply
    return text.decode().rsplit(" ", 1)[1]


# -- documents and messages --------------------------------------------------------------


def cda_bytes() -> bytes:
    """An ANS CI-SIS example CDA R2 document (lettre de liaison de sortie)."""
    return CDA_SAMPLE.read_bytes()


def xdm_bytes() -> bytes:
    """An IHE_XDM.ZIP wrapping the example CDA."""
    data = cda_bytes()
    info = parse_cda(data, filename=CDA_SAMPLE.name, limits=DocumentLimits())
    return build_xdm([(CDA_SAMPLE.name, data, info)], author=info.authors[0], patient=info.patient)


def zip_bomb_xdm() -> bytes:
    """An archive named IHE_XDM.ZIP whose document inflates 1000 times (50 MB of zeros)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.TXT", "IHE XDM\r\n")
        archive.writestr("IHE_XDM/SUBSET01/METADATA.XML", "<x/>")
        archive.writestr("IHE_XDM/SUBSET01/DOC0001.XML", b"\0" * 50_000_000)
    return out.getvalue()


def xxe_cda() -> bytes:
    """A CDA that tries to read a local file through an external entity."""
    return (
        b'<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b'<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&xxe;</title></ClinicalDocument>\n'
    )


def billion_laughs_cda() -> bytes:
    """A CDA with nested entity expansion (the "billion laughs")."""
    entities = ['<!ENTITY lol0 "lol">'] + [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE ClinicalDocument [' + "".join(entities) + "]>\n"
        '<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>\n'
    ).encode()


def message(
    sender: str,
    recipients: tuple[str, ...] | list[str],
    attachments: list[tuple[str, str, bytes]] = (),
    *,
    subject: str = "Lettre de liaison",
    body: str = "Bonjour,\nveuillez trouver ci-joint la lettre de liaison.\n",
    from_header: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """An RFC 5322 message (CRLF line ends, as on the wire) with a text body and attachments
    ``(filename, type, bytes)``."""
    msg = EmailMessage()
    msg["From"] = from_header or sender
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid(domain="client.test")
    msg.set_content(body)
    for filename, content_type, data in attachments:
        maintype, subtype = content_type.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def referral(sender: str = SENDER, recipients: tuple[str, ...] = RECIPIENTS) -> bytes:
    """A referral with a PDF, a CDA R2 and an IHE_XDM.ZIP."""
    return message(
        sender,
        recipients,
        [
            ("courrier.pdf", "application/pdf", pdf_bytes()),
            (CDA_SAMPLE.name, "text/xml", cda_bytes()),
            ("IHE_XDM.ZIP", "application/zip", xdm_bytes()),
        ],
    )
