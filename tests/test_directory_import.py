"""Import of the MSSanté extract: counts, idempotence, defects by line, prune, revocation, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from directory import service
from directory.extract import HEADER, LineError, ParsedLine, read_extract
from directory.importer import CHUNK_LINES, ImportSummary, import_extract
from directory.models import ACTIVE, INACTIVE, REVOKED, DirectoryEntry
from directory.search import search
from mss.db import session_scope
from mss.errors import ImportFileError
from mss.models import AuditEvent

SAMPLE = "annuaire/Extraction_Correspondance_MSSante_sample.txt"
DEFECTS = "annuaire/Extraction_Correspondance_MSSante_defects.txt"
HEADER_LINE = "|".join(HEADER)


def entries(engine: Engine) -> dict[str, DirectoryEntry]:
    with session_scope(engine) as session:
        return {e.address: e for e in session.execute(select(DirectoryEntry)).scalars()}


def audit_events(engine: Engine, action: str) -> list[AuditEvent]:
    with session_scope(engine) as session:
        return list(
            session.execute(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).scalars()
        )


def sample_lines(samples: Path) -> list[str]:
    return (samples / SAMPLE).read_text(encoding="utf-8").splitlines()


def write(path: Path, lines: list[str], *, ending: str = "\n", bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + ending.join(lines).encode("utf-8") + ending.encode())
    return path


def test_sample_import_counts(engine: Engine, samples: Path) -> None:
    summary = import_extract(engine, samples / SAMPLE, actor="admin@mss.test")

    # 64 data lines: 62 distinct addresses, cedric.leroy's line repeated twice at the end.
    assert (summary.lines, summary.added, summary.unchanged, summary.rejected) == (64, 62, 2, 0)
    assert (summary.updated, summary.reactivated, summary.deactivated) == (0, 0, 0)
    assert summary.errors == []
    rows = entries(engine)
    assert len(rows) == 62
    assert sorted(a for a, e in rows.items() if e.kind == "ORG") == [
        "secretariat@medecin.mss.test",
        "urgences.pediatriques@chu-demo.mss.test",
    ]
    assert all(e.status == ACTIVE for e in rows.values())

    chloe = rows["chloe.lefebvre@pharmacie.mss.test"]
    assert (chloe.last_name, chloe.first_name, chloe.rpps, chloe.national_id) == (
        "LEFÈBVRE",
        "Chloé",
        "10000584928",
        "810000584928",
    )
    assert (chloe.org_name, chloe.addr_l3, chloe.addr_street, chloe.postal_code) == (
        "Pharmacie du Vieux-Marché",
        "BP 12",
        "du Vieux-Marché",
        "76000",
    )
    assert chloe.city == "ROUEN" and chloe.addr_l6 == "76000 ROUEN"
    assert chloe.search_text.startswith("lefebvre chloe | 10000584928 810000584928 ")
    assert "pharmacien" in chloe.search_text and "vieux" in chloe.search_text
    assert len(chloe.source_hash) == 64
    assert rows["marc.robert@chu-demo.mss.test"].city == "ROUEN CEDEX"
    assert rows["eloise.bernard@medecin.mss.test"].city == "ÉVREUX"
    assert rows["urgences.pediatriques@chu-demo.mss.test"].search_text.startswith("urgences pediatriques centre ")


def test_second_import_changes_nothing(engine: Engine, samples: Path) -> None:
    import_extract(engine, samples / SAMPLE)
    before = {a: (e.updated_at, e.source_hash) for a, e in entries(engine).items()}

    again = import_extract(engine, samples / SAMPLE)

    assert (again.added, again.updated, again.unchanged, again.rejected, again.deactivated) == (0, 0, 64, 0, 0)
    assert {a: (e.updated_at, e.source_hash) for a, e in entries(engine).items()} == before


def test_modified_line_is_updated_and_searchable(engine: Engine, samples: Path, tmp_path: Path) -> None:
    import_extract(engine, samples / SAMPLE)
    lines = sample_lines(samples)
    index = next(i for i, line in enumerate(lines) if line.startswith("PER|zoe.leroy@"))
    lines[index] = lines[index].replace("|Infirmier|", "|Infirmière puéricultrice|")

    summary = import_extract(engine, write(tmp_path / "modified.txt", lines))

    assert (summary.added, summary.updated, summary.unchanged) == (0, 1, 63)
    zoe = entries(engine)["zoe.leroy@infirmier.mss.test"]
    assert zoe.profession_label == "Infirmière puéricultrice"
    assert "puericultrice" in zoe.search_text
    with session_scope(engine) as session:
        assert [e.address for e in search(session, "puéricult").items] == ["zoe.leroy@infirmier.mss.test"]


def test_defects_are_reported_by_line_and_good_lines_imported(engine: Engine, samples: Path) -> None:
    summary = import_extract(engine, samples / DEFECTS)

    assert summary.errors == [
        (3, "expected 31 columns, found 20"),
        (4, "invalid mailbox address 'not-an-address'"),
        (5, "unknown mailbox type 'XYZ' (expected PER or ORG)"),
        (6, "malformed RPPS number '12AB'"),
        (7, "blank line"),
        (8, "expected 31 columns, found 32"),
    ]
    assert (summary.lines, summary.added, summary.rejected) == (8, 2, 6)
    assert sorted(entries(engine)) == ["eloise.bernard@medecin.mss.test", "lea.bernard@medecin.mss.test"]


def test_reader_yields_line_errors_with_physical_numbers(samples: Path) -> None:
    items = list(read_extract(samples / DEFECTS))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("ParsedLine", 2),
        ("LineError", 3),
        ("LineError", 4),
        ("LineError", 5),
        ("LineError", 6),
        ("LineError", 7),
        ("LineError", 8),
        ("ParsedLine", 9),
    ]
    assert str(items[2]) == "line 4: invalid mailbox address 'not-an-address'"
    # The address of a line refused for another reason is kept (a prune must not drop it).
    assert isinstance(items[4], LineError) and items[4].address == "matheo.moreau@infirmier.mss.test"
    assert isinstance(items[0], ParsedLine) and items[0].city == "ÉVREUX"


LINE_DEFECTS = [
    (2, "4", "unknown identifier type '4' (expected 8 for RPPS or 0 for ADELI)"),
    (4, "899999999999", "national identifier '899999999999' does not match RPPS number '10000064199'"),
    (3, "1000006419", "malformed RPPS number '1000006419'"),
    (9, "", "missing last name for a person"),
    (1, "Éloïse@medecin.mss.test", "invalid mailbox address 'éloïse@medecin.mss.test'"),
    (1, "a b@medecin.mss.test", "invalid mailbox address 'a b@medecin.mss.test'"),
    (1, "x@localhost", "invalid mailbox address 'x@localhost'"),
    (1, "x@@mss.test", "invalid mailbox address 'x@@mss.test'"),
    (1, "a" * 65 + "@b.fr", "invalid mailbox address '" + "a" * 65 + "@b.fr'"),
    (1, "a" * 250 + "@b.fr", "column 'Adresse BAL' is too long (255 characters, at most 254)"),
    (9, "B" * 201, "column 'Nom d'exercice' is too long (201 characters, at most 200)"),
    (17, "ON", "column 'Dématérialisation' is too long (2 characters, at most 1)"),
    (9, "BER\tNARD", "control character in column 'Nom d'exercice'"),
    (9, "BER\x00NARD", "control character in column 'Nom d'exercice'"),
    (0, "", "missing mailbox type (expected PER or ORG)"),
]


def test_line_checks(engine: Engine, samples: Path, tmp_path: Path) -> None:
    template = sample_lines(samples)[1].split("|")
    lines = [HEADER_LINE]
    for column, value, _ in LINE_DEFECTS:
        values = list(template)
        values[column] = value
        lines.append("|".join(values))

    summary = import_extract(engine, write(tmp_path / "defects.txt", lines))

    assert summary.errors == [(n, reason) for n, (_, _, reason) in enumerate(LINE_DEFECTS, start=2)]
    assert entries(engine) == {}


def test_adeli_identifier_and_case_are_normalised(engine: Engine, samples: Path, tmp_path: Path) -> None:
    values = sample_lines(samples)[1].split("|")
    values[1], values[2], values[3], values[4] = " Eloise.Bernard@Medecin.MSS.test ", "0", "2A1234567", "02A1234567"
    summary = import_extract(engine, write(tmp_path / "adeli.txt", [HEADER_LINE, "|".join(values)]))
    assert summary.errors == [] and summary.added == 1
    entry = entries(engine)["eloise.bernard@medecin.mss.test"]
    assert (entry.rpps_type, entry.rpps, entry.national_id) == ("0", "2A1234567", "02A1234567")


def test_bom_and_crlf_are_accepted(engine: Engine, samples: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "windows.txt", sample_lines(samples), ending="\r\n", bom=True)
    summary = import_extract(engine, path)
    assert (summary.added, summary.unchanged, summary.errors) == (62, 2, [])
    assert entries(engine)["eloise.bernard@medecin.mss.test"].country == "France"


@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        (HEADER_LINE.replace("Adresse BAL", "Adresse"), "line 1: header column 2 is 'Adresse', expected 'Adresse BAL'"),
        ("Type de BAL|Adresse BAL", "line 1: the header has 2 columns, expected 31"),
        (None, "the file is empty"),
        ("\r".join([HEADER_LINE, "x|y"]), "line 1: the lines end with a bare CR"),
    ],
)
def test_bad_header_imports_nothing(
    engine: Engine, samples: Path, tmp_path: Path, first_line: str | None, message: str
) -> None:
    lines = sample_lines(samples)
    path = tmp_path / "bad.txt"
    if first_line is None:
        path.write_bytes(b"")
    else:
        write(path, [first_line, *lines[1:]])

    with pytest.raises(ImportFileError, match=message):
        import_extract(engine, path, actor="admin@mss.test")

    assert entries(engine) == {}
    failure = audit_events(engine, "directory.import")
    assert [(e.outcome, e.actor, e.object) for e in failure] == [("failure", "admin@mss.test", "bad.txt")]
    assert message in json.loads(failure[0].detail)["reason"]


def test_missing_file_is_an_import_file_error(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(ImportFileError, match="cannot open"):
        import_extract(engine, tmp_path / "absent.txt")


def test_header_not_utf8_is_refused(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(HEADER_LINE.encode("latin-1") + b"\n")
    with pytest.raises(ImportFileError, match="line 1: the header line is not valid UTF-8"):
        import_extract(engine, path)


def test_line_not_utf8_is_reported_and_the_rest_imported(engine: Engine, samples: Path, tmp_path: Path) -> None:
    lines = [line.encode("utf-8") for line in sample_lines(samples)[:6]]
    lines[3] = lines[3].decode("utf-8").encode("latin-1")  # line 4 (marc.robert, "Médecin") in Latin-1
    path = tmp_path / "mixed.txt"
    path.write_bytes(b"\n".join(lines) + b"\n")

    summary = import_extract(engine, path)

    offset = lines[3].index(b"\xe9")
    assert summary.errors == [(4, f"not valid UTF-8 (byte {offset + 1}: 0xe9)")]
    assert summary.added == 4
    assert "marc.robert@chu-demo.mss.test" not in entries(engine)


def test_duplicate_address_with_other_data_is_rejected_first_wins(
    engine: Engine, samples: Path, tmp_path: Path
) -> None:
    lines = sample_lines(samples)
    lines.append(lines[2].replace("|Pharmacien|", "|Médecin|"))  # cedric.petit again, line 66

    summary = import_extract(engine, write(tmp_path / "dup.txt", lines))

    assert summary.errors == [
        (66, "duplicate address 'cedric.petit@chu-demo.mss.test' with different data (first seen on line 3)")
    ]
    assert (summary.added, summary.unchanged, summary.rejected) == (62, 2, 1)
    assert entries(engine)["cedric.petit@chu-demo.mss.test"].profession_label == "Pharmacien"


def test_prune_deactivates_absent_entries_and_reimport_reactivates(
    engine: Engine, samples: Path, tmp_path: Path
) -> None:
    import_extract(engine, samples / SAMPLE)
    lines = sample_lines(samples)
    gone = ["marc.robert@chu-demo.mss.test", "zoe.leroy@infirmier.mss.test", "secretariat@medecin.mss.test"]
    kept = [line for line in lines if line.split("|")[1] not in gone]
    # A line refused for a defect still names its address: that entry must not be pruned.
    defective = next(i for i, line in enumerate(kept) if line.startswith("PER|anais.leroy@"))
    kept[defective] = kept[defective].replace("|10001610855|", "|1000161085X|")

    summary = import_extract(engine, write(tmp_path / "smaller.txt", kept), prune=True)

    assert (summary.deactivated, summary.rejected, summary.unchanged) == (3, 1, 60)
    rows = entries(engine)
    assert {a for a, e in rows.items() if e.status == INACTIVE} == set(gone)
    assert rows["anais.leroy@chu-demo.mss.test"].status == ACTIVE
    assert rows["marc.robert@chu-demo.mss.test"].status_reason == "absent from the directory extract"
    assert rows["marc.robert@chu-demo.mss.test"].status_changed_at is not None
    with session_scope(engine) as session:
        assert search(session, "marc robert").items == []

    # Without --prune nothing is deactivated; a present inactive entry comes back.
    back = import_extract(engine, samples / SAMPLE)
    assert (back.reactivated, back.deactivated, back.added, back.unchanged) == (3, 0, 0, 61)
    assert all(e.status == ACTIVE and e.status_reason == "" for e in entries(engine).values())


def test_prune_refuses_a_file_without_valid_line(engine: Engine, samples: Path, tmp_path: Path) -> None:
    import_extract(engine, samples / SAMPLE)
    with pytest.raises(ImportFileError, match="refusing to prune"):
        import_extract(engine, write(tmp_path / "header-only.txt", [HEADER_LINE, ""]), prune=True)
    assert all(e.status == ACTIVE for e in entries(engine).values())


def test_revoked_entry_stays_revoked_but_data_is_refreshed(engine: Engine, samples: Path, tmp_path: Path) -> None:
    import_extract(engine, samples / SAMPLE)
    with session_scope(engine) as session:
        service.revoke_entry(session, "joel.petit@chu-demo.mss.test", reason="struck off", actor="admin@mss.test")
    lines = sample_lines(samples)
    index = next(i for i, line in enumerate(lines) if line.startswith("PER|joel.petit@"))
    lines[index] = lines[index].replace("|Sage-Femme|", "|Sage-femme|")

    summary = import_extract(engine, write(tmp_path / "next.txt", lines), prune=True)

    assert (summary.updated, summary.reactivated, summary.deactivated) == (1, 0, 0)
    joel = entries(engine)["joel.petit@chu-demo.mss.test"]
    assert (joel.status, joel.status_reason, joel.profession_label) == (REVOKED, "struck off", "Sage-femme")
    with session_scope(engine) as session:
        assert search(session, "joel petit").items == []


def test_import_writes_one_audit_event_with_the_counts(engine: Engine, samples: Path) -> None:
    summary = import_extract(engine, samples / DEFECTS, actor="admin@mss.test")

    (event,) = audit_events(engine, "directory.import")
    assert (event.actor, event.object, event.outcome) == ("admin@mss.test", DEFECTS.split("/")[1], "success")
    detail = json.loads(event.detail)
    assert {k: detail[k] for k in ("lines", "added", "updated", "unchanged", "rejected", "deactivated")} == {
        "lines": 8,
        "added": 2,
        "updated": 0,
        "unchanged": 0,
        "rejected": 6,
        "deactivated": 0,
    }
    assert detail["file_sha256"] == summary.file_sha256 and len(summary.file_sha256) == 64
    assert detail["prune"] is False


def many_people(samples: Path, tmp_path: Path, count: int) -> Path:
    """An extract of ``count`` distinct people, made from one sample line."""
    template = sample_lines(samples)[1].split("|")
    lines = [HEADER_LINE]
    for n in range(count):
        values = list(template)
        rpps = str(10000000000 + n)
        values[1], values[3], values[4] = f"person{n}@medecin.mss.test", rpps, "8" + rpps
        lines.append("|".join(values))
    return write(tmp_path / "many.txt", lines)


def test_progress_reports_lines_and_bytes(engine: Engine, samples: Path, tmp_path: Path) -> None:
    path = many_people(samples, tmp_path, CHUNK_LINES + 500)
    calls: list[tuple[int, int, int]] = []

    summary = import_extract(engine, path, progress=lambda *args: calls.append(args))

    size = path.stat().st_size
    assert summary.added == CHUNK_LINES + 500
    assert calls[0][0] == CHUNK_LINES - 1 and 0 < calls[0][1] < size and calls[0][2] == size
    assert calls[-1] == (CHUNK_LINES + 500, size, size)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_interrupted_import_leaves_nothing(engine: Engine, samples: Path, tmp_path: Path) -> None:
    path = many_people(samples, tmp_path, CHUNK_LINES + 500)

    def interrupt(lines: int, done: int, total: int) -> None:
        raise KeyboardInterrupt  # the administrator pressed Ctrl-C part-way

    with pytest.raises(KeyboardInterrupt):
        import_extract(engine, path, progress=interrupt)

    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(DirectoryEntry)).scalar_one() == 0
    assert audit_events(engine, "directory.import") == []
    # The same file then imports normally on the same database.
    assert import_extract(engine, path).added == CHUNK_LINES + 500


def test_summary_counts_are_a_plain_mapping() -> None:
    assert ImportSummary(added=2, rejected=1).counts() == {
        "lines": 0,
        "added": 2,
        "updated": 0,
        "unchanged": 0,
        "reactivated": 0,
        "rejected": 1,
        "deactivated": 0,
    }
