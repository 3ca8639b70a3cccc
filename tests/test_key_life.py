"""Key life seen from outside: the CRL distribution point that OpenSSL follows on its own,
fail-closed signature checks, the TLS names, files at rest, and the ``mss`` commands.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import stat
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from directory import certificates
from mss import accounts
from mss.crypto import pki, smime, verify
from mss.crypto.pki import PkiPaths
from mss.db import session_scope, utcnow
from mss.health import startup_warnings
from mss.runtime import Runtime, open_runtime
from mss.settings import Settings
from mss.web.server import serve_publication

from conftest import test_env as environment_for
from relay_support import RECIPIENTS, SENDER, build_stack
from task_thread import TaskThread


class Publication(TaskThread):
    """``serve_publication`` (the CRL over plain HTTP) in a thread, on the socket given."""

    def __init__(self, rt: Runtime, sock: socket.socket) -> None:
        super().__init__(lambda ready: serve_publication(rt, sock=sock, started=ready), name="publication")
        self.sock = sock

    def stop(self) -> None:
        super().stop()
        self.sock.close()


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=120)


def test_openssl_follows_the_crl_distribution_point(tmp_path: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stack = build_stack(tmp_path, MSS_CRL_URL=f"http://127.0.0.1:{port}/pki/ca.crl", MSS_PKI_HTTP_PORT=str(port))
    try:
        with session_scope(stack.rt.engine) as session:
            row = certificates.certificate_row(session, SENDER)
        assert row is not None
        certificate = x509.load_der_x509_certificate(row.der)
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
        assert [name.value for point in points for name in point.full_name] == [stack.settings.pki.crl_url]
        leaf = tmp_path / "leaf.pem"
        leaf.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        # Only the CA certificate is given: openssl downloads the CRL from the URL in the leaf.
        check = ("verify", "-crl_check", "-crl_download", "-CAfile", str(stack.ca_file), str(leaf))
        with Publication(stack.rt, sock):
            done = openssl(*check)
            assert done.returncode == 0 and "OK" in done.stdout, done.stdout + done.stderr
            with session_scope(stack.rt.engine) as session:
                certificates.revoke_for_address(session, stack.settings, SENDER, reason="keyCompromise", actor="test")
            done = openssl(*check)
            assert done.returncode != 0 and "certificate revoked" in (done.stdout + done.stderr)
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{port}/pki/ca.crt", timeout=10) as response:
                assert response.headers["Content-Type"] == "application/pkix-cert"
                assert x509.load_der_x509_certificate(response.read()) == pki.load_ca_certificate(stack.settings)
    finally:
        stack.close()


def _signed(ca: pki.CertificateAuthority) -> tuple[bytes, x509.Certificate]:
    key, certificate = pki.issue_smime_certificate(
        ca, address="a@mss.test", rpps_national_id=None, common_name="A", key_bits=2048
    )
    assert key is not None
    return smime.sign(b"Content-Type: text/plain\r\n\r\nbonjour\r\n", certificate, key), certificate


def test_signatures_fail_closed_without_a_usable_crl() -> None:
    ca = pki.new_certificate_authority(common_name="test CA", organisation="mss")
    other = pki.new_certificate_authority(common_name="test CA", organisation="mss")  # same name, other key
    signed, _certificate = _signed(ca)
    fresh = pki.build_crl(ca, [], next_update_days=7)
    report = verify.verify_signed_data(signed, trust_roots=[ca.certificate], crls=[fresh])
    assert report.status == verify.VALID
    cases = {
        "missing": ([], "no revocation list"),
        "badly signed": ([pki.build_crl(other, [], next_update_days=7)], "not correctly signed"),
    }
    for name, (crls, reason) in cases.items():
        report = verify.verify_signed_data(signed, trust_roots=[ca.certificate], crls=crls)
        assert report.status == verify.UNTRUSTED and reason in report.reason, name
    # Stale: validated a fortnight later, the week-long list is past its next update.
    later = utcnow() + timedelta(days=14)
    report = verify.verify_signed_data(signed, trust_roots=[ca.certificate], crls=[fresh], moment=later)
    assert report.status in {verify.UNTRUSTED, verify.EXPIRED}
    assert report.status == verify.EXPIRED or "out of date" in report.reason


def test_a_badly_signed_crl_on_disk_makes_mail_untrusted(tmp_path: Path) -> None:
    stack = build_stack(tmp_path)
    try:
        from mss import mailbox, pipeline

        from web_support import build_message

        sender = accounts.authenticate(
            stack.rt.engine, stack.settings, SENDER, stack.passwords[SENDER], accounts.Origin("cli")
        )
        raw = build_message(SENDER, [RECIPIENTS[0]], "crl", "texte")
        accepted = pipeline.submit(
            stack.rt,
            pipeline.Submission(
                sender=sender, recipients=(pipeline.RecipientRequest(RECIPIENTS[0]),), raw=raw, channel="smtp"
            ),
        )
        reader = accounts.authenticate(
            stack.rt.engine, stack.settings, RECIPIENTS[0], stack.passwords[RECIPIENTS[0]], accounts.Origin("cli")
        )
        assert mailbox.open_message(stack.rt, reader, accepted.queue_id).signature.status == "valid"
        forged = pki.build_crl(pki.new_certificate_authority(common_name="x", organisation="y"), [], next_update_days=7)
        ca_name = pki.load_ca_certificate(stack.settings).subject
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_name)
            .last_update(utcnow() - timedelta(minutes=5))
            .next_update(utcnow() + timedelta(days=7))
        )
        wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        bad = builder.sign(wrong_key, hashes.SHA256())
        assert forged is not None
        PkiPaths.from_settings(stack.settings).crl.write_bytes(bad.public_bytes(serialization.Encoding.PEM))
        signature = mailbox.open_message(stack.rt, reader, accepted.queue_id).signature
        assert signature.status == "untrusted" and "not correctly signed" in signature.reason
    finally:
        stack.close()


def test_tls_certificate_covers_the_loopback_address(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "MSS_DATA_DIR": str(tmp_path / "data"),
            "MSS_CERTS_DIR": str(tmp_path / "certs"),
            "MSS_RECOVERY_KEY_OUT": str(tmp_path / "offline" / "recovery.key"),
        }
    )
    assert settings.pki.hostnames == ("localhost", "127.0.0.1")
    dev = pki.init_dev_pki(settings)
    context = ssl.create_default_context(cafile=str(dev.paths.ca_certificate))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(dev.paths.tls_certificate, dev.paths.tls_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True):
                pass
        except ssl.SSLError:
            pass

    for name in ("127.0.0.1", "localhost"):
        thread = threading.Thread(target=accept)
        thread.start()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        thread.join(10)
    listener.close()


def test_an_init_stopped_between_the_recovery_files_is_completed_not_redone(mss, env) -> None:
    """The recovery public key missing beside its private key (an earlier run stopped
    between the two): `mss pki init --if-missing` writes the public key of that private key,
    never a new pair over one that may hold escrows; with nothing missing it says nothing."""
    settings = Settings.from_env(env)
    public, private = settings.pki.recovery_public_key, settings.pki.recovery_private_key_out
    kept, escrow_to = private.read_bytes(), public.read_bytes()
    public.unlink()
    paths = pki.PkiPaths.from_settings(settings)
    tls, crl = paths.tls_certificate, paths.crl
    installed = tls.read_bytes()
    crl.unlink()
    mss("pki", "init", "--if-missing")
    assert private.read_bytes() == kept and public.read_bytes() == escrow_to
    assert mss("pki", "init", "--if-missing").stdout == ""
    # Nothing else of a PKI that exists is made again; the CRL is the next check's to publish.
    assert tls.read_bytes() == installed and not crl.exists()


def test_a_crl_made_again_under_the_same_ca_lists_the_revocations(mss, env) -> None:
    """`mss pki init` makes a missing CRL again: from the directory's revocations, not empty."""
    mss("directory", "add", "--address", "dr.a@mss.test", "--rpps", "10009999998", "--last-name", "A")
    mss("account", "create", "dr.a@mss.test", "--password-stdin", input=PASSPHRASE * 2)
    revoked = mss("pki", "revoke", "dr.a@mss.test", "--reason", "keyCompromise").stdout
    serial = int(re.search(r"revoked certificate ([0-9a-f]+)", revoked).group(1), 16)
    crl = pki.PkiPaths.from_settings(Settings.from_env(env)).crl
    crl.unlink()
    assert "CRL published again: 1 revoked certificate(s)" in mss("pki", "init").stdout
    listed = x509.load_pem_x509_crl(crl.read_bytes())
    assert listed.get_revoked_certificate_by_serial_number(serial) is not None


def test_files_at_rest_are_private(tmp_path: Path) -> None:
    env = environment_for(tmp_path, f"sqlite:///{tmp_path / 'data' / 'mss.db'}")
    settings = Settings.from_env(env)
    pki.init_dev_pki(settings)
    rt = open_runtime(settings)
    try:
        with session_scope(rt.engine) as session:
            certificates.operator_identity(session, settings, rt.master_key)  # a write: the WAL exists
        data = settings.storage.data_dir
        assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
        for name in ("mss.db", "mss.db-wal", "mss.db-shm", "master.key"):
            assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
        # The recovery private key is not beside the master key, and the service says where it is.
        assert not (data / "recovery.key").exists()
        assert settings.pki.recovery_private_key_out.exists()
        assert any("move it offline" in w for w in startup_warnings(rt))
    finally:
        rt.close()
    # A data folder made readable by others is narrowed again at the next start.
    os.chmod(settings.storage.data_dir, 0o755)
    os.chmod(settings.storage.data_dir / "mss.db", 0o644)
    open_runtime(settings).close()
    assert stat.S_IMODE(os.stat(settings.storage.data_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(settings.storage.data_dir / "mss.db").st_mode) == 0o600
    with pytest.raises(Exception, match="data folder"):
        Settings.from_env({**env, "MSS_RECOVERY_KEY_OUT": str(settings.storage.data_dir / "recovery.key")})


# -- the mss command -------------------------------------------------------------------------

PASSPHRASE = "a long passphrase!\n"
EXPORT_PASSWORD = "export password 1\n"


def refused(mss, says: str, *args: str, input: str | None = None) -> None:
    """``mss *args`` fails with exit code 1 and ``says`` on stderr."""
    result = mss(*args, input=input, ok=False)
    assert result.exit_code == 1 and says in result.stderr


def test_cli_other_operators_and_identifiers(mss, env) -> None:
    mss("directory", "add", "--address", "x@gmail.com", "--rpps", "10009999998", "--last-name", "X")
    shown = mss("directory", "show", "x@gmail.com").stdout
    assert "another operator (gmail.com)" in shown
    refused(mss, "another operator", "account", "create", "x@gmail.com", "--password-stdin", input=PASSPHRASE * 2)
    never = Path(env["MSS_DATA_DIR"]).parent / "never.p12"
    issue_abroad = ("pki", "issue", "x@gmail.com", "--out", str(never), "--password-stdin")
    refused(mss, "another operator", *issue_abroad, input=EXPORT_PASSWORD * 2)
    assert not never.exists()
    bad_rpps = ("directory", "add", "--address", "y@mss.test", "--rpps", "123", "--last-name", "Y")
    refused(mss, "neither an RPPS number", *bad_rpps)
    mss(
        "directory", "add", "--address", "z@mss.test", "--rpps", "751234567", "--rpps-type", "adeli", "--last-name", "Z"
    )
    assert "rpps: 751234567" in mss("directory", "show", "z@mss.test").stdout
    wrong_type = mss(
        "directory",
        "add",
        "--address",
        "w@mss.test",
        "--rpps",
        "751234567",
        "--rpps-type",
        "9",
        "--last-name",
        "W",
        ok=False,
    )
    assert wrong_type.exit_code != 0


def test_cli_rekey_renew_and_revoke(mss, env) -> None:
    mss("directory", "add", "--address", "dr.a@mss.test", "--rpps", "10009999998", "--last-name", "A")
    mss("account", "create", "dr.a@mss.test", "--password-stdin", input=PASSPHRASE * 2)
    revoked = mss("pki", "revoke", "dr.a@mss.test", "--reason", "keyCompromise").stdout
    assert "can no longer log in or send until it is rekeyed" in revoked
    export = ("account", "export-key", "dr.a@mss.test", "--out")
    never = Path(env["MSS_DATA_DIR"]).parent / "never.p12"
    refused(mss, "revoked", *export, str(never), "--password-stdin", input=PASSPHRASE + EXPORT_PASSWORD * 2)
    assert not never.exists()
    refused(mss, "invalid", "account", "rekey", "dr.a@mss.test", "--password-stdin", input="not the password\n")
    rekey = ("account", "rekey", "dr.a@mss.test", "--reason", "keyCompromise", "--password-stdin")
    assert "new certificate" in mss(*rekey, input=PASSPHRASE).stdout
    out = Path(env["MSS_DATA_DIR"]).parent / "a.p12"
    mss(*export, str(out), "--password-stdin", input=PASSPHRASE + EXPORT_PASSWORD * 2)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    renewal = mss("pki", "renew", "--within", "4000d", ok=False)
    assert renewal.exit_code != 0  # more than ten years is refused with a clear message
    renewal = mss("pki", "renew", "--within", "1200d").stdout
    assert "renewed dr.a@mss.test" in renewal and "1 renewed" in renewal
    bad = mss("pki", "renew", "--within", "soon", ok=False)
    assert bad.exit_code != 0 and "30d" in (bad.stdout + bad.stderr)
    bad = mss("pki", "renew", "--within", "²d", ok=False)  # a digit to str.isdigit, not to int
    assert bad.exit_code != 0 and "30d" in (bad.stdout + bad.stderr)
    for garbled in ("2wd", "2dd", "3ww"):  # one unit, once
        bad = mss("pki", "renew", "--within", garbled, ok=False)
        assert bad.exit_code != 0 and "30d" in (bad.stdout + bad.stderr), garbled
