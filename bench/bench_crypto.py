"""Benchmark: our CMS sign+encrypt and decrypt+verify (DER) against ``openssl cms``.

For 10 KB and 1 MiB of random MIME content, on the same files in the same run:

- ours: ``smime.sign_and_encrypt`` (SHA-256 SignedData inside an AES-256-CBC EnvelopedData
  for two RSA recipients, the recipient and the sender), then ``smime.decrypt`` +
  ``verify.verify_signed_data`` (pyHanko path validation with a CRL), all in process;
- openssl: ``openssl cms -sign`` then ``openssl cms -encrypt`` (two processes), and
  ``openssl cms -decrypt`` then ``openssl cms -verify -crl_check`` (two processes).

An in-process timing loop is not possible for the command line tool, so each side is
measured including what it needs: openssl's figures include starting two processes and
reading keys from files; ours include nothing of the sort. The cost of one bare
``openssl version`` start is printed too, so the difference can be read. Keys are RSA 3072
(the production default). Usage: ``.venv/bin/python bench/bench_crypto.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives import serialization

from mss.crypto import keys, pki, smime
from mss.crypto.verify import verify_signed_data

SIZES = {"10 KB": 10 * 1000, "1 MiB": 1024 * 1024}


def mime_entity(size: int) -> bytes:
    """A canonical (CRLF) MIME entity of about ``size`` bytes holding random base64 data."""
    head = b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    raw = os.urandom((size - len(head)) * 3 // 4)
    body = base64.encodebytes(raw).replace(b"\n", b"\r\n")
    return head + body


def timed(action: Callable[[], object], rounds: int) -> float:
    """Median wall time of one call, in milliseconds (after one warm-up call)."""
    action()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def run(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"openssl {args[0:2]} failed: {done.stderr.decode(errors='replace')}")


class Parties:
    """The CA, a sender and a recipient (RSA 3072), in memory and as PEM files for openssl."""

    def __init__(self, folder: Path) -> None:
        self.ca = pki.new_certificate_authority(common_name="bench CA", organisation="mss bench")
        self.sender_key, self.sender = pki.issue_smime_certificate(
            self.ca,
            address="sender@mss.test",
            rpps_national_id="810000000001",
            common_name="Sender",
            key_bits=3072,
            days=30,
        )
        self.recipient_key, self.recipient = pki.issue_smime_certificate(
            self.ca, address="recipient@mss.test", rpps_national_id="810000000002", common_name="Recipient",
            key_bits=3072, days=30,
        )  # fmt: skip
        self.crl = pki.build_crl(self.ca, [])
        pem = serialization.Encoding.PEM
        self.folder = folder
        # The CA file carries the CRL too: that is how `openssl cms -verify -crl_check` takes one.
        self.ca_crl_file = self.write("ca-crl.pem", self.ca.certificate.public_bytes(pem) + self.crl.public_bytes(pem))
        self.sender_file = self.write("sender.pem", self.sender.public_bytes(pem))
        self.sender_key_file = self.write("sender.key", keys.private_key_to_pem(self.sender_key))
        self.recipient_file = self.write("recipient.pem", self.recipient.public_bytes(pem))
        self.recipient_key_file = self.write("recipient.key", keys.private_key_to_pem(self.recipient_key))

    def write(self, name: str, data: bytes) -> str:
        (self.folder / name).write_bytes(data)
        return str(self.folder / name)


def measure(parties: Parties, size: int, rounds: int) -> dict[str, tuple[float, float]]:
    """{operation: (ours ms, openssl ms)} for one content size."""
    p = parties
    entity = mime_entity(size)
    entity_file = p.write(f"entity-{size}", entity)
    envelope = smime.sign_and_encrypt(entity, p.sender, p.sender_key, [p.recipient, p.sender])
    envelope_file = p.write(f"ours-{size}.der", envelope)
    signed_out, envelope_out = str(p.folder / "o-signed.der"), str(p.folder / "o-env.der")
    decrypted_out, content_out = str(p.folder / "o-dec.der"), str(p.folder / "o-content")

    def ours_protect() -> None:
        smime.sign_and_encrypt(entity, p.sender, p.sender_key, [p.recipient, p.sender])

    def ours_open() -> None:
        inner = smime.decrypt(envelope, p.recipient, p.recipient_key)
        report = verify_signed_data(inner, trust_roots=[p.ca.certificate], crls=[p.crl])
        if report.status != "valid" or report.content != entity:
            raise SystemExit(f"our verification failed: {report.reason}")

    def openssl_protect() -> None:
        run("cms", "-sign", "-binary", "-nodetach", "-md", "sha256", "-in", entity_file,
            "-signer", p.sender_file, "-inkey", p.sender_key_file, "-outform", "DER", "-out", signed_out)  # fmt: skip
        run("cms", "-encrypt", "-binary", "-aes256", "-in", signed_out, "-outform", "DER",
            "-out", envelope_out, p.recipient_file, p.sender_file)  # fmt: skip

    def openssl_open() -> None:
        run("cms", "-decrypt", "-inform", "DER", "-in", envelope_file, "-recip", p.recipient_file,
            "-inkey", p.recipient_key_file, "-out", decrypted_out)  # fmt: skip
        run("cms", "-verify", "-binary", "-crl_check", "-inform", "DER", "-in", decrypted_out,
            "-CAfile", p.ca_crl_file, "-out", content_out)  # fmt: skip

    measured = {
        "sign+encrypt": (timed(ours_protect, rounds), timed(openssl_protect, rounds)),
        "decrypt+verify": (timed(ours_open, rounds), timed(openssl_open, rounds)),
    }
    if Path(content_out).read_bytes() != entity:
        raise SystemExit("openssl did not return the entity byte for byte")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per measurement (median)")
    options = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mss-bench-") as folder:
        parties = Parties(Path(folder))
        start_cost = timed(lambda: subprocess.run(["openssl", "version"], capture_output=True), options.rounds)
        rows = [
            (label, operation, ours, theirs)
            for label, size in SIZES.items()
            for operation, (ours, theirs) in measure(parties, size, options.rounds).items()
        ]

    openssl_version = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    print(f"python {platform.python_version()}, {openssl_version}")
    print(
        f"{os.cpu_count()} CPUs ({platform.machine()}), median of {options.rounds} calls,"
        " RSA 3072, AES-256-CBC, 2 recipients"
    )
    print(f"one bare `openssl version` process: {start_cost:.1f} ms (openssl's rows include two process starts)")
    print()
    print("| size  | operation      | mss (ms) | openssl cms (ms) | openssl / mss |")
    print("|-------|----------------|---------:|-----------------:|--------------:|")
    for label, operation, ours, theirs in rows:
        print(f"| {label:<5} | {operation:<14} | {ours:8.1f} | {theirs:16.1f} | {theirs / ours:13.2f} |")


if __name__ == "__main__":
    main()
