"""The `mss` command, end to end: real database, real files, secrets on standard input."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mss.documents import workers as document_workers
from mss.imap import workers as imap_workers

from server_process import RELAY_ALONE, children, free_port, processes, start_server

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_EXTRACT = SAMPLES / "annuaire" / "Extraction_Correspondance_MSSante_sample.txt"
DOCTOR = "marc.robert@chu-demo.mss.test"
GP = "eloise.fournier@medecin.mss.test"


def test_import_reports_defects_by_line(mss):
    # The good lines are imported, the others reported by line, and the exit status says so.
    result = mss(
        "directory", "import", str(SAMPLES / "annuaire" / "Extraction_Correspondance_MSSante_defects.txt"), ok=False
    )
    assert result.exit_code == 3
    assert "line 3:" in result.stderr and "line 4:" in result.stderr
    assert "added 2," in result.stdout and "rejected 6," in result.stdout
    again = mss("directory", "import", str(SAMPLE_EXTRACT))
    assert "added" in again.stdout


def test_import_of_a_missing_file_is_a_clear_error(mss, tmp_path):
    result = mss("directory", "import", str(tmp_path / "absent.txt"), ok=False)
    assert result.exit_code == 1
    assert "error:" in result.stderr and "Traceback" not in result.stderr


def test_directory_search_show_add_revoke(mss):
    mss("directory", "import", str(SAMPLE_EXTRACT))
    found = mss("directory", "search", "lefebvre", "--format", "json")
    rows = json.loads(found.stdout)
    assert rows and all("LEF" in r["last_name"] for r in rows)
    shown = mss("directory", "show", DOCTOR.upper())
    assert "ROBERT" in shown.stdout
    mss(
        "directory",
        "add",
        "--address",
        "new.doctor@medecin.mss.test",
        "--rpps",
        "10009999999",
        "--last-name",
        "NOUVEAU",
        "--first-name",
        "Jean",
        "--profession-label",
        "Médecin",
    )
    assert "NOUVEAU" in mss("directory", "show", "new.doctor@medecin.mss.test").stdout
    mss("directory", "revoke", "new.doctor@medecin.mss.test", "--reason", "left the practice")
    assert "revoked" in mss("directory", "show", "new.doctor@medecin.mss.test").stdout
    unknown = mss("directory", "show", "nobody@medecin.mss.test", ok=False)
    assert unknown.exit_code == 1 and "not in the directory" in unknown.stderr


def export_key(mss, out: Path, passphrases: str, **options):
    """``mss account export-key`` of the doctor into ``out``, the passphrases on stdin."""
    return mss("account", "export-key", DOCTOR, "--out", str(out), "--password-stdin", input=passphrases, **options)


def pkcs12_info(p12: Path, password: str) -> subprocess.CompletedProcess[str]:
    """``openssl pkcs12 -info`` of ``p12`` (certificates only) opened with ``password``."""
    return subprocess.run(
        ["openssl", "pkcs12", "-info", "-in", str(p12), "-nokeys", "-passin", f"pass:{password}"],
        capture_output=True,
        text=True,
    )


def test_account_lifecycle(mss, tmp_path, env):
    mss("directory", "import", str(SAMPLE_EXTRACT))
    created = mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n")
    assert "otpauth://totp/" in created.stdout
    dup = mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n", ok=False)
    assert dup.exit_code == 1 and "already exists" in dup.stderr
    unknown = mss(
        "account", "create", "ghost@chu-demo.mss.test", "--password-stdin", input="first passphrase ok\n", ok=False
    )
    assert "not in the directory" in unknown.stderr
    mss("account", "passwd", DOCTOR, "--password-stdin", input="first passphrase ok\nsecond passphrase ok\n")
    wrong = mss(
        "account", "passwd", DOCTOR, "--password-stdin", input="first passphrase ok\nthird passphrase\n", ok=False
    )
    assert "invalid address or password" in wrong.stderr
    assert "otpauth://" in mss("account", "reset-2fa", DOCTOR).stdout
    p12 = tmp_path / "doctor.p12"
    export_key(mss, p12, "second passphrase ok\nexport passphrase\n")
    assert oct(p12.stat().st_mode & 0o777) == "0o600"
    opened = pkcs12_info(p12, "export passphrase")
    assert opened.returncode == 0 and DOCTOR in opened.stdout
    refused = pkcs12_info(p12, "nope")
    assert refused.returncode != 0
    recovery = Path(env["MSS_RECOVERY_KEY_OUT"])
    # Not a key file: a device that never ends, or a file far longer than a key; refused
    # before it is read.
    long_file = tmp_path / "long.key"
    long_file.write_bytes(b"A" * 10_000)
    long_file.chmod(0o600)
    for wrong, why in (("/dev/zero", "not a file or a pipe"), (str(long_file), "longer than a recovery key file")):
        refused = mss(
            "account",
            "recover",
            DOCTOR,
            "--recovery-key",
            wrong,
            "--password-stdin",
            input="x passphrase ok\n",
            ok=False,
        )
        assert refused.exit_code == 1 and why in refused.stderr
    mss(
        "account",
        "recover",
        DOCTOR,
        "--recovery-key",
        str(recovery),
        "--password-stdin",
        input="recovered passphrase\n",
    )
    # Through a pipe, as `--recovery-key <(gpg -d recovery.key.gpg)` gives it.
    pipe = tmp_path / "recovery.pipe"
    os.mkfifo(pipe, 0o600)
    feeder = threading.Thread(target=pipe.write_bytes, args=(recovery.read_bytes(),), daemon=True)
    feeder.start()
    mss("account", "recover", DOCTOR, "--recovery-key", str(pipe), "--password-stdin", input="recovered passphrase\n")
    feeder.join(timeout=10)
    mss("account", "disable", DOCTOR)
    disabled = export_key(mss, p12, "recovered passphrase\nexport passphrase\n", ok=False)
    assert "disabled" in disabled.stderr
    mss("account", "enable", DOCTOR)
    verified = mss("audit", "verify")
    assert "intact" in verified.stdout


def test_secrets_never_reach_the_output(mss):
    mss("directory", "import", str(SAMPLE_EXTRACT))
    result = mss("account", "create", DOCTOR, "--password-stdin", input="a very secret passphrase\n")
    exported = mss("audit", "export", "--format", "jsonl")
    assert "a very secret passphrase" not in result.stdout + result.stderr + exported.stdout


def test_audit_verify_detects_tampering(mss, env, settings):
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


def test_audit_export_formats(mss, settings):
    mss("directory", "import", str(SAMPLE_EXTRACT))
    lines = mss("audit", "export", "--format", "jsonl", "--since", "2000-01-01").stdout.strip().splitlines()
    assert json.loads(lines[0])["action"] == "directory.import"
    csv_out = mss("audit", "export", "--format", "csv").stdout
    assert "directory.import" in csv_out
    bad = mss("audit", "export", "--format", "xml", ok=False)
    assert "unknown format" in bad.stderr
    bad_date = mss("audit", "export", "--since", "yesterday", ok=False)
    assert "not a date" in bad_date.stderr
    folder = settings.storage.data_dir  # a folder, not a file it can write
    bad_out = mss("audit", "export", "--out", str(folder), ok=False)
    assert bad_out.exit_code == 1 and f"cannot write {folder}" in bad_out.stderr


def test_an_out_that_is_not_a_regular_file_is_refused_before_anything_is_done(mss, rt, tmp_path):
    """What --out names is replaced whole, never written through: a device, a link or a
    folder is refused before the export is made or put in the audit trail, and so is a
    path whose folder is a file; a file there is replaced."""
    from web_support import create_person, submit

    mss("directory", "import", str(SAMPLE_EXTRACT))
    doctor = create_person(rt, DOCTOR)
    create_person(rt, GP)
    accepted = submit(rt, doctor, [GP], "Compte rendu", "Bonjour")
    (tmp_path / "a-file").write_bytes(b"kept")
    target = tmp_path / "target.eml"
    target.write_bytes(b"before")
    (tmp_path / "link.eml").symlink_to(target)
    os.mkfifo(tmp_path / "pipe")  # as a device would be: replaced, it would be gone
    refused = {
        str(tmp_path / "a-file" / "[/red]x.eml"): "Not a directory",  # printed as it is, not as markup
        str(tmp_path / "pipe"): "not a regular file",
        str(tmp_path / "link.eml"): "symbolic link",
        str(tmp_path): "is a folder",
        str(tmp_path / "a-file" / "x.eml"): "Not a directory",
    }
    for out, why in refused.items():
        for command in (
            ("message", "export", accepted.queue_id, "--for", GP, "--out", out),
            ("report", "indicators", "--month", "2026-11", "--out", out),
            ("audit", "export", "--out", out),
        ):
            result = mss(*command, ok=False)
            assert result.exit_code == 1 and f"cannot write {out}: " in result.stderr and why in result.stderr, command
            assert "Traceback" not in result.stderr + result.stdout
        result = export_key(mss, Path(out), f"{doctor.password}\nexport passphrase\nexport passphrase\n", ok=False)
        assert result.exit_code == 1 and why in result.stderr
    assert target.read_bytes() == b"before" and (tmp_path / "a-file").read_bytes() == b"kept"
    assert (tmp_path / "pipe").is_fifo()
    events = [json.loads(line)["action"] for line in mss("audit", "export").stdout.splitlines()]
    assert "message.export" not in events and "account.export-key" not in events
    mss("message", "export", accepted.queue_id, "--for", GP, "--out", str(target))
    assert b"application/pkcs7-mime" in target.read_bytes()


def test_pki_issue_and_revoke(mss, settings):
    mss("directory", "import", str(SAMPLE_EXTRACT))
    p12 = settings.storage.data_dir / "gp.p12"
    issued = mss("pki", "issue", GP, "--out", str(p12), "--password-stdin", input="export passphrase\n")
    assert "issued certificate" in issued.stdout
    assert oct(p12.stat().st_mode & 0o777) == "0o600"
    chain = subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-nokeys", "-passin", "pass:export passphrase"],
        capture_output=True,
        text=True,
    )
    assert chain.returncode == 0 and GP in chain.stdout
    leaf = subprocess.run(["openssl", "x509", "-noout", "-text"], input=chain.stdout, capture_output=True, text=True)
    assert "E-mail Protection" in leaf.stdout
    mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n")
    refused = mss("pki", "issue", DOCTOR, "--out", str(p12), "--password-stdin", input="export passphrase\n", ok=False)
    assert "has an account" in refused.stderr
    assert "certificate" in mss("directory", "show", GP).stdout
    mss("pki", "revoke", GP, "--reason", "keyCompromise")
    crl = subprocess.run(
        ["openssl", "crl", "-in", str(settings.pki.certs_dir / "ca.crl.pem"), "-noout", "-text"],
        capture_output=True,
        text=True,
    )
    assert crl.returncode == 0 and "Serial Number" in crl.stdout


def test_a_revocation_whose_crl_cannot_be_written_holds_and_says_so(mss, settings):
    """The revocation is committed before its CRL is written: a CRL file that cannot be
    written does not undo it nor report it failed as if nothing was done. The command says
    what is done and what is not (exit 1), and `mss pki crl` publishes the list later."""
    mss("directory", "import", str(SAMPLE_EXTRACT))
    p12 = settings.storage.data_dir / "gp.p12"
    issued = mss("pki", "issue", GP, "--out", str(p12), "--password-stdin", input="export passphrase\n").stdout
    serial = re.search(r"issued certificate ([0-9A-Fa-f]+)", issued).group(1).upper()
    crl_file = settings.pki.certs_dir / "ca.crl.pem"
    published = crl_file.read_bytes()
    crl_file.unlink()
    crl_file.mkdir()  # a CRL that cannot be written (even by root): a folder in its place
    try:
        revoked = mss("pki", "revoke", GP, "--reason", "keyCompromise", ok=False)
    finally:
        crl_file.rmdir()
        crl_file.write_bytes(published)
    assert revoked.exit_code == 1
    assert f"revoked certificate {serial.lower()}" in revoked.stdout
    assert "the revocation is done" in revoked.stderr and "mss pki crl" in revoked.stderr
    assert "revoked" in mss("directory", "show", GP).stdout
    listed = subprocess.run(
        ["openssl", "crl", "-in", str(crl_file), "-noout", "-text"], capture_output=True, text=True, check=True
    )
    assert serial not in listed.stdout.replace(":", "").upper()
    # Run again, nothing is left to revoke; `mss pki crl` publishes what the directory holds.
    assert "no certificate left to revoke" in mss("pki", "revoke", GP).stdout
    never = mss("pki", "revoke", "nobody@medecin.mss.test", ok=False)
    assert never.exit_code == 1 and "none was ever issued" in never.stderr
    assert "1 revoked certificate(s)" in mss("pki", "crl").stdout
    listed = subprocess.run(
        ["openssl", "crl", "-in", str(crl_file), "-noout", "-text"], capture_output=True, text=True, check=True
    )
    assert serial in listed.stdout.replace(":", "").upper()


def test_an_issued_key_that_cannot_be_written_issues_nothing(mss, rt, tmp_path):
    """The key's only copy is on disk before its certificate is committed; a certificate
    that is not committed leaves the file that was there as it was."""
    from db_faults import refused

    mss("directory", "import", str(SAMPLE_EXTRACT))
    keys = tmp_path / "keys"
    folder = keys / "gp.p12"
    folder.mkdir(parents=True)
    unwritable = Path("/proc/mss-test/gp.p12")  # not even root makes a folder there
    for place in (folder, unwritable):
        failed = mss("pki", "issue", GP, "--out", str(place), "--password-stdin", input="export passphrase\n", ok=False)
        assert failed.exit_code == 1
        assert f"cannot write {place}" in failed.stderr and "nothing was issued" in failed.stderr, failed.stderr
    assert "certificate" not in mss("directory", "show", GP).stdout
    earlier = keys / "earlier.p12"
    earlier.write_bytes(b"an earlier key")
    with refused(rt.engine, "certificate", "INSERT"):
        failed = mss(
            "pki", "issue", GP, "--out", str(earlier), "--password-stdin", input="export passphrase\n", ok=False
        )
    assert failed.exit_code == 1 and earlier.read_bytes() == b"an earlier key"
    assert sorted(p.name for p in keys.iterdir()) == ["earlier.p12", "gp.p12"]  # nothing left pending
    mss("pki", "issue", GP, "--out", str(earlier), "--password-stdin", input="export passphrase\n")
    assert earlier.read_bytes() != b"an earlier key" and oct(earlier.stat().st_mode & 0o777) == "0o600"


def test_a_database_failure_is_one_line_not_a_traceback(mss, rt):
    """The statement's values (a password's hash) never reach the terminal."""
    from db_faults import refused

    mss("directory", "import", str(SAMPLE_EXTRACT))
    with refused(rt.engine, "account", "INSERT"):
        failed = mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n", ok=False)
    assert failed.exit_code == 1 and "error: the database failed (" in failed.stderr
    assert "argon2id" not in failed.stdout + failed.stderr and "Traceback" not in failed.stdout + failed.stderr
    assert "otpauth://" in mss("account", "create", DOCTOR, "--password-stdin", input="first passphrase ok\n").stdout


def test_demo_creates_three_accounts_once(mss):
    first = mss("demo", "--if-empty")
    assert first.stdout.count("otpauth://totp/") == 3
    second = mss("demo", "--if-empty")
    assert "already loaded" in second.stdout


@pytest.mark.sqlite_only
def test_console_script_reads_password_from_stdin(env, dev_pki):
    mss_bin = Path(sys.executable).with_name("mss")
    full_env = {**os.environ, **env}
    subprocess.run(
        [str(mss_bin), "directory", "import", str(SAMPLE_EXTRACT)], env=full_env, check=True, capture_output=True
    )
    created = subprocess.run(
        [str(mss_bin), "account", "create", GP, "--password-stdin"],
        env=full_env,
        input="piped passphrase ok\n",
        capture_output=True,
        text=True,
    )
    assert created.returncode == 0, created.stderr
    assert "otpauth://totp/" in created.stdout
    help_text = subprocess.run(
        [str(mss_bin), "account", "create", "--help"], env=full_env, capture_output=True, text=True
    )
    assert "--password " not in help_text.stdout


# -- listings, help, exports -------------------------------------------------------------


def _commands(group, prefix=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_help_shows_boolean_options_as_flags(mss):
    import typer.main

    from cli.main import app

    flags = 0
    for path, command in _commands(typer.main.get_command(app)):
        text = mss(*path, "--help").stdout
        assert "<bool>" not in text, (path, text)
        for param in command.params:
            if getattr(param, "is_flag", False):
                flags += 1
                line = next(line for line in text.splitlines() if param.opts[0] in line)
                # The flag's help follows its name directly, with no value placeholder.
                assert re.match(rf"^\s+{re.escape(param.opts[0])}\s+[A-Z]", line), (path, line)
    assert flags >= 8


def test_directory_search_prints_the_total_or_no_match(mss):
    mss("directory", "import", str(SAMPLE_EXTRACT))
    found = mss("directory", "search", "rouen", "--per-page", "5")
    total = int(re.search(r"(\d+) matches, page 1 of (\d+) \(more with --page\)", found.stdout).group(1))
    assert total > 5
    as_json = mss("directory", "search", "rouen", "--per-page", "200", "--format", "json")
    rows = json.loads(as_json.stdout)
    assert len(rows) == total and all(r["status"] == "active" for r in rows)
    assert f"{total} matches" in as_json.stderr
    as_csv = mss("directory", "search", "robert marc", "--format", "csv").stdout.splitlines()
    assert as_csv[0] == "address,name,rpps,profession,organisation,city,status"
    assert as_csv[1].startswith(DOCTOR + ",Dr Marc ROBERT,")
    nothing = mss("directory", "search", "zzzyyyxxx")
    assert "no match for 'zzzyyyxxx'" in nothing.stdout and "┃" not in nothing.stdout
    assert json.loads(mss("directory", "search", "zzzyyyxxx", "--format", "json").stdout) == []
    beyond = mss("directory", "search", "rouen", "--page", "99")
    assert f"{total} matches, page 99 of" in beyond.stdout and "no entry on this page" in beyond.stdout
    bad = mss("directory", "search", "rouen", "--format", "xml", ok=False)
    assert bad.exit_code == 2 and "'xml' is not one of" in bad.stderr
    too_long = mss("directory", "search", "x" * 300, ok=False)
    assert too_long.exit_code == 1 and "longer than 200 characters" in too_long.stderr


def test_directory_list_with_filters(mss):
    mss("directory", "import", str(SAMPLE_EXTRACT))
    everyone = json.loads(mss("directory", "list", "--per-page", "500", "--format", "json").stdout)
    assert everyone and [r["address"] for r in everyone] == sorted(r["address"] for r in everyone)
    orgs = json.loads(mss("directory", "list", "--kind", "org", "--format", "json").stdout)
    assert orgs and all(r["kind"] == "ORG" for r in orgs)
    in_evreux = json.loads(mss("directory", "list", "--city", "evreux", "--format", "json").stdout)
    assert in_evreux and all(r["city"] == "ÉVREUX" for r in in_evreux)
    assert GP in {r["address"] for r in in_evreux}
    # Names as people write them: a title (Dr, Pr) from the data, never "M Éloïse".
    names = {r["address"]: r["name"] for r in everyone}
    assert names[GP] == "Éloïse FOURNIER" and names[DOCTOR] == "Dr Marc ROBERT"
    assert not any(name.startswith(("M ", "Mme ", "MME ")) for name in names.values())
    by_postcode = json.loads(mss("directory", "list", "--city", "27", "--format", "json", "--per-page", "500").stdout)
    assert {r["address"] for r in in_evreux} <= {r["address"] for r in by_postcode}
    gps = json.loads(mss("directory", "list", "--profession", "médecine générale", "--format", "json").stdout)
    assert GP in {r["address"] for r in gps} and all(r["skill"] == "Qualifié en Médecine Générale" for r in gps)
    doctors = json.loads(mss("directory", "list", "--profession", "10", "--per-page", "500", "--format", "json").stdout)
    assert {r["address"] for r in gps} <= {r["address"] for r in doctors}
    chu = json.loads(
        mss(
            "directory",
            "list",
            "--organisation",
            "hospitalier demo",
            "--domain",
            "chu-demo.mss.test",
            "--per-page",
            "500",
            "--format",
            "json",
        ).stdout
    )
    assert DOCTOR in {r["address"] for r in chu} and all(r["address"].endswith("@chu-demo.mss.test") for r in chu)
    mss("directory", "revoke", DOCTOR, "--reason", "left")
    revoked = mss("directory", "list", "--status", "revoked")
    assert DOCTOR in revoked.stdout and "1 entry, page 1 of 1" in revoked.stdout
    assert DOCTOR not in mss("directory", "list", "--per-page", "500").stdout
    table = mss("directory", "list", "--per-page", "2")
    assert re.search(r"\d+ entries, page 1 of \d+ \(more with --page\)", table.stdout)
    assert "no match" in mss("directory", "list", "--city", "nowhereville").stdout
    for args, message in (
        (("--kind", "robot"), "unknown kind 'robot'"),
        (("--status", "sleeping"), "unknown status 'sleeping'"),
        (("--domain", "not a domain"), "is not a mail domain"),
        (("--city", "!!!"), "needs at least one letter or digit"),
    ):
        bad = mss("directory", "list", *args, ok=False)
        assert bad.exit_code == 1 and message in bad.stderr, (args, bad.stderr)
    zero = mss("directory", "list", "--page", "0", ok=False)
    assert zero.exit_code == 2 and "--page" in zero.stderr


def test_account_list(mss, rt):
    from mss import accounts

    mss("directory", "import", str(SAMPLE_EXTRACT))
    assert "no match" in mss("account", "list").stdout
    for address in (DOCTOR, GP):
        mss("account", "create", address, "--password-stdin", input="first passphrase ok\n")
    accounts.authenticate(rt.engine, rt.settings, DOCTOR, "first passphrase ok", accounts.Origin("web"))
    mss("account", "disable", GP)
    rows = {r["address"]: r for r in json.loads(mss("account", "list", "--format", "json").stdout)}
    assert rows[DOCTOR]["state"] == "active" and rows[DOCTOR]["two_factor"] is False
    assert rows[DOCTOR]["last_login"] and rows[GP]["last_login"] is None
    assert rows[DOCTOR]["certificate_not_after"][:4].isdigit()
    assert rows[GP]["state"] == "disabled"
    table = mss("account", "list").stdout
    assert "2 accounts" in table and "disabled" in table and "certificate until" in table
    as_csv = mss("account", "list", "--format", "csv", "--state", "disabled").stdout.splitlines()
    assert as_csv[0] == "address,state,two_factor,certificate_not_after,last_login,reason"
    assert len(as_csv) == 2 and as_csv[1].startswith(GP + ",disabled,no,")
    bad = mss("account", "list", "--state", "asleep", ok=False)
    assert bad.exit_code == 1 and "unknown state 'asleep'" in bad.stderr


def test_message_export_is_in_the_audit_trail(mss, rt, tmp_path):
    from web_support import create_person, submit

    mss("directory", "import", str(SAMPLE_EXTRACT))
    doctor = create_person(rt, DOCTOR)
    create_person(rt, GP)
    accepted = submit(rt, doctor, [GP], "Compte rendu", "Bonjour")
    out = tmp_path / "message.eml"
    mss("message", "export", accepted.queue_id, "--for", GP, "--out", str(out))
    assert b"application/pkcs7-mime" in out.read_bytes()
    events = [json.loads(line) for line in mss("audit", "export").stdout.splitlines()]
    exports = [e for e in events if e["action"] == "message.export"]
    assert len(exports) == 1
    assert exports[0]["actor"].startswith("cli") and exports[0]["object"] == accepted.queue_id
    assert json.loads(exports[0]["detail"]) == {"reader": GP}  # who it was exported for
    stranger = mss(
        "message",
        "export",
        accepted.queue_id,
        "--for",
        "joel.michel@medecin.mss.test",
        "--out",
        str(tmp_path / "no.eml"),
        ok=False,
    )
    assert stranger.exit_code == 1 and "no message" in stranger.stderr and not (tmp_path / "no.eml").exists()
    unknown = mss("message", "export", "NOSUCHQUEUEID", "--for", GP, "--out", str(tmp_path / "no.eml"), ok=False)
    assert unknown.exit_code == 1 and "no message" in unknown.stderr
    traced = json.loads(mss("trace", accepted.queue_id, "--format", "json").stdout)
    assert traced["queue_id"] == accepted.queue_id and traced["sender"] == DOCTOR
    assert [d["recipient"] for d in traced["deliveries"]] == [GP]
    assert "message.export" in [e["action"] for e in traced["events"]]
    as_csv = mss("trace", accepted.queue_id, "--format", "csv").stdout.splitlines()
    assert as_csv[0] == "at,action,actor,outcome,detail" and any(",message.submit," in line for line in as_csv)
    table = mss("trace", accepted.queue_id).stdout
    assert "message.submit" in table and f"{GP}: delivered" in table
    assert mss("trace", accepted.queue_id, "--format", "yaml", ok=False).exit_code == 2
    missing = mss("trace", "NOSUCHQUEUEID", ok=False)
    assert missing.exit_code == 1 and "no message" in missing.stderr
    assert "intact" in mss("audit", "verify").stdout


@pytest.mark.parametrize(
    ("part", "taken_port", "more"),
    [
        ("imap", "MSS_IMAP_PORT", {"MSS_IMAP_HOST": "127.0.0.1", "MSS_IMAPS_PORT": "0"}),
        # Beside the submission door run the outbound deliveries and housekeeping, which
        # never end on their own: the door's failure must stop them.
        ("relay", "MSS_SMTP_PORT", RELAY_ALONE),
        ("relay", "MSS_SMTP_PORT", {**RELAY_ALONE, "MSS_SMTP_PROCESSES": "2"}),
    ],
)
def test_serve_ends_with_the_error_of_a_door_that_cannot_listen(env, dev_pki, part, taken_port, more):
    # The door's port is taken: `mss serve` must end with that error rather than stay up
    # without it (a supervisor then sees it and says why). With several processes on the
    # submission port, it must not join one that another program holds.
    mss_bin = Path(sys.executable).with_name("mss")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        full_env = {**os.environ, **env, **more, taken_port: str(port)}
        ended = subprocess.run([str(mss_bin), "serve", part], env=full_env, capture_output=True, text=True, timeout=120)
    assert ended.returncode != 0
    assert "in use" in ended.stderr, ended.stderr[-2000:]


def _private_mib(pid: int) -> float:
    rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(int(line.split()[1]) for line in rollup if line.startswith(("Private_Clean:", "Private_Dirty:"))) / 1024


def test_a_relay_process_does_not_import_what_only_its_workers_or_peers_need() -> None:
    """pypdf is imported where a PDF is read (the document workers), httpx at the first
    fetch from a peer's publication: a relay process holds neither (7 and 5 MiB)."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, mss.relay.__main__; print(sorted(set(sys.modules) & {'pypdf', 'httpx'}))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "[]", imported.stdout


def test_serve_relay_imports_neither_the_web_nor_the_imap_door(env, dev_pki, tmp_path):
    # `mss serve relay` imports the code of the parts it runs, not that of the web inbox or
    # the IMAP server (about 17 MiB), nor the MX door's when that door is off (11 MiB).
    # Python names every module it imports, in every process of the tree, when
    # PYTHONPROFILEIMPORTTIME is set. The command line's own modules (about 6 MiB) are gone
    # once it serves: the process has become `python -m mss.serve relay` (os.execv).
    smtp = free_port()
    full_env = {**os.environ, **env, **RELAY_ALONE, "MSS_SMTP_PORT": str(smtp), "PYTHONPROFILEIMPORTTIME": "1"}
    log = tmp_path / "serve.log"
    server = start_server([str(Path(sys.executable).with_name("mss")), "serve", "relay"], full_env, log, smtp)
    serving = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    assert serving == [sys.executable.encode(), b"-P", b"-m", b"mss.serve", b"relay"], serving
    server.terminate()
    server.wait(timeout=60)
    imported = {
        line.rpartition("|")[2].strip() for line in log.read_text().splitlines() if line.startswith("import time:")
    }
    assert {"mss.relay", "mss.pipeline", "mss.outbound.worker"} <= imported
    held = imported & {"mss.web.server", "litestar", "mss.imap.server", "mss.relay.mx"}
    assert not held, held


def test_serve_workers_hold_nothing_of_the_doors_or_the_command_line(env, dev_pki, tmp_path):
    # `mss serve` runs as a script, and multiprocessing sets up each worker's __main__ by
    # running that script again: it must not import the command line then. The fork server,
    # one for both pools (document checks, IMAP envelopes), imports each pool's module
    # before it forks, and that module imports neither its door nor the services. A worker
    # that imports them itself holds them on its own pages: 48 MiB a worker, against 4.
    smtp, web, imap = free_port(), free_port(), free_port()
    full_env = {
        **os.environ,
        **env,
        "MSS_SMTP_HOST": "127.0.0.1",
        "MSS_SMTP_PORT": str(smtp),
        "MSS_WEB_HOST": "127.0.0.1",
        "MSS_WEB_PORT": str(web),
        "MSS_IMAP_HOST": "127.0.0.1",
        "MSS_IMAP_PORT": str(imap),
        "MSS_IMAPS_PORT": "0",
        "MSS_MX_PORT": "0",
    }
    server = start_server([str(Path(sys.executable).with_name("mss")), "serve"], full_env, tmp_path / "serve.log", smtp)
    try:
        expected = document_workers.WORKERS + imap_workers.WORKERS
        workers: list[int] = []
        for _ in range(600):  # both pools start before their door listens; this only waits for the IMAP one
            running = processes()
            fork_servers = [
                p for p in children(server.pid, running) if b"forkserver" in (running[p][1] / "cmdline").read_bytes()
            ]
            workers = [w for f in fork_servers for w in children(f, running)]
            if len(workers) == expected:
                break
            time.sleep(0.1)
        assert len(fork_servers) == 1 and len(workers) == expected, (fork_servers, workers)
        # What the fork server was told to import (multiprocessing passes it on its command
        # line): both pools' modules, whichever pool started it.
        told = (running[fork_servers[0]][1] / "cmdline").read_bytes()
        assert b"'mss.documents'" in told and b"'mss.imap.workers'" in told, told
        assert b"'mss.documents.pdf_reading'" in told, told  # pypdf, imported by the workers only
        private = [_private_mib(worker) for worker in workers]
        assert max(private) < 20, private
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_arguments_out_of_reach_get_one_line_each(mss, env):
    """An argument that was not UTF-8 (its bytes kept as surrogates), a page past any
    listing, a month outside the calendar, a retention past any date: one line, no
    traceback, nothing done."""
    for command in (
        ("account", "disable", "x\udcffy@mss.test"),
        ("pki", "revoke", "x\udcffy@mss.test"),
        ("queue", "retry", "\udcff"),
        ("trace", "\udcff"),
    ):
        result = mss(*command, ok=False)
        assert result.exit_code == 2 and "is not valid UTF-8" in result.stderr, command
    for command in (
        ("directory", "search", "robert", "--page", "9223372036854775807"),
        ("directory", "list", "--page", "100001"),
    ):
        result = mss(*command, ok=False)
        assert result.exit_code == 2 and "--page" in result.stderr and "Traceback" not in result.stderr, command
    for month in ("0000-01", "9999-12"):
        result = mss("report", "indicators", "--month", month, ok=False)
        assert result.exit_code == 1 and "outside the calendar" in result.stderr
    env["MSS_AUDIT_RETENTION_DAYS"] = "99999999999"
    result = mss("audit", "purge", ok=False)
    assert result.exit_code != 0 and "MSS_AUDIT_RETENTION_DAYS must be 0 to 36500" in result.stderr


def test_an_audit_purge_keeps_what_the_retention_keeps(mss):
    """`mss audit purge --before` a date within MSS_AUDIT_RETENTION_DAYS deletes nothing and
    says which date it may give; the purge that runs is the operator's, in the trail."""
    mss("directory", "import", str(SAMPLE_EXTRACT))
    refused = mss("audit", "purge", "--before", f"{datetime.now(UTC):%Y-%m-%d}", ok=False)
    assert refused.exit_code == 1 and "MSS_AUDIT_RETENTION_DAYS=183" in refused.stderr
    assert "directory.import" in mss("audit", "export").stdout
    assert "purged 0 events" in mss("audit", "purge").stdout
    purge = [json.loads(line) for line in mss("audit", "export").stdout.splitlines()][-1]
    assert purge["action"] == "audit.purge" and purge["actor"].startswith("cli")


def test_a_command_that_makes_a_new_database_says_so(mss, env, tmp_path):
    """A first run makes the database; a mistyped MSS_DATABASE_URL would make another one
    silently, and a directory imported into it would be lost to the service: it is said."""
    elsewhere = tmp_path / "typo" / "mss.db"
    env["MSS_DATABASE_URL"] = f"sqlite:///{elsewhere}"
    first = mss("account", "list")
    assert f"note: there was no database at {elsewhere}" in first.stderr and elsewhere.exists()
    assert "no database" not in mss("account", "list").stderr


def test_a_file_the_system_refuses_is_one_line(mss, env, tmp_path):
    """A data folder the system will not write (here: a file where a folder should be) is
    named with the system's reason, without a traceback."""
    (tmp_path / "a-file").write_bytes(b"")
    env["MSS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'a-file' / 'mss.db'}"
    result = mss("account", "list", ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and str(tmp_path / "a-file") in result.stderr, result.stderr
