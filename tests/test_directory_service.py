"""Directory entries one at a time: look-up, the active check, add, revoke, reactivate, audit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.engine import Engine

from directory import certificates, service
from directory import revision as directory_revision
from directory.importer import import_extract
from directory.models import ACTIVE, INACTIVE, REVOKED, DirectoryEntry
from directory.search import search
from mss import audit, trust
from mss.db import read_scope, session_scope
from mss.errors import DirectoryError, RevokedAddress, UnknownAddress
from mss.models import AuditEvent

SAMPLE = "annuaire/Extraction_Correspondance_MSSante_sample.txt"
DOCTOR = "marc.robert@chu-demo.mss.test"
ADMIN = "admin@mss.test"
NEW_PERSON = "alice.bernard@medecin.mss.test"


@pytest.fixture
def directory(engine: Engine, samples: Path) -> Engine:
    import_extract(engine, samples / SAMPLE)
    return engine


def events(engine: Engine) -> list[tuple[str, str, str, dict[str, object]]]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(AuditEvent).where(AuditEvent.action.like("directory.%")).order_by(AuditEvent.seq)
        ).scalars()
        return [(e.action, e.actor, e.object, json.loads(e.detail)) for e in rows if e.action != "directory.import"]


def test_get_entry_ignores_case_and_blanks(directory: Engine) -> None:
    with session_scope(directory) as session:
        entry = service.get_entry(session, "  Marc.ROBERT@Chu-Demo.MSS.test ")
        assert entry is not None and entry.address == DOCTOR and entry.last_name == "ROBERT"
        assert service.get_entry(session, "nobody@chu-demo.mss.test") is None
        assert service.get_entry(session, "marc.robert@chu-demo.mss.test\x00") is None


def test_require_active(directory: Engine) -> None:
    with session_scope(directory) as session:
        assert service.require_active(session, DOCTOR.upper()).address == DOCTOR
        with pytest.raises(UnknownAddress) as unknown:
            service.require_active(session, "Nobody@CHU-demo.mss.test")
        assert unknown.value.address == "nobody@chu-demo.mss.test"
        assert str(unknown.value) == "nobody@chu-demo.mss.test is not in the directory"

        service.revoke_entry(session, DOCTOR, reason="struck off the register", actor=ADMIN)
        with pytest.raises(RevokedAddress) as revoked:
            service.require_active(session, DOCTOR)
        assert revoked.value.reason == "struck off the register"
        assert str(revoked.value) == f"{DOCTOR} is revoked in the directory: struck off the register"

        # An entry absent from the latest extract is refused like a revoked one.
        inactive = service.get_entry(session, "zoe.leroy@infirmier.mss.test")
        assert inactive is not None
        inactive.status = INACTIVE
        session.flush()
        with pytest.raises(RevokedAddress, match="no longer in the national directory extract"):
            service.require_active(session, "zoe.leroy@infirmier.mss.test")


def test_add_person_with_rpps_only(directory: Engine) -> None:
    with session_scope(directory) as session:
        entry = service.add_entry(
            session,
            actor=ADMIN,
            kind="PER",
            address=" Helene.Noel@Medecin.MSS.test ",
            rpps="10009999999",
            civility="DR",
            last_name="NOËL",
            first_name="Hélène",
            profession_code="10",
            profession_label="Médecin",
            org_name="Cabinet médical des Tilleuls",
            postal_code="27000",
            city="Évreux",
        )
        assert (entry.address, entry.rpps_type, entry.national_id) == (
            "helene.noel@medecin.mss.test",
            "8",
            "810009999999",
        )
        assert (entry.addr_l6, entry.city, entry.status) == ("27000 ÉVREUX", "ÉVREUX", ACTIVE)
        assert entry.search_text.startswith("noel helene | 10009999999 810009999999 ")
        assert len(entry.source_hash) == 64
    # Searchable at once, accents and case ignored.
    with session_scope(directory) as session:
        assert [e.address for e in search(session, "noel hel").items] == ["helene.noel@medecin.mss.test"]
        assert [e.address for e in search(session, "NOËL évreux").items] == ["helene.noel@medecin.mss.test"]
    assert events(directory) == [
        ("directory.add", ADMIN, "helene.noel@medecin.mss.test", {"kind": "PER", "rpps": "10009999999"})
    ]


def test_add_organisation_and_adeli(directory: Engine) -> None:
    with session_scope(directory) as session:
        org = service.add_entry(
            session,
            actor=ADMIN,
            kind="ORG",
            address="accueil@chu-demo.mss.test",
            service="Accueil des urgences",
            org_id_type="1",
            org_id="1760000001",
            org_name="Centre Hospitalier Universitaire de Démo",
            addr_l6="76031 ROUEN CEDEX",
            postal_code="76031",
        )
        assert (org.kind, org.rpps, org.city) == ("ORG", "", "ROUEN CEDEX")
        nurse = service.add_entry(
            session,
            actor=ADMIN,
            kind="PER",
            address="ines.santoni@infirmier.mss.test",
            rpps="2A1234567",
            last_name="SANTONI",
            first_name="Inès",
        )
        assert (nurse.rpps_type, nurse.national_id) == ("0", "02A1234567")
    with session_scope(directory) as session:
        assert search(session, "accueil urgences").items[0].address == "accueil@chu-demo.mss.test"


REFUSED_ADDITIONS = [
    ({"address": DOCTOR}, f"{DOCTOR} is already in the directory"),
    ({"address": DOCTOR.upper()}, f"{DOCTOR} is already in the directory"),
    ({"address": "not-an-address"}, "invalid mailbox address 'not-an-address'"),
    ({"kind": "XYZ"}, "unknown mailbox type 'XYZ'"),
    ({"rpps": "12AB"}, "neither an RPPS number \\(11 digits\\) nor an ADELI number"),
    ({"rpps": "12AB", "rpps_type": "4"}, "unknown identifier type '4'"),
    ({"rpps": "12AB", "rpps_type": "8"}, "malformed RPPS number '12AB'"),
    ({"last_name": ""}, "missing last name for a person"),
    ({"last_name": "X" * 201}, "is too long"),
    ({"colour": "blue"}, "unknown directory field"),
    ({"rpps": 10009999998}, "field rpps must be text"),
    ({"addr_l6": "76000 ROUEN", "city": "Évreux"}, "does not match the L6 line"),
]


def test_add_refuses_what_an_extract_line_would_be_refused_for(directory: Engine) -> None:
    for fields, message in REFUSED_ADDITIONS:
        values = {"kind": "PER", "address": "new.person@medecin.mss.test", "rpps": "10009999998", "last_name": "NEW"}
        values.update(fields)
        with session_scope(directory) as session:
            with pytest.raises(DirectoryError, match=message):
                service.add_entry(session, actor=ADMIN, **values)
    assert events(directory) == []


def test_revoke_and_reactivate(directory: Engine) -> None:
    with session_scope(directory) as session:
        entry = service.revoke_entry(session, DOCTOR.upper(), reason="  left the hospital ", actor=ADMIN)
        assert (entry.status, entry.status_reason) == (REVOKED, "left the hospital")
        assert entry.status_changed_at is not None
    with session_scope(directory) as session:
        assert search(session, "marc robert").items == []
        with pytest.raises(DirectoryError, match="already revoked"):
            service.revoke_entry(session, DOCTOR, reason="again", actor=ADMIN)
        entry = service.reactivate_entry(session, DOCTOR, actor=ADMIN)
        assert (entry.status, entry.status_reason) == (ACTIVE, "")
    with session_scope(directory) as session:
        assert [e.address for e in search(session, "marc robert").items] == [DOCTOR]
        with pytest.raises(DirectoryError, match="already active"):
            service.reactivate_entry(session, DOCTOR, actor=ADMIN)
    assert events(directory) == [
        ("directory.revoke", ADMIN, DOCTOR, {"reason": "left the hospital", "previous_status": "active"}),
        ("directory.reactivate", ADMIN, DOCTOR, {"previous_status": "revoked"}),
    ]


def test_inactive_entry_can_be_revoked_or_reactivated(directory: Engine) -> None:
    with session_scope(directory) as session:
        entry = service.get_entry(session, DOCTOR)
        assert entry is not None
        entry.status, entry.status_reason = INACTIVE, "absent from the directory extract"
        session.flush()
        assert service.reactivate_entry(session, DOCTOR, actor=ADMIN).status == ACTIVE
        entry.status = INACTIVE
        session.flush()
        assert service.revoke_entry(session, DOCTOR, reason="fraud", actor=ADMIN).status == REVOKED
    assert [e[3]["previous_status"] for e in events(directory)] == ["inactive", "inactive"]


def test_revoke_needs_a_reason(directory: Engine) -> None:
    for reason, message in (("", "needs a reason"), ("   ", "needs a reason"), ("x" * 501, "longer than 500")):
        with session_scope(directory) as session:
            with pytest.raises(DirectoryError, match=message):
                service.revoke_entry(session, DOCTOR, reason=reason, actor=ADMIN)
            assert service.require_active(session, DOCTOR).status == ACTIVE


def test_unknown_address_for_changes(directory: Engine) -> None:
    with session_scope(directory) as session:
        with pytest.raises(UnknownAddress):
            service.revoke_entry(session, "nobody@mss.test", reason="x", actor=ADMIN)
        with pytest.raises(UnknownAddress):
            service.reactivate_entry(session, "nobody@mss.test", actor=ADMIN)


def test_a_failed_transaction_leaves_neither_change_nor_event(directory: Engine) -> None:
    with pytest.raises(RuntimeError):
        with session_scope(directory) as session:
            service.revoke_entry(session, DOCTOR, reason="struck off", actor=ADMIN)
            raise RuntimeError("the caller failed after the revocation")
    with session_scope(directory) as session:
        assert service.require_active(session, DOCTOR).status == ACTIVE
        entry = session.execute(select(DirectoryEntry).where(DirectoryEntry.address == DOCTOR)).scalar_one()
        assert entry.status_reason == ""
    assert events(directory) == []


def test_events_are_on_the_audit_chain(directory: Engine) -> None:
    with session_scope(directory) as session:
        service.revoke_entry(session, DOCTOR, reason="struck off", actor=ADMIN)
        service.reactivate_entry(session, DOCTOR, actor=ADMIN)
    with session_scope(directory) as session:
        chain = list(session.execute(select(AuditEvent).order_by(AuditEvent.seq)).scalars())
    assert [e.action for e in chain] == ["directory.import", "directory.revoke", "directory.reactivate"]
    assert all(e.outcome == audit.SUCCESS for e in chain)
    assert [e.prev_hash for e in chain[1:]] == [e.hash for e in chain[:-1]]


def test_every_write_to_who_may_receive_moves_the_directory_revision(rt, directory_loaded) -> None:
    # The revision vouches for recipients' verdicts kept between look-ups (mss.pipeline):
    # each write to the entries, their certificates or the trust list moves it, whoever
    # writes and however; other writes leave it.
    engine, settings = rt.engine, rt.settings

    def revision() -> int:
        with read_scope(engine) as reader:
            return directory_revision.current(reader)

    def moves(write) -> None:
        before = revision()
        with session_scope(engine) as session:
            write(session)
        assert revision() > before, write

    assert revision() > 0  # the import wrote entries
    moves(
        lambda s: service.add_entry(s, actor=ADMIN, kind="PER", address=NEW_PERSON, rpps="10009999999", last_name="B")
    )
    moves(lambda s: service.revoke_entry(s, DOCTOR, reason="struck off", actor=ADMIN))
    moves(lambda s: service.reactivate_entry(s, DOCTOR, actor=ADMIN))
    moves(lambda s: certificates.issue_for_entry(s, settings, DOCTOR, actor=ADMIN))
    moves(lambda s: certificates.revoke_for_address(s, settings, DOCTOR, reason="keyCompromise", actor=ADMIN))
    moves(lambda s: s.execute(text("DELETE FROM certificate WHERE address = :a"), {"a": DOCTOR}))
    moves(
        lambda s: s.execute(
            text("UPDATE directory_entry SET status_reason = 'by hand' WHERE address = :a"), {"a": DOCTOR}
        )
    )
    moves(lambda s: trust.add(s, settings, "hopital-voisin.example", actor=ADMIN))
    moves(lambda s: trust.remove(s, "hopital-voisin.example", actor=ADMIN))
    # Not who may receive: the audit trail, an account's login time.
    before = revision()
    with session_scope(engine) as session:
        audit.record(session, actor=ADMIN, action="directory.test", object=DOCTOR)
        session.execute(text("UPDATE account SET last_login_at = NULL"))
    assert revision() == before
