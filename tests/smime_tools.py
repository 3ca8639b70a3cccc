"""Three independent S/MIME implementations, driven as mail clients and as readers:
OpenSSL (``openssl cms``), GnuPG (``gpgsm``) and NSS, the library of Thunderbird
(``cmsutil``, ``pk12util``, ``certutil``).

Each lives in a home of its own (key files, a GnuPG home, an NSS database) under a temporary
folder. Nothing here uses mss code: keys arrive as the PKCS#12 files mss exports and
certificates as the files the directory serves, and the MIME around the CMS objects is
written here the way a mail client writes it (RFC 8551 3.3 to 3.5). A tool that is missing
skips the test, or fails it under ``CI=true`` (tests/sysdeps.sh installs them all).
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from email.utils import format_datetime, localtime, make_msgid
from pathlib import Path

import pytest

from conftest import IN_CI

TIMEOUT = 60


def require(*commands: str) -> None:
    """Skip (fail under CI=true) when one of ``commands`` is not installed."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        message = f"{', '.join(missing)} not installed (tests/sysdeps.sh installs them)"
        if IN_CI:
            pytest.fail(message + ": required under CI=true")
        pytest.skip(message)


def run(
    args: list[str], *, input: bytes | None = None, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; with ``ok``, fail the test with its output when it fails."""
    result = subprocess.run(args, input=input, capture_output=True, timeout=TIMEOUT, env=env)
    if ok:
        assert result.returncode == 0, (
            f"{' '.join(args[:3])}... failed: {result.stderr.decode(errors='replace')[-2000:]}"
        )
    return result


def crlf(data: bytes) -> bytes:
    """``data`` with every line ending in CRLF, as a mail client hands MIME to SMTP."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


# -- MIME as clients write it --------------------------------------------------------------


def _base64_lines(der: bytes) -> bytes:
    return crlf(base64.encodebytes(der))


def pkcs7_mime(der: bytes, smime_type: str) -> bytes:
    """An ``application/pkcs7-mime`` entity (RFC 8551 3.3, 3.5.2) holding ``der``."""
    return (
        f'Content-Type: application/pkcs7-mime; smime-type={smime_type}; name="smime.p7m"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
    ).encode() + _base64_lines(der)


def multipart_signed(entity: bytes, signature_der: bytes, micalg: str = "sha-256") -> bytes:
    """A ``multipart/signed`` entity (RFC 8551 3.5.3): ``entity`` exactly as signed, then
    the detached signature."""
    boundary = "----=_Part_" + secrets.token_hex(12)
    return (
        (
            f'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; micalg={micalg};\r\n'
            f' boundary="{boundary}"\r\n\r\n'
            "This is a cryptographically signed message in MIME format.\r\n\r\n"
            f"--{boundary}\r\n"
        ).encode()
        + entity
        + (
            f"\r\n--{boundary}\r\n"
            'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="smime.p7s"\r\n'
            "Content-Description: S/MIME Cryptographic Signature\r\n\r\n"
        ).encode()
        + _base64_lines(signature_der)
        + f"--{boundary}--\r\n".encode()
    )


def mail(sender: str, recipients: list[str], subject: str, entity: bytes) -> bytes:
    """The message a client submits: its header fields, then the (S/MIME) entity."""
    entity = crlf(entity)
    entity = re.sub(rb"\AMIME-Version: 1\.0\r\n", b"", entity)  # openssl writes its own
    head = (
        f"From: {sender}\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
        f"Date: {format_datetime(localtime())}\r\nMessage-ID: {make_msgid(domain='client.test')}\r\n"
        "MIME-Version: 1.0\r\n"
    ).encode()
    return head + entity


def der_of(smime: bytes) -> bytes:
    """The CMS object in the base64 body of an ``application/pkcs7-mime`` entity."""
    body = crlf(smime).split(b"\r\n\r\n", 1)[1]
    return base64.b64decode(b"".join(body.split()))


# -- OpenSSL ------------------------------------------------------------------------------


def cms_verified(signed: bytes, ca_file: str | Path, *options: str) -> bytes:
    """The content of a signed S/MIME entity as ``openssl cms -verify`` finds it, checked
    against ``ca_file``; fails the test otherwise."""
    return run(["openssl", "cms", "-verify", "-CAfile", str(ca_file), *options], input=signed).stdout


class OpenSSL:
    """``openssl cms`` with keys and certificates as PEM files in ``home``."""

    name = "openssl"

    def __init__(self, home: Path, ca_pem: bytes) -> None:
        require("openssl")
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.ca = home / "ca.pem"
        self.ca.write_bytes(ca_pem)

    def _file(self, name: str, data: bytes) -> Path:
        path = self.home / f"{name}-{secrets.token_hex(4)}"
        path.write_bytes(data)
        return path

    def import_pkcs12(self, who: str, p12: bytes, password: str) -> None:
        """Key and certificate of ``who`` from a PKCS#12 file."""
        source = self._file("in.p12", p12)
        # Two passes: the unencrypted key alone, then the holder's certificate alone.
        for selection, suffix in ((["-nodes", "-nocerts"], "key"), (["-clcerts", "-nokeys"], "pem")):
            run(
                [
                    "openssl",
                    "pkcs12",
                    "-in",
                    str(source),
                    "-passin",
                    f"pass:{password}",
                    *selection,
                    "-out",
                    str(self.home / f"{who}.{suffix}"),
                ]
            )

    def add_certificate(self, who: str, pem: bytes) -> None:
        """A correspondent's certificate."""
        (self.home / f"{who}.pem").write_bytes(pem)

    def _holder(self, option: str, who: str) -> list[str]:
        """``option`` naming ``who``'s certificate, then ``-inkey`` naming its private key."""
        return [option, str(self.home / f"{who}.pem"), "-inkey", str(self.home / f"{who}.key")]

    def sign(self, entity: bytes, signer: str, *, detached: bool) -> bytes:
        """A signed S/MIME entity: ``multipart/signed`` or opaque ``signed-data``."""
        args = ["openssl", "cms", "-sign", "-md", "sha256", "-crlfeol", "-certfile", str(self.ca)]
        args += self._holder("-signer", signer)
        if not detached:
            args.append("-nodetach")
        return crlf(run(args, input=entity).stdout)

    def encrypt(
        self, entity: bytes, recipients: list[str], *, cipher: str = "aes256", oaep: str | None = None
    ) -> bytes:
        """An enveloped S/MIME entity to ``recipients``; ``oaep`` is None (PKCS #1 v1.5),
        ``sha1`` or ``sha256``. ``cipher`` is an openssl cipher name (``aes-256-gcm`` makes
        an AuthEnvelopedData)."""
        args = ["openssl", "cms", "-encrypt", "-binary", "-crlfeol", f"-{cipher}"]
        for who in recipients:
            args += ["-recip", str(self.home / f"{who}.pem")]
            if oaep:
                args += ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", f"rsa_oaep_md:{oaep}"]
        return crlf(run(args, input=entity).stdout)

    def decrypt(self, der: bytes, who: str) -> bytes:
        """The content of a DER envelope, opened with ``who``'s key."""
        return run(["openssl", "cms", "-decrypt", "-inform", "DER", *self._holder("-recip", who)], input=der).stdout

    def verify(self, smime: bytes) -> bytes:
        """The content of a signed S/MIME entity, checked against the CA; fails otherwise."""
        return cms_verified(smime, self.ca, "-purpose", "smimesign")


# -- GnuPG --------------------------------------------------------------------------------


class GpgSm:
    """``gpgsm`` with a GnuPG home of its own (passphrases through loopback pinentry)."""

    name = "gpgsm"

    def __init__(self, ca_pem: bytes) -> None:
        require("gpgsm", "gpg-agent", "gpgconf")
        # Short: the agent's socket path must fit in a sockaddr_un.
        self.home = Path(tempfile.mkdtemp(prefix="gs", dir="/tmp"))
        (self.home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
        self.env = {**os.environ, "GNUPGHOME": str(self.home)}
        self.passwords: dict[str, str] = {}
        run(self._args("--import"), input=ca_pem, env=self.env)
        fingerprint = self._fingerprint(ca_pem)
        # The CA is a trusted root for S/MIME; it publishes a CRL, but not where gpgsm
        # would fetch it (dirmngr), so CRL checks are off (--disable-crl-checks).
        (self.home / "trustlist.txt").write_text(f"{fingerprint} S relax\n")

    def _args(self, *args: str) -> list[str]:
        return [
            "gpgsm",
            "--batch",
            "--disable-crl-checks",
            "--disable-trusted-cert-crl-check",
            "--pinentry-mode",
            "loopback",
            *args,
        ]

    def _fingerprint(self, pem: bytes) -> str:
        listing = run(["gpgsm", "--with-colons", "--list-keys"], env=self.env).stdout.decode()
        fingerprints = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:")]
        assert fingerprints, listing
        return fingerprints[-1]

    def try_import_pkcs12(self, p12: bytes, password: str) -> subprocess.CompletedProcess[bytes]:
        """gpgsm's import of a PKCS#12 file, whatever its outcome."""
        return run(
            self._args("--passphrase-fd", "0", "--import", str(self._file(p12))),
            input=password.encode() + b"\n",
            env=self.env,
            ok=False,
        )

    def import_pkcs12(self, who: str, p12: bytes, password: str) -> None:
        """Key and certificate of ``who`` from a PKCS#12 file."""
        imported = self.try_import_pkcs12(p12, password)
        assert imported.returncode == 0, imported.stderr.decode(errors="replace")[-2000:]
        listing = run(["gpgsm", "--list-secret-keys", who], env=self.env, ok=False)
        assert listing.returncode == 0 and who.encode() in listing.stdout, listing.stderr.decode(errors="replace")
        self.passwords[who] = password

    def _file(self, data: bytes) -> Path:
        path = self.home / f"in-{secrets.token_hex(4)}"
        path.write_bytes(data)
        return path

    def add_certificate(self, who: str, certificate: bytes) -> None:
        """A correspondent's certificate (DER or PEM)."""
        run(self._args("--import"), input=certificate, env=self.env)

    def sign(self, entity: bytes, signer: str, *, detached: bool) -> bytes:
        """A DER SignedData over ``entity`` (detached or embedding it)."""
        mode = "--detach-sign" if detached else "--sign"
        return run(
            self._args("--passphrase-fd", "0", "-u", signer, mode, "--output", "-", str(self._file(entity))),
            input=self.passwords[signer].encode() + b"\n",
            env=self.env,
        ).stdout

    def encrypt(self, entity: bytes, recipients: list[str], *, cipher: str = "AES") -> bytes:
        """A DER EnvelopedData (BER, as gpgsm writes it) of ``entity``; ``cipher`` is
        ``AES`` (AES-128), ``AES256`` or ``3DES``."""
        args = self._args("--cipher-algo", cipher, "--encrypt")
        for who in recipients:
            args += ["-r", who]
        return run([*args, "--output", "-", str(self._file(entity))], env=self.env).stdout

    def decrypt(self, der: bytes, who: str) -> bytes:
        """The content of an envelope, opened with ``who``'s key."""
        return run(
            self._args("--passphrase-fd", "0", "--decrypt", "--output", "-", str(self._file(der))),
            input=self.passwords[who].encode() + b"\n",
            env=self.env,
        ).stdout

    def verify(self, der: bytes, content: bytes | None = None) -> str:
        """Checks a SignedData (``content`` for a detached one); the signer's fingerprint."""
        args = ["gpgsm", "--batch", "--disable-crl-checks", "--status-fd", "1", "--verify", str(self._file(der))]
        if content is not None:
            args.append(str(self._file(content)))
        status = run(args, env=self.env).stdout.decode()
        assert "[GNUPG:] GOODSIG" in status and "[GNUPG:] TRUST_FULLY" in status, status
        return status.split("[GNUPG:] VALIDSIG ", 1)[1].split()[0]

    def close(self) -> None:
        """Stop the agent and remove the home."""
        subprocess.run(["gpgconf", "--kill", "all"], env=self.env, capture_output=True, timeout=TIMEOUT)
        shutil.rmtree(self.home, ignore_errors=True)


# -- NSS ------------------------------------------------------------------------------------


class Nss:
    """NSS tools (Thunderbird's library) with an NSS database of their own."""

    name = "nss"

    def __init__(self, home: Path, ca_pem: bytes) -> None:
        require("cmsutil", "pk12util", "certutil")
        home.mkdir(parents=True, exist_ok=True)
        self.home = home
        self.db = f"sql:{home}"
        run(["certutil", "-N", "-d", self.db, "--empty-password"])
        # Trusted to issue e-mail certificates (the middle of "C,C,C" is S/MIME).
        run(["certutil", "-A", "-d", self.db, "-n", "mss CA", "-t", "C,C,C", "-a"], input=ca_pem)

    def _file(self, data: bytes) -> Path:
        path = self.home / f"in-{secrets.token_hex(4)}"
        path.write_bytes(data)
        return path

    def import_pkcs12(self, who: str, p12: bytes, password: str) -> None:
        """Key and certificate of ``who`` (nickname: the PKCS#12 friendly name)."""
        result = run(["pk12util", "-i", str(self._file(p12)), "-d", self.db, "-W", password])
        assert b"PKCS12 IMPORT SUCCESSFUL" in result.stdout + result.stderr
        keys = run(["certutil", "-K", "-d", self.db]).stdout
        assert who.encode() in keys, keys

    def add_certificate(self, who: str, der: bytes) -> None:
        """A correspondent's certificate (DER)."""
        run(["certutil", "-A", "-d", self.db, "-n", who, "-t", ",,", "-i", str(self._file(der))])

    def sign(self, entity: bytes, signer: str, *, detached: bool) -> bytes:
        """A SignedData over ``entity`` (BER, as NSS writes it)."""
        args = ["cmsutil", "-S", "-N", signer, "-H", "SHA256", "-G", "-P", "-d", self.db, "-i", str(self._file(entity))]
        if detached:
            args.append("-T")
        return run(args).stdout

    def encrypt(self, entity: bytes, recipients: list[str]) -> bytes:
        """An EnvelopedData of ``entity`` to ``recipients`` (by address)."""
        return run(["cmsutil", "-E", "-r", ",".join(recipients), "-d", self.db, "-i", str(self._file(entity))]).stdout

    def decode(self, der: bytes, content: bytes | None = None) -> tuple[bytes, str]:
        """``cmsutil -D``: what it decrypts and the report of what it found (levels, signer
        status such as ``signer0.status=GoodSignature``)."""
        source = self._file(der)
        detached = ["-c", str(self._file(content))] if content is not None else []
        report = run(["cmsutil", "-D", "-d", self.db, "-i", str(source), "-h", "3", "-n", *detached]).stdout
        output = run(["cmsutil", "-D", "-d", self.db, "-i", str(source), *detached]).stdout
        return output, report.decode(errors="replace")
