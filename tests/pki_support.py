"""The sample doctor whose S/MIME certificate the key and PKI tests issue: Éloïse Bernard,
general practitioner at the Cabinet médical des Tilleuls (RPPS national id 810000064199)."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from mss.crypto import pki

ADDRESS = "eloise.bernard@medecin.mss.test"


def issue_doctor_certificate(
    ca: pki.CertificateAuthority, *, days: int
) -> tuple[rsa.RSAPrivateKey | None, x509.Certificate]:
    """A 2048-bit key and the S/MIME certificate ``ca`` issues the sample doctor for ``days``."""
    return pki.issue_smime_certificate(
        ca,
        address=ADDRESS,
        rpps_national_id="810000064199",
        common_name="Éloïse Bernard",
        organisation="Cabinet médical des Tilleuls",
        key_bits=2048,
        days=days,
    )
