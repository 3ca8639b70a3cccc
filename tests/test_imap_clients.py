"""Real mail-sync clients from Debian against the IMAP server over TLS on loopback: mbsync
(isync) in decrypted mode and offlineimap in end-to-end mode sync a mailbox of PDF, CDA R2
and IHE_XDM.ZIP messages into local Maildirs. The synced files are the bytes IMAP serves;
the documents in them, once ``openssl cms`` has opened them, are byte-identical to what
the web API serves. Each client runs with its own config in a temp dir, pointing at
127.0.0.1 only."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from imap_support import ca_file, clinical_mail, documents_of, login

from mss.imap.server import ImapServer
from mss.mailbox import served

from conftest import IN_CI
from smime_tools import cms_verified
from web_support import login as web_login


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"{tool} is required under CI=true: run tests/sysdeps.sh")
        pytest.skip(f"{tool} is not installed: run tests/sysdeps.sh")
    return path


def _sync(command: list[str], *, home: Path) -> None:
    """Run a sync client with ``home`` as its HOME; fail the test with its output if it fails."""
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(home)})
    assert run.returncode == 0, run.stdout + run.stderr


def _maildir_files(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.parent.name in {"cur", "new"}]


def _web_documents(clients, person, queue_ids: list[str]) -> dict[str, bytes]:
    """The documents of these messages as the web API serves them."""
    web = clients()
    web_login(web, person)
    response = web.post(
        "/api/v1/sessions", json={"address": person.address, "password": person.password, "code": person.code()}
    )
    auth = {"authorization": f"Bearer {response.json()['token']}"}
    found: dict[str, bytes] = {}
    for queue_id in queue_ids:
        message = web.get(f"/api/v1/messages/{queue_id}", headers=auth).json()
        for attachment in message["attachments"]:
            download = web.get(attachment["url"], headers=auth)
            assert download.status_code == 200
            found[attachment["filename"]] = download.content
    return found


def _fingerprint(rt) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    from mss.crypto.pki import PkiPaths

    certificate = x509.load_pem_x509_certificate(PkiPaths.from_settings(rt.settings).tls_certificate.read_bytes())
    digest = hashes.Hash(hashes.SHA512())
    digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return digest.finalize().hex()


def _server_certificate(rt) -> str:
    from mss.crypto.pki import PkiPaths

    return str(PkiPaths.from_settings(rt.settings).tls_certificate)


def _imap_bodies(rt, port: int, person) -> list[bytes]:
    client = login(rt, port, person)
    client.select("INBOX", readonly=True)
    typ, data = client.fetch("1:*", "(BODY.PEEK[])")
    client.logout()
    return [item[1] for item in data if isinstance(item, tuple)]


def test_mbsync_syncs_the_decrypted_signed_messages(rt, clients, doctor, gp, tmp_path):
    mbsync = _need("mbsync")
    queue_ids = clinical_mail(rt, doctor, gp)
    with ImapServer(rt) as imap:
        config = tmp_path / "mbsyncrc"
        config.write_text(
            f"""IMAPAccount mss
Host 127.0.0.1
Port {imap.tls_port}
User {gp.address}
Pass "{gp.password}"
SSLType IMAPS
SSLVersions TLSv1.2 TLSv1.3
# mbsync matches host names, not IP addresses: the server's certificate itself is trusted
# (a directly matched peer certificate), so the client still talks to 127.0.0.1 only.
CertificateFile {_server_certificate(rt)}

IMAPStore remote
Account mss

MaildirStore local
Path {tmp_path}/mail/
Inbox {tmp_path}/mail/INBOX

Channel mss
Far :remote:
Near :local:
Patterns INBOX Sent Archive
Create Near
Sync Pull
SyncState *
"""
        )
        (tmp_path / "mail").mkdir()
        _sync([mbsync, "-c", str(config), "-a"], home=tmp_path)
        synced = _maildir_files(tmp_path / "mail" / "INBOX")
        bodies = _imap_bodies(rt, imap.port, gp)
    # mbsync stores Maildir files with LF line ends (the local convention) and adds its own
    # X-TUID header line while it syncs; every other byte is what IMAP served.
    stripped = [
        b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"X-TUID: ")) for data in synced
    ]
    assert sorted(stripped) == sorted(b.replace(b"\r\n", b"\n") for b in bodies)
    assert len(synced) == 3
    documents: dict[str, bytes] = {}
    for data in synced:
        assert b"\nX-MSS-Signature: valid;" in data.split(b"\n\n", 1)[0]
        # The client checks the signature itself: openssl verifies it against the CA.
        documents.update(documents_of(cms_verified(data, ca_file(rt))))
    assert documents == _web_documents(clients, gp, queue_ids)
    assert len(documents) == 3


def test_offlineimap_syncs_the_end_to_end_envelopes(rt, clients, doctor, gp, tmp_path):
    offlineimap = _need("offlineimap")
    queue_ids = clinical_mail(rt, doctor, gp)
    served.set_mode(rt.engine, gp.address, served.END_TO_END, actor="test")
    with ImapServer(rt) as imap:
        config = tmp_path / "offlineimaprc"
        config.write_text(
            f"""[general]
accounts = mss
metadata = {tmp_path}/meta
ui = quiet

[Account mss]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {tmp_path}/mail

[Repository remote]
type = IMAP
remotehost = 127.0.0.1
remoteport = {imap.tls_port}
remoteuser = {gp.address}
remotepass = {gp.password}
ssl = yes
# offlineimap matches host names, not IP addresses, against the certificate: the server's
# certificate is pinned instead (its SHA-512), so the client still talks to 127.0.0.1 only.
cert_fingerprint = {_fingerprint(rt)}
readonly = True
folderfilter = lambda name: name == 'INBOX'
"""
        )
        _sync([offlineimap, "-c", str(config), "-o"], home=tmp_path)
        synced = _maildir_files(tmp_path / "mail")
        bodies = _imap_bodies(rt, imap.port, gp)
    # offlineimap stores Maildir files with LF line ends (the local convention) and may add
    # its own X-OfflineIMAP header line; every other byte is what IMAP served.
    stripped = [
        b"".join(line for line in data.splitlines(keepends=True) if not line.startswith(b"X-OfflineIMAP"))
        for data in synced
    ]
    assert sorted(stripped) == sorted(b.replace(b"\r\n", b"\n") for b in bodies) and len(synced) == 3

    # The client opens them with the key of `mss account export-key`: openssl decrypts, then verifies.
    from cryptography.hazmat.primitives import serialization

    from mss import accounts
    from mss.crypto import keys

    account = accounts.authenticate(rt.engine, rt.settings, gp.address, gp.password, accounts.Origin("cli"))
    key = keys.private_key_from_der(account.private_key_der, authenticated=True)
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    documents: dict[str, bytes] = {}
    for data in synced:
        inner = subprocess.run(
            ["openssl", "cms", "-decrypt", "-inkey", str(tmp_path / "key.pem")],
            input=data,
            capture_output=True,
            check=True,
        ).stdout
        documents.update(documents_of(cms_verified(inner, ca_file(rt))))
    assert documents == _web_documents(clients, gp, queue_ids)
    assert len(documents) == 3
