"""The `mss` command, end to end: real database, real files, secrets on standard input."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_EXTRACT = SAMPLES / "annuaire" / "Extraction_Correspondance_MSSante_sample.txt"
DOCTOR = "marc.robert@chu-demo.mss.test"
GP = "eloise.fournier@medecin.mss.test"


def test_import_reports_defects_by_line(mss):  # type: ignore[no-untyped-def]
    result = mss("directory", "import", str(SAMPLES / "annuaire" / "Extraction_Correspondance_MSSante_defects.txt"))
    assert "line 3:" in result.stderr and "line 4:" in result.stderr
    assert "rejected" in result.stdout
    again = mss("directory", "import", str(SAMPLE_EXTRACT))
    assert "added" in again.stdout


def test_import_of_a_missing_file_is_a_clear_error(mss, tmp_path):  # type: ignore[no-untyped-def]
    result = mss("directory", "import", str(tmp_path / "absent.txt"), ok=False)
    assert result.exit_code == 1
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_directory_search_show_add_revoke(mss):  # type: ignore[no-untyped-def]
    mss("directory", "import", str(SAMPLE_EXTRACT))
    found = mss("directory", "search", "lefebvre", "--json")
    rows = [json.loads(line) for line in found.stdout.splitlines() if line.strip().startswith("{")]
    assert rows and all("LEF" in r["last_name"] for r in rows)
    shown = mss("directory", "show", DOCTOR.upper())
    assert "ROBERT" in shown.stdout
    mss("directory", "add", "--address", "new.doctor@medecin.mss.test", "--rpps", "10009999999",
        "--last-name", "NOUVEAU", "--first-name", "Jean", "--profession-label", "Médecin")
    assert "NOUVEAU" in mss("directory", "show", "new.doctor@medecin.mss.test").stdout
    mss("directory", "revoke", "new.doctor@medecin.mss.test", "--reason", "left the practice")
    assert "revoked" in mss("directory", "show", "new.doctor@medecin.mss.test").stdout
    unknown = mss("directory", "show", "nobody@medecin.mss.test", ok=False)
    assert unknown.exit_code == 1 and "not in the directory" in unknown.stderr


def test_account_lifecycle(mss, tmp_path, env):  # type: ignore[no-untyped-def]
    mss("directory", "import", str(SAMPLE_EXTRACT))
    created = mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n")
    assert "otpauth://totp/" in created.stdout
    dup = mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n", ok=False)
    assert dup.exit_code == 1 and "already exists" in dup.stderr
    unknown = mss("account", "create", "ghost@chu-demo.mss.test", "--password-stdin", input="first passphrase ok\n",
                  ok=False)
    assert "not in the directory" in unknown.stderr
    mss("account", "passwd", DOCTOR, "--password-stdin", input="first passphrase ok\nsecond passphrase ok\n")
    wrong = mss("account", "passwd", DOCTOR, "--password-stdin", input="first passphrase ok\nthird passphrase\n",
                ok=False)
    assert "invalid address or password" in wrong.stderr
    assert "otpauth://" in mss("account", "reset-2fa", DOCTOR).stdout
    p12 = tmp_path / "doctor.p12"
    mss("account", "export-key", DOCTOR, "--out", str(p12), "--password-stdin",
        input="second passphrase ok\nexport passphrase\n")
    assert oct(p12.stat().st_mode & 0o777) == "0o600"
    opened = subprocess.run(["openssl", "pkcs12", "-info", "-in", str(p12), "-nokeys", "-passin", "pass:export passphrase"],
                            capture_output=True, text=True)
    assert opened.returncode == 0 and DOCTOR in opened.stdout
    refused = subprocess.run(["openssl", "pkcs12", "-info", "-in", str(p12), "-nokeys", "-passin", "pass:nope"],
                             capture_output=True, text=True)
    assert refused.returncode != 0
    recovery = Path(env["MSS_RECOVERY_KEY_OUT"])
    mss("account", "recover", DOCTOR, "--recovery-key", str(recovery), "--password-stdin", input="recovered passphrase\n")
    mss("account", "disable", DOCTOR)
    disabled = mss("account", "export-key", DOCTOR, "--out", str(p12), "--password-stdin",
                   input="recovered passphrase\nexport passphrase\n", ok=False)
    assert "disabled" in disabled.stderr
    mss("account", "enable", DOCTOR)
    verified = mss("audit", "verify")
    assert "intact" in verified.stdout


def test_secrets_never_reach_the_output(mss):  # type: ignore[no-untyped-def]
    mss("directory", "import", str(SAMPLE_EXTRACT))
    result = mss("account", "create", DOCTOR, "--password-stdin", input="a very secret passphrase\n")
    exported = mss("audit", "export", "--format", "jsonl")
    assert "a very secret passphrase" not in result.stdout + result.stderr + exported.stdout


def test_audit_verify_detects_tampering(mss, env, settings):  # type: ignore[no-untyped-def]
    if not env["MSS_DATABASE_URL"].startswith("sqlite"):
        from sqlalchemy import create_engine, text

        tamper_engine = create_engine(env["MSS_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://"))
        mss("directory", "import", str(SAMPLE_EXTRACT))
        with tamper_engine.begin() as conn:
            conn.execute(text("UPDATE audit_event SET actor = 'someone else' WHERE seq = 1"))
        tamper_engine.dispose()
    else:
        mss("directory", "import", str(SAMPLE_EXTRACT))
        db = sqlite3.connect(settings.storage.database_url.removeprefix("sqlite:///"))
        db.execute("UPDATE audit_event SET actor = 'someone else' WHERE seq = 1")
        db.commit()
        db.close()
    result = mss("audit", "verify", ok=False)
    assert result.exit_code == 2 and "1" in result.stderr


def test_audit_export_formats(mss):  # type: ignore[no-untyped-def]
    mss("directory", "import", str(SAMPLE_EXTRACT))
    lines = mss("audit", "export", "--format", "jsonl", "--since", "2000-01-01").stdout.strip().splitlines()
    assert json.loads(lines[0])["action"] == "directory.import"
    csv_out = mss("audit", "export", "--format", "csv").stdout
    assert "directory.import" in csv_out
    bad = mss("audit", "export", "--format", "xml", ok=False)
    assert "unknown format" in bad.stderr
    bad_date = mss("audit", "export", "--since", "yesterday", ok=False)
    assert "not a date" in bad_date.stderr


def test_pki_issue_and_revoke(mss, settings):  # type: ignore[no-untyped-def]
    mss("directory", "import", str(SAMPLE_EXTRACT))
    p12 = settings.storage.data_dir / "gp.p12"
    issued = mss("pki", "issue", GP, "--out", str(p12), "--password-stdin", input="export passphrase\n")
    assert "issued certificate" in issued.stdout
    assert oct(p12.stat().st_mode & 0o777) == "0o600"
    chain = subprocess.run(["openssl", "pkcs12", "-in", str(p12), "-nokeys", "-passin", "pass:export passphrase"],
                           capture_output=True, text=True)
    assert chain.returncode == 0 and GP in chain.stdout
    leaf = subprocess.run(["openssl", "x509", "-noout", "-text"], input=chain.stdout, capture_output=True, text=True)
    assert "E-mail Protection" in leaf.stdout
    mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n")
    refused = mss("pki", "issue", DOCTOR, "--out", str(p12), "--password-stdin", input="export passphrase\n", ok=False)
    assert "has an account" in refused.stderr
    assert "certificate" in mss("directory", "show", GP).stdout
    mss("pki", "revoke", GP, "--reason", "keyCompromise")
    crl = subprocess.run(["openssl", "crl", "-in", str(settings.pki.certs_dir / "ca.crl.pem"), "-noout", "-text"],
                         capture_output=True, text=True)
    assert crl.returncode == 0 and "Serial Number" in crl.stdout


def test_demo_creates_three_accounts_once(mss):  # type: ignore[no-untyped-def]
    first = mss("demo", "--if-empty")
    assert first.stdout.count("otpauth://totp/") == 3
    second = mss("demo", "--if-empty")
    assert "already loaded" in second.stdout


@pytest.mark.sqlite_only
def test_console_script_reads_password_from_stdin(env, dev_pki):  # type: ignore[no-untyped-def]
    mss_bin = Path(sys.executable).with_name("mss")
    full_env = {**os.environ, **env}
    subprocess.run([str(mss_bin), "directory", "import", str(SAMPLE_EXTRACT)], env=full_env, check=True,
                   capture_output=True)
    created = subprocess.run([str(mss_bin), "account", "create", GP, "--password-stdin"], env=full_env,
                             input="piped passphrase ok\n", capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    assert "otpauth://totp/" in created.stdout
    help_text = subprocess.run([str(mss_bin), "account", "create", "--help"], env=full_env, capture_output=True, text=True)
    assert "--password " not in help_text.stdout
