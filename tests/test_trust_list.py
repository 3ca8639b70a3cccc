"""The trust list: the published "liste blanche" imported, kept by hand, audited, and the
boundary it draws at the submission door (other operators' entries reachable only when
their domain is listed; anything else refused at RCPT, never relayed)."""

from __future__ import annotations

import json
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from federation_support import A_DOMAIN, A_USERS, Operator, Services, build_operator, write_peer_cas
from sqlalchemy import select

from directory import service
from mss import trust
from mss.db import session_scope
from mss.models import AuditEvent

from cli_support import invoke

SAMPLES = Path(__file__).resolve().parent / "samples" / "trust"
MARC = A_USERS[0]


@pytest.fixture(scope="module")
def operator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    a = build_operator(tmp_path_factory.mktemp("trust"), "a", A_DOMAIN, A_USERS)
    write_peer_cas(a)
    a.services = Services(a, worker=False).start()
    try:
        yield a
    finally:
        a.close()


def mss(operator: Operator, *args: str, ok: bool = True):
    return invoke(operator.env, *args, ok=ok)


def listed(operator: Operator) -> dict[str, dict]:
    rows = [
        json.loads(line)
        for line in mss(operator, "trust", "list", "--json").stdout.splitlines()
        if line.startswith("{")
    ]
    return {row["domain"]: row for row in rows}


def events(operator: Operator, prefix: str) -> list[tuple[str, str]]:
    with session_scope(operator.rt.engine) as session:
        rows = (
            session.execute(select(AuditEvent).where(AuditEvent.action.startswith(prefix)).order_by(AuditEvent.seq))
            .scalars()
            .all()
        )
    return [(row.action, row.object) for row in rows]


def rcpt(operator: Operator, address: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", operator.smtp_port, timeout=30) as client:
        client.starttls(context=operator.client_context())
        client.login(MARC, operator.people[MARC].password)
        client.mail(MARC)
        return client.rcpt(address)


def test_import_the_published_list(operator: Operator) -> None:
    result = mss(operator, "trust", "import", str(SAMPLES / "liste_blanche_sample.xml"))
    # Six domains published; ours (written in capitals in the file) is not another operator's:
    # skipped, not a defect of the file (the national list names every operator's domains).
    assert "added 5, already listed 0, removed 0, served here 1, rejected 0" in result.stdout
    line = next(
        n
        for n, text in enumerate((SAMPLES / "liste_blanche_sample.xml").read_text().splitlines(), 1)
        if "CHU-Demo" in text
    )
    assert f"line {line}: chu-demo.mss.test is served here: skipped" in result.stdout
    domains = listed(operator)
    assert set(domains) == {
        "medecin.mss.test",
        "pharmacie.mss.test",
        "infirmier.mss.test",
        "ch-exemple.mssante.fr",
        "ght-littoral.mssante.fr",
    }
    assert {row["source"] for row in domains.values()} == {"list"}
    again = mss(operator, "trust", "import", str(SAMPLES / "liste_blanche_sample.xml"))
    assert "added 0, already listed 5" in again.stdout
    assert ("trust.import", "trust-list") in events(operator, "trust.")
    assert ("trust.add", "medecin.mss.test") in events(operator, "trust.")


def test_defective_entries_are_reported_by_line(operator: Operator, tmp_path: Path) -> None:
    result = mss(operator, "trust", "import", str(SAMPLES / "liste_blanche_defects.xml"), ok=False)
    assert result.exit_code == 3  # the good entries listed, the others reported by line
    assert "line 7: 'not a domain!' is not a domain name" in result.stderr
    assert "line 9: a Domaine entry must have exactly one Nom" in result.stderr
    assert "line 12: '-leading-hyphen.mss.test' is not a domain name" in result.stderr
    assert "line 15: 'localhost' is not a domain name" in result.stderr
    assert "rejected 4" in result.stdout
    for name, content, words in (
        ("garbage.xml", b"this is not XML", "not well-formed XML"),
        (
            "xxe.xml",
            b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"><Domaine><Nom>&x;</Nom></Domaine>'
            b"</ListeBlanche>",
            "DOCTYPE",
        ),
        ("other.xml", b"<list><Domaine><Nom>evil.example</Nom></Domaine></list>", "not in the MSSant"),
        ("empty.xml", b'<ListeBlanche xmlns="https://listeblanche.mssante.fr/schema"/>', "names no domain"),
    ):
        (tmp_path / name).write_bytes(content)
        refused = mss(operator, "trust", "import", str(tmp_path / name), ok=False)
        assert refused.exit_code == 1 and words in refused.stderr and "Traceback" not in refused.stderr
    missing = mss(operator, "trust", "import", str(tmp_path / "absent.xml"), ok=False)
    assert missing.exit_code == 1 and "cannot read" in missing.stderr
    assert "evil.example" not in listed(operator)


def test_by_hand_and_prune(operator: Operator, tmp_path: Path) -> None:
    assert "added ght-ouest.mssante.fr" in mss(operator, "trust", "add", "GHT-Ouest.MSSante.fr.").stdout
    assert "already on the trust list" in mss(operator, "trust", "add", "ght-ouest.mssante.fr", ok=False).stderr
    assert "served here" in mss(operator, "trust", "add", A_DOMAIN, ok=False).stderr
    assert "not a domain name" in mss(operator, "trust", "add", "bad_domain", ok=False).stderr
    route = mss(
        operator,
        "trust",
        "route",
        "medecin.mss.test",
        "127.0.0.1:2526",
        "--certificates",
        "http://127.0.0.1:8081/pki/certificates",
    )
    assert "medecin.mss.test -> 127.0.0.1:2526" in route.stdout
    assert listed(operator)["medecin.mss.test"]["route"] == "127.0.0.1:2526"
    assert listed(operator)["medecin.mss.test"]["certificates"] == "http://127.0.0.1:8081/pki/certificates/"
    assert "not HOST:PORT" in mss(operator, "trust", "route", "medecin.mss.test", "nowhere", ok=False).stderr
    assert "between 1 and 65535" in mss(operator, "trust", "route", "medecin.mss.test", "h.test:70000", ok=False).stderr
    assert (
        "http://"
        in mss(
            operator, "trust", "route", "medecin.mss.test", "h.test:25", "--certificates", "ftp://x", ok=False
        ).stderr
    )
    with_password = ("--certificates", "https://user:secret@h.test/pki/certificates")
    said = mss(operator, "trust", "route", "medecin.mss.test", "h.test:25", *with_password, ok=False)
    assert "no user name or password" in said.stderr and "secret" not in said.stdout + said.stderr
    assert listed(operator)["medecin.mss.test"]["route"] == "127.0.0.1:2526"  # the route as it was
    # A newer list without pharmacie: --prune drops it, not the domain added by hand.
    newer = (
        (SAMPLES / "liste_blanche_sample.xml")
        .read_text()
        .replace("<Nom>pharmacie.mss.test</Nom>", "<Nom>ch-nouveau.mssante.fr</Nom>")
    )
    (tmp_path / "newer.xml").write_text(newer)
    pruned = mss(operator, "trust", "import", str(tmp_path / "newer.xml"), "--prune")
    assert "added 1, already listed 4, removed 1" in pruned.stdout
    domains = listed(operator)
    assert "pharmacie.mss.test" not in domains and "ght-ouest.mssante.fr" in domains
    assert domains["ght-ouest.mssante.fr"]["source"] == "manual"
    assert "removed ght-ouest.mssante.fr" in mss(operator, "trust", "remove", "ght-ouest.mssante.fr").stdout
    assert "not on the trust list" in mss(operator, "trust", "remove", "ght-ouest.mssante.fr", ok=False).stderr
    assert "has no route now" in mss(operator, "trust", "route", "medecin.mss.test", "--remove").stdout
    recorded = events(operator, "trust.")
    for event in (
        ("trust.add", "ght-ouest.mssante.fr"),
        ("trust.remove", "pharmacie.mss.test"),
        ("trust.route", "medecin.mss.test"),
        ("trust.unroute", "medecin.mss.test"),
        ("trust.remove", "ght-ouest.mssante.fr"),
    ):
        assert event in recorded


def test_the_trust_list_draws_the_boundary_at_rcpt(operator: Operator) -> None:
    with session_scope(operator.rt.engine) as session:
        if trust.is_trusted(session, "pharmacie.mss.test"):
            trust.remove(session, "pharmacie.mss.test", actor="test")
    # pharmacie.mss.test is off the list: its directory entries are not reachable.
    assert rcpt(operator, "chloe.ndiaye@pharmacie.mss.test") == (
        550,
        b"5.7.1 Relay access denied: domain not served here",
    )
    assert rcpt(operator, "someone@example.org")[0] == 550
    mss(operator, "trust", "add", "pharmacie.mss.test")
    assert rcpt(operator, "chloe.ndiaye@pharmacie.mss.test")[0] == 250
    # Listed domain, but the directory still decides who exists and who stands.
    assert rcpt(operator, "nobody@pharmacie.mss.test") == (550, b"5.1.1 Recipient address is not in the directory")
    with session_scope(operator.rt.engine) as session:
        service.revoke_entry(session, "chloe.ndiaye@pharmacie.mss.test", reason="left", actor="test")
    assert rcpt(operator, "chloe.ndiaye@pharmacie.mss.test") == (
        550,
        b"5.7.1 Recipient address is revoked in the directory",
    )
