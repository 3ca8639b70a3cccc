"""The development PKI, certificate profiles and the directory's certificates, checked with
openssl; the directory functions run on the configured backend (SQLite or PostgreSQL)."""

from __future__ import annotations

import stat
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select
from sqlalchemy.engine import Engine

from directory import certificates, service
from directory.models import REVOKED, Certificate, DirectoryEntry
from mss.crypto import keys, pki, smime
from mss.crypto.master import MasterKey
from mss.crypto.verify import verify_signed_data
from mss.db import session_scope
from mss.errors import ConfigError, PkiError, RevokedAddress, UnknownAddress
from mss.models import AuditEvent, SealedSecret
from mss.settings import Settings

from pki_support import issue_doctor_certificate

ENTITY = b"Content-Type: text/plain\r\n\r\nCompte rendu\r\n"


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- the development PKI -------------------------------------------------------------------


@pytest.mark.sqlite_only
def test_init_dev_pki_creates_the_material(settings: Settings) -> None:
    dev = pki.init_dev_pki(settings)
    paths = dev.paths
    assert set(dev.generated) == {"ca", "crl", "tls", "recovery"}
    for private in (paths.ca_key, paths.tls_key, paths.recovery_private_key):
        assert mode(private) == 0o600, private
    for public in (paths.ca_certificate, paths.crl, paths.tls_certificate, paths.recovery_public_key):
        assert mode(public) & 0o600 == 0o600 and mode(public) & 0o022 == 0, public  # 0644 less the umask
    assert paths.recovery_public_key == settings.pki.recovery_public_key
    assert (
        keys.recovery_public_key_of(keys.load_recovery_private_key(paths.recovery_private_key))
        == dev.recovery_public_key
    )

    ca = dev.ca.certificate
    assert ca.public_key().key_size == 3072
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)

    crl = pki.load_crl(settings)
    assert crl is not None and len(crl) == 0 and crl.is_signature_valid(ca.public_key())
    assert crl.next_update_utc is not None and crl.next_update_utc > datetime.now(UTC) + timedelta(days=7)

    san = dev.tls_certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = dev.tls_certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    # Server and client: the same certificate authenticates this operator to other operators.
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    done = openssl("verify", "-CAfile", str(paths.ca_certificate), "-purpose", "sslserver", str(paths.tls_certificate))
    assert done.returncode == 0, done.stderr
    done = openssl("crl", "-in", str(paths.crl), "-CAfile", str(paths.ca_certificate), "-noout")
    assert done.returncode == 0 and "verify OK" in done.stderr + done.stdout


@pytest.mark.sqlite_only
def test_init_dev_pki_is_idempotent_and_force_regenerates(settings: Settings) -> None:
    first = pki.init_dev_pki(settings)
    files = {
        p: p.read_bytes()
        for p in (first.paths.ca_certificate, first.paths.ca_key, first.paths.tls_key, first.paths.crl)
    }
    again = pki.init_dev_pki(settings)
    assert again.generated == ()
    assert all(path.read_bytes() == data for path, data in files.items())
    assert again.ca.certificate == first.ca.certificate

    # A new host name: only the TLS certificate is re-issued.
    wider = Settings.from_env({**_env_of(settings), "MSS_HOSTNAMES": "localhost,127.0.0.1,mss.example"})
    assert pki.init_dev_pki(wider).generated == ("tls",)

    forced = pki.init_dev_pki(settings, force=True)
    assert set(forced.generated) == {"ca", "crl", "tls", "recovery"}
    assert forced.ca.certificate != first.ca.certificate
    assert mode(forced.paths.ca_key) == 0o600 and mode(forced.paths.tls_key) == 0o600


def _env_of(settings: Settings) -> dict[str, str]:
    return {
        "MSS_DATA_DIR": str(settings.storage.data_dir),
        "MSS_CERTS_DIR": str(settings.pki.certs_dir),
        "MSS_DATABASE_URL": settings.storage.database_url,
    }


@pytest.mark.sqlite_only
def test_init_dev_pki_refuses_production_and_inconsistent_material(settings: Settings) -> None:
    production = Settings.from_env({**_env_of(settings), "MSS_ENV": "production"})
    with pytest.raises(ConfigError, match="production"):
        pki.init_dev_pki(production)
    assert not Path(settings.pki.certs_dir).exists()

    with pytest.raises(PkiError, match="mss pki init"):
        pki.load_ca(settings)
    dev = pki.init_dev_pki(settings)
    dev.paths.ca_key.unlink()
    with pytest.raises(PkiError, match="--force"):
        pki.init_dev_pki(settings)
    with pytest.raises(PkiError, match="mss pki init"):
        pki.load_ca(settings)


@pytest.mark.sqlite_only
def test_load_ca_refuses_a_readable_or_foreign_key(dev_pki: Settings) -> None:
    paths = pki.PkiPaths.from_settings(dev_pki)
    paths.ca_key.chmod(0o644)
    with pytest.raises(PkiError, match="chmod 600"):
        pki.load_ca(dev_pki)
    paths.ca_key.chmod(0o600)
    other = pki.new_certificate_authority(common_name="other", organisation="other")
    paths.ca_key.write_bytes(keys.private_key_to_pem(other.private_key))
    with pytest.raises(PkiError, match="is not the key of"):
        pki.load_ca(dev_pki)


@pytest.mark.sqlite_only
def test_smime_certificate_profile_seen_by_openssl(dev_pki: Settings, tmp_path: Path) -> None:
    ca = pki.load_ca(dev_pki)
    key, certificate = issue_doctor_certificate(ca, days=1095)
    assert key.key_size == 2048
    assert certificate.serial_number.bit_length() <= 159
    assert certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "810000064199"
    assert certificate.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "FR"
    assert certificate.not_valid_after_utc <= ca.certificate.not_valid_after_utc
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).critical
    path = tmp_path / "user.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))

    text = openssl("x509", "-in", str(path), "-noout", "-text").stdout
    assert "E-mail Protection" in text
    assert "email:eloise.bernard@medecin.mss.test" in text
    assert "serialNumber = 810000064199" in text
    assert "Digital Signature, Key Encipherment" in text
    assert "CA:FALSE" in text
    assert "X509v3 Authority Key Identifier" in text and "X509v3 Subject Key Identifier" in text

    ca_file = str(pki.PkiPaths.from_settings(dev_pki).ca_certificate)
    for purpose in ("smimesign", "smimeencrypt"):
        done = openssl("verify", "-CAfile", ca_file, "-purpose", purpose, str(path))
        assert done.returncode == 0, done.stderr


@pytest.mark.sqlite_only
def test_issue_rejects_malformed_arguments(dev_pki: Settings) -> None:
    ca = pki.load_ca(dev_pki)
    common = {"rpps_national_id": None, "common_name": "X", "key_bits": 2048, "days": 10}
    for address in ("no-at-sign", "a@b@c.test", "a b@mss.test", "été@mss.test", "a@localhost"):
        with pytest.raises(PkiError, match="mail address"):
            pki.issue_smime_certificate(ca, address=address, **common)
    with pytest.raises(PkiError, match="RSA key size"):
        pki.issue_smime_certificate(ca, address="a@mss.test", **{**common, "key_bits": 1024})
    with pytest.raises(PkiError, match="validity"):
        pki.issue_smime_certificate(ca, address="a@mss.test", **{**common, "days": 0})
    with pytest.raises(PkiError, match="common name"):
        pki.issue_smime_certificate(ca, address="a@mss.test", **{**common, "common_name": "  "})
    with pytest.raises(PkiError, match="national identifier"):
        pki.issue_smime_certificate(ca, address="a@mss.test", **{**common, "rpps_national_id": "8100\n1"})
    # Over-long directory names are clipped to the X.520 bound, not refused.
    _, certificate = pki.issue_smime_certificate(ca, address="a@mss.test", **{**common, "common_name": "N" * 80})
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "N" * 64


@pytest.mark.sqlite_only
def test_build_crl_entries_and_reasons(dev_pki: Settings) -> None:
    ca = pki.load_ca(dev_pki)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    crl = pki.build_crl(ca, [(0x1234, at, "keyCompromise"), (0x99, at, "unspecified"), (0x1234, at, "superseded")])
    assert len(crl) == 2 and crl.is_signature_valid(ca.certificate.public_key())
    entry = crl.get_revoked_certificate_by_serial_number(0x1234)
    assert entry is not None and entry.revocation_date_utc == at
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == x509.ReasonFlags.key_compromise
    plain = crl.get_revoked_certificate_by_serial_number(0x99)
    assert plain is not None and len(plain.extensions) == 0  # RFC 5280: no "unspecified" code
    crl.extensions.get_extension_for_class(x509.CRLNumber)
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert pki.revocation_reason("key_compromise") is x509.ReasonFlags.key_compromise
    with pytest.raises(PkiError, match="unknown revocation reason"):
        pki.build_crl(ca, [(1, at, "left the practice")])
    # An older list never replaces a newer one.
    newer = pki.build_crl(ca, [], crl_number=10**18)
    assert pki.write_crl(dev_pki, newer)
    assert not pki.write_crl(dev_pki, pki.build_crl(ca, [], crl_number=5))
    assert pki.load_crl(dev_pki) == newer


# -- the directory's certificates (database) -----------------------------------------------


def _add_entry(engine: Engine, address: str, *, kind: str = "PER", status: str = "active") -> None:
    with session_scope(engine) as session:
        session.add(
            DirectoryEntry(
                address=address,
                kind=kind,
                rpps_type="8" if kind == "PER" else "",
                rpps="10000064199" if kind == "PER" else "",
                national_id="810000064199" if kind == "PER" else "",
                org_id_type="1",
                org_id="1760000001",
                service="Urgences pédiatriques" if kind == "ORG" else "",
                civility="MME" if kind == "PER" else "",
                last_name="BERNARD" if kind == "PER" else "",
                first_name="Éloïse" if kind == "PER" else "",
                org_name="Centre Hospitalier Universitaire de Démo",
                status=status,
                status_reason="retraite" if status == REVOKED else "",
            )
        )


def test_issue_for_entry_stores_row_and_audit(engine: Engine, dev_pki: Settings, tmp_path: Path) -> None:
    _add_entry(engine, "eloise.bernard@medecin.mss.test")
    with session_scope(engine) as session:
        key, row = certificates.issue_for_entry(
            session, dev_pki, "Eloise.Bernard@Medecin.MSS.test", actor="admin@mss.test"
        )
    certificate = x509.load_der_x509_certificate(row.der)
    assert keys.key_matches_certificate(key, certificate)
    assert row.address == "eloise.bernard@medecin.mss.test" and row.usage == "smime"
    assert row.serial == pki.serial_hex(certificate.serial_number)
    assert row.fingerprint == certificate.fingerprint(hashes.SHA256()).hex()
    assert "CN=Éloïse BERNARD" in row.subject and "2.5.4.5=810000064199" in row.subject
    assert row.not_after == certificate.not_valid_after_utc
    assert certificate.public_key().key_size == dev_pki.pki.user_key_bits

    with session_scope(engine) as session:
        assert certificates.current_certificate(session, "eloise.bernard@medecin.mss.test") == certificate
        assert certificates.certificate_row(session, "eloise.bernard@medecin.mss.test").id == row.id
        assert certificates.current_certificates(session, ["ELOISE.bernard@medecin.mss.test", "nobody@mss.test"]) == {
            "eloise.bernard@medecin.mss.test": certificate
        }
        assert certificates.certificate_by_serial(session, certificate.serial_number).id == row.id
        colons = ":".join(f"{b:02X}" for b in certificate.serial_number.to_bytes(20, "big"))
        assert certificates.certificate_by_serial(session, colons).id == row.id
        with pytest.raises(PkiError, match="hexadecimal"):
            certificates.certificate_by_serial(session, "xyz")
        event = session.execute(select(AuditEvent).where(AuditEvent.action == "pki.issue")).scalars().one()
        assert event.object == "eloise.bernard@medecin.mss.test" and row.serial in event.detail
        assert event.actor == "admin@mss.test"

    path = tmp_path / "user.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    ca_file = str(pki.PkiPaths.from_settings(dev_pki).ca_certificate)
    done = openssl("verify", "-CAfile", ca_file, str(path))
    assert done.returncode == 0, done.stderr


def test_a_recipient_check_reads_each_entry_with_its_newest_current_certificate(
    engine: Engine, dev_pki: Settings
) -> None:
    renewed, revoked_certificate, no_certificate = "a.renewed@mss.test", "b.revoked@mss.test", "c.none@mss.test"
    struck_off = "d.struck@mss.test"
    for address in (renewed, revoked_certificate, no_certificate, struck_off):
        _add_entry(engine, address)
    with session_scope(engine) as session:
        _, first = certificates.issue_for_entry(session, dev_pki, renewed, actor="admin")
        _, newest = certificates.issue_for_entry(session, dev_pki, renewed, actor="admin")
        _, gone = certificates.issue_for_entry(session, dev_pki, revoked_certificate, actor="admin")
        certificates.issue_for_entry(session, dev_pki, struck_off, actor="admin")
    with session_scope(engine) as session:
        certificates.revoke_for_address(session, dev_pki, revoked_certificate, reason="keyCompromise", actor="admin")
        # An entry struck off after its certificate was issued keeps the row, not the right.
        entry = session.execute(select(DirectoryEntry).where(DirectoryEntry.address == struck_off)).scalars().one()
        entry.status, entry.status_reason = REVOKED, "retraite"
    asked = [renewed.upper(), revoked_certificate, no_certificate, struck_off, "nobody@mss.test", "x\x00@mss.test"]
    with session_scope(engine, readonly=True) as session:
        verdicts, ders = certificates.active_with_certificate_ders(session, asked)
        # The same as the entry check and the certificate look-up made one after the other.
        assert verdicts.keys() == set(asked)
        assert {a: str(v) for a, v in verdicts.items()} == {
            a: str(v) for a, v in service.require_active_many(session, asked).items()
        }
    assert ders == {renewed: newest.der}
    assert newest.der != first.der and gone.der not in ders.values()


def test_issue_for_an_organisation_mailbox(engine: Engine, dev_pki: Settings) -> None:
    _add_entry(engine, "urgences.pediatriques@chu-demo.mss.test", kind="ORG")
    with session_scope(engine) as session:
        _, row = certificates.issue_for_entry(
            session, dev_pki, "urgences.pediatriques@chu-demo.mss.test", actor="admin"
        )
    certificate = x509.load_der_x509_certificate(row.der)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Urgences pédiatriques"
    assert certificate.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "11760000001"


def test_issue_refuses_unknown_and_revoked_entries(engine: Engine, dev_pki: Settings) -> None:
    _add_entry(engine, "gone@mss.test", status=REVOKED)
    with session_scope(engine) as session:
        with pytest.raises(UnknownAddress):
            certificates.issue_for_entry(session, dev_pki, "nobody@mss.test", actor="admin")
        with pytest.raises(RevokedAddress, match="retraite"):
            certificates.issue_for_entry(session, dev_pki, "gone@mss.test", actor="admin")
    with session_scope(engine) as session:
        assert session.execute(select(Certificate)).first() is None
        assert certificates.current_certificate(session, "gone@mss.test") is None


def test_revoke_rewrites_the_crl_that_openssl_checks(engine: Engine, dev_pki: Settings, tmp_path: Path) -> None:
    _add_entry(engine, "eloise.bernard@medecin.mss.test")
    with session_scope(engine) as session:
        _, first = certificates.issue_for_entry(session, dev_pki, "eloise.bernard@medecin.mss.test", actor="admin")
    with session_scope(engine) as session:
        key, second = certificates.issue_for_entry(session, dev_pki, "eloise.bernard@medecin.mss.test", actor="admin")
        assert certificates.certificate_row(session, "eloise.bernard@medecin.mss.test").id == second.id  # newest wins

    paths = pki.PkiPaths.from_settings(dev_pki)
    user = tmp_path / "user.pem"
    user.write_bytes(x509.load_der_x509_certificate(second.der).public_bytes(serialization.Encoding.PEM))
    check = ("verify", "-crl_check", "-CAfile", str(paths.ca_certificate), "-CRLfile", str(paths.crl), str(user))
    assert openssl(*check).returncode == 0

    with session_scope(engine) as session:
        revoked = certificates.revoke_for_address(
            session, dev_pki, "eloise.bernard@medecin.mss.test", reason="keyCompromise", actor="admin"
        )
        assert {r.serial for r in revoked} == {first.serial, second.serial}
        # Not on disk before the commit.
        assert len(pki.load_crl(dev_pki)) == 0
    crl = pki.load_crl(dev_pki)
    assert {entry.serial_number for entry in crl} == {int(first.serial, 16), int(second.serial, 16)}
    done = openssl(*check)
    assert done.returncode != 0
    assert "certificate revoked" in done.stdout + done.stderr

    with session_scope(engine) as session:
        assert certificates.current_certificate(session, "eloise.bernard@medecin.mss.test") is None
        event = session.execute(select(AuditEvent).where(AuditEvent.action == "pki.revoke")).scalars().one()
        assert event.object == "eloise.bernard@medecin.mss.test" and "keyCompromise" in event.detail
        # Nothing left to revoke: no change, no event.
        again = certificates.revoke_for_address(
            session, dev_pki, "eloise.bernard@medecin.mss.test", reason="superseded", actor="admin"
        )
        assert again == []
        material = certificates.trust_material(session, dev_pki)
    # Verification with the directory's trust material sees the revocation.
    signed = smime.sign(ENTITY, x509.load_der_x509_certificate(second.der), key)
    report = verify_signed_data(signed, trust_roots=material.roots, crls=material.crls)
    assert report.status == "revoked"


def test_a_reason_that_does_not_revoke_for_good_is_refused_and_never_listed(
    engine: Engine, dev_pki: Settings, tmp_path: Path
) -> None:
    """removeFromCRL in a CRL tells a verifier the certificate is good again (openssl says
    OK), and certificateHold is meant to be lifted: neither is a reason a revocation here
    takes. A row that holds one (written before) is listed as revoked all the same."""
    address = "eloise.bernard@medecin.mss.test"
    _add_entry(engine, address)
    with session_scope(engine) as session:
        _key, issued = certificates.issue_for_entry(session, dev_pki, address, actor="admin")
    for reason in ("removeFromCRL", "remove_from_crl", "certificateHold"):
        with pytest.raises(PkiError, match="does not revoke a certificate for good"), session_scope(engine) as session:
            certificates.revoke_for_address(session, dev_pki, address, reason=reason, actor="admin")
    with session_scope(engine) as session:
        assert certificates.current_certificate(session, address) is not None
    ca = pki.load_ca(dev_pki)
    at = datetime.now(UTC)
    assert pki.write_crl(dev_pki, pki.build_crl(ca, [(int(issued.serial, 16), at, "removeFromCRL")]))
    user = tmp_path / "user.pem"
    user.write_bytes(x509.load_der_x509_certificate(issued.der).public_bytes(serialization.Encoding.PEM))
    paths = pki.PkiPaths.from_settings(dev_pki)
    done = openssl("verify", "-crl_check", "-CAfile", str(paths.ca_certificate), "-CRLfile", str(paths.crl), str(user))
    assert done.returncode != 0 and "certificate revoked" in done.stdout + done.stderr


def test_a_rolled_back_revocation_leaves_the_crl_alone(engine: Engine, dev_pki: Settings) -> None:
    _add_entry(engine, "eloise.bernard@medecin.mss.test")
    with session_scope(engine) as session:
        certificates.issue_for_entry(session, dev_pki, "eloise.bernard@medecin.mss.test", actor="admin")
    before = pki.PkiPaths.from_settings(dev_pki).crl.read_bytes()
    with pytest.raises(RuntimeError):
        with session_scope(engine) as session:
            certificates.revoke_for_address(
                session, dev_pki, "eloise.bernard@medecin.mss.test", reason="superseded", actor="admin"
            )
            raise RuntimeError("the caller's transaction fails afterwards")
    assert pki.PkiPaths.from_settings(dev_pki).crl.read_bytes() == before
    with session_scope(engine) as session:
        assert certificates.current_certificate(session, "eloise.bernard@medecin.mss.test") is not None
        with pytest.raises(PkiError, match="unknown revocation reason"):
            certificates.revoke_for_address(
                session, dev_pki, "eloise.bernard@medecin.mss.test", reason="bye", actor="admin"
            )


def test_trust_material_refreshes_a_stale_crl(engine: Engine, dev_pki: Settings) -> None:
    ca = pki.load_ca(dev_pki)
    pki.write_crl(dev_pki, pki.build_crl(ca, [], next_update_days=1))  # within the margin
    with session_scope(engine) as session:
        material = certificates.trust_material(session, dev_pki)
    assert material.roots == [ca.certificate]
    crl = x509.load_der_x509_crl(material.crls[0])
    assert crl.next_update_utc > datetime.now(UTC) + timedelta(days=certificates.CRL_NEXT_UPDATE_DAYS - 1)
    assert pki.load_crl(dev_pki) == crl


def test_operator_identity_is_created_once_and_sealed(engine: Engine, dev_pki: Settings) -> None:
    master = MasterKey.load(dev_pki)
    with session_scope(engine) as session:
        key, certificate = certificates.operator_identity(session, dev_pki, master)
    assert keys.key_matches_certificate(key, certificate)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["postmaster@mss.test"]
    with session_scope(engine) as session:
        again_key, again = certificates.operator_identity(session, dev_pki, master)
        assert again == certificate and again_key.private_numbers() == key.private_numbers()
        secret = session.get(SealedSecret, certificates.OPERATOR_KEY_SECRET)
        assert keys.private_key_to_der(key) not in secret.value
        rows = session.execute(select(Certificate).where(Certificate.usage == "operator")).scalars().all()
        assert [r.address for r in rows] == ["operator"]

    # Revoked: the next use issues a new pair and replaces the sealed key.
    with session_scope(engine) as session:
        certificates.revoke_for_address(session, dev_pki, "operator", reason="superseded", actor="admin")
    with session_scope(engine) as session:
        new_key, renewed = certificates.operator_identity(session, dev_pki, master)
    assert renewed != certificate and keys.key_matches_certificate(new_key, renewed)

    signed = smime.sign(ENTITY, renewed, new_key)
    with session_scope(engine) as session:
        material = certificates.trust_material(session, dev_pki)
    assert verify_signed_data(signed, trust_roots=material.roots, crls=material.crls).status == "valid"
    with session_scope(engine) as session:
        actions = [e.action for e in session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars()]
    assert actions == ["pki.issue", "pki.revoke", "pki.issue"]


def test_operator_certificate_is_ecdsa_p256_that_only_signs(engine: Engine, dev_pki: Settings, tmp_path: Path) -> None:
    master = MasterKey.load(dev_pki)
    with session_scope(engine) as session:
        key, certificate = certificates.operator_identity(session, dev_pki, master)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_encipherment and not usage.value.key_agreement
    assert certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    )
    # openssl, on its own, finds the certificate fit to sign mail and not to receive it.
    (tmp_path / "operator.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    ca_file = str(pki.PkiPaths.from_settings(dev_pki).ca_certificate)
    signing = openssl("verify", "-CAfile", ca_file, "-purpose", "smimesign", str(tmp_path / "operator.pem"))
    assert signing.returncode == 0, signing.stderr
    receiving = openssl("verify", "-CAfile", ca_file, "-purpose", "smimeencrypt", str(tmp_path / "operator.pem"))
    assert receiving.returncode != 0
    signed = smime.sign(ENTITY, certificate, key)
    with session_scope(engine) as session:
        material = certificates.trust_material(session, dev_pki)
    assert verify_signed_data(signed, trust_roots=material.roots, crls=material.crls).status == "valid"


def test_operator_key_setting_applies_when_a_key_is_made(engine: Engine, dev_pki: Settings) -> None:
    """``MSS_OPERATOR_KEY=rsa`` makes an RSA identity; an identity in place is kept when the
    setting changes, until it is renewed, and the new one follows the setting."""
    master = MasterKey.load(dev_pki)
    as_rsa = replace(dev_pki, pki=replace(dev_pki.pki, operator_key="rsa"))
    with session_scope(engine) as session:
        key, certificate = certificates.operator_identity(session, as_rsa, master)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == dev_pki.pki.user_key_bits
    assert certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment
    with session_scope(engine) as session:
        assert certificates.operator_identity(session, dev_pki, master)[1] == certificate
        certificates.revoke_for_address(session, dev_pki, "operator", reason="superseded", actor="admin")
    with session_scope(engine) as session:
        new_key, _renewed = certificates.operator_identity(session, dev_pki, master)
    assert isinstance(new_key, ec.EllipticCurvePrivateKey)


def test_operator_key_kind_must_be_known() -> None:
    ca = pki.new_certificate_authority(common_name="test CA", organisation="mss tests")
    with pytest.raises(PkiError, match="ec-p256 or rsa"):
        pki.issue_operator_certificate(ca, address="postmaster@mss.test", key_type="dsa")


def test_concurrent_revocations_all_reach_the_crl(engine: Engine, dev_pki: Settings) -> None:
    addresses = [f"user{i}@mss.test" for i in range(3)]
    serials = set()
    for address in addresses:
        _add_entry(engine, address)
        with session_scope(engine) as session:
            serials.add(int(certificates.issue_for_entry(session, dev_pki, address, actor="admin")[1].serial, 16))
    barrier = threading.Barrier(len(addresses))

    def revoke(address: str) -> None:
        barrier.wait()
        with session_scope(engine) as session:
            certificates.revoke_for_address(session, dev_pki, address, reason="affiliationChanged", actor="admin")

    with ThreadPoolExecutor(len(addresses)) as pool:
        list(pool.map(revoke, addresses))
    assert {entry.serial_number for entry in pki.load_crl(dev_pki)} == serials


def test_concurrent_first_use_creates_one_operator_identity(engine: Engine, dev_pki: Settings) -> None:
    master = MasterKey.load(dev_pki)
    barrier = threading.Barrier(2)

    def identity(_: int) -> x509.Certificate:
        barrier.wait()
        with session_scope(engine) as session:
            return certificates.operator_identity(session, dev_pki, master)[1]

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(identity, range(2))
    assert first == second
    with session_scope(engine) as session:
        assert len(session.execute(select(Certificate).where(Certificate.usage == "operator")).all()) == 1
