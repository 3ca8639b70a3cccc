"""Helpers for the IMAP tests: the real IMAP server on loopback, TLS clients that trust the
development CA, and mail from the sample documents.

Nothing here stands in for mss code: the server is ``mss.imap.server.ImapServer``, messages go
through ``mss.pipeline.submit`` (as the relay hands them over), the clients are Python's
``imaplib``, ``imapclient`` and, in ``test_imap_clients``, mbsync and offlineimap.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import ssl
from dataclasses import replace

from mss.crypto.pki import PkiPaths
from mss.runtime import Runtime

from web_support import CDA_SAMPLE, Person, pdf_bytes, submit


def ca_file(rt: Runtime) -> str:
    return str(PkiPaths.from_settings(rt.settings).ca_certificate)


def client_context(rt: Runtime) -> ssl.SSLContext:
    """A client context that trusts the development CA and checks the host name."""
    return ssl.create_default_context(cafile=ca_file(rt))


def connect(rt: Runtime, port: int) -> imaplib.IMAP4:
    """imaplib on the STARTTLS port, after STARTTLS."""
    client = imaplib.IMAP4("localhost", port, timeout=30)
    client.starttls(ssl_context=client_context(rt))
    return client


def login(rt: Runtime, port: int, person: Person) -> imaplib.IMAP4:
    client = connect(rt, port)
    client.login(person.address, person.password)
    return client


def with_imap(rt: Runtime, **changes: object) -> Runtime:
    """The same database and keys with other IMAP settings (short timeouts ...)."""
    settings = rt.settings.with_changes(imap=replace(rt.settings.imap, **changes))
    return Runtime(settings=settings, engine=rt.engine, master_key=rt.master_key)


def xdm_bytes() -> bytes:
    """An IHE_XDM.ZIP wrapping the sample CDA (built by mss.documents)."""
    from mss.documents import DocumentLimits, build_xdm, parse_cda

    data = CDA_SAMPLE.read_bytes()
    info = parse_cda(data, filename=CDA_SAMPLE.name, limits=DocumentLimits())
    return build_xdm([(CDA_SAMPLE.name, data, info)], author=info.authors[0], patient=info.patient)


def clinical_mail(rt: Runtime, sender: Person, to: Person, **options: object) -> list[str]:
    """Three messages from ``sender`` to ``to``: a PDF, a CDA R2 and an IHE_XDM.ZIP; their queue ids."""
    sent = [
        submit(
            rt,
            sender,
            [to.address],
            "Compte rendu",
            "Bonjour,\nle compte rendu.\n",
            [("compte-rendu.pdf", "application/pdf", pdf_bytes("CR"))],
            **options,
        ),
        submit(
            rt,
            sender,
            [to.address],
            "Lettre de liaison",
            "Bonjour,\nla lettre.\n",
            [(CDA_SAMPLE.name, "text/xml", CDA_SAMPLE.read_bytes())],
            **options,
        ),
        submit(
            rt,
            sender,
            [to.address],
            "Dossier XDM",
            "Bonjour,\nle dossier.\n",
            [("IHE_XDM.ZIP", "application/zip", xdm_bytes())],
            **options,
        ),
    ]
    return [accepted.queue_id for accepted in sent]


def documents_of(entity: bytes) -> dict[str, bytes]:
    """Attachments of a MIME message, by file name, with their decoded bytes."""
    parsed = email.message_from_bytes(entity, policy=email.policy.default)
    return {
        part.get_filename(): part.get_payload(decode=True)
        for part in parsed.walk()
        if not part.is_multipart() and part.get_filename()
    }
